"""Lazy attribute loading for subpackages (keeps ``import bulkrnabert_sv`` fast)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_getattr(package: str, attributes: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` importing ``attributes[name]`` (a submodule) on first use."""

    def __getattr__(name: str):
        if name in attributes:
            return getattr(importlib.import_module(attributes[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_module(package: str, attributes: Mapping[str, str]):
    """``(__all__, __getattr__, __dir__)`` for a subpackage whose names load lazily."""
    names = sorted(attributes)
    return names, lazy_getattr(package, attributes), lambda: names
