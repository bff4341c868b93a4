"""Scaled dot-product attention over all genes, with interchangeable implementations.

Every transformer block calls :func:`dot_product_attention`. The implementations compute the same
function (softmax over all keys, no mask) and differ in speed and memory:

``"xla"``
    Materialises the (B, H, L, L) logits. The reference; fine for short sequences (the full model
    would need 11.6 GB per layer and sample).
``"blockwise"``
    Exact online softmax over tiles, memory linear in L, forward and backward (a
    :func:`jax.custom_vjp` that recomputes the tiles in the backward pass, as flash attention
    does). On a CPU it runs the host kernel (``"blockwise_host"``) when numba is available, else
    the pure-JAX loops (``"blockwise_jax"``).
``"blockwise_host"``
    The forward pass as a numba kernel called with :func:`jax.pure_callback` (CPU only; see
    :mod:`._host_attention`): AVX2/FMA register-blocked micro-kernels with the softmax fused in
    where the CPU has them, OpenBLAS tiles otherwise. Backward pass: the numba kernel of
    :mod:`._host_backward` (recomputed tiles, AVX2/FMA, head sizes multiples of 8 up to 64), else
    the JAX loops.
``"blockwise_jax"``
    The forward and backward passes as JAX loops (``lax.map`` over query blocks, ``lax.scan`` over
    key blocks); any platform.
``"cudnn"``
    ``jax.nn.dot_product_attention(implementation="cudnn")``: the fused GPU kernel, bf16/fp16.
    Falls back to ``"auto"`` off GPU, in float32, or when cuDNN refuses the call.
``"auto"``
    cuDNN on a GPU in half precision; otherwise ``"xla"`` up to
    :data:`AUTO_MATERIALIZE_MAX_LENGTH` keys and ``"blockwise"`` beyond.

The blockwise implementations work in base 2: queries are multiplied by ``scale * log2(e)`` once,
so the softmax needs ``exp2`` and no per-element scaling; the result is the same function.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from .._logging import user_stacklevel
from .config import ATTENTION_IMPLEMENTATIONS

IMPLEMENTATIONS = ATTENTION_IMPLEMENTATIONS
#: (query, key) tile sizes of the pure-JAX loops on a CPU (fastest on a 2-core AVX2 CPU).
JAX_BLOCKS_CPU = (256, 256)
#: (query, key) tile sizes of the pure-JAX loops on an accelerator: about five times faster than
#: the CPU tiles on a GPU, and larger tiles gain little for much more memory (128 MiB per sample
#: and temporary here); the timings are in docs/benchmarks.md ("Results on a GPU").
JAX_BLOCKS_ACCELERATOR = (2048, 2048)
#: Up to this many keys "auto" uses the materialised implementation.
AUTO_MATERIALIZE_MAX_LENGTH = 1024
_LOG2E = math.log2(math.e)
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def default_jax_blocks() -> tuple[int, int]:
    """(block_q, block_k) of the pure-JAX loops for the default backend: large tiles on an
    accelerator, where each loop step is a kernel launch, small ones on a CPU, where tiles should
    stay in cache."""
    return JAX_BLOCKS_CPU if jax.default_backend() == "cpu" else JAX_BLOCKS_ACCELERATOR


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


# ------------------------------------------------------------------------------ blockwise helpers
def _heads_first(x: jax.Array) -> jax.Array:
    """(B, L, H, D) -> (B*H, L, D) float32."""
    b, n, h, d = x.shape
    return x.astype(jnp.float32).transpose(0, 2, 1, 3).reshape(b * h, n, d)


def _blocks(x: jax.Array, size: int) -> jax.Array:
    """(G, L, ...) -> (nblocks, G, size, ...), zero-padded along L."""
    g, n = x.shape[:2]
    nb = -(-n // size)
    pad = [(0, 0), (0, nb * size - n)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad).reshape(g, nb, size, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unblocks(x: jax.Array, n: int) -> jax.Array:
    """(nblocks, G, size, ...) -> (G, n, ...)."""
    nb, g, size = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape(g, nb * size, *x.shape[3:])[:, :n]


def _key_bias(n: int, size: int) -> jax.Array:
    """(nblocks, size) additive bias: 0 for real keys, -inf for padding."""
    nb = -(-n // size)
    valid = (jnp.arange(nb * size) < n).reshape(nb, size)
    return jnp.where(valid, 0.0, -jnp.inf).astype(jnp.float32)


def _jax_forward(qs, k, v, block_q, block_k):
    """Online softmax in base 2. qs (G, Lq, D) pre-scaled; returns out (G, Lq, D), lse (G, Lq)."""
    g, lq, d = qs.shape
    lk = k.shape[1]
    block_q, block_k = min(block_q, lq), min(block_k, lk)
    k_blocks, v_blocks = _blocks(k, block_k), _blocks(v, block_k)
    bias = _key_bias(lk, block_k)

    def query_block(q_blk):
        def step(carry, xs):
            m, total, acc = carry
            k_blk, v_blk, b_blk = xs
            s = jnp.einsum("gqd,gkd->gqk", q_blk, k_blk) + b_blk
            m_new = jnp.maximum(m, s.max(axis=-1))
            corr = jnp.exp2(m - m_new)
            p = jnp.exp2(s - m_new[..., None])
            total = total * corr + p.sum(axis=-1)
            acc = acc * corr[..., None] + jnp.einsum("gqk,gkd->gqd", p, v_blk)
            return (m_new, total, acc), None

        init = (
            jnp.full((g, block_q), -jnp.inf, jnp.float32),
            jnp.zeros((g, block_q), jnp.float32),
            jnp.zeros((g, block_q, d), jnp.float32),
        )
        (m, total, acc), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, bias))
        return acc / total[..., None], m + jnp.log2(total)

    out, lse = jax.lax.map(query_block, _blocks(qs, block_q))
    return _unblocks(out, lq), _unblocks(lse, lq)


def _jax_backward(qs, k, v, out, lse, dout, block_q, block_k):
    """Gradients wrt (qs, k, v) of the base-2 attention, recomputing tiles: memory linear in L.

    Two passes (as FlashAttention-2's reference kernels): one over key blocks accumulating dk, dv,
    one over query blocks accumulating dq. With ``p = 2**(s - lse)`` and ``ds = p (dp - delta)``,
    where ``dp = dout v^T`` and ``delta = rowsum(dout * out)``: ``dv = p^T dout``,
    ``dqs = ln2 ds k``, ``dk = ln2 ds^T qs``.
    """
    lq, lk = qs.shape[1], k.shape[1]
    block_q, block_k = min(block_q, lq), min(block_k, lk)
    delta = jnp.sum(dout * out, axis=-1)  # (G, Lq)
    qb, dob = _blocks(qs, block_q), _blocks(dout, block_q)
    lseb, deltab = _blocks(lse, block_q), _blocks(delta, block_q)
    kb, vb = _blocks(k, block_k), _blocks(v, block_k)
    bias = _key_bias(lk, block_k)
    ln2 = jnp.float32(math.log(2.0))

    def tile(q_blk, do_blk, lse_blk, delta_blk, k_blk, v_blk, b_blk):
        s = jnp.einsum("gqd,gkd->gqk", q_blk, k_blk) + b_blk
        p = jnp.exp2(s - lse_blk[..., None])
        dp = jnp.einsum("gqd,gkd->gqk", do_blk, v_blk)
        ds = p * (dp - delta_blk[..., None])
        return p, ds

    def key_block(xs):
        k_blk, v_blk, b_blk = xs

        def step(carry, ys):
            dk, dv = carry
            q_blk, do_blk, lse_blk, delta_blk = ys
            p, ds = tile(q_blk, do_blk, lse_blk, delta_blk, k_blk, v_blk, b_blk)
            dv = dv + jnp.einsum("gqk,gqd->gkd", p, do_blk)
            dk = dk + jnp.einsum("gqk,gqd->gkd", ds, q_blk)
            return (dk, dv), None

        init = (jnp.zeros_like(k_blk), jnp.zeros_like(v_blk))
        (dk, dv), _ = jax.lax.scan(step, init, (qb, dob, lseb, deltab))
        return dk * ln2, dv

    def query_block(xs):
        q_blk, do_blk, lse_blk, delta_blk = xs

        def step(dq, ys):
            k_blk, v_blk, b_blk = ys
            _, ds = tile(q_blk, do_blk, lse_blk, delta_blk, k_blk, v_blk, b_blk)
            return dq + jnp.einsum("gqk,gkd->gqd", ds, k_blk), None

        dq, _ = jax.lax.scan(step, jnp.zeros_like(q_blk), (kb, vb, bias))
        return dq * ln2

    dk, dv = jax.lax.map(key_block, (kb, vb, bias))
    dq = jax.lax.map(query_block, (qb, dob, lseb, deltab))
    return _unblocks(dq, lq), _unblocks(dk, lk), _unblocks(dv, lk)


#: Names of the blockwise attention's saved outputs (attention output and row log-sum-exp).
REMAT_SAVED_NAMES = ("blockwise_attention_out", "blockwise_attention_lse")


def remat_policy():
    """The :func:`jax.checkpoint` policy of rematerialised transformer blocks: keep only the
    blockwise attention's output and log-sum-exp (``REMAT_SAVED_NAMES``: ``(B, L, H, D)`` and
    ``(B, H, L)`` float32 per block), recompute everything else.

    The backward pass of a rematerialised block then reruns the cheap projections, LayerNorms
    and feed-forward, but not the attention forward, whose cost is most of the block's at full
    length (one attention forward fewer per block and step). With the materialised or cuDNN
    attention nothing is named and this is the default policy (save nothing).
    """
    return jax.checkpoint_policies.save_only_these_names(*REMAT_SAVED_NAMES)


def _with_recomputing_backward(forward, backward):
    """A :func:`jax.custom_vjp` attention ``f(qs, k, v, block_q, block_k) -> out``.

    ``forward`` returns ``(out, lse)``; ``backward(block_q, block_k, residuals, dout)`` gets the
    residuals ``(qs, k, v, out, lse)`` and recomputes the tiles (memory linear in L).
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def attention(qs, k, v, block_q, block_k):
        return forward(qs, k, v, block_q, block_k)[0]

    def attention_fwd(qs, k, v, block_q, block_k):
        out, lse = forward(qs, k, v, block_q, block_k)
        # Named so that a rematerialised block can keep them (remat_policy) instead of running
        # the attention forward a second time in the backward pass.
        out = checkpoint_name(out, REMAT_SAVED_NAMES[0])
        lse = checkpoint_name(lse, REMAT_SAVED_NAMES[1])
        return out, (qs, k, v, out, lse)

    attention.defvjp(attention_fwd, backward)
    return attention


