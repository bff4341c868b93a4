"""Plots: Kaplan-Meier curves by predicted risk, training history, confusion matrix.

Embeddings are drawn with scanpy (``sc.pp.neighbors(adata, use_rep="X_bulkrnabert")``,
``sc.tl.umap``, ``sc.pl.umap``); these cover what scanpy does not. As scanpy's plots, they take
``ax=`` (draw into these axes), ``show=`` and ``save=``, and return the axes only when the
figure is not shown, so that a call on the last line of a notebook cell draws the figure once.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._keys import FINETUNE_KEY, class_key
from ..tl._risk_groups import default_risk_key, finetune_records, quantile_groups
from ._utils import SaveArg, category_colors, new_axes, savefig_or_show

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["confusion_matrix", "kaplan_meier", "training_history"]


def _obs(adata, key: str, what: str) -> pd.Series:
    obs = adata.obs
    if key not in obs:
        raise KeyError(
            f"obs[{key!r}] ({what}) is missing; obs has {list(obs.columns)[:15]}. Pass the "
            "column name that holds it."
        )
    return obs[key]


def _groups(adata, groupby, risk_key, groups, labels) -> tuple[pd.Categorical, str | None]:
    """The groups to compare and the ``obs`` key of their colours (None: cut here)."""
    if groupby is not None:
        column = _obs(adata, groupby, "groups")
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            raise TypeError(
                f"obs[{groupby!r}] holds numbers, not groups. Pass it as risk_key= to cut it "
                f"into groups at quantiles here, or write groups with "
                f"tl.risk_groups(adata, {groupby!r})."
            )
        if labels is not None or not (isinstance(groups, int) and groups == 2):
            raise ValueError(
                "groups= and labels= cut risk_key into quantile groups; with groupby= the "
                f"groups are those of obs[{groupby!r}]."
            )
        return pd.Categorical(column), groupby
    if risk_key is None:
        risk_key = default_risk_key(adata)
    risk = _obs(adata, risk_key, "risk scores or groups")
    if isinstance(risk.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(risk):
        if labels is not None:
            raise ValueError("labels= renames quantile groups; obs[risk_key] is already grouped.")
        return pd.Categorical(risk), risk_key
    if pd.api.types.is_bool_dtype(risk):
        return pd.Categorical(risk), risk_key
    return quantile_groups(risk, groups, labels), None


def _at_risk_table(ax: Axes, t: np.ndarray, g: np.ndarray, names: list, colors: dict) -> None:
    """Numbers at risk (duration >= tick) of each group at the x ticks, under the x label.

    The ticks are fixed at the current ones so that the table stays aligned; texts are
    annotations of ``ax`` in points below it (the layout makes room for them): the title has
    gid ``"at_risk_title"``, the row labels ``"at_risk_label"`` and the counts
    ``"at_risk:<group>"``.
    """
    import matplotlib as mpl
    from matplotlib.font_manager import FontProperties

    lo, hi = ax.get_xlim()
    ticks = [x for x in ax.get_xticks() if lo <= x <= hi]
    ax.set_xticks(ticks)
    ax.set_xlim(lo, hi)
    rc = mpl.rcParams
    size = FontProperties(size=rc["xtick.labelsize"]).get_size_in_points()
    label_size = FontProperties(size=rc["axes.labelsize"]).get_size_in_points()
    # below the ticks, their labels and the x label, with a gap
    top = (
        rc["xtick.major.size"]
        + rc["xtick.major.pad"]
        + size
        + rc["axes.labelpad"]
        + label_size
        + 0.8 * size
    )
    line = 1.35 * size
    # row labels clear of the counts centred on a tick at the left edge (digits ~0.6 em wide)
    widest = max(len(str(len(t))), 1)
    left = -(0.3 * size * widest + 0.6 * size) if ticks and np.isclose(ticks[0], lo) else 0
    left -= 0.6 * size
    ax.annotate(
        "number at risk",
        xy=(0, 0),
        xycoords="axes fraction",
        xytext=(0, -top),
        textcoords="offset points",
        ha="left",
        va="top",
        fontsize=size,
        annotation_clip=False,
    ).set_gid("at_risk_title")
    for row, name in enumerate(names, start=1):
        y = -(top + row * line)
        ax.annotate(
            str(name),
            xy=(0, 0),
            xycoords="axes fraction",
            xytext=(left, y),
            textcoords="offset points",
            ha="right",
            va="top",
            fontsize=size,
            color=colors[name],
            annotation_clip=False,
        ).set_gid("at_risk_label")
        durations = t[g == name]
        for x in ticks:
            ax.annotate(
                str(int((durations >= x).sum())),
                xy=(x, 0),
                xycoords=("data", "axes fraction"),
                xytext=(0, y),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=size,
                color=colors[name],
                annotation_clip=False,
            ).set_gid(f"at_risk:{name}")


def kaplan_meier(
    adata: AnnData,
    groupby: str | None = None,
    *,
    duration_key: str = "os_time",
    event_key: str = "os_event",
    risk_key: str | None = None,
    groups: int | Sequence[float] = 2,
    labels: Sequence[str] | None = None,
    time_unit: str = "days",
    show_ci: bool = True,
    at_risk: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: SaveArg = None,
) -> Axes | None:
    """Kaplan-Meier curves of risk groups with the log-rank test between them.

    Parameters
    ----------
    adata
        AnnData with durations, event indicators and groups or a risk score in ``obs``.
    groupby
        ``obs`` column of the groups to compare (categorical, strings or booleans), e.g. the
        ``"os_time_bulkrnabert_risk_group"`` that :func:`~bulkrnabert_sv.tl.risk_groups` writes, or a
        cohort. Default: ``obs[risk_key]`` cut into ``groups`` here (nothing is written).
    duration_key, event_key
        ``obs`` columns: time to event or censoring, and 1/True = event, 0/False = censored
        (:func:`~bulkrnabert_sv.datasets.read_gdc` writes ``os_time`` and ``os_event``).
    risk_key
        Without ``groupby``: the ``obs`` column of the risk score (default: that of the survival
        run recorded in ``uns``; ``tl.finetune``/``tl.predict`` write
        ``f"{obs_key}_bulkrnabert_risk"``; higher = shorter survival), cut into
        ``groups`` at quantiles as :func:`~bulkrnabert_sv.tl.risk_groups` does; a categorical
        column is used as the groups.
    groups
        Number of equal-sized groups (2 = split at the median) or cut quantiles in (0, 1).
    labels
        Names of the quantile groups, lowest risk first.
    time_unit
        Unit of the durations, for the x axis label.
    show_ci
        Draw the 95% confidence band of each curve.
    at_risk
        Add the table of the numbers at risk (samples whose duration is at least the tick's
        time) of each group at the x ticks, under the plot.
    ax
        Draw into these axes; default a new figure.
    show
        Show the figure (``plt.show()``) and return None. Default: shown when the function made
        the figure (no ``ax=``), as scanpy's ``settings.autoshow`` (followed once scanpy is
        imported); with ``ax=``, the axes are returned for you to draw more.
    save
        Save the figure as scanpy does: ``True`` writes ``figures/kaplan_meier.pdf``, a string
        is appended to the name (``"_test.png"``: ``figures/kaplan_meier_test.png``), a
        :class:`~pathlib.Path` is the file itself (folder, format and suffix follow scanpy's
        ``settings.figdir``, ``file_format_figs`` and ``plot_suffix`` once it is imported).

    Returns
    -------
    None when shown, else the axes. Each curve is a step line (``Line2D`` with drawstyle
    ``steps-post``) labelled ``"<group> (n=…)"`` through the Kaplan-Meier estimate
    (:class:`lifelines.KaplanMeierFitter`); censored samples are ``+`` marks; the colours are
    ``uns[f"{groupby}_colors"]`` when it holds one per category (scanpy's convention, so the
    groups look as in ``sc.pl.umap(adata, color=groupby)``), else matplotlib's cycle. The
    legend is outside the axes, on the right; the axes' text shows the log-rank p-value
    (:func:`lifelines.statistics.logrank_test` for two groups, the multivariate test for
    more). Samples with a missing duration, event or group are left out (with a warning).
    """
    durations = pd.to_numeric(_obs(adata, duration_key, "durations"), errors="coerce")
    events = pd.to_numeric(_obs(adata, event_key, "event indicators"), errors="coerce")
    group, color_key = _groups(adata, groupby, risk_key, groups, labels)
    t, e, g = _usable_samples(durations, events, group, duration_key, event_key)
    present = _present_groups(group, g)
    palette = category_colors(adata, color_key, group.categories)
    colors = {c: palette[i] for i, c in enumerate(group.categories) if c in present}

    fig, ax, created = new_axes(ax, (7.0, 4.0 + (0.2 * len(present) + 0.3 if at_risk else 0)))
    for name in present:
        _draw_survival_curve(ax, t[g == name], e[g == name], name, colors[name], show_ci)
    ax.text(
        0.98,
        0.98,
        f"log-rank p = {_logrank_p_value(t, e, g, present):.3g}",
        transform=ax.transAxes,
        ha="right",
        va="top",
    )
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(left=0)
    _survival_legend(ax, censored=bool((e == 0).any()), title=groupby)
    if at_risk:
        _at_risk_table(ax, t, g, present, colors)
    shown = savefig_or_show("kaplan_meier", fig, show=show, save=save, created=created)
    return None if shown else ax


# ------------------------------------------------------------------------- kaplan_meier's steps
def _usable_samples(
    durations: pd.Series, events: pd.Series, group: pd.Categorical, duration_key, event_key
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Durations, events and groups of the samples that have all three (a warning counts the rest).

    Raises when the events are not 0/1 or a duration is negative.
    """
    keep = (durations.notna() & events.notna()).to_numpy() & ~pd.isna(group)
    if not keep.all():
        logg.warn(
            f"{int((~keep).sum())} of {len(keep)} samples lack a duration, event or group and "
            "are left out of the Kaplan-Meier plot.",
            UserWarning,
        )
    t = durations.to_numpy(dtype=float)[keep]
    e = events.to_numpy(dtype=float)[keep]
    if not set(np.unique(e)) <= {0.0, 1.0}:
        raise ValueError(
            f"obs[{event_key!r}] must hold 1 (event) / 0 (censored), found {np.unique(e)[:5]}."
        )
    if (t < 0).any():
        raise ValueError(f"obs[{duration_key!r}] has negative durations; they must be >= 0.")
    return t, e, np.asarray(group)[keep]


