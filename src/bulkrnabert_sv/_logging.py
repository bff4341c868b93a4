"""What the package tells the user: log messages, warnings and progress bars.

Log messages go through the standard :mod:`logging` logger ``"bulkrnabert_sv"`` and say, as
scanpy's do, what a function added where::

    computing BulkRNABert embeddings of 48 samples (block 4 of 4, mean over 19062 genes)
        finished: added
        'X_bulkrnabert', embeddings (adata.obsm)
        'bulkrnabert', parameters and gene alignment (adata.uns) (0:00:09)

They are silent by default (the logging default, WARNING). They are shown on ``sys.stderr``:

- when the logger's level is lowered: ``logging.getLogger("bulkrnabert_sv").setLevel("INFO")``
  (``"DEBUG"`` for more detail), which takes precedence over the rest;
- otherwise, once scanpy is imported, at scanpy's verbosity: ``sc.settings.verbosity = "info"``
  (or ``2``; ``"hint"``/``3`` and ``"debug"``/``4`` show more), as scanpy's own messages;
- or when the root logger is set lower, e.g. ``logging.basicConfig(level="INFO")``.

As scanpy's logger, the package logger writes through its own handler (to the current
``sys.stderr``, in scanpy's format) and does not propagate to the root logger, whose handlers
other libraries install at import (orbax does). To send the messages elsewhere, replace the
handlers of ``logging.getLogger("bulkrnabert_sv")`` (or set its ``propagate`` back to True).

Inside the package::

    from .. import _logging as logg

    start = logg.info("computing risk groups")
    ...
    logg.added(start, ("bulkrnabert_risk_group", "risk groups", "adata.obs"))
    logg.warn("3 samples lack a duration", UserWarning)   # attributed to the user's line
    for epoch in logg.progress_bar(range(10), progress=progress, desc="fine-tuning"):
        ...
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "DEBUG",
    "HINT",
    "INFO",
    "LOGGER_NAME",
    "added",
    "debug",
    "enabled",
    "hint",
    "info",
    "logger",
    "progress_bar",
    "user_stacklevel",
    "warn",
    "where",
]

LOGGER_NAME = "bulkrnabert_sv"
#: scanpy's level between INFO and DEBUG (``sc.settings.verbosity = "hint"``).
HINT = (logging.INFO + logging.DEBUG) // 2
INFO, DEBUG = logging.INFO, logging.DEBUG
#: scanpy's verbosity (0 error, 1 warning, 2 info, 3 hint, 4 debug) as logging levels.
_SCANPY_LEVELS = (logging.ERROR, logging.WARNING, logging.INFO, HINT, logging.DEBUG)
_PREFIXES = {logging.INFO: "", HINT: "--> ", logging.DEBUG: "    "}


class _Formatter(logging.Formatter):
    """scanpy's format: plain info, ``-->`` hints, indented debug, ``WARNING: ...`` above."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno in _PREFIXES:
            return _PREFIXES[record.levelno] + message
        return f"{record.levelname}: {message}"


class _StderrHandler(logging.Handler):
    """Writes to the *current* ``sys.stderr`` (Jupyter and pytest replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - e.g. a closed stream
            self.handleError(record)


logger = logging.getLogger(LOGGER_NAME)
if not any(type(h).__name__ == "_StderrHandler" for h in logger.handlers):  # not twice
    _handler = _StderrHandler()
    _handler.setFormatter(_Formatter())
    logger.addHandler(_handler)
    logger.propagate = False


def _scanpy_level() -> int | None:
    """scanpy's verbosity as a logging level, if scanpy is imported (never imports it)."""
    scanpy = sys.modules.get("scanpy")
    try:
        verbosity = int(scanpy.settings.verbosity)  # Verbosity is an IntEnum
    except Exception:  # not imported, partly imported, or another layout
        return None
    return _SCANPY_LEVELS[min(max(verbosity, 0), len(_SCANPY_LEVELS) - 1)]


def _threshold() -> int:
    """The lowest level shown: the package logger's own level, else scanpy's verbosity or the
    inherited (root) level, whichever shows more."""
    if logger.level != logging.NOTSET:
        return logger.level
    inherited = logger.getEffectiveLevel()
    scanpy = _scanpy_level()
    return inherited if scanpy is None else min(scanpy, inherited)


def enabled(level: int = logging.INFO) -> bool:
    """Whether a message at ``level`` would be shown (to skip costly messages)."""
    return level >= _threshold() and not logger.disabled


def _log(level: int, msg: str, time: datetime | None) -> datetime:
    now = datetime.now(UTC)
    if not enabled(level):
        return now
    if time is not None:
        passed = timedelta(seconds=int((now - time).total_seconds()))
        msg = f"{msg} ({passed})"
    if logger.isEnabledFor(level):
        logger.log(level, msg, stacklevel=3)
    else:  # shown because of scanpy's verbosity, below the level logging would let through
        fn, lno, func, _ = logger.findCaller(stacklevel=3)
        logger.handle(logger.makeRecord(logger.name, level, fn, lno, msg, (), None, func))
    return now


def info(msg: str, *, time: datetime | None = None) -> datetime:
    """Log ``msg`` at INFO; with ``time`` (an earlier return value) append the time since.

    Returns the current time, to pass as ``time`` to a later message.
    """
    return _log(logging.INFO, msg, time)


