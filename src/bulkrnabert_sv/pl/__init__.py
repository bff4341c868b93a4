"""Plots: survival curves by predicted risk, training history, confusion matrices."""

from .._lazy import lazy_module

_ATTRIBUTES = {
    "kaplan_meier": "._plots",
    "training_history": "._plots",
    "confusion_matrix": "._plots",
    "top_genes": "._interpret",
    "attribution_heatmap": "._interpret",
}
__all__, __getattr__, __dir__ = lazy_module(__name__, _ATTRIBUTES)
