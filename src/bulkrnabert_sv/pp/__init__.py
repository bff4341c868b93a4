"""Preprocessing: gene alignment to the model vocabulary and input conversion."""

from .._lazy import lazy_getattr

_ATTRIBUTES = {
    "align_genes": "._align",
    "GeneAlignment": "._align",
    "GeneCoverageWarning": "._align",
    "DuplicateGenesWarning": "._align",
    "strip_ensembl_version": "._align",
    "counts_to_tpm": "._tpm",
    "check_expression": "._checks",
    "ExpressionValueError": "._checks",
    "ExpressionValueWarning": "._checks",
}
__all__ = sorted(_ATTRIBUTES)
__getattr__ = lazy_getattr(__name__, _ATTRIBUTES)


def __dir__():
    return __all__
