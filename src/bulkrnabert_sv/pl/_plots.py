"""Plots: Kaplan-Meier curves by predicted risk, training history, confusion matrix.

Embeddings are drawn with scanpy (``sc.pp.neighbors(adata, use_rep="X_bulkrnabert")``,
``sc.tl.umap``, ``sc.pl.umap``); these cover what scanpy does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["confusion_matrix", "kaplan_meier", "risk_groups", "training_history"]

RISK_KEY = "bulkrnabert_risk"
FINETUNE_KEY = "bulkrnabert_finetune"
_RISK_LABELS = {2: ("low risk", "high risk"), 3: ("low risk", "intermediate risk", "high risk")}


def _axes(ax: Axes | None, figsize=(5.0, 4.0)) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _obs(adata, key: str, what: str) -> pd.Series:
    obs = adata.obs
    if key not in obs:
        raise KeyError(
            f"obs[{key!r}] ({what}) is missing; obs has {list(obs.columns)[:15]}. Pass the "
            "column name that holds it."
        )
    return obs[key]


def risk_groups(
    risk: pd.Series, groups: int | Sequence[float] = 2, labels: Sequence[str] | None = None
) -> pd.Categorical:
    """Cut risk scores into groups at quantiles (lowest risk first; NaN stays NaN).

    ``groups`` is a number of equal-sized groups or the cut quantiles in (0, 1), e.g.
    ``(0.25, 0.75)`` for bottom quarter / middle half / top quarter. The sample of rank ``r``
    (1 to n, ties broken by order) joins the group whose quantile range holds ``(r - 0.5) / n``
    (lower bound included), so the result is deterministic even with tied scores.
    ``labels`` default to ``low risk``/``high risk``, adding ``intermediate risk`` for three
    groups and ``risk group k`` for more.
    """
    values = pd.to_numeric(risk, errors="coerce")
    if isinstance(groups, int | np.integer):
        if groups < 2:
            raise ValueError(f"groups must be >= 2 (or cut quantiles), not {groups}.")
        edges = np.linspace(0, 1, int(groups) + 1)
    else:
        cuts = np.asarray(groups, dtype=float)
        if (
            cuts.ndim != 1
            or not len(cuts)
            or (cuts <= 0).any()
            or (cuts >= 1).any()
            or (np.diff(cuts) <= 0).any()
        ):
            raise ValueError(
                f"groups={groups!r}: pass a number of groups or increasing quantiles in (0, 1), "
                "e.g. (0.25, 0.75)."
            )
        edges = np.concatenate([[0.0], cuts, [1.0]])
    n = len(edges) - 1
    if labels is None:
        labels = _RISK_LABELS.get(n) or [f"risk group {k + 1}" for k in range(n)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} risk groups; pass {n} labels.")
    valid = values.notna().to_numpy()
    codes = np.full(len(values), -1)
    if valid.any():
        ranks = values[valid].rank(method="first").to_numpy()
        fraction = (ranks - 0.5) / valid.sum()
        codes[valid] = np.searchsorted(edges[1:-1], fraction, side="right")
    return pd.Categorical.from_codes(codes, categories=list(labels))


def kaplan_meier(
    adata: AnnData,
    *,
    duration_key: str = "os_time",
    event_key: str = "os_event",
    risk_key: str = RISK_KEY,
    groups: int | Sequence[float] = 2,
    labels: Sequence[str] | None = None,
    time_unit: str = "days",
    show_ci: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Kaplan-Meier curves of risk groups with the log-rank test between them.

    Parameters
    ----------
    adata
        AnnData with durations, event indicators and a risk score (or groups) in ``obs``.
    duration_key, event_key
        ``obs`` columns: time to event or censoring, and 1/True = event, 0/False = censored
        (:func:`~bulkrnabert_sv.datasets.read_gdc` writes ``os_time`` and ``os_event``).
    risk_key
        ``obs`` column with the risk score (``tl.finetune``/``tl.predict`` write
        ``bulkrnabert_risk``; higher = shorter survival) cut into ``groups`` at quantiles, or a
        categorical column whose categories are the groups.
    groups
        Number of equal-sized groups (2 = split at the median) or cut quantiles in (0, 1).
    labels
        Names of the groups, lowest risk first.
    time_unit
        Unit of the durations, for the x axis label.
    show_ci
        Draw the 95% confidence band of each curve.
    ax
        Draw into these axes; default a new figure.

    Returns
    -------
    The figure. Each curve is a step line (``Line2D`` with drawstyle ``steps-post``) labelled
    ``"<group> (n=…)"`` through the Kaplan-Meier estimate (:class:`lifelines.KaplanMeierFitter`);
    censored samples are ``+`` marks; the axes' text shows the log-rank p-value
    (:func:`lifelines.statistics.logrank_test` for two groups, the multivariate test for more).
    Samples with a missing duration, event or risk are left out (with a warning).
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test, multivariate_logrank_test

    durations = pd.to_numeric(_obs(adata, duration_key, "durations"), errors="coerce")
    events = pd.to_numeric(_obs(adata, event_key, "event indicators"), errors="coerce")
    risk = _obs(adata, risk_key, "risk scores or groups")
    if isinstance(risk.dtype, pd.CategoricalDtype) or risk.dtype == object:
        group = pd.Categorical(risk)
        if labels is not None:
            raise ValueError("labels= renames quantile groups; obs[risk_key] is already grouped.")
    else:
        group = risk_groups(risk, groups, labels)
    keep = (durations.notna() & events.notna()).to_numpy() & ~pd.isna(group)
    if not keep.all():
        warnings.warn(
            f"{int((~keep).sum())} of {len(keep)} samples lack a duration, event or risk and "
            "are left out of the Kaplan-Meier plot.",
            stacklevel=2,
        )
    t = durations.to_numpy(dtype=float)[keep]
    e = events.to_numpy(dtype=float)[keep]
    if not set(np.unique(e)) <= {0.0, 1.0}:
        raise ValueError(
            f"obs[{event_key!r}] must hold 1 (event) / 0 (censored), found {np.unique(e)[:5]}."
        )
    if (t < 0).any():
        raise ValueError(f"obs[{duration_key!r}] has negative durations; they must be >= 0.")
    g = np.asarray(group)[keep]
    present = [c for c in group.categories if (g == c).any()]
    if len(present) < 2:
        raise ValueError(
            f"Only {len(present)} non-empty risk group(s) among {int(keep.sum())} usable samples; "
            "a Kaplan-Meier comparison needs two. Use more samples or fewer groups."
        )

    fig, ax = _axes(ax)
    for name in present:
        rows = g == name
        fitter = KaplanMeierFitter().fit(t[rows], e[rows], label=name)
        curve = fitter.survival_function_[name]
        label = f"{name} (n={int(rows.sum())})"
        (line,) = ax.step(curve.index, curve.to_numpy(), where="post", label=label)
        if show_ci:
            band = fitter.confidence_interval_survival_function_
            ax.fill_between(
                band.index,
                band.iloc[:, 0],
                band.iloc[:, 1],
                step="post",
                alpha=0.2,
                color=line.get_color(),
                linewidth=0,
            )
        censored = t[rows][e[rows] == 0]
        if len(censored):
            ax.plot(
                censored,
                fitter.survival_function_at_times(censored).to_numpy(),
                "+",
                color=line.get_color(),
                markersize=8,
                label="_censored",
            )
    if len(present) == 2:
        a, b = (g == present[0]), (g == present[1])
        test = logrank_test(t[a], t[b], event_observed_A=e[a], event_observed_B=e[b])
    else:
        test = multivariate_logrank_test(t, g, e)
    ax.text(
        0.98,
        0.98,
        f"log-rank p = {test.p_value:.3g}",
        transform=ax.transAxes,
        ha="right",
        va="top",
    )
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower left", frameon=False)
    return fig


def _history_frame(history, key: str) -> tuple[pd.DataFrame, int | None]:
    best = None
    if hasattr(history, "uns"):
        if key not in history.uns or "history" not in history.uns[key]:
            raise KeyError(
                f"uns[{key!r}]['history'] is missing: run bulkrnabert_sv.tl.finetune on this "
                "object first, or pass the history itself (a dict or tl.pretrain's DataFrame)."
            )
        best = history.uns[key].get("params", {}).get("best_epoch")
        history = history.uns[key]["history"]
    if isinstance(history, pd.DataFrame):
        frame = history.copy()
    elif isinstance(history, Mapping):
        lengths = {len(np.atleast_1d(v)) for v in history.values()}
        if len(lengths) > 1:
            raise ValueError(f"History lists differ in length ({sorted(lengths)}).")
        frame = pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in history.items()})
    else:
        raise TypeError(
            f"history must be an AnnData, a dict of per-epoch lists or a DataFrame, not "
            f"{type(history).__name__}."
        )
    if frame.empty:
        raise ValueError("The training history is empty: nothing to plot.")
    return frame, (int(best) if best is not None and "val_loss" in frame else None)


def training_history(
    history,
    *,
    keys: Sequence[str] | None = None,
    key: str = FINETUNE_KEY,
    log_loss: bool = False,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Loss and metric curves of a training run.

    Parameters
    ----------
    history
        An AnnData after ``tl.finetune`` (reads ``uns[key]["history"]``, per-epoch lists such
        as ``loss``, ``val_loss``, ``val_accuracy``), such a dict, or the DataFrame
        ``tl.pretrain`` returns (columns ``step``, ``loss``, ``masked_accuracy``,
        ``baseline_loss``, ...).
    keys
        Columns to draw; default every numeric column but ``step``/``epoch`` and
        ``learning_rate``.
    key
        The ``uns`` entry of an AnnData (``f"{key_added}_finetune"`` for a custom key).
    log_loss
        Logarithmic y axis for the losses.
    figsize
        Figure size; default depends on the number of panels.

    Returns
    -------
    The figure: a left panel with the columns whose name contains ``loss`` and, when there
    are others (accuracy, C-index...), a right panel with them. One line per column, labelled
    with its name, x = ``step`` (pretraining) or the epoch (1, 2, ...). For an AnnData
    fine-tuned with validation, a dashed vertical line marks ``params["best_epoch"]`` (the
    epoch whose weights were kept).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame, best_epoch = _history_frame(history, key)
    x_name = next((c for c in ("step", "epoch") if c in frame), None)
    x = frame[x_name].to_numpy() if x_name else np.arange(1, len(frame) + 1)
    if keys is None:
        keys = [
            c
            for c in frame.columns
            if c not in ("step", "epoch", "learning_rate")
            and pd.api.types.is_numeric_dtype(frame[c])
        ]
    else:
        absent = [k for k in keys if k not in frame]
        if absent:
            raise KeyError(f"History has no {absent}; it has {list(frame.columns)}.")
    losses = [k for k in keys if "loss" in k]
    others = [k for k in keys if "loss" not in k]
    panels = [p for p in (losses, others) if p]
    if not panels:
        raise ValueError("No column to plot: pass keys= naming history columns.")
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=figsize or (4.5 * len(panels), 3.5),
        layout="constrained",
        squeeze=False,
    )
    for ax, columns in zip(axes[0], panels):
        for column in columns:
            ax.plot(
                x,
                frame[column].to_numpy(dtype=float),
                marker="." if len(x) < 50 else None,
                label=column,
            )
        if x_name is None:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if best_epoch:
                ax.axvline(
                    best_epoch,
                    color="0.5",
                    linestyle="--",
                    linewidth=1,
                    label=f"best epoch ({best_epoch})",
                )
        ax.set_xlabel(x_name or "epoch")
        ax.set_ylabel("loss" if columns is losses else "metric")
        if columns is losses and log_loss:
            ax.set_yscale("log")
        ax.legend(frameon=False)
    return fig


def confusion_matrix(
    adata: AnnData,
    true_key: str,
    pred_key: str | None = None,
    *,
    normalize: Literal["true", "pred", "all"] | None = "true",
    labels: Sequence[str] | None = None,
    cmap: str = "Blues",
    ax: Axes | None = None,
) -> Figure:
    """Confusion matrix of true against predicted classes.

    Parameters
    ----------
    adata
        AnnData with both columns in ``obs``.
    true_key
        ``obs`` column of the true classes.
    pred_key
        ``obs`` column of the predicted classes; default ``f"{true_key}_bulkrnabert"`` (what
        ``tl.finetune``/``tl.predict`` write).
    normalize
        ``"true"`` (rows sum to 1: recall per class), ``"pred"`` (columns sum to 1), ``"all"``
        or ``None`` (counts).
    labels
        Class order; default the categories of the true column (or the sorted union).
    cmap
        Colour map.
    ax
        Draw into these axes; default a new figure.

    Returns
    -------
    The figure: an image whose array is the matrix (rows = true, columns = predicted), each
    cell's value written in it, the balanced accuracy in the title. Samples with a missing
    true or predicted class are left out.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    pred_key = pred_key or f"{true_key}_bulkrnabert"
    true = _obs(adata, true_key, "true classes")
    pred = _obs(adata, pred_key, "predicted classes")
    keep = (true.notna() & pred.notna()).to_numpy()
    if not keep.any():
        raise ValueError(f"No sample has both obs[{true_key!r}] and obs[{pred_key!r}].")
    y_true = true.astype(str).to_numpy()[keep]
    y_pred = pred.astype(str).to_numpy()[keep]
    if labels is None:
        if isinstance(true.dtype, pd.CategoricalDtype):
            labels = [str(c) for c in true.cat.categories]
            labels += sorted(set(y_pred) - set(labels))
        else:
            labels = sorted(set(y_true) | set(y_pred))
    if normalize not in (None, "true", "pred", "all"):
        raise ValueError(f"normalize must be 'true', 'pred', 'all' or None, not {normalize!r}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty rows normalise to 0
        matrix = sk_confusion_matrix(y_true, y_pred, labels=list(labels), normalize=normalize)
    size = 0.6 * len(labels)
    fig, ax = _axes(ax, figsize=(max(4.5, 2.0 + size), max(3.8, 1.6 + size)))
    image = ax.imshow(matrix, cmap=cmap, vmin=0, vmax=1 if normalize else None)
    threshold = (matrix.max() + matrix.min()) / 2
    for (i, j), value in np.ndenumerate(matrix):
        text = f"{value:.2f}" if normalize else f"{int(value)}"
        ax.text(
            j, i, text, ha="center", va="center", color="white" if value > threshold else "black"
        )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(f"predicted ({pred_key})")
    ax.set_ylabel(f"true ({true_key})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes only predicted
        balanced = balanced_accuracy_score(y_true, y_pred)
    ax.set_title(f"balanced accuracy {balanced:.3f} (n={int(keep.sum())})")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig
