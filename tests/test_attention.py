"""Blockwise attention (host kernel and JAX loops) against the materialised reference."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bulkrnabert_sv.model import _host_attention, _simd_kernels, random_model
from bulkrnabert_sv.model import attention as attn
from bulkrnabert_sv.model._host_attention import attention_forward, available

BLOCKWISE = ["blockwise_jax", "blockwise_host"]
needs_host = pytest.mark.skipif(not available(), reason="numba is not installed")
HAS_SIMD = available() and _simd_kernels.host_supports_simd()
#: Host kernels to test: both where this CPU has AVX2/FMA, else only the OpenBLAS one.
HOST_KERNELS = ["blas", "simd"] if HAS_SIMD else ["blas"]


def _reference_base2(q, k, v):
    """softmax2(q k^T) v and the base-2 log-sum-exp, in float64."""
    logits = np.einsum("gqd,gkd->gqk", q.astype(np.float64), k.astype(np.float64))
    top = logits.max(-1, keepdims=True)
    p = np.exp2(logits - top)
    total = p.sum(-1, keepdims=True)
    return np.einsum("gqk,gkd->gqd", p / total, v), (top + np.log2(total))[..., 0]


def _host_inputs(seed, groups, lq, lk, head_dim):
    """Float32 standard-normal heads-first q (groups, lq, D) and k, v (groups, lk, D)."""
    rng = np.random.default_rng(seed)
    shapes = ((groups, lq, head_dim), (groups, lk, head_dim), (groups, lk, head_dim))
    return tuple(rng.standard_normal(shape, dtype=np.float32) for shape in shapes)


def _inputs(shape, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * s) for s in (scale, 1.0, 1.0)
    )


def _value_and_grads(implementation, q, k, v, block_q=None, block_k=None):
    weights = jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32))

    def loss(q, k, v):
        out = attn.dot_product_attention(
            q, k, v, implementation=implementation, block_q=block_q, block_k=block_k
        )
        return jnp.sum(out * weights), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


_REFERENCE: dict = {}


@pytest.mark.parametrize(
    ("implementation", "shape", "blocks"),
    [
        # lengths that are not block multiples; 1, 4 and 8 heads; batch 1 and 3
        ("blockwise_host", (1, 37, 1, 8), (16, 8)),
        ("blockwise_host", (3, 517, 4, 16), (64, 96)),
        ("blockwise_host", (1, 2049, 8, 32), (256, 512)),
        ("blockwise_jax", (1, 37, 1, 8), (16, 8)),
        ("blockwise_jax", (3, 517, 4, 16), (64, 96)),
    ],
)
def test_blockwise_matches_xla_forward_and_grads(implementation, shape, blocks):
    if implementation == "blockwise_host" and not available():
        pytest.skip("numba is not installed")
    q, k, v = _inputs(shape, seed=shape[1])
    if shape not in _REFERENCE:
        _REFERENCE[shape] = _value_and_grads("xla", q, k, v)
    ref_out, ref_grads = _REFERENCE[shape]
    out, grads = _value_and_grads(implementation, q, k, v, *blocks)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=0, atol=1e-5)
    for name, got, want in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(want), rtol=0, atol=1e-5, err_msg=f"d{name}"
        )


@needs_host
@pytest.mark.parametrize("kernel", HOST_KERNELS)
@pytest.mark.parametrize(
    ("groups", "lq", "lk", "head_dim", "blocks"),
    [
        (1, 1, 1, 8, (None, None)),
        (2, 37, 45, 8, (16, 8)),  # the simd kernel rounds tiles up to 12 x 16
        (3, 517, 301, 16, (64, 96)),
        (2, 1000, 1029, 32, (None, None)),  # the default tiles, lengths off every multiple
        (1, 130, 700, 64, (24, 160)),
        (2, 300, 257, 12, (32, 64)),  # a head size the simd kernel does not take: OpenBLAS
    ],
)
def test_host_kernels_match_float64_reference(kernel, groups, lq, lk, head_dim, blocks):
    q, k, v = _host_inputs(lq + lk, groups, lq, lk, head_dim)
    q = q * np.float32(0.4)
    out, lse = attention_forward(q, k, v, block_q=blocks[0], block_k=blocks[1], kernel=kernel)
    want_out, want_lse = _reference_base2(q, k, v)
    assert out.shape == q.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, want_out, rtol=0, atol=5e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-6, atol=5e-6)


@needs_host
@pytest.mark.parametrize("kernel", HOST_KERNELS)
def test_host_kernel_rescales_rows_with_late_large_logits(kernel):
    """Rows whose maximum arrives after the first key block (by far) take the rescale path."""
    q, k, v = _host_inputs(1, 2, 150, 3000, 32)
    k[:, 2500] *= 40.0  # logits of hundreds (base 2), far above the first block's maximum
    k[:, 1200] *= 8.0
    k[:, 2999] *= 60.0  # and in the last, partial panel
    want_out, want_lse = _reference_base2(q, k, v)
    for block_q in (16, 150):  # one tile per task; four tiles of 48 rows per task (simd)
        out, lse = attention_forward(q, k, v, block_q=block_q, block_k=256, kernel=kernel)
        np.testing.assert_allclose(out, want_out, rtol=0, atol=2e-5)
        np.testing.assert_allclose(lse, want_lse, rtol=2e-6, atol=1e-5)
        assert np.isfinite(out).all()


@needs_host
def test_clamp_free_exp2_only_where_the_logit_bound_allows():
    """The simd kernel drops its clamp for tiles whose |q| max|k| bound keeps s - m in range."""
    ok = _host_attention._exp2_needs_no_clamp
    above, below = _host_attention.UNCLAMPED_ABOVE, _host_attention.UNCLAMPED_BELOW
    q_norm = np.array([2.0, 5.0, 1.0], np.float32)
    assert ok(q_norm, 4.0, np.array([3.0, 10.0, -1.0], np.float32))
    # 5 * 21 - 10 = 95 <= 100 above; 5 * 21 + 10 = 115 <= 120 below
    assert ok(q_norm, 21.0, np.array([3.0, 10.0, 0.0], np.float32))
    assert not ok(q_norm, 23.0, np.array([3.0, 10.0, 0.0], np.float32))  # 125 > 120
    assert not ok(q_norm, (above + 1.0) / 5.0, np.zeros(3, np.float32))
    assert not ok(q_norm, (below + 1.0) / 5.0 / 2.0, np.array([0.0, below / 2, 0.0], np.float32))
    assert not ok(np.array([np.nan], np.float32), 1.0, np.zeros(1, np.float32))
    assert not ok(q_norm, np.inf, np.zeros(3, np.float32))


@needs_host
@pytest.mark.skipif(not HAS_SIMD, reason="no AVX2/FMA")
def test_simd_kernel_mixes_clamped_and_clamp_free_tiles_exactly():
    """A late key far above the first block's maximum (flagged, rescaled) in tiles that skip the
    clamp, next to a tile whose large queries force the clamped path: all rows exact."""
    q, k, v = _host_inputs(7, 2, 300, 2000, 32)
    k[:, 1500] = q[:, 5] * (12.0 / np.linalg.norm(q[:, 5], axis=-1, keepdims=True))
    q[:, 200:248] *= 8.0  # one 48-row tile beyond the bound
    bound = np.linalg.norm(q, axis=-1) * np.linalg.norm(k, axis=-1).max(-1, keepdims=True)
    assert (bound[:, :192] < 90).all() and (bound[:, 200:248] > 120).all()
    want_out, want_lse = _reference_base2(q, k, v)
    first_block_max = (q[:, :192] @ k[:, :512].transpose(0, 2, 1)).max(-1)
    late_logit = np.einsum("gd,gd->g", q[:, 5], k[:, 1500])
    assert (late_logit - first_block_max[:, 5] > 40).all()
    out, lse = attention_forward(q, k, v, block_q=96, block_k=512, kernel="simd")
    np.testing.assert_allclose(out, want_out, rtol=0, atol=2e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=2e-6, atol=1e-5)


_CACHE_PROBE = """
import numpy as np
from bulkrnabert_sv.model import _host_attention as ha
q = np.random.default_rng(0).standard_normal((2, 50, 8), dtype=np.float32)
for _ in range(2):
    ha.attention_forward(q, q, q, kernel="simd")
