"""Raw counts → TPM with gene lengths from a GTF (through rnanorm)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from .._anndata import get_matrix, get_modality, iter_row_batches
from ._align import _input_names, strip_ensembl_version


def counts_to_tpm(
    data,
    gtf: str | os.PathLike | None = None,
    *,
    gene_lengths: pd.Series | None = None,
    layer: str | None = None,
    key_added: str | None = "tpm",
    gene_key: str | None = None,
    mod: str = "rna",
    batch_size: int = 256,
    copy: bool = False,
):
    """Convert raw counts to TPM, using gene lengths (union of exons) from a GTF.

    ``TPM = 1e6 * (counts / length) / sum over genes (counts / length)``, computed per sample by
    :class:`rnanorm.TPM`; gene lengths are the union of each gene's exons, read from the GTF by
    :class:`rnanorm.annotation.GTF`. Genes are matched to the GTF by identifier, first exactly
    (versioned GENCODE ids), then by unversioned Ensembl id. Genes without a length are left out
    of the sums and get TPM 0, with a warning.

    Parameters
    ----------
    data
        AnnData or MuData (``mod`` picks the modality) with raw counts, samples × genes.
    gtf
        GTF (optionally gzipped) of the annotation the counts were quantified with, e.g. GENCODE.
    gene_lengths
        Instead of ``gtf``: a Series of gene lengths in bp (positive integers), indexed by gene id.
    layer
        Where the counts are (default ``X``).
    key_added
        The layer that receives the TPM values (default ``"tpm"``). ``None`` overwrites ``X``
        (only when asked: the counts are then lost unless kept in a layer).
    gene_key
        A ``var`` column with the gene ids to match (default ``var_names``).
    batch_size
        Samples converted at a time (only that many rows of the counts are densified at once).
    copy
        Return a modified copy instead of writing to ``data``.

    Returns
    -------
    ``None`` or the copy. Fields written (to the modality for a MuData):

    ``layers[key_added]`` (or ``X`` when ``key_added=None``)
        Dense float64 TPM, samples × genes; 0 for genes without a length.
    ``uns["counts_to_tpm"]``
        ``gene_lengths`` (the GTF path or ``"gene_lengths"``), ``layer``, ``key_added``,
        ``n_genes_with_length``, ``n_genes_without_length``.

    Raises
    ------
    ValueError
        Both or neither of ``gtf`` and ``gene_lengths``; no gene found in the annotation (the
        message says which ids were compared); negative, NaN or infinite counts.
    """
    from rnanorm import TPM

    if (gtf is None) == (gene_lengths is None):
        raise ValueError("Pass exactly one of gtf= (a GTF file) or gene_lengths= (a Series).")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    adata = get_modality(data, mod)
    if copy and adata.isbacked:
        raise ValueError("copy=True is not possible for backed data; use copy=False.")
    matrix = get_matrix(adata, layer)
    names = _input_names(adata, gene_key)
    if gtf is not None:
        lengths_by_id = gene_lengths_from_gtf(gtf)
        source = str(gtf)
    else:
        lengths_by_id = _validated_lengths(gene_lengths)
        source = "gene_lengths"
    lengths = match_lengths(names, lengths_by_id)
    has_length = lengths > 0
    if not has_length.any():
        raise ValueError(
            f"None of the {len(names)} genes (e.g. {', '.join(names[:3])}) is in "
            f"{'the GTF' if gtf is not None else 'gene_lengths'} (e.g. "
            f"{', '.join(map(str, lengths_by_id.index[:3]))}). Use the annotation the counts "
            "were quantified with, or pass gene_key= naming the var column with matching ids."
        )
    n_without = int((~has_length).sum())
    if n_without:
        missing = ", ".join(names[~has_length][:3])
        warnings.warn(
            f"{n_without} of {len(names)} genes (e.g. {missing}) have no length in "
            f"{'the GTF' if gtf is not None else 'gene_lengths'}; they are left out of the TPM "
            "sums and set to 0.",
            UserWarning,
            stacklevel=2,
        )
    where = "X" if layer is None else f"layers[{layer!r}]"
    tpm = np.zeros(matrix.shape, dtype=np.float64)
    transformer = TPM(gene_lengths=lengths[has_length])
    non_integer = False
    for start, stop, rows in iter_row_batches(matrix, batch_size):
        _check_counts(rows, where, start)
        non_integer |= not np.all(rows == np.round(rows))
        block = rows[:, has_length]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.asarray(transformer.fit_transform(block), dtype=np.float64)
        out[~np.isfinite(out)] = 0.0  # samples without counts on any gene with a length
        tpm[start:stop, has_length] = out
    if non_integer:
        warnings.warn(
            f"{where} has non-integer values: counts_to_tpm expects raw read counts (estimated "
            "counts from salmon/kallisto/RSEM are fine; TPM, FPKM or normalised values are not).",
            UserWarning,
            stacklevel=2,
        )
    target = data.copy() if copy else data
    target_adata = get_modality(target, mod)
    if key_added is None:
        target_adata.X = tpm
    else:
        target_adata.layers[key_added] = tpm
    target_adata.uns["counts_to_tpm"] = {
        "gene_lengths": source,
        "layer": "X" if layer is None else layer,
        "key_added": "X" if key_added is None else key_added,
        "n_genes_with_length": int(has_length.sum()),
        "n_genes_without_length": n_without,
    }
    return target if copy else None


def gene_lengths_from_gtf(gtf: str | os.PathLike) -> pd.Series:
    """Union-of-exons gene lengths (bp) from a GTF, indexed by ``gene_id``, via rnanorm."""
    from rnanorm.annotation import GTF

    if not os.path.exists(gtf):
        raise FileNotFoundError(f"GTF file {gtf} does not exist.")
    lengths = GTF(gtf).length.dropna()
    return lengths[lengths > 0].astype(np.int64)


def _validated_lengths(gene_lengths) -> pd.Series:
    if not isinstance(gene_lengths, pd.Series):
        raise TypeError("gene_lengths must be a pandas Series indexed by gene id.")
    lengths = pd.to_numeric(gene_lengths, errors="coerce").dropna()
    if (lengths <= 0).any():
        raise ValueError("gene_lengths must be positive.")
    return lengths.round().astype(np.int64)


def match_lengths(names: np.ndarray, lengths_by_id: pd.Series) -> np.ndarray:
    """Length for each name (0 if unknown): exact id first, then unversioned Ensembl id."""
    exact = lengths_by_id[~lengths_by_id.index.duplicated()].to_dict()
    unversioned: dict[str, int] = {}
    for gene_id, length in exact.items():
        key = strip_ensembl_version(str(gene_id))
        if key is not None:  # _PAR_Y copies return None and are skipped
            unversioned.setdefault(key, length)
    out = np.zeros(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        length = exact.get(name)
        if length is None:
            key = strip_ensembl_version(str(name))
            length = unversioned.get(key) if key is not None else None
        out[i] = length or 0
    return out


def _check_counts(rows: np.ndarray, where: str, first_row: int) -> None:
    from ._values import require_finite_nonnegative

    require_finite_nonnegative(
        rows,
        where=where,
        first_row=first_row,
        values="counts",
        nonfinite_fix="Fill or drop them first.",
        negative_fix="Raw counts are >= 0. Pass layer= naming the layer with the raw counts.",
    )
