"""``tl.embed``: BulkRNABert sample embeddings into ``obsm``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _logging as logg
from .._anndata import get_modality
from .._keys import (
    BLOCK_KEY,
    COLORS_SUFFIX,
    EMBEDDING_KEY,
    SCANPY_OBSM_KEYS,
    SCANPY_OBSM_PREFIXES,
    SCANPY_UNS_KEYS,
    is_finetune_uns_key,
    uns_key_for,
)
from .._validation import check_block_index, check_positive_int, renamed_keywords
from .._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from ..model import BulkRNABert


def check_embed_key(key_added) -> None:
    """Refuse a ``key_added`` that is not a string or names a field scanpy writes."""
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    uns_key = uns_key_for(key_added)
    if key_added in SCANPY_OBSM_KEYS or key_added.startswith(SCANPY_OBSM_PREFIXES):
        owner = f"obsm[{key_added!r}]"
    elif uns_key in SCANPY_UNS_KEYS or uns_key.endswith(COLORS_SUFFIX):
        owner = f"uns[{uns_key!r}] (where tl.embed would write its parameters)"
    elif is_finetune_uns_key(uns_key):
        raise ValueError(
            f"key_added={key_added!r} would write tl.embed's parameters into uns[{uns_key!r}], "
            "where tl.finetune keeps its records. Choose another name, e.g. the default "
            f"{EMBEDDING_KEY!r}."
        )
    else:
        return
    raise ValueError(
        f"key_added={key_added!r} is not allowed: {owner} belongs to scanpy, and writing there "
        "would replace or contradict its results. Choose another name, e.g. the default "
        f"{EMBEDDING_KEY!r} or 'X_bulkrnabert_<something>'."
    )


def warn_overwrite(fields: list[str], function: str, *, stacklevel: int | None = None) -> None:
    """Warn that ``fields`` (already in the object) are about to be replaced.

    The warning points at the user's line (``_logging.warn``); ``stacklevel`` is ignored (kept
    for existing callers).
    """
    if not fields:
        return
    logg.warn(
        f"{function} replaces the existing {' and '.join(fields)} (from an earlier run?). "
        "Pass key_added=<another name> to keep both.",
        UserWarning,
    )


# ------------------------------------------------------------------------------ argument types
def check_data(data, function: str) -> None:
    """Refuse, with what to do instead, anything but an AnnData or a MuData."""
    from anndata import AnnData

    if isinstance(data, AnnData) or isinstance(getattr(data, "mod", None), Mapping):
        return
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        raise TypeError(
            f"{function} takes an AnnData (or a MuData), got a pandas DataFrame. Wrap it first: "
            "adata = anndata.AnnData(df) with samples as rows and gene ids as columns (use "
            f"anndata.AnnData(df.T) if genes are rows), then call {function}(adata, ...)."
        )
    raise TypeError(
        f"{function} takes an AnnData (or a MuData) of samples × genes holding TPM, got "
        f"{type(data).__name__}. Build one with anndata.AnnData(X, "
        "var=pandas.DataFrame(index=gene_ids))."
    )


# ------------------------------------------------------------------------------ fingerprints
#: Config fields that change speed or memory only (``BulkRNABertConfig``), left out of the model
#: fingerprint.
_EXECUTION_FIELDS = ("attention_implementation", "attention_block_q", "attention_block_k", "remat")


def model_fingerprint(model) -> str:
    """sha256 of what determines a model's embeddings: config, genes and every parameter.

    Execution settings (attention implementation, block sizes, remat) are left out; the
    compute dtype is kept. About 20 ms for the full-size model (20 MB of parameters).
    """
    import dataclasses

    import jax
    from flax import nnx

    from ..model.params import flat_state

    digest = hashlib.sha256(b"bulkrnabert-sv model v1\n")
    config = {
        k: v for k, v in dataclasses.asdict(model.config).items() if k not in _EXECUTION_FIELDS
    }
    digest.update(json.dumps(config, sort_keys=True).encode())
    digest.update(json.dumps(None if model.genes is None else list(model.genes)).encode())
    for name, variable in sorted(flat_state(model, nnx.Param).items()):
        value = np.ascontiguousarray(jax.device_get(variable[...]))
        digest.update(f"\n{name}:{value.dtype.str}:{value.shape}\n".encode())
        digest.update(memoryview(value).cast("B"))
    return digest.hexdigest()


class HashingBatches:
    """Token batches that hash their tokens while they stream past.

    Wraps :func:`~bulkrnabert_sv.pp._tokens.token_batches`; after a complete pass,
    ``hexdigest`` is the sha256 of all tokens in row order (int32), the same for any batch size.
    Tokens are what the encoder sees: they change when the expression values, the gene alignment
    or the order of the samples change.
    """

    def __init__(self, batches):
        self.batches = batches
        self.n_obs = batches.n_obs
        self.batch_size = batches.batch_size
        self.alignment = batches.alignment
        self.hexdigest: str | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        self.hexdigest = None
        digest = None
        expected = 0
        for start, stop, tokens in self.batches:
            block = np.ascontiguousarray(tokens, dtype="<i4")
            if digest is None:
                digest = hashlib.sha256(f"bulkrnabert-sv tokens v1 {block.shape[1]}\n".encode())
            if start != expected:  # token_batches yields rows in order
                raise RuntimeError(f"Token batches out of order: {start} after {expected}.")
            digest.update(memoryview(block).cast("B"))
            expected = stop
            yield start, stop, tokens
        if expected == self.n_obs:
            self.hexdigest = (digest or hashlib.sha256(b"no samples")).hexdigest()

    def consume(self) -> str:
        """Read every batch (no embedding) and return the digest."""
        for _ in self:
            pass
        return self.hexdigest


def stale_reason(params: Mapping, model, batches: HashingBatches) -> str | None:
    """Why embeddings recorded with ``params`` are not those of ``model`` on ``batches``.

    ``None`` when the fingerprints ``tl.embed`` stored (``model_sha256``, ``tokens_sha256``)
    match; otherwise a sentence for a warning. Reads ``batches`` once (no embedding) when the
    model matches.
    """
    stored_model, stored_tokens = params.get("model_sha256"), params.get("tokens_sha256")
    if not isinstance(stored_model, str) or not isinstance(stored_tokens, str):
        return (
            "its record uns['bulkrnabert']['params'] has no fingerprint of the data and the "
            "model (it was written by an older bulkrnabert-sv or by hand), so it cannot be "
            "checked"
        )
    if stored_model != model_fingerprint(model):
        return (
            "the model's weights or configuration differ from those of the model that computed "
            "them (same source, different contents)"
        )
    if stored_tokens != batches.consume():
        where = batches.batches.where if hasattr(batches.batches, "where") else "X"
        return (
            f"the expression values in {where} (or the genes or samples) differ from those "
            "tl.embed embedded: the data changed after tl.embed"
        )
    return None


@renamed_keywords("tl.embed", embedding_layer="embedding_block")
def embed(
    data,
    model: str | os.PathLike | BulkRNABert | None = None,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    embedding_block: int = -1,
    batch_size: int = 8,
    key_added: str = EMBEDDING_KEY,
    copy: bool = False,
    progress: bool = True,
    devices: Sequence[Any] | None = None,
) -> AnnData | Any | None:
    """Embed each sample with BulkRNABert.

    The input's genes are aligned to the model vocabulary (:func:`bulkrnabert_sv.pp.align_genes`:
    Ensembl ids with or without versions, or HGNC symbols; missing model genes get TPM 0), the TPM
    values are checked (NaN, infinite or negative values raise; raw counts or log values warn),
    binned into tokens and run through the encoder one batch at a time. A sample's embedding is
    the mean over all model genes of the output of block ``embedding_block``.

    Parameters
    ----------
    data
        AnnData (in memory, sparse, backed ``.h5ad``, dask-backed or a view) or MuData, samples ×
        genes, holding TPM. Only one batch of rows is read into memory at a time.
    model
        A loaded :class:`~bulkrnabert_sv.model.BulkRNABert` or a source for
        :func:`~bulkrnabert_sv.load_model`: a Hugging Face repo id or a checkpoint folder.
        Default: ``$BULKRNABERT_SV_MODEL`` if set, else ``"InstaDeepAI/BulkRNABert"``.
    layer
        The layer of ``data`` holding TPM (default ``X``).
    gene_key
        A ``var`` column holding the gene identifiers (default ``var_names``).
    mod
        For a MuData: the modality to embed; results are written to that modality.
    embedding_block
        Transformer block whose output is averaged (1-indexed; -1 = last, the published choice).
        ``embedding_layer=`` is its deprecated name (``layer`` means an AnnData layer).
    batch_size
        Samples per forward pass. Results do not depend on it (up to float rounding, ~1e-7).
    key_added
        ``obsm`` key of the embeddings. The ``uns`` key is ``key_added`` without a leading
        ``"X_"`` (``"bulkrnabert"`` for the default). Keys of scanpy's fields are refused
        (``X_pca``, ``X_umap``, ``X_tsne``, ``X_diffmap``, ``X_draw_graph_*``,
        ``X_pca_harmony``, ``X_scanorama``, ``X_phate``, ``X_trimap``, and keys whose ``uns``
        key is ``pca``, ``umap``, ``tsne``, ``diffmap_evals``, ``draw_graph``, ``neighbors``,
        ``leiden``, ``louvain``, ``paga``, ``rank_genes_groups``, ``dendrogram``, ``hvg``,
        ``log1p``, ``iroot``, ``*_colors``), as are ``uns`` keys ending in ``"_finetune"``
        (:func:`~bulkrnabert_sv.tl.finetune`'s records). Replacing the fields of an earlier
        run warns.
    copy
        Return a modified copy instead of writing to ``data``. For backed data: not possible
        (it would load X; use ``copy=False``), except for a view of backed data, where it is
        required (the view's rows are loaded into memory for the copy, after embedding).
    progress
        Show a progress bar.
    devices
        JAX devices to split each batch over (default: this process's devices,
        ``jax.local_devices()``; ``batch_size`` is rounded up to a multiple of their number). On
        several hosts, after ``jax.distributed.initialize()``, pass ``jax.devices()`` and run the
        same call in every process on the same data: each process computes its share of every
        batch and every process gets all the embeddings. Results do not depend on the devices
        (up to float rounding).

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Fields written (to the modality for a
    MuData):

    ``obsm[key_added]``
        float32 array (n_obs, embed_dim): the sample embeddings.
    ``uns[uns_key]["params"]``
        ``model`` (source: repo id, folder or ``"in-memory model"``), ``revision`` (hub commit or
        ``""``), ``layer`` (``"X"`` or the layer name), ``gene_key``, ``embedding_block``
        (1-indexed block; records written before its rename say ``embedding_layer``),
        ``pooling`` (``"mean"`` over all model genes), ``normalization_factor``, ``n_genes``,
        ``embed_dim``, ``num_layers``, ``gene_coverage`` (fraction of model genes found),
        ``package_version``, and two fingerprints: ``model_sha256`` (the model's config, genes
        and weights) and ``tokens_sha256`` (the tokens embedded, made from the expression values
        while they were read). :func:`~bulkrnabert_sv.tl.finetune` and
        :func:`~bulkrnabert_sv.tl.predict` reuse ``obsm[key_added]`` only when both still
        match, and otherwise recompute with a warning saying why (X changed, or the model did).
    ``uns[uns_key]["genes"]``
        The gene alignment report (:meth:`~bulkrnabert_sv.pp.GeneAlignment.report`): ``id_type``,
        ``gene_key``, ``n_vocabulary``, ``n_input``, ``n_matched``, ``n_missing``,
        ``n_unmapped``, ``n_duplicated``, ``n_dropped``, ``coverage``, ``n_matched_by_*`` and,
        for symbols, ``symbol_table``.

    Nothing else in ``data`` changes; if the call fails, ``data`` is left as it was.

    Raises
    ------
    TypeError
        ``data`` is not an AnnData or MuData (a DataFrame: wrap it in ``anndata.AnnData``);
        ``model`` is a fine-tuned model (pass its ``encoder``).
    ValueError
        A bad argument, e.g. a ``key_added`` that belongs to scanpy.

    Warns
    -----
    UserWarning
        ``obsm[key_added]`` or its ``uns`` entry exists and is replaced.

    Examples
    --------
    >>> import bulkrnabert_sv as bs, scanpy as sc
    >>> bs.tl.embed(adata)  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_bulkrnabert"); sc.tl.umap(adata)  # doctest: +SKIP
    """
    from ..model import BulkRNABert, load_model
    from ..pp._tokens import token_batches
    from ..training.finetuned import FinetunedModel
    from ..training.inference import embed_tokens

    _check_arguments(batch_size=batch_size, key_added=key_added)
    check_block_index(embedding_block, "embedding_block")  # 2.0, "2", True: TypeError
    check_embed_key(key_added)
    check_data(data, "tl.embed")
    adata = get_modality(data, mod)
    _check_backed(adata, copy=copy)
    if isinstance(model, FinetunedModel):
        raise TypeError(
            "tl.embed takes an encoder (BulkRNABert) or a model source, got a fine-tuned model. "
            "Embed with its encoder: tl.embed(adata, tuned.encoder), or predict with "
            "tl.predict(adata, tuned)."
        )
    if not isinstance(model, BulkRNABert):
        model = load_model(model)
    block = model.resolve_block(embedding_block)
    start = logg.info(
        f"computing BulkRNABert embeddings of {adata.n_obs} samples (block {block} of "
        f"{model.config.num_layers}, mean over {model.config.n_genes} genes)"
    )
    batches = HashingBatches(
        token_batches(adata, model, layer=layer, gene_key=gene_key, batch_size=batch_size)
    )
    alignment = batches.alignment
    if logg.enabled(logg.DEBUG):
        logg.debug(
            f"{alignment.n_matched} of {len(alignment.genes)} model genes found in "
            f"{'var_names' if gene_key is None else f'var[{gene_key!r}]'} "
            f"({100 * alignment.coverage:.1f}%); model {model!r}"
        )
    embeddings = embed_tokens(model, batches, block=block, progress=progress, devices=devices)
    params = {
        "model": str(model.source) if model.source is not None else "in-memory model",
        "revision": str(model.revision) if model.revision is not None else "",
        "layer": "X" if layer is None else layer,
        "gene_key": "var_names" if gene_key is None else gene_key,
        BLOCK_KEY: int(block),
        "pooling": "mean",
        "normalization_factor": float(model.config.normalization_factor),
        "n_genes": int(model.config.n_genes),
        "embed_dim": int(model.config.embed_dim),
        "num_layers": int(model.config.num_layers),
        "gene_coverage": float(alignment.coverage),
        "package_version": __version__,
        "model_sha256": model_fingerprint(model),
        "tokens_sha256": batches.hexdigest,
    }
    result = {"params": params, "genes": alignment.report()}

    if copy:
        target = data.to_memory() if adata.isbacked and data is adata else data.copy()
    else:
        target = data
    written = get_modality(target, mod)
    existing = [f"obsm[{key_added!r}]"] if key_added in written.obsm else []
    if uns_key_for(key_added) in written.uns:
        existing.append(f"uns[{uns_key_for(key_added)!r}]")
    warn_overwrite(existing, "tl.embed")
    _write(written, key_added, embeddings, result)
    logg.added(
        start,
        (key_added, "embeddings", logg.where(target, mod, "obsm")),
        (uns_key_for(key_added), "parameters and gene alignment", logg.where(target, mod, "uns")),
    )
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
    check_positive_int(batch_size, "batch_size")
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
