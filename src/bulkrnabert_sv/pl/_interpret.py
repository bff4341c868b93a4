"""Plots of the interpretation tools: top genes per group, samples × genes heatmaps.

They read what :func:`~bulkrnabert_sv.tl.attribute` and
:func:`~bulkrnabert_sv.tl.gene_attention` write (``varm[key]``, ``layers[key]``,
``uns[key]``) and follow scanpy's conventions: ``ax=``, ``show=``, ``save=``, and the axes
returned only when the figure is not shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from .._validation import check_int_at_least
from ._utils import SaveArg, category_colors, new_axes, savefig_or_show

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from matplotlib.axes import Axes

__all__ = ["attribution_heatmap", "top_genes"]

ATTRIBUTION_KEY = "bulkrnabert_attribution"
ALL = "all"


def _summary(adata, key: str, rank_by: str | None) -> tuple[pd.DataFrame, str]:
    """The per-gene summary frame (varm) and the name of its score."""
    rank_by = rank_by or _params(adata, key).get("rank_by", "mean")
    if rank_by not in ("mean", "contrast"):
        raise ValueError(f"rank_by must be 'mean' or 'contrast', not {rank_by!r}.")
    varm_key = key if rank_by == "mean" else f"{key}_contrast"
    if varm_key not in adata.varm:
        raise KeyError(
            f"varm[{varm_key!r}] is missing: run tl.attribute (or tl.gene_attention) with "
            f"key_added={key!r} first; varm has {list(adata.varm.keys())}."
        )
    frame = adata.varm[varm_key]
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(np.asarray(frame), index=adata.var_names)
    return frame, rank_by


def _labels(adata, gene_symbols: str | None, names) -> list[str]:
    if gene_symbols is None:
        return [str(n) for n in names]
    if gene_symbols not in adata.var:
        raise KeyError(f"var[{gene_symbols!r}] is missing; var has {list(adata.var.columns)}.")
    symbols = adata.var[gene_symbols].astype(str)
    return [str(symbols.get(n, n)) for n in names]


def top_genes(
    adata: AnnData,
    key: str = ATTRIBUTION_KEY,
    *,
    groups: Sequence[str] | None = None,
    n_genes: int = 10,
    rank_by: Literal["mean", "contrast"] | None = None,
    gene_symbols: str | None = None,
    ncols: int = 4,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: SaveArg = None,
) -> Axes | list[Axes] | None:
    """Bar charts of the genes with the highest scores, one panel per group.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`~bulkrnabert_sv.tl.attribute` (or
        :func:`~bulkrnabert_sv.tl.gene_attention`).
    key
        Its ``key_added``: the scores are ``varm[key]`` (the mean per group) or, with
        ``rank_by="contrast"``, ``varm[f"{key}_contrast"]``.
    groups
        Columns (groups) to draw; default every group, or ``"all"`` when there is none.
    n_genes
        Genes per panel.
    rank_by
        ``"mean"`` or ``"contrast"``; default the one ``tl.attribute`` ranked by.
    gene_symbols
        ``var`` column of the labels (e.g. ``"symbol"``); default ``var_names``.
    ncols
        Panels per row of a new figure.
    ax
        Axes to draw into (one per group); default a new figure.
    show, save
        As scanpy's plots (see :func:`~bulkrnabert_sv.pl.kaplan_meier`); the file name is
        ``top_genes``.

    Returns
    -------
    None when shown, else the axes (a list with several groups). Each panel is a horizontal bar
    chart of the ``n_genes`` highest scores of its group, highest at the top, titled with the
    group; the x axis is the score (an attribution in the output's units, or the attention a
    gene receives). Genes without a score (not model genes) are left out.
    """
    import matplotlib.pyplot as plt

    frame, rank_by = _summary(adata, key, rank_by)
    if groups is None:
        groups = [c for c in frame.columns if c != ALL] or [ALL]
    groups = [str(g) for g in groups]
    missing = [g for g in groups if g not in frame.columns]
    if missing:
        raise KeyError(f"No scores for groups {missing}; there are {list(frame.columns)}.")
    n_genes = check_int_at_least(n_genes, "n_genes", 1)
    if ax is None:
        ncols = max(1, min(int(ncols), len(groups)))
        nrows = -(-len(groups) // ncols)
        fig, grid = plt.subplots(
            nrows,
            ncols,
            figsize=(3.2 * ncols, 0.28 * n_genes * nrows + 1.0 * nrows),
            layout="constrained",
            squeeze=False,
        )
        axes = list(grid.ravel())
        for extra in axes[len(groups) :]:
            extra.set_visible(False)
        axes, created = axes[: len(groups)], True
    else:
        axes = [ax] if not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
        if len(axes) != len(groups):
            raise ValueError(f"ax= holds {len(axes)} axes for {len(groups)} groups.")
        fig, created = axes[0].figure, False
    colors = dict(zip(groups, category_colors(adata, None, groups)))
    if "uniform" in _params(adata, key):  # tl.gene_attention
        xlabel = "attention received"
    else:
        xlabel = "mean attribution" if rank_by == "mean" else "attribution contrast"
    for panel, group in zip(axes, groups):
        scores = frame[group].dropna().sort_values(ascending=False, kind="stable")[:n_genes]
        names = _labels(adata, gene_symbols, scores.index)
        y = np.arange(len(scores))[::-1]
        panel.barh(y, scores.to_numpy(dtype=float), color=colors[group])
        panel.set_yticks(y, names)
        panel.set_title(group)
        panel.set_xlabel(xlabel)
        panel.axvline(0, color="0.5", linewidth=0.8)
    shown = savefig_or_show("top_genes", fig, show=show, save=save, created=created)
    if shown:
        return None
    return axes[0] if len(axes) == 1 else axes


def attribution_heatmap(
    adata: AnnData,
    key: str = ATTRIBUTION_KEY,
    *,
    genes: Sequence[str] | None = None,
    n_genes: int = 5,
    groupby: str | None = None,
    gene_symbols: str | None = None,
    cmap: str = "RdBu_r",
    vmax: float | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: SaveArg = None,
) -> Axes | None:
    """Samples × genes heatmap of per-sample scores (attributions, or attention received).

    Parameters
    ----------
    adata
        AnnData annotated by :func:`~bulkrnabert_sv.tl.attribute` (``layers[key]``).
    key
        The ``layers`` entry to draw.
    genes
        Genes (``var_names``) to show, in order; default the first ``n_genes`` of every group
        of ``uns[key]["top_genes"]``, group by group, without repeats.
    n_genes
        Genes per group when ``genes`` is not given.
    groupby
        ``obs`` column to sort and label the samples by; default ``obs[f"{key}_target"]`` when
        present.
    gene_symbols
        ``var`` column of the gene labels.
    cmap
        Colour map; diverging and centred on 0 by default (for attributions).
    vmax
        Colour limit (``-vmax`` to ``vmax``); default the largest absolute value shown.
    ax
        Axes to draw into; default a new figure.
    show, save
        As scanpy's plots; the file name is ``attribution_heatmap``.

    Returns
    -------
    None when shown, else the axes: an image whose array (samples × genes, samples sorted by
    group, stably) holds the scores, a colour bar beside it and, with groups, a coloured strip
    and boundaries naming the groups on the y axis.
    """
    if key not in adata.layers:
        raise KeyError(
            f"layers[{key!r}] is missing: run tl.attribute (or tl.gene_attention) with "
            f"key_added={key!r} first; layers has {list(adata.layers.keys())}."
        )
    if genes is None:
        record = adata.uns.get(key)
        table = record.get("top_genes") if isinstance(record, dict) else None
        if table is None:
            raise KeyError(f"uns[{key!r}]['top_genes'] is missing: pass genes=.")
        table = pd.DataFrame(table)
        genes = []
        for column in [c for c in table.columns if c != ALL] or list(table.columns):
            for g in table[column].iloc[:n_genes]:
                if g and g not in genes:
                    genes.append(str(g))
    genes = [str(g) for g in genes]
    position = {str(g): i for i, g in enumerate(adata.var_names)}
    absent = [g for g in genes if g not in position]
    if absent:
        raise KeyError(f"Not in var_names: {absent[:10]}.")
    if groupby is None and f"{key}_target" in adata.obs:
        groupby = f"{key}_target"
    values = np.asarray(adata.layers[key][:, [position[g] for g in genes]], dtype=float)
    order = np.arange(adata.n_obs)
    labels = None
    if groupby is not None:
        if groupby not in adata.obs:
            raise KeyError(f"obs[{groupby!r}] is missing.")
        labels = pd.Categorical(adata.obs[groupby])
        order = np.argsort(np.asarray(labels.codes), kind="stable")
    values = values[order]
    if vmax is None:
        finite = np.abs(values[np.isfinite(values)])
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    width = max(4.0, 0.3 * len(genes) + 2.0)
    height = max(3.0, min(12.0, 0.05 * adata.n_obs + 2.0))
    fig, ax, created = new_axes(ax, (width, height))
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="none")
    fig.colorbar(image, ax=ax, label=_score_label(adata, key))
    ax.set_xticks(np.arange(len(genes)), _labels(adata, gene_symbols, genes), rotation=90)
    if labels is not None:
        codes = np.asarray(labels.codes)[order]
        names = [str(c) for c in labels.categories]
        colors = category_colors(adata, groupby, names)
        ticks, ticklabels = [], []
        for code, name in enumerate(names):
            rows = np.flatnonzero(codes == code)
            if not rows.size:
                continue
            ticks.append(rows.mean())
            ticklabels.append(name)
            if rows[0] > 0:
                ax.axhline(rows[0] - 0.5, color="black", linewidth=0.8)
        ax.set_yticks(ticks, ticklabels)
        for tick, name in zip(ax.get_yticklabels(), ticklabels):
            tick.set_color(colors[names.index(name)])
        ax.set_ylabel(groupby)
    else:
        ax.set_ylabel("samples")
    shown = savefig_or_show("attribution_heatmap", fig, show=show, save=save, created=created)
    return None if shown else ax


def _params(adata, key: str) -> dict:
    record = adata.uns.get(key)
    params = record.get("params") if isinstance(record, dict) else None
    return params if isinstance(params, dict) else {}


def _score_label(adata, key: str) -> str:
    params = _params(adata, key)
    if "uniform" in params:
        return "attention received"
    target = params.get("target", "")
    return "attribution" + (f" ({target})" if target else "")
