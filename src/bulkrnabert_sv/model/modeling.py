"""The BulkRNABert encoder and its LM head as Flax NNX modules.

Forward pass (Gélard et al., ML4H 2024; docs/model_card.md)::

    x = ExprEmbed[tokens] + Linear(GeneEmbed[arange(n_genes)])
    for each block:  h = x + Wo·MHA(LN1(x));  x = h + fc2(gelu(fc1(LN2(h))))
    logits = Linear(x)

Hooks for training live on the modules from the start, inert until switched on:
IA3 rescaling vectors (:meth:`BulkRNABert.enable_ia3`), a learned mask embedding for masked
expression modelling (:meth:`BulkRNABert.enable_mask_embedding`) and per-block remat
(``model.execution.remat``, set with :meth:`BulkRNABert.set_execution`). Parameters are plain :class:`flax.nnx.Param`; IA3 vectors are :class:`IA3Param`
and the mask embedding a :class:`MaskEmbeddingParam`, so optimisers can select them by type.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .attention import (
    attention_received,
    attention_weights,
    dot_product_attention,
    remat_policy,
)
from .config import BulkRNABertConfig, ExecutionConfig
from .files import save_model
from .tokenizer import tokenize as _tokenize


class IA3Param(nnx.Param):
    """A learned IA3 rescaling vector (Liu et al. 2022), initialised to ones."""


class MaskEmbeddingParam(nnx.Param):
    """The learned embedding that replaces the expression embedding at masked positions."""


def _dtype(name: str):
    return jnp.dtype(name)


def _layer_norm(features: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance (mean of squared deviations), computed in float32, as upstream.
    return nnx.LayerNorm(
        features, epsilon=eps, use_fast_variance=False, dtype=jnp.float32, rngs=rngs
    )


def _scaled(x: jax.Array, vector: nnx.Variable | None) -> jax.Array:
    return x if vector is None else x * vector[...].astype(x.dtype)


class MultiHeadAttention(nnx.Module):
    """Self-attention with separate biased q/k/v/output projections (head-major split)."""

    def __init__(self, config: BulkRNABertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.execution = config.execution
        width = config.num_attention_heads * config.key_size
        linear = partial(
            nnx.Linear, dtype=_dtype(config.compute_dtype), param_dtype=jnp.float32, rngs=rngs
        )
        self.query = linear(config.embed_dim, width)
        self.key = linear(config.embed_dim, width)
        self.value = linear(config.embed_dim, width)
        self.output = linear(width, config.embed_dim)
        self.ia3_key = nnx.data(None)
        self.ia3_value = nnx.data(None)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.config.num_attention_heads, self.config.key_size)

    def __call__(self, x: jax.Array, *, return_weights: bool = False):
        q = self._heads(self.query(x))
        k = self._heads(_scaled(self.key(x), self.ia3_key))
        v = self._heads(_scaled(self.value(x), self.ia3_value))
        if return_weights:
            weights = attention_weights(q, k)
            attended = jnp.einsum(
                "bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32
            ).astype(v.dtype)
        else:
            weights = None
            attended = dot_product_attention(
                q,
                k,
                v,
                implementation=self.execution.attention_implementation,
                block_q=self.execution.attention_block_q,
                block_k=self.execution.attention_block_k,
            )
        out = self.output(attended.reshape(*attended.shape[:-2], -1))
        return out, weights


class TransformerBlock(nnx.Module):
    """Pre-LayerNorm block: attention then a GELU feed-forward, each with a residual."""

    def __init__(self, config: BulkRNABertConfig, *, rngs: nnx.Rngs):
        self.config = config
        linear = partial(
            nnx.Linear, dtype=_dtype(config.compute_dtype), param_dtype=jnp.float32, rngs=rngs
        )
        self.attention_norm = _layer_norm(config.embed_dim, config.layer_norm_eps, rngs)
        self.attention = MultiHeadAttention(config, rngs=rngs)
        self.mlp_norm = _layer_norm(config.embed_dim, config.layer_norm_eps, rngs)
        self.fc1 = linear(config.embed_dim, config.ffn_embed_dim)
        self.fc2 = linear(config.ffn_embed_dim, config.embed_dim)
        self.ia3_ffn = nnx.data(None)

    def linears(self) -> tuple[nnx.Linear, ...]:
        """The block's projections, which compute in the execution's ``compute_dtype``."""
        attention = self.attention
        return (
            attention.query,
            attention.key,
            attention.value,
            attention.output,
            self.fc1,
            self.fc2,
        )

    def __call__(self, x: jax.Array, *, return_weights: bool = False):
        attended, weights = self.attention(self.attention_norm(x), return_weights=return_weights)
        x = x + attended.astype(x.dtype)
        hidden = jax.nn.gelu(self.fc1(self.mlp_norm(x)), approximate=False)
        x = x + self.fc2(_scaled(hidden, self.ia3_ffn)).astype(x.dtype)
        return x, weights


def _block_forward(block: TransformerBlock, x: jax.Array) -> jax.Array:
    return block(x)[0]


#: Rematerialised block: keeps the blockwise attention's output (see attention.remat_policy).
_remat_block_forward = nnx.remat(_block_forward, policy=remat_policy())


class BulkRNABert(nnx.Module):
    """BulkRNABert: an encoder over binned expression of a fixed gene vocabulary.

    Parameters
    ----------
    config
        Architecture and tokenizer, and the execution settings the model starts with.
    rngs
        Random streams for parameter initialisation.
    genes
        The vocabulary in model order (``config.n_genes`` unversioned Ensembl ids), if known.
    """

    def __init__(
        self, config: BulkRNABertConfig, *, rngs: nnx.Rngs, genes: Sequence[str] | None = None
    ):
        self.config = config
        #: How the model runs (:class:`ExecutionConfig`); change it with :meth:`set_execution`.
        self.execution = config.execution
        if genes is not None:
            genes = tuple(str(g) for g in genes)
            if len(genes) != config.n_genes:
                raise ValueError(
                    f"The gene list has {len(genes)} genes but the config says n_genes="
                    f"{config.n_genes}; pass the vocabulary the checkpoint was trained on."
                )
        self.genes = genes
        self.source: str | None = None
        self.revision: str | None = None
        init = nnx.initializers.normal(stddev=1.0)
        self.expression_embedding = nnx.Embed(
            config.n_expressions_bins, config.embed_dim, embedding_init=init, rngs=rngs
        )
        if config.use_gene_embedding:
            self.gene_embedding = nnx.Embed(
                config.n_genes, config.init_gene_embed_dim, embedding_init=init, rngs=rngs
            )
            self.gene_projection = (
                nnx.Linear(config.init_gene_embed_dim, config.embed_dim, rngs=rngs)
                if config.project_gene_embedding
                else nnx.data(None)
            )
        else:
            self.gene_embedding = nnx.data(None)
            self.gene_projection = nnx.data(None)
        self.layers = nnx.List(
            [TransformerBlock(config, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.lm_head = nnx.Linear(config.embed_dim, config.n_expressions_bins, rngs=rngs)
        self.mask_embedding = nnx.data(None)

    # ------------------------------------------------------------------------------ execution
    def set_execution(self, execution: ExecutionConfig | None = None, **changes) -> BulkRNABert:
        """Change how the model runs, in place; returns the model.

        The one way to change execution settings of a built model: the attention
        implementation and block sizes, the compute dtype of the blocks' projections and
        remat. The parameters and the function computed (up to rounding) do not change, nor
        does the model's fingerprint (``tl.embed``'s ``model_sha256``) except for the compute
        dtype. ``model.config`` follows (its execution fields are the model's current ones, as
        saved by :meth:`save`).

        Parameters
        ----------
        execution
            The new settings (default: the current ones).
        **changes
            Fields of :class:`ExecutionConfig` to change, e.g. ``remat=True``.
        """
        execution = (self.execution if execution is None else execution).replace(**changes)
        config = self.config.with_execution(execution)
        dtype = jnp.dtype(execution.compute_dtype)
        self.execution, self.config = execution, config
        for block in self.layers:
            block.config = block.attention.config = config
            block.attention.execution = execution
            for linear in block.linears():
                linear.dtype = dtype
        return self

    def with_execution(self, execution: ExecutionConfig | None = None, **changes) -> BulkRNABert:
        """A model with other execution settings on the same parameter arrays (no copy).

        As :meth:`set_execution`, on a new model object; this one is left as it is. The two
        share the arrays, not the variables: assigning new values into one model's variables
        (training in place) does not change the other.
        """
        graphdef, state = nnx.split(self)
        return nnx.merge(graphdef, state).set_execution(execution, **changes)

    # ------------------------------------------------------------------------------ tokenizer
    def tokenize(self, tpm) -> np.ndarray:
        """Bin TPM values into token ids with this model's normalization factor and bins.

        See :func:`bulkrnabert_sv.model.tokenize`; the input array is never modified.
        """
        return _tokenize(
            tpm,
            normalization_factor=self.config.normalization_factor,
            n_bins=self.config.n_expressions_bins,
        )

    # ------------------------------------------------------------------------------ training hooks
    def enable_ia3(self) -> BulkRNABert:
        """Add IA3 vectors (ones) rescaling keys, values and the FFN activation in every block.

        Returns the model. With all vectors at one the model computes exactly what it did before.
        Existing vectors are kept.
        """
        cfg = self.config
        width = cfg.num_attention_heads * cfg.key_size
        for block in self.layers:
            if block.attention.ia3_key is None:
                block.attention.ia3_key = IA3Param(jnp.ones((width,), jnp.float32))
                block.attention.ia3_value = IA3Param(jnp.ones((width,), jnp.float32))
                block.ia3_ffn = IA3Param(jnp.ones((cfg.ffn_embed_dim,), jnp.float32))
        return self

    @property
    def has_ia3(self) -> bool:
        return any(block.ia3_ffn is not None for block in self.layers)

    def enable_mask_embedding(self, rngs: nnx.Rngs | None = None) -> BulkRNABert:
        """Add a learned mask embedding (used where ``mask`` is True in :meth:`__call__`)."""
        if self.mask_embedding is None:
            rngs = rngs or nnx.Rngs(0)
            self.mask_embedding = MaskEmbeddingParam(
                jax.random.normal(rngs.params(), (self.config.embed_dim,), jnp.float32) * 0.02
            )
        return self

    # ------------------------------------------------------------------------------ forward
    def _embed_inputs(self, tokens: jax.Array, mask: jax.Array | None) -> jax.Array:
        # Token ids >= n_bins (TPM above the top bin) use the last row, as upstream's lookup does.
        x = jnp.take(self.expression_embedding.embedding[...], tokens, axis=0, mode="clip")
        if mask is not None:
            if self.mask_embedding is None:
                raise ValueError(
                    "mask= needs a mask embedding: call model.enable_mask_embedding()."
                )
            x = jnp.where(mask[..., None], self.mask_embedding[...], x)
        if self.gene_embedding is not None:
            genes = self.gene_embedding.embedding[...]
            if self.gene_projection is not None:
                genes = self.gene_projection(genes)
            x = x + genes[None]
        return x

    def __call__(
        self,
        tokens: jax.Array,
        *,
        embedding_layers: Sequence[int] = (),
        attention_layers: Sequence[int] = (),
        mask: jax.Array | None = None,
        compute_logits: bool = True,
        num_layers: int | None = None,
    ) -> dict[str, jax.Array]:
        """Run the encoder.

        Parameters
        ----------
        tokens
            Integer token ids, shape (batch, n_genes).
        embedding_layers, attention_layers
            1-indexed blocks whose residual stream (``embeddings_{k}``) or attention
            probabilities (``attention_map_layer_{k}``, shape (B, H, L, L)) are returned.
        mask
            Boolean (batch, n_genes): positions whose expression is replaced by the mask embedding.
        compute_logits
            Return the LM head's ``logits`` (batch, n_genes, n_bins).
        num_layers
            Stop after this many blocks (default: all); ``logits`` then need all blocks.

        Returns
        -------
        dict with ``logits`` and the requested ``embeddings_{k}`` / ``attention_map_layer_{k}``.
        """
        cfg = self.config
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != cfg.n_genes:
            raise ValueError(
                f"tokens must have shape (batch, {cfg.n_genes}), got {tuple(tokens.shape)}"
            )
        requested = set(embedding_layers) | set(attention_layers)
        for k in sorted(requested):
            if not 1 <= k <= cfg.num_layers:
                raise ValueError(f"layer {k} is out of range: layers are 1..{cfg.num_layers}")
        depth = cfg.num_layers if num_layers is None else num_layers
        if compute_logits and depth != cfg.num_layers:
            raise ValueError("logits need all layers: pass compute_logits=False with num_layers")
        x = self._embed_inputs(tokens, mask)
        outputs: dict[str, jax.Array] = {}
        for index, block in enumerate(self.layers[:depth], start=1):
            if index in attention_layers:
                x, weights = block(x, return_weights=True)
                outputs[f"attention_map_layer_{index}"] = weights
            elif self.execution.remat:
                x = _remat_block_forward(block, x)
            else:
                x = _block_forward(block, x)
            if index in embedding_layers:
                outputs[f"embeddings_{index}"] = x
        if compute_logits:
            outputs["logits"] = self.lm_head(x)
        outputs["last_hidden_state"] = x
        return outputs

    def mean_embedding(
        self, tokens: jax.Array, *, block: int = -1, layer: int | None = None
    ) -> jax.Array:
        """Sample embeddings: the mean over genes of the output of a transformer block.

        Parameters
        ----------
        tokens
            int32 tokens (batch, n_genes).
        block
            The block (1-indexed; -1 = the last).
        layer
            Deprecated name of ``block`` (``layer`` means an AnnData layer in this package).

        Returns
        -------
        float32 (batch, embed_dim).
        """
        if layer is not None:
            warnings.warn(
                "mean_embedding(layer=...) is deprecated; pass block=... (the transformer block; "
                "layer means an AnnData layer in bulkrnabert-sv).",
                DeprecationWarning,
                stacklevel=2,
            )
            block = layer
        block = self.resolve_block(block)
        out = self(tokens, compute_logits=False, num_layers=block)
        return out["last_hidden_state"].astype(jnp.float32).mean(axis=1)

    def resolve_block(self, block: int) -> int:
        """The 1-indexed block that ``block`` names (``-1`` = the last).

        Raises
        ------
        ValueError
            ``block`` is outside ``1..num_layers`` and ``-num_layers..-1``.
        """
        n = self.config.num_layers
        resolved = n + 1 + block if block < 0 else block
        if not 1 <= resolved <= n:
            raise ValueError(
                f"block {block} is out of range for a {n}-layer model (use 1..{n} or -{n}..-1)"
            )
        return resolved

    # ------------------------------------------------------------------------------ bookkeeping
    def num_parameters(self, filter=nnx.Param) -> int:
        """Number of scalar parameters selected by ``filter`` (IA3 and mask vectors excluded)."""
        state = nnx.state(self, nnx.All(filter, nnx.Not(IA3Param), nnx.Not(MaskEmbeddingParam)))
        return int(sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(state)))

    def __repr__(self) -> str:
        """One line: layers, width, genes, parameters, extras and source.

        E.g. ``BulkRNABert(4 layers, width 256, 19062 genes, 4.8M parameters,
        source='InstaDeepAI/BulkRNABert')``; Flax's full tree (every gene id and array) is
        ``nnx.display(model)`` or ``nnx.state(model)``.
        """
        cfg = self.config
        try:
            n = self.num_parameters()
        except Exception:  # a model being built or merged: fall back to the config's count
            n = cfg.num_parameters
        size = next(
            (
                f"{n / d:.1f}".rstrip("0").rstrip(".") + s
                for d, s in ((1e9, "G"), (1e6, "M"), (1e3, "k"))
                if n >= d
            ),
            str(n),
        )
        parts = [
            f"{cfg.num_layers} layers",
            f"width {cfg.embed_dim}",
            f"{cfg.n_genes} genes" + ("" if self.genes is not None else " (no gene list)"),
            f"{size} parameters",
        ]
        if self.has_ia3:
            parts.append("IA3")
        if self.mask_embedding is not None:
            parts.append("mask embedding")
        source = None if self.source is None else str(self.source)
        if source is not None and len(source) > 80:
            source = f"{source[:38]}...{source[-39:]}"
        parts.append(f"source={source!r}")
        if self.revision:
            parts.append(f"revision={str(self.revision)[:12]!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __str__(self) -> str:
        # print(model) gives the same line (Flax's default prints the whole tree of arrays).
        return repr(self)

    def save(self, path) -> None:
        """Write the model to a folder: ``model.safetensors``, ``bulkrnabert_sv.json``, ``genes.txt``.

        :func:`bulkrnabert_sv.load_model` reads it back bit-identically.
        """
        save_model(self, path)


# ------------------------------------------------------------------------------ interpretation
# Pieces of the forward pass for attention summaries and attributions (tl.gene_attention,
# tl.attribute). They call the modules above; tests check them against BulkRNABert.__call__.
def input_embeddings(model: BulkRNABert, tokens: jax.Array) -> jax.Array:
    """The encoder's input ``ExprEmbed[tokens] + GeneEmbed`` (batch, n_genes, embed_dim)."""
    return model._embed_inputs(jnp.asarray(tokens), None)


