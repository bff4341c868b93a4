"""Scaled dot-product attention over all genes, with interchangeable implementations.

Every transformer block calls :func:`dot_product_attention`. The implementations compute the same
function (softmax over all keys, no mask):

``"xla"``
    Materialises the (B, H, L, L) logits. The reference; fine for small inputs.
``"blockwise"``
    Online softmax over key blocks inside a loop over query blocks: memory linear in L.
``"cudnn"``
    ``jax.nn.dot_product_attention(implementation="cudnn")`` on a GPU, in bf16/fp16.
``"auto"``
    The best available for the platform, dtype and length.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn")
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 2048
#: Below this sequence length "auto" uses the materialised implementation.
AUTO_MATERIALIZE_MAX_LENGTH = 1024


def attention_weights(q: jax.Array, k: jax.Array, *, scale: float | None = None) -> jax.Array:
    """Softmax attention probabilities, shape (B, H, Lq, Lk), computed in float32."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    return jax.nn.softmax(logits, axis=-1)


def _xla_attention(q, k, v, scale):
    weights = attention_weights(q, k, scale=scale)
    out = jnp.einsum(
        "bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.astype(q.dtype)


def _blockwise_attention(q, k, v, scale, block_q, block_k):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    block_q = min(block_q, lq)
    block_k = min(block_k, lk)
    nq = -(-lq // block_q)
    nk = -(-lk // block_k)
    pad_q = nq * block_q - lq
    pad_k = nk * block_k - lk
    qp = jnp.pad(q, ((0, 0), (0, pad_q), (0, 0), (0, 0)))
    kp = jnp.pad(k, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    vp = jnp.pad(v, ((0, 0), (0, pad_k), (0, 0), (0, 0)))
    # (nk, B, Bk, H, D)
    k_blocks = kp.reshape(b, nk, block_k, h, d).transpose(1, 0, 2, 3, 4)
    v_blocks = vp.reshape(b, nk, block_k, h, d).transpose(1, 0, 2, 3, 4)
    key_valid = (jnp.arange(nk * block_k) < lk).reshape(nk, block_k)

    def one_query_block(q_blk):
        q_blk = q_blk * jnp.asarray(scale, q_blk.dtype)

        def step(carry, xs):
            m, s, acc = carry
            k_blk, v_blk, valid = xs
            logits = jnp.einsum("bqhd,bkhd->bhqk", q_blk, k_blk, preferred_element_type=jnp.float32)
            logits = jnp.where(valid[None, None, None, :], logits, -jnp.inf)
            m_new = jnp.maximum(m, logits.max(axis=-1))
            correction = jnp.exp(m - m_new)
            p = jnp.exp(logits - m_new[..., None])
            s = s * correction + p.sum(axis=-1)
            acc = acc * correction[..., None] + jnp.einsum(
                "bhqk,bkhd->bhqd", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32
            )
            return (m_new, s, acc), None

        init = (
            jnp.full((b, h, block_q), -jnp.inf, jnp.float32),
            jnp.zeros((b, h, block_q), jnp.float32),
            jnp.zeros((b, h, block_q, d), jnp.float32),
        )
        (_, s, acc), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, key_valid))
        return (acc / s[..., None]).transpose(0, 2, 1, 3)  # (B, Bq, H, D)

    q_blocks = qp.reshape(b, nq, block_q, h, d).transpose(1, 0, 2, 3, 4)
    out = jax.lax.map(one_query_block, q_blocks)  # (nq, B, Bq, H, D)
    out = out.transpose(1, 0, 2, 3, 4).reshape(b, nq * block_q, h, d)[:, :lq]
    return out.astype(q.dtype)


def resolve_implementation(implementation: str, *, length: int, dtype) -> str:
    """The concrete implementation ``"auto"`` (or an unavailable choice) resolves to."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}."
        )
    on_gpu = jax.default_backend() == "gpu"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if implementation == "cudnn" and not (on_gpu and half):
        implementation = "auto"
    if implementation != "auto":
        return implementation
    if on_gpu and half:
        return "cudnn"
    return "xla" if length <= AUTO_MATERIALIZE_MAX_LENGTH else "blockwise"


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    implementation: str = "auto",
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Softmax attention of ``q`` over all of ``k``/``v``.

    Parameters
    ----------
    q, k, v
        Arrays of shape (batch, length, heads, head_dim).
    implementation
        One of :data:`IMPLEMENTATIONS`; ``"cudnn"`` falls back to ``"auto"`` off GPU or in fp32.
    scale
        Logit scale, ``1/sqrt(head_dim)`` by default.
    block_q, block_k
        Block sizes of the blockwise implementation.

    Returns
    -------
    Array of shape (batch, length, heads, head_dim) in ``q.dtype``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    impl = resolve_implementation(implementation, length=k.shape[1], dtype=q.dtype)
    if impl == "xla":
        return _xla_attention(q, k, v, scale)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    return _blockwise_attention(
        q, k, v, scale, block_q or DEFAULT_BLOCK_Q, block_k or DEFAULT_BLOCK_K
    )
