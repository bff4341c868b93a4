"""Access to AnnData/MuData matrices one row batch at a time (dense, sparse, backed, dask)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
from anndata import AnnData


def get_modality(data, mod: str = "rna") -> AnnData:
    """The AnnData to work on: ``data`` itself, or ``data.mod[mod]`` for a MuData."""
    if isinstance(data, AnnData):
        return data
    mods = getattr(data, "mod", None)
    if mods is None:
        raise TypeError(f"Expected an AnnData or MuData, got {type(data).__name__}.")
    if mod not in mods:
        raise KeyError(
            f"MuData has no modality {mod!r}; available: {sorted(mods)}. Pass mod=<name>."
        )
    return mods[mod]


def get_matrix(adata: AnnData, layer: str | None = None):
    """``adata.X`` or ``adata.layers[layer]`` (not densified, not read into memory when backed)."""
    if layer is None:
        if adata.isbacked and adata.is_view:
            # A view's .X would read all of its rows at once; read them batch by batch instead.
            return BackedViewRows(adata)
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer that holds TPM.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"adata.layers has no {layer!r}; available: "
            f"{sorted(str(k) for k in adata.layers.keys() if k is not None)}. "
            "Pass layer=None to use X."
        )
    return adata.layers[layer]


class BackedViewRows:
    """Row access to the X of a view of a backed AnnData, reading only the rows asked for."""

    def __init__(self, adata: AnnData):
        self.adata = adata
        self.shape = adata.shape

    def __getitem__(self, rows: slice):
        return self.adata[rows].X


def dense_rows(matrix, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a dense float64 array (a copy; the input is never modified).

    Works for numpy arrays, scipy sparse matrices/arrays, backed h5py datasets and anndata
    backed sparse datasets, and dask arrays; only these rows are read into memory.
    """
    block = matrix[start:stop]
    if hasattr(block, "compute"):  # dask
        block = block.compute()
    if sp.issparse(block):
        block = block.toarray()
    elif hasattr(block, "to_memory"):  # anndata backed sparse
        block = block.to_memory().toarray()
    return np.array(block, dtype=np.float64, copy=True)


def iter_row_batches(matrix, batch_size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, dense float64 rows)`` for consecutive row batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = matrix.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield start, stop, dense_rows(matrix, start, stop)
