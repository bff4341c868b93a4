"""The host attention's backward kernel against float64 gradients, the JAX loops and the model."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bulkrnabert_sv.model import _host_backward, random_model
from bulkrnabert_sv.model import attention as attn
from bulkrnabert_sv.model._host_attention import attention_forward

pytestmark = pytest.mark.skipif(
    not _host_backward.supported(32), reason="the host backward needs numba and AVX2/FMA"
)


def _reference_grads(q, k, v, dout, *, base2=True, scale=1.0):
    """Gradients of softmax(scale q k^T) v (base 2 if ``base2``) wrt q, k, v, in float64,
    heads-first (G, L, D) inputs."""
    q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
    factor = scale * (math.log(2.0) if base2 else 1.0)  # natural-log logits = factor * q k^T
    s = np.einsum("gqd,gkd->gqk", q, k) * factor
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    dp = dout @ v.transpose(0, 2, 1)
    ds = p * (dp - (dout * out).sum(-1, keepdims=True)) * factor
    return ds @ k, ds.transpose(0, 2, 1) @ q, p.transpose(0, 2, 1) @ dout


def _heads_first(x):
    b, n, h, d = x.shape
    return np.asarray(x).transpose(0, 2, 1, 3).reshape(b * h, n, d)


def _max_error(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)))


@pytest.mark.parametrize(
    ("groups", "lq", "lk", "head_dim", "blocks"),
    [
        (1, 1, 1, 8, (None, None)),
        (2, 37, 45, 8, (12, 48)),  # several tiles and key blocks, both lengths off the tiles
        (3, 517, 301, 16, (None, None)),
        (2, 1000, 1029, 32, (48, 96)),
        (1, 130, 700, 64, (24, 96)),
    ],
)
def test_backward_matches_float64_as_closely_as_the_jax_loops(groups, lq, lk, head_dim, blocks):
    rng = np.random.default_rng(lq + lk)
    q = rng.standard_normal((groups, lq, head_dim), dtype=np.float32) * np.float32(0.4)
    k, v = (rng.standard_normal((groups, lk, head_dim), dtype=np.float32) for _ in range(2))
    dout = rng.standard_normal((groups, lq, head_dim), dtype=np.float32)
    out, lse = attention_forward(q, k, v)
    got = _host_backward.attention_backward(
        q, k, v, out, lse, dout, block_q=blocks[0], block_k=blocks[1]
    )
    loops = attn._jax_backward(
        *(jnp.asarray(x) for x in (q, k, v, out, lse, dout)), *attn.JAX_BLOCKS_CPU
    )
    want = _reference_grads(q, k, v, dout)
    for name, g, j, w in zip(("dq", "dk", "dv"), got, loops, want):
        assert g.shape == w.shape and g.dtype == np.float32
        scale = max(float(np.max(np.abs(w))), 1.0)
        host_error, loop_error = _max_error(g, w), _max_error(j, w)
        # about as close as the JAX loops get (a factor 3 of rounding noise), and within the
        # tolerance of their own tests (1e-5 relative to the largest gradient)
        assert host_error <= max(3 * loop_error, 1e-6 * scale), (name, host_error, loop_error)
        assert host_error <= 1e-5 * scale, (name, host_error)


def _attention_loss_grads(implementation, q, k, v):
    weights = jnp.cos(jnp.arange(q.shape[1] * q.shape[-1], dtype=jnp.float32))
    weights = weights.reshape(1, q.shape[1], 1, q.shape[-1])

    def loss(q, k, v):
        out = attn.dot_product_attention(q, k, v, implementation=implementation)
        return jnp.sum(out * weights)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v), np.asarray(weights)


@pytest.mark.parametrize(
    "shape", [(2, 301, 3, 16), (3, 517, 2, 32), (2, 130, 1, 64), (1, 1029, 8, 32)]
)
def test_model_layout_gradients_match_float64(shape):
    """jax.grad through dot_product_attention (B, L, H, D), batch > 1, odd lengths."""
    rng = np.random.default_rng(shape[1])
    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    grads, weights = _attention_loss_grads("blockwise_host", *map(jnp.asarray, (q, k, v)))
    loops, _ = _attention_loss_grads("blockwise_jax", *map(jnp.asarray, (q, k, v)))
    dout = np.broadcast_to(weights, shape)
    want = _reference_grads(
        *map(_heads_first, (q, k, v, dout)), base2=False, scale=1.0 / math.sqrt(shape[-1])
    )
    b, n, h, d = shape
    for name, g, j, w in zip(("dq", "dk", "dv"), grads, loops, want):
        w = w.reshape(b, h, n, d).transpose(0, 2, 1, 3)
        scale = max(float(np.max(np.abs(w))), 1.0)
        host_error, loop_error = _max_error(g, w), _max_error(j, w)
        assert host_error <= max(3 * loop_error, 1e-6 * scale), (name, host_error, loop_error)
        assert host_error <= 1e-5 * scale, (name, host_error)


def test_backward_is_deterministic_and_thread_count_only_reorders_sums():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 700, 4, 32), dtype=np.float32) * np.float32(0.4)
    k, v, dout = (rng.standard_normal((1, 700, 4, 32), dtype=np.float32) for _ in range(3))
    out, lse = attention_forward(q, k, v, layout="bshd")

    def grads(threads):
        return _host_backward.attention_backward(
            q, k, v, out, lse, dout, layout="bshd", block_q=48, block_k=96, threads=threads
        )

    first, second, single = grads(2), grads(2), grads(1)
    for a, b, c in zip(first, second, single):
        np.testing.assert_array_equal(a, b)  # stripes, not threads, decide the sums
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)


def test_stripes_bound_the_dq_buffers():
    assert _host_backward.stripes_for(8, 40, threads=2) == _host_backward.MAX_STRIPES
    assert _host_backward.stripes_for(64, 40, threads=2) == 1
    assert _host_backward.stripes_for(1, 2, threads=2) == 2  # at most one per key block


def test_host_gradients_under_vmap():
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.standard_normal((3, 1, 77, 2, 16), np.float32)) for _ in range(3))

    def loss(q, k, v):
        return jnp.sum(
            jnp.sin(attn.dot_product_attention(q, k, v, implementation="blockwise_host"))
        )

    batched = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(q, k, v)
    for i in range(3):
        one = jax.grad(loss, argnums=(0, 1, 2))(q[i], k[i], v[i])
        for got, want in zip(batched, one):
            np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=0, atol=1e-6)


def test_unsupported_head_size_uses_the_jax_loops():
    assert not _host_backward.supported(12)
    rng = np.random.default_rng(9)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 50, 2, 12), np.float32)) for _ in range(3))
    host, _ = _attention_loss_grads("blockwise_host", q, k, v)
    ref, _ = _attention_loss_grads("xla", q, k, v)
    for got, want in zip(host, ref):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


def _model_grads(remat, ia3, monkeypatch, host_backward):
    jax.clear_caches()  # the remat'd block's trace is cached across calls: trace it afresh
    calls = []
    kernel = _host_backward.attention_backward
    with monkeypatch.context() as patch:
        if not host_backward:
            patch.setattr(_host_backward, "supported", lambda head_dim: False)
        patch.setattr(
            _host_backward,
            "attention_backward",
            lambda *args, **kwargs: calls.append(1) or kernel(*args, **kwargs),
        )
        model = random_model(
            "small",
            n_genes=75,  # off every tile size
            attention_implementation="blockwise_host",
            attention_block_q=24,
            attention_block_k=20,
            remat=remat,
            seed=3,
        )
        if ia3:
            model.enable_ia3()
            # away from ones, so that the vectors change what attention sees
            state = nnx.state(model, nnx.Param)
            rng = np.random.default_rng(1)
            leaves, tree = jax.tree_util.tree_flatten(state)
            leaves = [
                x * (1.0 + 0.3 * rng.standard_normal(x.shape).astype(np.float32))
                if x.ndim == 1 and np.allclose(np.asarray(x), 1.0)
                else x
                for x in leaves
            ]
            nnx.update(model, jax.tree_util.tree_unflatten(tree, leaves))
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, 8, (2, 75)), jnp.int32)

        def loss(model):
            out = model(tokens, embedding_layers=(1,))
            return jnp.mean(out["logits"] ** 2) + jnp.mean(out["embeddings_1"] ** 2)

        value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
        jax.block_until_ready(grads)
    assert bool(calls) == host_backward  # the kernel ran, or the JAX loops did
    return value, jax.tree_util.tree_leaves(nnx.state(grads, nnx.Param))


@pytest.mark.parametrize(("remat", "ia3"), [(False, False), (True, False), (True, True)])
def test_small_model_gradients_equal_the_jax_loop_backward(remat, ia3, monkeypatch):
    value, grads = _model_grads(remat, ia3, monkeypatch, host_backward=True)
    ref_value, ref_grads = _model_grads(remat, ia3, monkeypatch, host_backward=False)
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-6)
    assert len(grads) == len(ref_grads)
    scale = max(float(jnp.max(jnp.abs(g))) for g in ref_grads)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(
            np.asarray(got) / scale, np.asarray(want) / scale, rtol=0, atol=1e-5
        )


def test_remat_keeps_the_attention_output_instead_of_running_the_forward_again(monkeypatch):
    from bulkrnabert_sv.model import _host_attention

    jax.clear_caches()
    calls = {"forward": 0, "backward": 0}
    forward, backward = _host_attention.attention_forward, _host_backward.attention_backward

    def counted(name, function):
        def run(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return run

    monkeypatch.setattr(_host_attention, "attention_forward", counted("forward", forward))
    monkeypatch.setattr(_host_backward, "attention_backward", counted("backward", backward))
    model = random_model(
        "small", n_genes=75, attention_implementation="blockwise_host", remat=True, seed=3
    )
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 8, (1, 75)), jnp.int32)

    def loss(model):
        return jnp.mean(model(tokens)["logits"] ** 2)

    jax.block_until_ready(nnx.jit(nnx.grad(loss))(model))
    depth = model.config.num_layers
    assert calls == {"forward": depth, "backward": depth}
