"""bulkrnabert-sv: BulkRNABert for AnnData, MuData and scanpy.

Submodules load lazily so that ``import bulkrnabert_sv`` stays fast: ``pp`` (preprocessing),
``tl`` (embed, finetune, pretrain), ``pl`` (plots), ``datasets`` and ``model``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

_SUBMODULES = {"pp", "tl", "pl", "datasets", "model"}
_LAZY_ATTRIBUTES = {
    "load_model": "model",
    "BulkRNABert": "model",
    "BulkRNABertConfig": "model",
    "CheckpointError": "model",
    "MLPHead": "model",
    "load_head": "model",
    "load_finetuned": "tl",
}

if TYPE_CHECKING:  # pragma: no cover
    from . import datasets, model, pl, pp, tl
    from .model import (
        BulkRNABert,
        BulkRNABertConfig,
        CheckpointError,
        MLPHead,
        load_head,
        load_model,
    )
    from .tl import load_finetuned

__all__ = [
    "BulkRNABert",
    "BulkRNABertConfig",
    "CheckpointError",
    "MLPHead",
    "__version__",
    "datasets",
    "load_finetuned",
    "load_head",
    "load_model",
    "model",
    "pl",
    "pp",
    "tl",
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_ATTRIBUTES:
        module = importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