def _present_groups(group: pd.Categorical, g: np.ndarray) -> list:
    """The categories with usable samples (in category order); at least two are needed."""
    present = [c for c in group.categories if (g == c).any()]
    if len(present) < 2:
        raise ValueError(
            f"Only {len(present)} non-empty group(s) among {len(g)} usable samples; "
            "a Kaplan-Meier comparison needs two. Use more samples or fewer groups."
        )
    return present


def _draw_survival_curve(
    ax: Axes, t: np.ndarray, e: np.ndarray, name, color, show_ci: bool
) -> None:
    """One group's Kaplan-Meier step curve, its 95% band and ``+`` marks at censored times."""
    from lifelines import KaplanMeierFitter

    fitter = KaplanMeierFitter().fit(t, e, label=str(name))
    curve = fitter.survival_function_.iloc[:, 0]
    label = f"{name} (n={int(t.size)})"
    ax.step(curve.index, curve.to_numpy(), where="post", label=label, color=color)
    if show_ci:
        band = fitter.confidence_interval_survival_function_
        ax.fill_between(
            band.index,
            band.iloc[:, 0],
            band.iloc[:, 1],
            step="post",
            alpha=0.2,
            color=color,
            linewidth=0,
        )
    censored = t[e == 0]
    if len(censored):
        ax.plot(
            censored,
            fitter.survival_function_at_times(censored).to_numpy(),
            "+",
            color=color,
            markersize=8,
            label="_censored",
        )