def encode_embeddings(
    model: BulkRNABert, x: jax.Array, *, num_layers: int | None = None, remat: bool = False
) -> jax.Array:
    """The residual stream after ``num_layers`` blocks (default all) for input embeddings ``x``.

    ``encode_embeddings(model, input_embeddings(model, tokens))`` is
    ``model(tokens)["last_hidden_state"]``; gradients can then be taken with respect to the
    inputs. ``remat`` rematerialises each block in the backward pass (memory of one block).
    """
    depth = model.config.num_layers if num_layers is None else int(num_layers)
    for block in model.layers[:depth]:
        if remat:  # jax.checkpoint of a pure function: usable under jax.grad and lax.scan
            graphdef, state = nnx.split(block)
            x = _checkpointed_block(graphdef, state, x)
        else:
            x = _block_forward(block, x)
    return x


@partial(jax.checkpoint, static_argnums=(0,), policy=remat_policy())
def _checkpointed_block(graphdef, state, x: jax.Array) -> jax.Array:
    return _block_forward(nnx.merge(graphdef, state), x)


def queries_and_keys(attention: MultiHeadAttention, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The (batch, length, heads, key_size) queries and keys (IA3 included) that ``attention``
    computes from its (normalised) input ``x``."""
    q = attention._heads(attention.query(x))
    k = attention._heads(_scaled(attention.key(x), attention.ia3_key))
    return q, k


def attention_received_by_layer(
    model: BulkRNABert,
    tokens: jax.Array,
    layers: Sequence[int],
    *,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Per block, head and gene: the attention the gene receives, averaged over all queries.

    The encoder runs as usual (its configured attention implementation); for each requested
    block the queries and keys are recomputed from the block's input and
    :func:`~bulkrnabert_sv.model.attention.attention_received` sums the softmax weights over the
    queries in tiles, so no (n_genes, n_genes) map is ever held.

    Parameters
    ----------
    model
        The encoder.
    tokens
        Token ids (batch, n_genes).
    layers
        Blocks, 1-indexed, in the order wanted.

    Returns
    -------
    float32 (batch, len(layers), heads, n_genes); over the genes each (sample, block, head)
    sums to one.
    """
    layers = [int(k) for k in layers]
    for k in layers:
        if not 1 <= k <= model.config.num_layers:
            raise ValueError(f"layer {k} is out of range: layers are 1..{model.config.num_layers}")
    x = input_embeddings(model, tokens)
    found: dict[int, jax.Array] = {}
    for index, block in enumerate(model.layers[: max(layers)], start=1):
        if index in layers:
            q, k = queries_and_keys(block.attention, block.attention_norm(x))
            found[index] = attention_received(q, k, block_q=block_q, block_k=block_k)
        if index < max(layers):
            x = _block_forward(block, x)
    return jnp.stack([found[k] for k in layers], axis=1)
