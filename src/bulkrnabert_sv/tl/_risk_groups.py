"""``tl.risk_groups``: risk scores cut into groups at quantiles, into ``obs``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._anndata import get_modality
from .._keys import RISK_KEY, SCANPY_OBS_KEYS, is_finetune_uns_key, risk_group_key

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["quantile_groups", "risk_groups"]

_RISK_LABELS = {2: ("low risk", "high risk"), 3: ("low risk", "intermediate risk", "high risk")}


def quantile_groups(
    risk, groups: int | Sequence[float] = 2, labels: Sequence[str] | None = None
) -> pd.Categorical:
    """Cut risk scores into groups at quantiles (lowest risk first; NaN stays NaN).

    The computation of :func:`risk_groups`, on a Series or array; nothing is written.

    Parameters
    ----------
    risk
        Risk scores (numbers; what cannot be read as a number counts as missing).
    groups, labels
        As for :func:`risk_groups`.

    Returns
    -------
    A categorical of ``len(risk)`` values whose categories are ``labels``, lowest risk first.
    """
    values = pd.to_numeric(pd.Series(np.asarray(risk)), errors="coerce")
    if isinstance(groups, bool) or not isinstance(groups, int | np.integer | Sequence | np.ndarray):
        raise TypeError(
            f"groups must be a number of groups or a sequence of quantiles, not {groups!r}."
        )
    if isinstance(groups, int | np.integer):
        if groups < 2:
            raise ValueError(f"groups must be >= 2 (or cut quantiles), not {groups}.")
        edges = np.linspace(0, 1, int(groups) + 1)
    else:
        try:
            cuts = np.asarray(groups, dtype=float)
        except (TypeError, ValueError):
            cuts = np.asarray([np.nan])
        if (
            cuts.ndim != 1
            or not len(cuts)
            or not np.isfinite(cuts).all()
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
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} risk groups; pass {n} labels.")
    if len(set(labels)) != n:
        raise ValueError(f"The labels {labels} repeat a name; pass {n} different labels.")
    valid = values.notna().to_numpy()
    codes = np.full(len(values), -1)
    if valid.any():
        ranks = values[valid].rank(method="first").to_numpy()
        fraction = (ranks - 0.5) / valid.sum()
        codes[valid] = np.searchsorted(edges[1:-1], fraction, side="right")
    return pd.Categorical.from_codes(codes, categories=labels)


def finetune_records(adata: AnnData, task: str | None = None) -> dict[str, Mapping]:
    """The ``uns`` records that ``tl.finetune``/``tl.predict`` wrote, by ``uns`` key.

    A record is an ``uns`` entry ending in ``"_finetune"`` with ``params`` (``task``, ...) and
    ``fields`` (``fields["obs"]``: the column of the predicted class or risk score); ``task``
    keeps those of one task. For plots and tools that need "the" risk column or history
    without being told its key.
    """
    out = {}
    for key, value in adata.uns.items():
        if is_finetune_uns_key(key) and isinstance(value, Mapping):
            if "fields" in value and "params" in value:
                if task is None or value["params"].get("task") == task:
                    out[str(key)] = value
    return out


def default_risk_key(adata: AnnData) -> str:
    """The risk column of the one survival run recorded in ``uns`` (else ``RISK_KEY``).

    Raises
    ------
    ValueError
        Several survival runs are recorded: the message lists their risk columns.
    """
    columns = [record["fields"]["obs"] for record in finetune_records(adata, "survival").values()]
    if len(columns) > 1:
        raise ValueError(
            f"Several survival runs wrote risk scores ({', '.join(map(repr, columns))}); pass "
            "risk_key= naming the one to use."
        )
    return columns[0] if columns else RISK_KEY


def risk_groups(
    data,
    risk_key: str | None = None,
    *,
    groups: int | Sequence[float] = 2,
    labels: Sequence[str] | None = None,
    key_added: str | None = None,
    mod: str = "rna",
    copy: bool = False,
) -> AnnData | Any | None:
    """Cut risk scores into groups at quantiles (e.g. below and above the median).

    The sample of rank ``r`` (1 to n among those with a score, ties broken by order) joins the
    group whose quantile range holds ``(r - 0.5) / n`` (lower bound included), so the groups are
    as equal in size as the ranks allow and do not depend on ties. Samples without a score get
    no group (NaN).

    Parameters
    ----------
    data
        AnnData, or MuData (the ``mod`` modality), with the scores in ``obs[risk_key]``.
    risk_key
        ``obs`` column of the risk scores; higher = shorter expected survival. Default: the
        column of the survival run recorded in ``uns`` (:func:`~bulkrnabert_sv.tl.finetune` and
        :func:`~bulkrnabert_sv.tl.predict` write ``f"{obs_key}_bulkrnabert_risk"``, or
        ``key_added``).
    groups
        Number of equal-sized groups (2 = split at the median) or the cut quantiles in (0, 1),
        e.g. ``(0.25, 0.75)`` for bottom quarter / middle half / top quarter.
    labels
        Names of the groups, lowest risk first. Default ``"low risk"``, ``"high risk"``
        (with ``"intermediate risk"`` between for three groups; ``"risk group k"`` for more).
    key_added
        ``obs`` column to write; default ``f"{risk_key}_group"``.
    mod
        For a MuData: the modality whose ``obs`` holds the scores (and gets the groups).
    copy
        Return a modified copy instead of writing to ``data``.

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Written (to the modality for a MuData):

    ``obs[key_added]``
        Categorical, categories ``labels`` in order of increasing risk. Plot the groups'
        survival with ``pl.kaplan_meier(adata, groupby=key_added)``, or color an embedding by
        them with ``sc.pl.umap(adata, color=key_added)`` (both use
        ``uns[f"{key_added}_colors"]`` when set).

    Examples
    --------
    >>> brb.tl.predict(adata, cox_model)  # obs["bulkrnabert_risk"]  # doctest: +SKIP
    >>> brb.tl.risk_groups(adata, groups=(0.25, 0.75))  # doctest: +SKIP
    >>> brb.pl.kaplan_meier(adata, groupby="os_time_bulkrnabert_risk_group")  # doctest: +SKIP
    """
    from ._embed import check_data

    check_data(data, "tl.risk_groups")
    if risk_key is None:
        risk_key = default_risk_key(get_modality(data, mod))
    if not isinstance(risk_key, str) or not risk_key:
        raise ValueError(f"risk_key must be an obs column name, got {risk_key!r}.")
    key = risk_group_key(risk_key) if key_added is None else key_added
    if not isinstance(key, str) or not key:
        raise ValueError(f"key_added must be a non-empty string or None, got {key_added!r}.")
    if key == risk_key:
        raise ValueError(
            f"key_added={key!r} would overwrite the risk scores in obs[{risk_key!r}]; choose "
            f"another name, e.g. the default {risk_group_key(risk_key)!r}."
        )
    if key in SCANPY_OBS_KEYS:
        raise ValueError(
            f"key_added={key!r} is not allowed: obs[{key!r}] belongs to scanpy. Choose another "
            f"name, e.g. the default {risk_group_key(risk_key)!r}."
        )
    adata = get_modality(data, mod)
    if risk_key not in adata.obs:
        raise KeyError(
            f"obs[{risk_key!r}] (risk scores) is missing; obs has {list(adata.obs.columns)[:15]}. "
            "Run bulkrnabert_sv.tl.predict with a survival model first, or pass risk_key= "
            "naming the column of the scores."
        )
    scores = adata.obs[risk_key]
    if isinstance(scores.dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(scores) and not pd.api.types.is_bool_dtype(scores)
    ):
        raise TypeError(
            f"obs[{risk_key!r}] holds {scores.dtype} values, not risk scores (numbers). If it "
            "already holds groups, plot them with pl.kaplan_meier(adata, groupby="
            f"{risk_key!r})."
        )
    start = logg.info(f"computing risk groups of obs[{risk_key!r}]")
    categories = quantile_groups(scores, groups, labels)
    target = data.copy() if copy else data
    get_modality(target, mod).obs[key] = pd.Categorical(categories)  # index follows obs
    counts = ", ".join(f"{c} {n}" for c, n in categories.value_counts().items())
    logg.added(
        start,
        (key, f"risk groups ({counts})", f"{logg.where(target, mod, 'obs')}, categorical"),
    )
    return target if copy else None
