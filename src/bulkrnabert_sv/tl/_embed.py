"""``tl.embed``: BulkRNABert sample embeddings into ``obsm``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .._core.data import get_modality
from .._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from ..model import BulkRNABert

DEFAULT_KEY = "X_bulkrnabert"


def uns_key_for(key_added: str) -> str:
    """The ``uns`` key for an ``obsm`` key: ``"X_bulkrnabert"`` → ``"bulkrnabert"``."""
    return key_added[2:] if key_added.startswith("X_") and len(key_added) > 2 else key_added


def embed(
    data,
    model: str | os.PathLike | BulkRNABert | None = None,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    embedding_layer: int = -1,
    batch_size: int = 8,
    key_added: str = DEFAULT_KEY,
    copy: bool = False,
    progress: bool = True,
) -> AnnData | Any | None:
    """Embed each sample with BulkRNABert.

    The input's genes are aligned to the model vocabulary (:func:`bulkrnabert_sv.pp.align_genes`:
    Ensembl ids with or without versions, or HGNC symbols; missing model genes get TPM 0), the TPM
    values are checked (NaN, infinite or negative values raise; raw counts or log values warn),
    binned into tokens and run through the encoder one batch at a time. A sample's embedding is
    the mean over all model genes of the output of block ``embedding_layer``.

    Parameters
    ----------
    data
        AnnData (in memory, sparse, backed ``.h5ad``, dask-backed or a view) or MuData, samples ×
        genes, holding TPM. Only one batch of rows is read into memory at a time.
    model
        A loaded :class:`~bulkrnabert_sv.model.BulkRNABert` or a source for
        :func:`~bulkrnabert_sv.load_model`: a Hugging Face repo id or a checkpoint folder.
        Default: ``$BULKRNABERT_MODEL`` if set, else ``"InstaDeepAI/BulkRNABert"``.
    layer
        The layer of ``data`` holding TPM (default ``X``).
    gene_key
        A ``var`` column holding the gene identifiers (default ``var_names``).
    mod
        For a MuData: the modality to embed; results are written to that modality.
    embedding_layer
        Transformer block whose output is averaged (1-indexed; -1 = last, the published choice).
    batch_size
        Samples per forward pass. Results do not depend on it (up to float rounding, ~1e-7).
    key_added
        ``obsm`` key of the embeddings. The ``uns`` key is ``key_added`` without a leading
        ``"X_"`` (``"bulkrnabert"`` for the default).
    copy
        Return a modified copy instead of writing to ``data``. For backed data: not possible
        (it would load X; use ``copy=False``), except for a view of backed data, where it is
        required (the view's rows are loaded into memory for the copy, after embedding).
    progress
        Show a progress bar.

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Fields written (to the modality for a
    MuData):

    ``obsm[key_added]``
        float32 array (n_obs, embed_dim): the sample embeddings.
    ``uns[uns_key]["params"]``
        ``model`` (source: repo id, folder or ``"in-memory model"``), ``revision`` (hub commit or
        ``""``), ``layer`` (``"X"`` or the layer name), ``gene_key``, ``embedding_layer``
        (1-indexed block), ``pooling`` (``"mean"`` over all model genes),
        ``normalization_factor``, ``n_genes``, ``embed_dim``, ``num_layers``,
        ``gene_coverage`` (fraction of model genes found) and ``package_version``.
    ``uns[uns_key]["genes"]``
        The gene alignment report (:meth:`~bulkrnabert_sv.pp.GeneAlignment.report`): ``id_type``,
        ``gene_key``, ``n_vocabulary``, ``n_input``, ``n_matched``, ``n_missing``,
        ``n_unmapped``, ``n_duplicated``, ``n_dropped``, ``coverage``, ``n_matched_by_*`` and,
        for symbols, ``symbol_table``.

    Nothing else in ``data`` changes; if the call fails, ``data`` is left as it was.

    Examples
    --------
    >>> import bulkrnabert_sv as bs, scanpy as sc
    >>> bs.tl.embed(adata)  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_bulkrnabert"); sc.tl.umap(adata)  # doctest: +SKIP
    """
    from .._core.inference import embed_tokens
    from .._core.tokens import token_batches
    from ..model import BulkRNABert, load_model

    _check_arguments(batch_size=batch_size, key_added=key_added)
    adata = get_modality(data, mod)
    _check_backed(adata, copy=copy)
    if not isinstance(model, BulkRNABert):
        model = load_model(model)
    resolved_layer = model._resolve_layer(embedding_layer)
    batches = token_batches(adata, model, layer=layer, gene_key=gene_key, batch_size=batch_size)
    embeddings = embed_tokens(model, batches, layer=resolved_layer, progress=progress)
    alignment = batches.alignment
    params = {
        "model": str(model.source) if model.source is not None else "in-memory model",
        "revision": str(model.revision) if model.revision is not None else "",
        "layer": "X" if layer is None else layer,
        "gene_key": "var_names" if gene_key is None else gene_key,
        "embedding_layer": int(resolved_layer),
        "pooling": "mean",
        "normalization_factor": float(model.config.normalization_factor),
        "n_genes": int(model.config.n_genes),
        "embed_dim": int(model.config.embed_dim),
        "num_layers": int(model.config.num_layers),
        "gene_coverage": float(alignment.coverage),
        "package_version": __version__,
    }
    result = {"params": params, "genes": alignment.report()}

    if copy:
        target = data.to_memory() if adata.isbacked and data is adata else data.copy()
    else:
        target = data
    _write(get_modality(target, mod), key_added, embeddings, result)
    return target if copy else None


def _check_backed(adata, *, copy: bool) -> None:
    """Refuse, before any work, what anndata cannot do with backed data."""
    if not adata.isbacked:
        return
    if copy and not adata.is_view:
        raise ValueError(
            "copy=True is not possible for backed data (it would load X into memory). Use "
            "copy=False: the embeddings are added to the object in memory; save them with "
            "adata.write_h5ad(...) or read the file fully with anndata.read_h5ad(path)."
        )
    if not copy and adata.is_view:
        raise ValueError(
            "Cannot write into a view of backed data (anndata cannot turn it into an actual "
            "object). Pass copy=True to get the subset in memory with the embeddings, or embed "
            "the whole backed object."
        )


def _check_arguments(*, batch_size: int, key_added: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"batch_size must be an integer, got {batch_size!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")


def _write(adata, key_added: str, embeddings: np.ndarray, result: dict) -> None:
    """Write both fields, or neither."""
    uns_key = uns_key_for(key_added)
    sentinel = object()
    old_obsm = adata.obsm[key_added] if key_added in adata.obsm else sentinel
    try:
        adata.obsm[key_added] = embeddings
        adata.uns[uns_key] = result
    except BaseException:
        if old_obsm is sentinel:
            adata.obsm.pop(key_added, None)
        else:
            adata.obsm[key_added] = old_obsm
        raise