def _logrank_p_value(t: np.ndarray, e: np.ndarray, g: np.ndarray, present: list) -> float:
    """The log-rank test's p-value: two groups, or the multivariate test for more."""
    from lifelines.statistics import logrank_test, multivariate_logrank_test

    if len(present) == 2:
        a, b = (g == present[0]), (g == present[1])
        test = logrank_test(t[a], t[b], event_observed_A=e[a], event_observed_B=e[b])
    else:
        test = multivariate_logrank_test(t, g, e)
    return test.p_value


def _survival_legend(ax: Axes, *, censored: bool, title: str | None) -> None:
    """The curves' legend outside the axes on the right (with the censoring mark if any)."""
    from matplotlib.lines import Line2D

    handles, names = ax.get_legend_handles_labels()
    if censored:
        handles.append(Line2D([], [], marker="+", linestyle="none", color="0.3", markersize=8))
        names.append("censored")
    ax.legend(
        handles,
        names,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0,
        frameon=False,
        title=title,
    )


def _history_frame(history, key: str | None) -> tuple[pd.DataFrame, int | None]:
    best = None
    if hasattr(history, "uns") and key is None:
        records = [k for k, v in finetune_records(history).items() if "history" in v]
        if len(records) > 1:
            raise ValueError(
                f"Several fine-tuning runs are recorded ({', '.join(map(repr, records))}); pass "
                "key= naming the one to plot."
            )
        key = records[0] if records else FINETUNE_KEY
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
    key: str | None = None,
    log_loss: bool = False,
    figsize: tuple[float, float] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
) -> Axes | list[Axes] | None:
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
        The ``uns`` entry of an AnnData (``f"{key_added}_finetune"``; default: the one
        fine-tuning run recorded there).
    log_loss
        Logarithmic y axis for the losses.
    figsize
        Figure size; default depends on the number of panels.
    ax
        Draw into these axes, one per panel (a single Axes for one panel); default a new
        figure.
    show
        Show the figure (``plt.show()``) and return None. Default: shown when the function made
        the figure (no ``ax=``), as scanpy's ``settings.autoshow`` (followed once scanpy is
        imported); with ``ax=``, the axes are returned for you to draw more.
    save
        Save the figure as scanpy does: ``True`` writes ``figures/training_history.pdf``, a
        string is appended to the name, a :class:`~pathlib.Path` is the file itself (see
        :func:`kaplan_meier`).

    Returns
    -------
    None when shown, else the axes: a list of two for two panels. The left (or only) panel
    holds the columns whose name contains ``loss`` and, when there are others (accuracy,
    C-index...), a right panel holds them. One line per column, labelled with its name,
    x = ``step`` (pretraining) or the epoch (1, 2, ...). For an AnnData fine-tuned with
    validation, a dashed vertical line marks ``params["best_epoch"]`` (the epoch whose weights
    were kept).
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
    if ax is None:
        fig, grid = plt.subplots(
            1,
            len(panels),
            figsize=figsize or (4.5 * len(panels), 3.5),
            layout="constrained",
            squeeze=False,
        )
        axes, created = list(grid[0]), True
    else:
        axes = [ax] if not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
        if len(axes) != len(panels):
            raise ValueError(
                f"The history has {len(panels)} panel(s) ({' and '.join(map(str, panels))}) "
                f"but ax= holds {len(axes)} axes; pass {len(panels)}, or keys= to choose."
            )
        fig, created = axes[0].figure, False
    for ax, columns in zip(axes, panels):
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
    shown = savefig_or_show("training_history", fig, show=show, save=save, created=created)
    if shown:
        return None
    return axes[0] if len(axes) == 1 else axes