def hint(msg: str, *, time: datetime | None = None) -> datetime:
    """Log ``msg`` at scanpy's HINT level (between INFO and DEBUG), shown as ``--> msg``."""
    return _log(HINT, msg, time)


def debug(msg: str, *, time: datetime | None = None) -> datetime:
    """Log ``msg`` at DEBUG (details: batch sizes, checkpoints, coverage)."""
    return _log(logging.DEBUG, msg, time)


def added(
    start: datetime | None, *fields: tuple[str, str, str], finished: str = "finished"
) -> datetime:
    """Log, at INFO, what a function added where, as scanpy does.

    Parameters
    ----------
    start
        What :func:`info` returned when the work began (adds the time since), or None.
    *fields
        ``(key, description, where)`` for each field written, e.g.
        ``("X_bulkrnabert", "embeddings", "adata.obsm")``.
    finished
        The first words of the message.

    Examples
    --------
    ``added(start, ("X_bulkrnabert", "embeddings", "adata.obsm"))`` logs::

            finished: added
            'X_bulkrnabert', embeddings (adata.obsm) (0:00:09)
    """
    lines = [f"    {finished}: added"] if fields else [f"    {finished}"]
    lines += [f"    {key!r}, {what} ({where})" for key, what, where in fields]
    return _log(logging.INFO, "\n".join(lines), start)


def where(data, mod: str, slot: str) -> str:
    """``"adata.obsm"``, or ``"mdata.mod['rna'].obsm"`` for a MuData, for :func:`added`."""
    from anndata import AnnData

    if isinstance(data, AnnData):
        return f"adata.{slot}"
    return f"mdata.mod[{mod!r}].{slot}"


# ------------------------------------------------------------------------------------ warnings
_PACKAGE_DIRS = tuple(
    {
        os.path.dirname(os.path.abspath(__file__)) + os.sep,
        os.path.dirname(os.path.realpath(__file__)) + os.sep,
    }
)


def _in_package(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIRS)


def user_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning to the code that called into the package.

    For ``warnings.warn(..., stacklevel=user_stacklevel())`` in package code: the result points
    at the caller of the *outermost* package frame on the stack, so that neither the depth of
    the package's own calls nor frames of other libraries in between (JAX tracing a model, a
    generator consumed by anndata) matter. Without a package frame on the stack: 2, the caller.
    """
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    outermost = None
    while frame is not None:
        if _in_package(frame.f_code.co_filename):
            outermost = level
        frame = frame.f_back
        level += 1
    return 2 if outermost is None else outermost + 1


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn``, attributed to the user's line (see :func:`user_stacklevel`)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())


# ------------------------------------------------------------------------------- progress bars
class _NoBar:
    """What :func:`progress_bar` returns with ``progress=False``: tqdm's methods, doing nothing."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, **_: Any):
        self.iterable = iterable
        self.total = total
        self.n = 0
        self.disable = True

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def __len__(self) -> int:
        if self.total is not None:
            return self.total
        return len(self.iterable) if self.iterable is not None else 0

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *_) -> None:
        return None

    def update(self, n: float = 1) -> None:
        self.n += n

    def _nothing(self, *_, **__) -> None:
        return None

    set_postfix = set_postfix_str = set_description = set_description_str = _nothing
    refresh = reset = close = clear = write = unpause = _nothing


def _in_notebook() -> bool:
    """A Jupyter kernel whose front end draws widgets (tqdm.autonotebook's test)."""
    if "ipykernel.zmqshell" in sys.modules:
        if any(k == "QT_API" or k.startswith("SPYDER") for k in os.environ):
            return False  # jupyter-qtconsole, spyder
        try:
            shell = sys.modules["IPython"].get_ipython().__class__.__name__.lower()
        except Exception:
            return True
        return "qt" not in shell and "spyder" not in shell
    return "IPython.utils._process_emscripten" in sys.modules  # jupyterlite


def _tqdm_class():
    """tqdm's notebook bar in Jupyter with ipywidgets installed, else the plain text bar.

    ``tqdm.auto`` is never imported: in a notebook without ipywidgets its import warns
    ("IProgress not found. Please update jupyter and ipywidgets"), whatever the bar's
    ``disable``.
    """
    if _in_notebook():
        try:
            from tqdm import notebook

            if getattr(notebook, "IProgress", None) is not None:
                return notebook.tqdm
        except Exception:  # IPython/ipywidgets too old or broken: plain text
            pass
    from tqdm.std import tqdm

    return tqdm


def progress_bar(iterable: Iterable | None = None, *, progress: bool = True, **kwargs: Any):
    """A tqdm bar over ``iterable`` (or updated by hand), or none at all with ``progress=False``.

    Parameters
    ----------
    iterable
        What to iterate over, as ``tqdm(iterable)``; None for a bar moved with ``update(n)``.
    progress
        False: return an object with tqdm's methods (``update``, ``set_postfix``, ``close``,
        context manager, iteration) that draws nothing, imports nothing and warns nothing.
    **kwargs
        For tqdm: ``total``, ``desc``, ``unit``, ``initial``, ...
    """
    if not progress:
        return _NoBar(iterable, **kwargs)
    return _tqdm_class()(iterable, **kwargs)