stats = ha._simd_tasks.stats
print(len(ha._simd_tasks.signatures), stats.cache_hits.total(), stats.cache_misses.total())
"""


@needs_host
@pytest.mark.skipif(not HAS_SIMD, reason="no AVX2/FMA")
def test_simd_kernel_compiles_once_per_head_size_and_is_cached_on_disk(tmp_path):
    """A second process loads the compiled task loop from numba's disk cache instead of spending
    seconds compiling it, and repeated calls reuse one compiled version."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    # (signatures, cache hits, cache misses): compiled in the first process, loaded in the second
    assert runs[0].stdout.split() == ["1", "0", "1"]
    assert runs[1].stdout.split() == ["1", "1", "0"]


@pytest.mark.parametrize("length", [1, 15, 16, 17, 300])
def test_key_panels_are_zero_padded_transposed_and_aligned(length):
    """Panel p of group g holds keys 16 p .. 16 p + 15 as columns, zeros past the end, and the
    buffer starts on a cache line (the kernels' 32-byte loads must not split lines)."""
    rng = np.random.default_rng(length)
    k = rng.standard_normal((3, length, 8), dtype=np.float32)
    padded_length = -(-length // 16) * 16 + 16  # one whole panel of padding more
    panels = _simd_kernels.pack_key_panels(k, padded_length)
    assert panels.ctypes.data % 64 == 0
    panels = panels.reshape(3, padded_length // 16, 8, 16)
    keys = panels.transpose(0, 1, 3, 2).reshape(3, padded_length, 8)
    np.testing.assert_array_equal(keys[:, :length], k)
    assert not keys[:, length:].any()


@needs_host
@pytest.mark.parametrize("kernel", HOST_KERNELS)
def test_host_kernel_keeps_tiny_and_underflowing_weights_exact(kernel):
    """Logits far below the row maximum underflow to (almost) zero weight, never to garbage."""
    q, k, v = _host_inputs(2, 1, 40, 900, 16)
    k[:, :10] *= 30.0  # the first block holds logits far above and far below the rest
    out, lse = attention_forward(q, k, v, block_q=8, block_k=64, kernel=kernel)
    want_out, want_lse = _reference_base2(q, k, v)
    np.testing.assert_allclose(out, want_out, rtol=0, atol=2e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=2e-6, atol=1e-5)


@needs_host
@pytest.mark.parametrize("kernel", HOST_KERNELS)
def test_host_kernel_propagates_nan_to_its_row_only(kernel):
    q, k, v = _host_inputs(3, 2, 70, 90, 8)
    q[1, 33, 4] = np.nan
    out, lse = attention_forward(q, k, v, block_q=16, block_k=32, kernel=kernel)
    assert np.isnan(out[1, 33]).all() and np.isnan(lse[1, 33])
    finite = np.ones(out.shape[:2], bool)
    finite[1, 33] = False
    assert np.isfinite(out[finite]).all()
    q[1, 33, 4] = 0.0
    want_out, _ = _reference_base2(q, k, v)
    np.testing.assert_allclose(out[finite], want_out[finite], rtol=0, atol=2e-6)


@needs_host
@pytest.mark.parametrize("kernel", HOST_KERNELS)
def test_host_kernel_reads_the_models_layout_in_place(kernel):
    """``layout="bshd"`` (batch, length, heads, dim) gives what heads-first arrays give."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, n, 3, 16), dtype=np.float32) for n in (101, 77, 77))
    out, lse = attention_forward(q, k, v, layout="bshd", block_q=16, block_k=32, kernel=kernel)
    assert out.shape == q.shape and lse.shape == (2, 3, 101)

    def heads_first(x):
        return np.ascontiguousarray(x.transpose(0, 2, 1, 3))

    want_out, want_lse = attention_forward(
        heads_first(q), heads_first(k), heads_first(v), block_q=16, block_k=32, kernel=kernel
    )
    np.testing.assert_array_equal(heads_first(out), want_out)
    np.testing.assert_array_equal(lse, want_lse)
    with pytest.raises(ValueError, match="Unknown layout"):
        attention_forward(q, k, v, layout="bhsd")


@needs_host
@pytest.mark.parametrize("kernel", HOST_KERNELS)
def test_host_kernel_single_thread_equals_threaded(kernel):
    q, k, v = (np.asarray(a)[0].transpose(1, 0, 2) for a in _inputs((1, 300, 4, 16), seed=3))
    one = attention_forward(q, k, v, block_q=32, block_k=64, threads=1, kernel=kernel)
    many = attention_forward(q, k, v, block_q=32, block_k=64, threads=3, kernel=kernel)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])


@needs_host
def test_host_kernel_choice(monkeypatch):
    resolve = _host_attention.resolve_kernel
    simd = "simd" if HAS_SIMD else "blas"
    monkeypatch.delenv("BULKRNABERT_SV_HOST_KERNEL", raising=False)
    assert resolve(None, 32) == simd
    assert resolve("auto", 64) == simd
    assert resolve("simd", 8) == simd
    assert resolve("simd", 12) == "blas"  # not a multiple of 8
    assert resolve("simd", 128) == "blas"  # too many accumulators for 16 registers
    assert resolve("blas", 32) == "blas"
    monkeypatch.setenv("BULKRNABERT_SV_HOST_KERNEL", "blas")
    assert resolve(None, 32) == "blas"
    with pytest.raises(ValueError, match="Unknown host attention kernel 'fast'"):
        resolve("fast", 32)
    monkeypatch.setattr(_simd_kernels, "host_supports_simd", lambda: False)
    assert resolve("simd", 32) == "blas"


@needs_host
def test_host_path_under_vmap():
    q, k, v = _inputs((2, 3, 70, 2, 8), seed=4)
    fn = jax.vmap(
        lambda q, k, v: attn.dot_product_attention(
            q, k, v, implementation="blockwise_host", block_q=16, block_k=32
        )
    )
    got = jax.jit(fn)(q, k, v)
    want = jax.vmap(lambda q, k, v: attn.dot_product_attention(q, k, v, implementation="xla"))(
        q, k, v
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


def _model_grads(implementation, remat):
    model = random_model(
        "small",
        attention_implementation=implementation,
        attention_block_q=24,
        attention_block_k=20,
        remat=remat,
        seed=3,
    )
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 8, (2, 64)), jnp.int32)

    def loss(model):
        out = model(tokens, embedding_layers=(1,))
        return jnp.mean(out["logits"] ** 2) + jnp.mean(out["embeddings_1"] ** 2)

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    return value, jax.tree_util.tree_leaves(nnx.state(grads, nnx.Param))


@pytest.mark.parametrize(
    ("implementation", "remat"),
    [("blockwise_jax", False), ("blockwise_host", False), ("blockwise_host", True)],
)
def test_small_model_gradients_match_between_implementations(implementation, remat):
    if implementation == "blockwise_host" and not available():
        pytest.skip("numba is not installed")
    if "model" not in _REFERENCE:
        _REFERENCE["model"] = _model_grads("xla", remat=False)
    ref_value, ref_grads = _REFERENCE["model"]
    value, grads = _model_grads(implementation, remat=remat)
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-6)
    assert len(grads) == len(ref_grads)
    # Relative to the largest gradient: some are exactly zero in theory (the key bias).
    scale = max(float(jnp.max(jnp.abs(g))) for g in ref_grads)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(
            np.asarray(got) / scale, np.asarray(want) / scale, rtol=0, atol=1e-5
        )


def test_bfloat16_small_model_close_to_float32():
    tokens = np.random.default_rng(1).integers(0, 8, (2, 64))
    emb = {}
    for dtype in ("float32", "bfloat16"):
        model = random_model("small", compute_dtype=dtype, attention_implementation="auto", seed=1)
        emb[dtype] = np.asarray(model.mean_embedding(tokens))
        assert emb[dtype].dtype == np.float32
        out = model(tokens)
        assert out["logits"].shape == (2, 64, 8)
        assert np.isfinite(np.asarray(out["logits"], np.float32)).all()
    rel = np.linalg.norm(emb["bfloat16"] - emb["float32"]) / np.linalg.norm(emb["float32"])
    assert rel < 1e-2


def test_bfloat16_blockwise_runs_and_returns_input_dtype():
    q, k, v = (a.astype(jnp.bfloat16) for a in _inputs((1, 1100, 2, 8), seed=5))
    out = attn.dot_product_attention(q, k, v, implementation="blockwise")
    assert out.dtype == jnp.bfloat16
    ref = attn.dot_product_attention(q, k, v, implementation="xla")
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=0, atol=2e-2
    )


def test_auto_resolution(monkeypatch):
    resolve = attn.resolve_implementation
    host = "blockwise_host" if available() else "blockwise_jax"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert resolve("auto", length=64, dtype=jnp.float32) == "xla"
    assert resolve("auto", length=attn.AUTO_MATERIALIZE_MAX_LENGTH, dtype=jnp.float32) == "xla"
    assert resolve("auto", length=19_062, dtype=jnp.float32) == host
    assert resolve("auto", length=19_062, dtype=jnp.bfloat16) == host
    assert resolve("blockwise", length=64, dtype=jnp.float32) == host
    assert resolve("blockwise_jax", length=19_062, dtype=jnp.float32) == "blockwise_jax"
    assert resolve("cudnn", length=19_062, dtype=jnp.bfloat16) == host  # no GPU: auto
    assert resolve("cudnn", length=64, dtype=jnp.float32) == "xla"
    assert resolve("xla", length=19_062, dtype=jnp.float32) == "xla"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve("auto", length=19_062, dtype=jnp.bfloat16) == "cudnn"
    assert resolve("auto", length=19_062, dtype=jnp.float16) == "cudnn"
    assert resolve("auto", length=64, dtype=jnp.bfloat16) == "cudnn"
    assert resolve("auto", length=19_062, dtype=jnp.float32) == "blockwise_jax"
    assert resolve("auto", length=64, dtype=jnp.float32) == "xla"
    assert resolve("blockwise_host", length=19_062, dtype=jnp.float32) == "blockwise_jax"
    assert resolve("cudnn", length=19_062, dtype=jnp.float32) == "blockwise_jax"
    with pytest.raises(ValueError, match="Unknown attention implementation"):
        resolve("flash", length=64, dtype=jnp.float32)


def test_cudnn_refusal_falls_back(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("cuDNN is not available")

    monkeypatch.setattr(jax.nn, "dot_product_attention", refuse)
    monkeypatch.setattr(attn, "resolve_implementation", lambda *a, **k: "cudnn")
    q, k, v = _inputs((1, 40, 2, 8), seed=6)
    with pytest.warns(RuntimeWarning, match="cuDNN attention is unavailable"):
        out = attn.dot_product_attention(q, k, v, implementation="cudnn")
    ref = attn._xla_attention(q, k, v, 8**-0.5)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-6)


def test_jax_loop_tiles_follow_the_platform_unless_given(monkeypatch):
    calls = []

    def record(q, k, v, scale, block_q, block_k, kernel):
        calls.append((block_q, block_k, kernel))
        return q

    monkeypatch.setattr(attn, "_blockwise_attention", record)
    q, k, v = _inputs((1, 40, 2, 8), seed=7)
    for backend, tiles in (("cpu", attn.JAX_BLOCKS_CPU), ("gpu", attn.JAX_BLOCKS_ACCELERATOR)):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        assert attn.default_jax_blocks() == tiles
        calls.clear()
        attn.dot_product_attention(q, k, v, implementation="blockwise_jax")
        attn.dot_product_attention(q, k, v, implementation="blockwise_jax", block_q=24, block_k=8)
        assert calls == [(*tiles, "jax"), (24, 8, "jax")]


def test_flops_per_layer_full_config():
    # 4 layers of attention over 19,062 genes: about 1.49 TFLOP per sample.
    total = 4 * attn.flops_per_layer(19_062, 8, 32)
    assert 1.48e12 < total < 1.50e12