#: Heads-first (G, L, D) base-2 attention by the JAX loops.
_jax_base2 = _with_recomputing_backward(
    _jax_forward,
    lambda block_q, block_k, residuals, dout: _jax_backward(*residuals, dout, block_q, block_k),
)


def _host_forward(qs, k, v, block_q, block_k):
    """(B, L, H, D) float32 in place of :func:`_jax_forward`: the numba host kernel reads the
    model's layout directly. Returns out (B, L, H, D) and the base-2 lse (B, H, L)."""
    from . import _host_attention

    b, lq, h, _ = qs.shape
    shapes = (
        jax.ShapeDtypeStruct(qs.shape, jnp.float32),
        jax.ShapeDtypeStruct((b, h, lq), jnp.float32),
    )
    callback = functools.partial(
        _host_attention.attention_forward, layout="bshd", block_q=block_q, block_k=block_k
    )
    return jax.pure_callback(callback, shapes, qs, k, v, vmap_method="broadcast_all")


def _host_backward(block_q, block_k, residuals, dout):
    """The backward pass of the (B, L, H, D) host attention.

    The numba backward kernel (:mod:`._host_backward`) where it runs (AVX2/FMA, head sizes that
    are multiples of 8 up to 64), through :func:`jax.pure_callback`; its tiles are its own
    defaults, or the forward's ``block_q``/``block_k`` where those are smaller. Elsewhere the JAX
    loops, with their CPU tiles :data:`JAX_BLOCKS_CPU`.
    """
    from . import _host_backward as host_gradients

    qs, k, v, out, lse = residuals
    b, lq, h, d = qs.shape
    if host_gradients.supported(d):
        default_q, default_k = host_gradients.DEFAULT_BLOCKS
        callback = functools.partial(
            host_gradients.attention_backward,
            layout="bshd",
            block_q=min(block_q or default_q, default_q),
            block_k=min(block_k or default_k, default_k),
        )
        shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (qs, k, v))
        dout = dout.astype(jnp.float32)
        return jax.pure_callback(
            callback, shapes, qs, k, v, out, lse, dout, vmap_method="broadcast_all"
        )
    grads = _jax_backward(
        _heads_first(qs),
        _heads_first(k),
        _heads_first(v),
        _heads_first(out),
        lse.reshape(b * h, lq),
        _heads_first(dout),
        *JAX_BLOCKS_CPU,
    )
    return tuple(g.reshape(b, h, -1, d).transpose(0, 2, 1, 3) for g in grads)


