"""Align an AnnData's genes to a model's vocabulary."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._core.data import get_modality

#: Below this many matched vocabulary genes the upstream preprocessing refused a sample.
MIN_MATCHED_GENES = 18_000
_ENSEMBL = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")


@dataclasses.dataclass
class GeneAlignment:
    """How the input's genes map onto the model vocabulary.

    Attributes
    ----------
    genes
        The vocabulary, in model order.
    matrix
        Sparse (n_input_genes, n_vocabulary) 0/1 matrix: ``tpm_aligned = tpm_input @ matrix``
        (several inputs mapping to one vocabulary gene are summed; absent genes get 0).
    id_type
        ``"ensembl"`` or ``"symbol"``.
    input_names
        The input identifiers used (``var_names`` or the ``gene_key`` column).
    n_matched
        Vocabulary genes found in the input.
    missing
        Vocabulary genes absent from the input (filled with TPM 0).
    unmapped
        Input identifiers that map to no vocabulary gene.
    duplicated
        Vocabulary genes that several input columns map to (their TPM summed).
    dropped
        Input identifiers dropped on purpose (``_PAR_Y`` copies, ambiguous symbols).
    """

    genes: tuple[str, ...]
    matrix: sp.csr_matrix
    id_type: str
    input_names: np.ndarray
    n_matched: int
    missing: list[str]
    unmapped: list[str]
    duplicated: list[str]
    dropped: list[str] = dataclasses.field(default_factory=list)

    @property
    def coverage(self) -> float:
        """Fraction of the vocabulary found in the input."""
        return self.n_matched / len(self.genes)

    def report(self) -> dict[str, int | float | str]:
        """Counts for logs and ``uns``: matched / missing / unmapped / duplicated / dropped."""
        return {
            "id_type": self.id_type,
            "n_vocabulary": len(self.genes),
            "n_input": len(self.input_names),
            "n_matched": self.n_matched,
            "n_missing": len(self.missing),
            "n_unmapped": len(self.unmapped),
            "n_duplicated": len(self.duplicated),
            "n_dropped": len(self.dropped),
            "coverage": float(self.coverage),
        }

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """Map dense input rows (n, n_input_genes) to vocabulary order (n, n_vocabulary)."""
        out = sp.csr_matrix(rows) @ self.matrix if sp.issparse(rows) else rows @ self.matrix
        return np.asarray(out, dtype=np.float64)


def strip_ensembl_version(name: str) -> str | None:
    """``ENSG00000141510.16`` → ``ENSG00000141510``; None for non-Ensembl ids or ``_PAR_Y`` rows."""
    match = _ENSEMBL.match(name)
    if match is None or match.group(3):
        return None
    return match.group(1)


def _vocabulary(genes_or_model) -> tuple[str, ...]:
    genes = getattr(genes_or_model, "genes", genes_or_model)
    if genes is None:
        raise ValueError("The model has no gene list; load it from a checkpoint or pass genes.")
    return tuple(str(g) for g in genes)


def align_genes(
    data,
    genes,
    *,
    gene_key: str | None = None,
    mod: str = "rna",
    id_type: str = "auto",
    warn: bool = True,
) -> GeneAlignment:
    """Align the input's genes to a vocabulary.

    Parameters
    ----------
    data
        AnnData or MuData (``mod`` picks the modality).
    genes
        A model (its ``genes``) or a sequence of unversioned Ensembl ids in model order.
    gene_key
        A ``var`` column holding the identifiers; default ``var_names``.
    id_type
        ``"ensembl"``, ``"symbol"`` or ``"auto"`` (Ensembl if most identifiers look like Ensembl).
    warn
        Warn about low coverage and duplicates.

    Returns
    -------
    A :class:`GeneAlignment`; nothing in ``data`` is changed.

    Raises
    ------
    ValueError
        No overlap at all; the message names the likely cause.
    """
    adata = get_modality(data, mod)
    vocabulary = _vocabulary(genes)
    names = _input_names(adata, gene_key)
    if id_type == "auto":
        n_ensembl = sum(strip_ensembl_version(n) is not None or n.endswith("_PAR_Y") for n in names)
        id_type = "ensembl" if n_ensembl >= 0.5 * max(len(names), 1) else "symbol"
    if id_type == "ensembl":
        keys, dropped = _ensembl_keys(names)
    elif id_type == "symbol":
        from ._symbols import symbols_to_ensembl

        keys, dropped = symbols_to_ensembl(names)
    else:
        raise ValueError(f"id_type must be 'auto', 'ensembl' or 'symbol', got {id_type!r}.")
    return _build_alignment(vocabulary, names, keys, dropped, id_type, warn=warn)


def _input_names(adata, gene_key: str | None) -> np.ndarray:
    if gene_key is None:
        return np.asarray(adata.var_names.astype(str))
    if gene_key not in adata.var.columns:
        raise KeyError(
            f"adata.var has no column {gene_key!r}; available: {list(adata.var.columns)}. "
            "Pass gene_key=None to use var_names."
        )
    return np.asarray(adata.var[gene_key].astype(str))


def _ensembl_keys(names: Sequence[str]) -> tuple[list[str | None], list[str]]:
    keys, dropped = [], []
    for name in names:
        key = strip_ensembl_version(name)
        if key is None and name.endswith("_PAR_Y"):
            dropped.append(name)
        keys.append(key)
    return keys, dropped


def _build_alignment(vocabulary, names, keys, dropped, id_type, *, warn: bool) -> GeneAlignment:
    position = {g: i for i, g in enumerate(vocabulary)}
    rows, cols = [], []
    unmapped = []
    for i, (name, key) in enumerate(zip(names, keys)):
        j = position.get(key) if key is not None else None
        if j is None:
            if name not in dropped:
                unmapped.append(name)
            continue
        rows.append(i)
        cols.append(j)
    matrix = sp.csr_matrix(
        (np.ones(len(rows)), (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
        shape=(len(names), len(vocabulary)),
    )
    hits = np.bincount(np.asarray(cols, dtype=np.int64), minlength=len(vocabulary))
    duplicated = [vocabulary[j] for j in np.flatnonzero(hits > 1)]
    missing = [vocabulary[j] for j in np.flatnonzero(hits == 0)]
    n_matched = int((hits > 0).sum())
    alignment = GeneAlignment(
        genes=tuple(vocabulary),
        matrix=matrix,
        id_type=id_type,
        input_names=np.asarray(names),
        n_matched=n_matched,
        missing=missing,
        unmapped=unmapped,
        duplicated=duplicated,
        dropped=list(dropped),
    )
    if n_matched == 0:
        example = ", ".join(map(str, names[:3]))
        raise ValueError(
            f"None of the {len(names)} input genes (e.g. {example}) matches the model's "
            f"{len(vocabulary)} genes (read as {id_type} ids). Likely causes: another species "
            "(the model is human, Ensembl ENSG ids), identifiers in another var column "
            "(pass gene_key=...), or another annotation (pass id_type='symbol' for HGNC symbols)."
        )
    if warn and duplicated:
        warnings.warn(
            f"{len(duplicated)} vocabulary genes receive several input columns "
            f"(e.g. {', '.join(duplicated[:3])}); their TPM values are summed.",
            stacklevel=3,
        )
    if warn and n_matched < min(MIN_MATCHED_GENES, len(vocabulary)):
        warnings.warn(
            f"Only {n_matched} of {len(vocabulary)} model genes were found in the input "
            f"({100 * n_matched / len(vocabulary):.1f}%); the other {len(missing)} are set to TPM 0. "
            f"The original preprocessing required at least {MIN_MATCHED_GENES}; embeddings of "
            "samples with low coverage are less reliable.",
            stacklevel=3,
        )
    return alignment


def alignment_table(alignment: GeneAlignment) -> pd.DataFrame:
    """One row per vocabulary gene: how many input columns were summed into it."""
    hits = np.asarray(alignment.matrix.sum(axis=0)).ravel().astype(int)
    return pd.DataFrame({"n_inputs": hits}, index=pd.Index(alignment.genes, name="gene_id"))
