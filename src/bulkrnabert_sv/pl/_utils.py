"""Shared plumbing of the plots: new axes, colours, ``show=``/``save=`` as in scanpy."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _logging as logg
from .._keys import colors_key

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: What ``save=`` takes: True, a suffix of the default file name, or a path.
SaveArg = bool | str | os.PathLike | None

_EXTENSIONS = (".svg", ".pdf", ".png")


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes, bool]:
    """``(figure, axes, created)``: ``ax`` and its figure, or a new figure of ``figsize``."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax, False
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax, True


def _scanpy_settings():
    """scanpy's settings if scanpy is imported (never imports it)."""
    scanpy = sys.modules.get("scanpy")
    return getattr(scanpy, "settings", None)


def _setting(name: str, default):
    try:
        value = getattr(_scanpy_settings(), name)
    except Exception:
        return default
    return default if value is None else value


def figure_path(writekey: str, save: str | os.PathLike | bool) -> Path:
    """Where ``save=`` writes, as scanpy's ``savefig_or_show`` does.

    ``True``: ``{figdir}/{writekey}{plot_suffix}.{format}``; a string is appended to
    ``writekey`` (``"_test.png"`` → ``figures/kaplan_meier_test.png``; its extension, if
    ``.svg``, ``.pdf`` or ``.png``, sets the format); a :class:`~pathlib.Path` (or other
    ``os.PathLike``) is the file itself. ``figdir``, ``plot_suffix`` and ``format``
    (``file_format_figs``) are scanpy's settings once scanpy is imported, else ``figures``,
    ``""`` and ``pdf``.
    """
    if isinstance(save, os.PathLike):
        return Path(save)
    ext = str(_setting("file_format_figs", "pdf")).lstrip(".")
    if isinstance(save, str):
        for suffix in _EXTENSIONS:
            if save.endswith(suffix):
                ext, save = suffix[1:], save[: -len(suffix)]
                break
        writekey += save
    figdir = Path(_setting("figdir", "figures"))
    return figdir / f"{writekey}{_setting('plot_suffix', '')}.{ext}"


def savefig_or_show(
    writekey: str, fig: Figure, *, show: bool | None, save: SaveArg, created: bool
) -> bool:
    """Save and/or show ``fig`` (scanpy's ``savefig_or_show``); True when it was shown.

    ``show=None``: shown when the plot made its own figure (no ``ax=``) and scanpy's
    ``settings.autoshow`` (if scanpy is imported) is not False; with ``ax=`` the figure is the
    caller's, to draw more into before showing it. ``save=None``: scanpy's
    ``settings.autosave`` if imported, else not saved. A figure made here is closed once saved.
    """
    import matplotlib.pyplot as plt

    if save is None:
        save = bool(_setting("autosave", False))
    if show is None:
        show = created and bool(_setting("autoshow", True))
    if save is not False:
        if not isinstance(save, bool | str | os.PathLike):
            raise TypeError(f"save must be True, a file name suffix (str) or a path, not {save!r}.")
        path = figure_path(writekey, save)
        path.parent.mkdir(parents=True, exist_ok=True)
        logg.info(f"saving figure to file {path}")
        fig.savefig(path, bbox_inches="tight")
    if show:
        plt.show()
    if save is not False and created:
        plt.close(fig)
    return bool(show)


def category_colors(adata, key: str | None, categories) -> list:
    """One colour per category: ``uns[f"{key}_colors"]`` when it has enough valid colours
    (scanpy's convention, also used by ``sc.pl.umap``), else matplotlib's colour cycle."""
    import matplotlib as mpl
    from matplotlib.colors import is_color_like

    n = len(categories)
    stored = adata.uns.get(colors_key(key)) if key is not None else None
    if stored is not None:
        stored = list(stored)
        if len(stored) >= n and all(is_color_like(c) for c in stored[:n]):
            return stored[:n]
    cycle = mpl.rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    return [cycle[i % len(cycle)] for i in range(n)]
