"""``tl.gene_attention``: per sample and gene, the attention the gene receives, streamed."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .. import _logging as logg
from .._anndata import get_modality
from .._keys import ATTENTION_KEY
from .._validation import check_block_index, check_positive_int
from .._version import __version__
from ._embed import check_data
from ._interpret import (
    check_batch_size,
    check_key,
    copy_target,
    group_labels,
    group_means,
    load_encoder,
    log_added,
    model_positions,
    model_record,
    to_input_genes,
    top_genes,
    write_fields,
)

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from ..model import BulkRNABert

HEADS = ("mean", "keep")


@functools.cache
def _received_function():
    """The compiled summary, built on first use (jax is imported lazily)."""
    import jax
    from flax import nnx

    from ..model.modeling import attention_received_by_layer

    @functools.partial(jax.jit, static_argnames=("graphdef", "layers", "block_q", "block_k"))
    def received(graphdef, state, tokens, *, layers, block_q, block_k):
        model = nnx.merge(graphdef, state)
        return attention_received_by_layer(model, tokens, layers, block_q=block_q, block_k=block_k)

    return received


def resolve_blocks(model, layers) -> tuple[int, ...]:
    """1-indexed blocks (negative counts from the last), without repeats, in the given order."""
    n = model.config.num_layers
    if layers is None:
        return tuple(range(1, n + 1))
    if isinstance(layers, int | np.integer) and not isinstance(layers, bool):
        layers = [layers]
    resolved: list[int] = []
    for k in layers:
        k = model.resolve_block(check_block_index(k, "layers"))
        if k not in resolved:
            resolved.append(k)
    if not resolved:
        raise ValueError("layers is empty: pass block numbers (1-indexed), or None for all.")
    return tuple(resolved)


def gene_attention(
    data,
    model: str | os.PathLike | BulkRNABert | None = None,
    *,
    layers: int | Sequence[int] | None = None,
    heads: Literal["mean", "keep"] = "mean",
    groupby: str | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    batch_size: int = 1,
    block_size: int | None = None,
    n_top: int = 50,
    key_added: str = ATTENTION_KEY,
    copy: bool = False,
    progress: bool = True,
) -> AnnData | Any | None:
    """The attention each gene receives, per sample, from all genes of the sample.

    For block ``l`` and head ``h`` of the encoder, with softmax weights ``p_ij`` (query gene
    ``i`` attending to key gene ``j``), gene ``j`` receives ``r_j = mean_i p_ij``: the column
    mean of the attention map. It is computed in a streamed pass (each query's log-sum-exp,
    then ``exp(q_i . k_j / sqrt(d) - lse_i)`` summed over query blocks), so no
    (n_genes × n_genes) map is held: at full size (19,062 genes) one sample needs well under
    2 GB (see ``docs/interpretation.md``).

    Parameters
    ----------
    data
        AnnData (or MuData, modality ``mod``), samples × genes, holding TPM (as for
        :func:`~bulkrnabert_sv.tl.embed`).
    model
        An encoder (:class:`~bulkrnabert_sv.model.BulkRNABert`) or a source for
        :func:`~bulkrnabert_sv.load_model`; for a fine-tuned model pass ``tuned.encoder``.
    layers
        Transformer blocks to summarise (1-indexed; negative counts from the last), default all.
        Each block costs about two ``q k^T`` products per sample on top of the forward pass.
    heads
        ``"mean"``: heads averaged; ``"keep"``: also write every head (see Returns).
    groupby
        ``obs`` column of groups (e.g. cohorts) for the cohort-level summary, next to ``"all"``.
    layer, gene_key, mod
        Where the TPM values (``layers[layer]``, default ``X``), the gene ids (``var[gene_key]``,
        default ``var_names``) and the MuData modality are.
    batch_size
        Samples per forward pass (1 at full size: memory grows with it). Results do not depend
        on it beyond float rounding.
    block_size
        Query and key tile of the streamed pass (default 256 on CPU, 2048 on accelerators).
    n_top
        Genes listed per group in ``uns[key_added]["top_genes"]``.
    key_added
        Key of the fields written (see Returns).
    copy
        Write into a copy of ``data`` and return it.
    progress
        Show a progress bar (samples).

    Returns
    -------
    ``None``, or the annotated copy with ``copy=True``. Written (``key`` = ``key_added``):

    ``layers[key]``
        float32 (n_obs, n_vars): ``r_j`` averaged over the requested blocks and the heads,
        aligned to the input's genes. Over the model's genes a sample's values sum to one, so
        ``1 / n_genes`` (``uns[key]["params"]["uniform"]``) is the share of a gene attended as
        much as any other. NaN for input genes that are not model genes; input genes mapped
        onto the same model gene (duplicates) share its value.
    ``obsm[f"{key}_by_layer"]``
        float32 (n_obs, n_blocks, n_vars), heads averaged, blocks in ``params["layers"]`` order;
        only when several blocks are requested.
    ``obsm[f"{key}_by_head"]``
        float32 (n_obs, n_blocks, n_heads, n_vars); only with ``heads="keep"``.
    ``varm[key]``
        DataFrame (n_vars × groups): the mean over samples of ``layers[key]``, column ``"all"``
        and one column per group of ``groupby``.
    ``uns[key]``
        ``params`` (model, revision, ``model_sha256``, ``layers`` (1-indexed), ``heads``,
        ``groupby``, ``n_genes``, ``uniform``, ``gene_coverage``, ``package_version``) and
        ``top_genes`` (DataFrame: per column of ``varm[key]``, the ``n_top`` input genes
        receiving the most attention, highest first).

    What the numbers mean, and what they do not: a gene that receives much attention is one
    whose key many queries match, i.e. whose value vector is mixed into many genes'
    representations in that block. It is not an effect on a prediction (see
    :func:`~bulkrnabert_sv.tl.attribute`), nor a measure of biological importance, and it can
    be high for genes with no expression (token 0): attention depends on the gene identity
    embedding as well as on the expression bin.

    Raises
    ------
    TypeError
        ``data`` is not an AnnData or MuData; ``model`` is a fine-tuned model.
    ValueError
        An unknown ``heads``, a block out of range, a bad ``batch_size``.
    KeyError
        ``groupby`` is not an ``obs`` column.
    """
    from ..pp._tokens import token_batches

    check_data(data, "tl.gene_attention")
    key_added = check_key(key_added, "tl.gene_attention")
    batch_size = check_batch_size(batch_size)
    if heads not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, got {heads!r}.")
    if block_size is not None:
        block_size = check_positive_int(block_size, "block_size")
    adata = get_modality(data, mod)
    labels = group_labels(adata, groupby)
    model = load_encoder(model, "tl.gene_attention")
    blocks = resolve_blocks(model, layers)
    cfg = model.config
    start = logg.info(
        f"computing the attention received per gene of {adata.n_obs} samples (blocks "
        f"{', '.join(map(str, blocks))} of {cfg.num_layers}, {cfg.num_attention_heads} heads, "
        f"{cfg.n_genes} genes, streamed)"
    )
    batches = token_batches(adata, model, layer=layer, gene_key=gene_key, batch_size=batch_size)
    positions = model_positions(batches.alignment, adata.n_vars)
    received = _received_all(
        model, batches, blocks, block_size=block_size, heads=heads, progress=progress
    )
    # received: (n_obs, n_blocks, n_heads, n_genes) or (n_obs, n_blocks, n_genes) heads averaged
    by_layer = received.mean(axis=2) if heads == "keep" else received
    summary = by_layer.mean(axis=1)
    values = to_input_genes(summary, positions)
    means = group_means(values, labels, adata.var_names)
    params = {
        **model_record(model),
        "layers": list(blocks),
        "heads": heads,
        "groupby": groupby if groupby is not None else "",
        "uniform": 1.0 / cfg.n_genes,
        "gene_coverage": float(batches.alignment.coverage),
        "layer": "X" if layer is None else layer,
        "gene_key": "var_names" if gene_key is None else gene_key,
        "package_version": __version__,
    }
    fields: dict = {("layers", key_added): values, ("varm", key_added): means}
    described = [
        (key_added, "attention received per gene, blocks and heads averaged", "layers"),
    ]
    if len(blocks) > 1:
        fields["obsm", f"{key_added}_by_layer"] = to_input_genes(by_layer, positions)
        described.append((f"{key_added}_by_layer", "attention received per block", "obsm"))
    if heads == "keep":
        fields["obsm", f"{key_added}_by_head"] = to_input_genes(received, positions)
        described.append((f"{key_added}_by_head", "attention received per block and head", "obsm"))
    fields["uns", key_added] = {"params": params, "top_genes": top_genes(means, n_top)}
    described += [
        (key_added, "mean attention received per gene, all samples and per group", "varm"),
        (key_added, "parameters and top genes", "uns"),
    ]
    target = copy_target(data, adata, copy)
    write_fields(target, mod, fields, "tl.gene_attention")
    log_added(start, target, mod, described)
    return target if copy else None


def _received_all(model, batches, blocks, *, block_size, heads, progress) -> np.ndarray:
    """(n_obs, n_blocks, n_heads, n_genes) with ``heads="keep"``, else heads averaged
    (n_obs, n_blocks, n_genes); float32, model order."""
    import jax
    from flax import nnx

    received = _received_function()
    graphdef, state = nnx.split(model)
    n_obs, n_genes = batches.n_obs, model.config.n_genes
    size = min(batches.batch_size, max(n_obs, 1))
    shape = (n_obs, len(blocks)) + ((model.config.num_attention_heads,) if heads == "keep" else ())
    out = np.zeros((*shape, n_genes), dtype=np.float32)
    with logg.progress_bar(
        total=n_obs, progress=progress, desc="attention received", unit="sample"
    ) as bar:
        for start, stop, tokens in batches:
            n = stop - start
            tokens = np.asarray(tokens, dtype=np.int32)
            if n < size:  # one compiled shape: pad with unexpressed rows, sliced away
                tokens = np.concatenate([tokens, np.zeros((size - n, n_genes), np.int32)])
            values = received(
                graphdef,
                state,
                jax.device_put(tokens),
                layers=tuple(blocks),
                block_q=block_size,
                block_k=block_size,
            )
            values = np.asarray(values[:n], dtype=np.float32)
            out[start:stop] = values if heads == "keep" else values.mean(axis=2)
            bar.update(n)
    return out
