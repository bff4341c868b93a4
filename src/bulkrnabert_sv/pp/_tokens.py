"""From an AnnData/MuData to token batches in model order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .._anndata import get_matrix, get_modality, iter_row_batches
from .._validation import check_positive_int
from ._align import GeneAlignment, align_genes
from ._values import TpmRowReport


@dataclass
class TokenBatches:
    """Iterable of ``(start, stop, tokens)`` over an AnnData's rows, with its gene alignment.

    ``tokens`` is an int32 array (stop - start, n_genes) in model order. Only one row batch of
    the expression matrix is densified at a time. With ``check``, every batch is checked: NaN,
    infinite or negative values raise at their batch; samples that look like counts, log values
    or not TPM, or that have no expressed model gene, are gathered over all batches and named
    in one :class:`~bulkrnabert_sv.pp.ExpressionValueWarning` once the last batch
    has been read (one per iteration).
    """

    matrix: object
    alignment: GeneAlignment
    model: object
    batch_size: int
    where: str = "X"
    check: bool = True
    #: Sample names by row (``obs_names``), for the warning; None numbers the rows.
    names: Sequence | None = None

    @property
    def n_obs(self) -> int:
        return self.matrix.shape[0]

    def __len__(self) -> int:
        return -(-self.n_obs // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        report = TpmRowReport(self.where) if self.check else None
        for start, stop, rows in iter_row_batches(self.matrix, self.batch_size):
            if report is not None:  # raises at NaN, inf, negative values: before tokenizing
                report.add(rows, first_row=start)
            tokens = self.model.tokenize(self.alignment.transform(rows))
            if report is not None:
                # All tokens 0: nothing expressed among the model's genes (TPM 0, or absent).
                report.add_unexpressed(~tokens.any(axis=1), first_row=start)
            del rows  # hold at most one batch of the input at a time
            yield start, stop, tokens
        if report is not None:  # every batch read: one warning for the whole matrix
            report.warn(self.names)

    def collect(self) -> np.ndarray:
        """All rows' tokens at once, int32 (n_obs, n_genes), read one batch at a time."""
        tokens = np.zeros((self.n_obs, self.model.config.n_genes), dtype=np.int32)
        for start, stop, block in self:
            tokens[start:stop] = block
        return tokens


def token_batches(
    data,
    model,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    batch_size: int = 8,
    alignment: GeneAlignment | None = None,
    check: bool = True,
) -> TokenBatches:
    """Align ``data`` to ``model.genes`` and return its token batches (lazily computed).

    The alignment runs (and warns) immediately; the input values are checked batch by batch.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    adata = get_modality(data, mod)
    matrix = get_matrix(adata, layer)
    if alignment is None:
        alignment = align_genes(adata, model, gene_key=gene_key)
    where = "X" if layer is None else f"layers[{layer!r}]"
    return TokenBatches(
        matrix, alignment, model, batch_size, where=where, check=check, names=adata.obs_names
    )


def all_tokens(data, model, **kwargs) -> tuple[np.ndarray, GeneAlignment]:
    """All tokens at once (n_obs, n_genes) int32, for small data sets and training."""
    batches = token_batches(data, model, **kwargs)
    return batches.collect(), batches.alignment
