"""Preprocessing: gene alignment to the model vocabulary and input conversion."""

from ._align import GeneAlignment, align_genes, strip_ensembl_version

__all__ = ["GeneAlignment", "align_genes", "strip_ensembl_version"]