#: (B, L, H, D) base-2 attention by the host kernel, forward and backward (JAX-loop backward where
#: the host backward kernel does not run).
_host_base2 = _with_recomputing_backward(_host_forward, _host_backward)


def _blockwise_attention(q, k, v, scale, block_q, block_k, kernel):
    """Blockwise attention of (B, L, H, D) arrays, computed in float32, returned in q.dtype."""
    b, lq, h, d = q.shape
    factor = jnp.float32(scale * _LOG2E)
    if kernel == "host":
        qs = q.astype(jnp.float32) * factor
        out = _host_base2(qs, k.astype(jnp.float32), v.astype(jnp.float32), block_q, block_k)
        return out.astype(q.dtype)
    qs = _heads_first(q) * factor
    out = _jax_base2(qs, _heads_first(k), _heads_first(v), block_q, block_k)
    return out.reshape(b, h, lq, d).transpose(0, 2, 1, 3).astype(q.dtype)


# ------------------------------------------------------------------------------ dispatch
def host_kernel_available() -> bool:
    """Whether ``"blockwise_host"`` can run here (CPU backend and numba importable)."""
    if jax.default_backend() != "cpu":
        return False
    from . import _host_attention

    return _host_attention.available()


def resolve_implementation(implementation: str, *, length: int, dtype) -> str:
    """The concrete implementation ``"auto"`` (or an unavailable choice) resolves to.

    Parameters
    ----------
    implementation
        One of :data:`IMPLEMENTATIONS`.
    length
        Number of keys.
    dtype
        Compute dtype of q/k/v.

    Returns
    -------
    One of ``"xla"``, ``"blockwise_host"``, ``"blockwise_jax"``, ``"cudnn"``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}."
        )
    on_gpu = jax.default_backend() == "gpu"
    half = jnp.dtype(dtype) in _HALF
    if implementation == "cudnn" and not (on_gpu and half):
        implementation = "auto"
    if implementation == "auto":
        if on_gpu and half:
            return "cudnn"
        implementation = "xla" if length <= AUTO_MATERIALIZE_MAX_LENGTH else "blockwise"
    if implementation in ("blockwise", "blockwise_host"):
        return "blockwise_host" if host_kernel_available() else "blockwise_jax"
    return implementation


def _cudnn_attention(q, k, v, scale):
    """cuDNN fused attention; on refusal (old GPU, no cuDNN, unsupported shape) the fallback."""
    try:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    except (RuntimeError, ValueError, NotImplementedError, TypeError) as error:
        warnings.warn(
            f"cuDNN attention is unavailable ({error}); using the blockwise JAX implementation.",
            RuntimeWarning,
            stacklevel=user_stacklevel(),  # the user's line, through tl.embed and jax.jit
        )
        if k.shape[1] <= AUTO_MATERIALIZE_MAX_LENGTH:
            return _xla_attention(q, k, v, scale)
        return _blockwise_attention(q, k, v, scale, *default_jax_blocks(), kernel="jax")


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
        One of :data:`IMPLEMENTATIONS` (see the module docstring); ``"cudnn"`` falls back to
        ``"auto"`` off GPU or in float32.
    scale
        Logit scale, ``1/sqrt(head_dim)`` by default.
    block_q, block_k
        Tile sizes of the blockwise implementations (defaults: the host kernel's own,
        ``_host_attention.DEFAULT_BLOCKS``; :func:`default_jax_blocks` for the JAX loops:
        :data:`JAX_BLOCKS_CPU` or :data:`JAX_BLOCKS_ACCELERATOR`).

    Returns
    -------
    Array of shape (batch, length, heads, head_dim) in ``q.dtype``. The blockwise implementations
    compute in float32 whatever the input dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    impl = resolve_implementation(implementation, length=k.shape[1], dtype=q.dtype)
    if impl == "xla":
        return _xla_attention(q, k, v, scale)
    if impl == "cudnn":
        return _cudnn_attention(q, k, v, scale)
    if impl == "blockwise_host":
        # None: the host kernel's own default tiles (see _host_attention.DEFAULT_BLOCKS).
        bq, bk, kernel = block_q, block_k, "host"
    else:
        default_q, default_k = default_jax_blocks()
        bq, bk, kernel = block_q or default_q, block_k or default_k, "jax"
    bq = None if bq is None else int(bq)
    bk = None if bk is None else int(bk)
    return _blockwise_attention(q, k, v, scale, bq, bk, kernel)


# ------------------------------------------------------------------------------ attention received
def _received_base2(qs, k, block_q, block_k):
    """Column sums of the base-2 softmax: (G, Lk), the sum over queries of each key's weight.

    ``qs`` (G, Lq, D) pre-scaled by ``scale * log2(e)``, ``k`` (G, Lk, D). A scan over query
    blocks carries the (G, Lk) sums; each query block makes two passes over the key blocks: the
    first finds every query's log-sum-exp (online maximum and sum, as :func:`_jax_forward`), the
    second adds ``2**(s - lse)`` summed over the block's queries to the keys' totals. Memory:
    a few (G, block_q, block_k) tiles and the (G, Lk) totals; no (Lq, Lk) map.
    """
    g, lq, _ = qs.shape
    lk = k.shape[1]
    k_blocks, bias = _blocks(k, block_k), _key_bias(lk, block_k)
    nb_q = -(-lq // block_q)
    # padded query rows (zeros) would spread a uniform row over the keys: weigh them 0
    valid = (jnp.arange(nb_q * block_q) < lq).reshape(nb_q, block_q).astype(jnp.float32)

    def query_block(totals, xs):
        q_blk, valid_blk = xs

        def lse_step(carry, ys):
            m, total = carry
            k_blk, b_blk = ys
            s = jnp.einsum("gqd,gkd->gqk", q_blk, k_blk) + b_blk
            m_new = jnp.maximum(m, s.max(axis=-1))
            total = total * jnp.exp2(m - m_new) + jnp.exp2(s - m_new[..., None]).sum(axis=-1)
            return (m_new, total), None

        init = (
            jnp.full((g, block_q), -jnp.inf, jnp.float32),
            jnp.zeros((g, block_q), jnp.float32),
        )
        (m, total), _ = jax.lax.scan(lse_step, init, (k_blocks, bias))
        lse = m + jnp.log2(total)

        def column_step(_, ys):
            k_blk, b_blk = ys
            s = jnp.einsum("gqd,gkd->gqk", q_blk, k_blk) + b_blk
            p = jnp.exp2(s - lse[..., None]) * valid_blk[None, :, None]
            return None, p.sum(axis=1)

        _, columns = jax.lax.scan(column_step, None, (k_blocks, bias))
        return totals + columns, None

    totals = jnp.zeros((k_blocks.shape[0], g, block_k), jnp.float32)
    totals, _ = jax.lax.scan(query_block, totals, (_blocks(qs, block_q), valid))
    return jnp.moveaxis(totals, 0, 1).reshape(g, -1)[:, :lk]


def attention_received(
    q: jax.Array,
    k: jax.Array,
    *,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """The attention each key receives, averaged over the queries, without the (L, L) map.

    ``received[b, h, j] = mean_i softmax_j(scale * q_i . k_j)``: the column means of the
    attention probabilities that :func:`attention_weights` would materialise, computed in
    blocks (each query's log-sum-exp first, then ``exp(scale * q_i . k_j - lse_i)`` summed over
    the queries; see :func:`_received_base2`). Each row of probabilities sums to one, so over
    the keys ``received`` sums to one (``1 / Lk`` each for uniform attention).

    Parameters
    ----------
    q, k
        Arrays of shape (batch, length, heads, head_dim); computed in float32.
    scale
        Logit scale, ``1/sqrt(head_dim)`` by default.
    block_q, block_k
        Tile sizes (default :func:`default_jax_blocks`). Memory is a few
        (batch * heads, block_q, block_k) float32 tiles plus (batch, heads, Lk) totals; the time
        is about that of two ``q k^T`` products and two exponentials per (query, key) pair.

    Returns
    -------
    float32 array (batch, heads, Lk).
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    default_q, default_k = default_jax_blocks()
    bq = min(int(block_q or default_q), lq)
    bk = min(int(block_k or default_k), lk)
    qs = _heads_first(q) * jnp.float32(scale * _LOG2E)
    totals = _received_base2(qs, _heads_first(k), bq, bk)
    return (totals / lq).reshape(b, h, lk)


def flops_per_layer(length: int, heads: int, head_dim: int, batch: int = 1) -> int:
    """Floating-point operations of one attention (QK^T and PV), counting a multiply-add as 2."""
    return 4 * batch * length * length * heads * head_dim


__all__ = [
    "AUTO_MATERIALIZE_MAX_LENGTH",
    "IMPLEMENTATIONS",
    "JAX_BLOCKS_ACCELERATOR",
    "JAX_BLOCKS_CPU",
    "attention_received",
    "attention_weights",
    "default_jax_blocks",
    "dot_product_attention",
    "flops_per_layer",
    "host_kernel_available",
    "remat_policy",
    "resolve_implementation",
]
