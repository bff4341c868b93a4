"""Preprocessing: gene alignment to the model vocabulary and input conversion."""

from .._lazy import lazy_module

_ATTRIBUTES = {
    "align_genes": "._align",
    "align_to_vocabulary": "._align",
    "GeneAlignment": "._align",
    "GeneCoverageWarning": "._align",
    "DuplicateGenesWarning": "._align",
    "strip_ensembl_version": "._align",
    "counts_to_tpm": "._tpm",
    "check_expression": "._checks",
    "ExpressionValueError": "._checks",
    "ExpressionValueWarning": "._checks",
}
__all__, __getattr__, __dir__ = lazy_module(__name__, _ATTRIBUTES)
