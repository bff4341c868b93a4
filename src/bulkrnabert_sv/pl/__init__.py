"""Plots: survival curves by predicted risk, training history, confusion matrices."""

from .._lazy import lazy_getattr

_ATTRIBUTES = {
    "kaplan_meier": "._plots",
    "training_history": "._plots",
    "confusion_matrix": "._plots",
    "risk_groups": "._plots",
}
__all__ = sorted(_ATTRIBUTES)
__getattr__ = lazy_getattr(__name__, _ATTRIBUTES)


def __dir__():
    return __all__
