"""From an AnnData/MuData to token batches in model order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..pp._align import GeneAlignment, align_genes
from .checks import check_tpm_rows
from .data import get_matrix, get_modality, iter_row_batches


@dataclass
class TokenBatches:
    """Iterable of ``(start, stop, tokens)`` over an AnnData's rows, with its gene alignment.

    ``tokens`` is an int32 array (stop - start, n_genes) in model order. Only one row batch of
    the expression matrix is densified at a time.
    """

    matrix: object
    alignment: GeneAlignment
    model: object
    batch_size: int
    where: str = "X"
    check: bool = True

    @property
    def n_obs(self) -> int:
        return self.matrix.shape[0]

    def __len__(self) -> int:
        return -(-self.n_obs // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for start, stop, rows in iter_row_batches(self.matrix, self.batch_size):
            if self.check:
                check_tpm_rows(rows, where=self.where, first_row=start, warn=start == 0)
            tokens = self.model.tokenize(self.alignment.transform(rows))
            del rows  # hold at most one batch of the input at a time
            yield start, stop, tokens


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
    adata = get_modality(data, mod)
    matrix = get_matrix(adata, layer)
    if alignment is None:
        alignment = align_genes(adata, model, gene_key=gene_key)
    where = "X" if layer is None else f"layers[{layer!r}]"
    return TokenBatches(matrix, alignment, model, batch_size, where=where, check=check)


def all_tokens(data, model, **kwargs) -> tuple[np.ndarray, GeneAlignment]:
    """All tokens at once (n_obs, n_genes) int32, for small data sets and training."""
    batches = token_batches(data, model, **kwargs)
    tokens = np.zeros((batches.n_obs, model.config.n_genes), dtype=np.int32)
    for start, stop, block in batches:
        tokens[start:stop] = block
    return tokens, batches.alignment