def confusion_matrix(
    adata: AnnData,
    true_key: str,
    pred_key: str | None = None,
    *,
    normalize: Literal["true", "pred", "all"] | None = "true",
    labels: Sequence[str] | None = None,
    cmap: str = "Blues",
    ax: Axes | None = None,
    show: bool | None = None,
    save: SaveArg = None,
) -> Axes | None:
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
    show
        Show the figure (``plt.show()``) and return None. Default: shown when the function made
        the figure (no ``ax=``), as scanpy's ``settings.autoshow`` (followed once scanpy is
        imported); with ``ax=``, the axes are returned for you to draw more.
    save
        Save the figure as scanpy does: ``True`` writes ``figures/confusion_matrix.pdf``, a
        string is appended to the name, a :class:`~pathlib.Path` is the file itself (see
        :func:`kaplan_meier`).

    Returns
    -------
    None when shown, else the axes: an image whose array is the matrix (rows = true,
    columns = predicted), each cell's value written in it, the balanced accuracy in the
    title, and a colour bar beside it. Samples with a missing true or predicted class are
    left out.
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    pred_key = pred_key or class_key(true_key)
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
    fig, ax, created = new_axes(ax, (max(4.5, 2.0 + size), max(3.8, 1.6 + size)))
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
    shown = savefig_or_show("confusion_matrix", fig, show=show, save=save, created=created)
    return None if shown else ax
