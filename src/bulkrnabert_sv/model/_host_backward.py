"""Exact, memory-linear backward pass of the host attention (numba kernels, AVX2/FMA).

The forward kernel (:mod:`._host_attention`) returns the attention output and the base-2
log-sum-exp ``lse`` of every query row. This module computes the gradients of that base-2
attention from them, recomputing the probability tiles as flash attention does: no (Lq, Lk) map
is ever stored. With ``qs`` the queries already multiplied by ``scale * log2(e)``,
``s = qs k^T``, ``p = 2**(s - lse)``, ``dp = dout v^T`` and ``delta = rowsum(dout * out)``::

    ds  = p * (dp - delta)
    dv  = p^T dout
    dk  = ln2 * ds^T qs
    dqs = ln2 * ds k

(``ln2`` because ``d 2**s / ds = ln2 * 2**s``; the result is the gradient with respect to the
``qs`` argument itself).

Work split: for one key block (``block_k`` keys) of one (batch, head) group, ``dk`` and ``dv``
of its keys stay in local accumulators while the kernel loops over all the group's query tiles
(``tile_q`` rows). For each tile it computes, one panel of 16 keys at a time, the probabilities
(the forward's fused ``Q K^T`` + ``exp2`` micro-kernel with ``lse`` as the shift) and ``ds``
(a ``dout V^T`` micro-kernel that starts from ``-delta`` and multiplies by ``p`` in registers),
then ``dv += p^T dout`` and ``dk += ds^T qs`` (register-blocked over 6 or 12 keys, the tile's
query rows as the reduction) and ``dqs += ds k`` (register-blocked over the tile's query rows):
one pass, five matrix products per tile. Every ``dqs`` row gets contributions from all key
blocks; a *task* is one *stripe* of a group's key blocks (blocks ``s, s + S, s + 2S, ...``),
and each stripe adds into its own ``(G, Lq, D)`` ``dqs`` buffer, summed in a fixed order at the
end: no two threads write the same memory and the result does not depend on which thread ran
which task (:func:`stripes_for` picks ``S``).

Only ``"simd"`` (AVX2/FMA, head sizes that are multiples of 8 up to 64) is implemented here;
:func:`supported` says whether it can run, and :mod:`.attention` otherwise uses its JAX loops.
"""

from __future__ import annotations

import math

import numpy as np

from . import _simd_kernels
from ._host_attention import THRESHOLD, _run_tasks, num_threads
from ._simd_kernels import EXP2_MIN, LANES, PANEL, QK_ROWS

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = ["DEFAULT_BLOCKS", "attention_backward", "supported"]

#: (query rows per tile, keys per task) of the backward kernel. Keys per task are rounded up to a
#: multiple of 48 (the panel width and both register-block heights divide it), query rows to a
#: multiple of 12. Two float32 tiles of 96 x 480 (p and ds) are 360 KiB, in L2 next to the
#: task's dk/dv accumulators.
DEFAULT_BLOCKS = (96, 480)
_KEY_MULTIPLE = 48
_ROW_MULTIPLE = _simd_kernels.TILE_ROWS_MULTIPLE
#: lse of padded query rows: their probabilities underflow to 2**-125 (their dout rows are zero).
_PAD_LSE = np.float32(1e30)
_LN2 = np.float32(math.log(2.0))
#: Tasks per worker thread the key-block stripes aim at (load balance on a shared machine).
TASKS_PER_THREAD = 16
#: Most key-block stripes per group (each stripe adds a (G, Lq, D) float32 dq buffer).
MAX_STRIPES = 4


def supported(head_dim: int) -> bool:
    """Whether the backward kernel runs here for this head size (numba, AVX2/FMA, D % 8 == 0,
    D <= 64)."""
    return (
        _HAVE_NUMBA
        and _simd_kernels.host_supports_simd()
        and _simd_kernels.supports_head_dim(head_dim)
    )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


if _HAVE_NUMBA:
    from ._simd_kernels import _data, _Emitter, _head_dim, accumulate_run, pv_shape

    def _panel_products(e, ap, row_offsets, panels, panel_off, rows, head_dim):
        """``rows x 16`` products of rows of ``ap`` (at ``row_offsets``) with one panel: the
        accumulators (``rows`` lists of two 8-lane vectors), started from zero."""
        vectors = PANEL // LANES
        acc = [[e.splat(0.0)] * vectors for _ in range(rows)]
        for d in range(head_dim):
            values = [
                e.load(panels, e.offset(panel_off, PANEL * d + LANES * c)) for c in range(vectors)
            ]
            for r in range(rows):
                weight = e.broadcast_load(ap, e.offset(row_offsets[r], d))
                for c in range(vectors):
                    acc[r][c] = e.fma(weight, values[c], acc[r][c])
        return acc

    def make_p_kernel(rows: int):
        """``p(q, q_off, q_stride, kp, k_off, out, s_off, s_stride, lse, lse_off, valid,
        marker)``: ``out[s_off + r s_stride + c] = 2**(q_r . k_c - lse[lse_off + r])`` for
        ``r < rows`` and the keys ``c < valid`` of one panel of 16 (zero for ``c >= valid``).

        Unlike the forward's kernels the logits are accumulated from zero and the shift is taken
        afterwards: started from ``-lse`` (about ``log2 Lk``, larger than the logits) the
        rounding of every FMA would be relative to ``lse``, and the probabilities about twice as
        far from float64 as the JAX loops'. The exponent is clamped to ``[-125, THRESHOLD]``.
        """
        vectors = PANEL // LANES
        intp = types.intp
        v8 = ir.VectorType(ir.FloatType(), LANES)

        def generate(context, builder, signature, args):
            e = _Emitter(builder)
            head_dim = _head_dim(signature)
            q, q_off, q_stride, kp, k_off, out, s_off, s_stride, lse, lse_off, valid = args[:11]
            qp = _data(context, builder, signature.args[0], q)
            kpp = _data(context, builder, signature.args[3], kp)
            outp = _data(context, builder, signature.args[5], out)
            lsep = _data(context, builder, signature.args[8], lse)
            row_offsets = [e.offset(q_off, stride=q_stride, times=r) for r in range(rows)]
            acc = _panel_products(e, qp, row_offsets, kpp, k_off, rows, head_dim)
            valid_lanes = e.broadcast(e.b.sitofp(valid, ir.FloatType()))
            for r in range(rows):
                row = e.offset(s_off, stride=s_stride, times=r)
                shift = e.broadcast_load(lsep, e.offset(lse_off, r))
                for c in range(vectors):
                    value = e.clamp(e.b.fsub(acc[r][c], shift), EXP2_MIN, THRESHOLD)
                    value = e.exp2(value)
                    lanes = ir.Constant(v8, [float(LANES * c + i) for i in range(LANES)])
                    keep = e.b.fcmp_ordered("<", lanes, valid_lanes)
                    value = e.b.select(keep, value, e.splat(0.0))
                    e.store(value, outp, e.offset(row, LANES * c))
            return context.get_dummy_value()

        @intrinsic
        def p_kernel(
            typingctx,
            q,
            q_off,
            q_stride,
            kp,
            k_off,
            out,
            s_off,
            s_stride,
            lse,
            lse_off,
            valid,
            marker,
        ):
            if not isinstance(marker, types.UniTuple):
                return None
            sig = types.void(q, intp, intp, kp, intp, out, intp, intp, lse, intp, intp, marker)
            return sig, generate

        return p_kernel

    def make_ds_kernel(rows: int):
        """``ds(do, do_off, do_stride, vp, v_off, p, out, s_off, s_stride, delta, delta_off,
        marker)``: for ``r < rows`` and the 16 keys of one value panel,
        ``out[s_off + r s_stride + c] = p[same] * (sum_d do[do_off + r do_stride + d]
        vp[v_off + 16 d + c] - delta[delta_off + r])``. The products are accumulated from zero
        and ``delta`` is subtracted afterwards, as in :func:`make_p_kernel`; the product with
        ``p`` is taken in registers."""
        vectors = PANEL // LANES
        intp = types.intp

        def generate(context, builder, signature, args):
            e = _Emitter(builder)
            head_dim = _head_dim(signature)
            do, do_off, do_stride, vp, v_off, p, out, s_off, s_stride, delta, delta_off = args[:11]
            dop = _data(context, builder, signature.args[0], do)
            vpp = _data(context, builder, signature.args[3], vp)
            pp = _data(context, builder, signature.args[5], p)
            outp = _data(context, builder, signature.args[6], out)
            deltap = _data(context, builder, signature.args[9], delta)
            row_offsets = [e.offset(do_off, stride=do_stride, times=r) for r in range(rows)]
            acc = _panel_products(e, dop, row_offsets, vpp, v_off, rows, head_dim)
            for r in range(rows):
                row = e.offset(s_off, stride=s_stride, times=r)
                shift = e.broadcast_load(deltap, e.offset(delta_off, r))
                for c in range(vectors):
                    at = e.offset(row, LANES * c)
                    value = e.b.fsub(acc[r][c], shift)
                    e.store(e.b.fmul(value, e.load(pp, at)), outp, at)
            return context.get_dummy_value()

        @intrinsic
        def ds_kernel(
            typingctx,
            do,
            do_off,
            do_stride,
            vp,
            v_off,
            p,
            out,
            s_off,
            s_stride,
            delta,
            delta_off,
            marker,
        ):
            if not isinstance(marker, types.UniTuple):
                return None
            sig = types.void(do, intp, intp, vp, intp, p, out, intp, intp, delta, intp, marker)
            return sig, generate

        return ds_kernel

    def make_strided_pv_kernel():
        """``pv(p, p_off, p_row, p_step, v, v_off, v_stride, acc, acc_off, acc_stride, count,
        marker)``: for ``r < rows``, ``acc[acc_off + r acc_stride : + width] += sum_{j < count}
        p[p_off + r p_row + j p_step] v[v_off + j v_stride : + width]`` (``rows, width =
        pv_shape(D)``), the accumulators in registers over the whole run. ``p_row=1,
        p_step=stride`` reads ``p`` transposed (``p^T dout``), ``p_row=stride, p_step=1`` as
        stored (``ds k``)."""
        intp = types.intp

        def generate(context, builder, signature, args):
            e = _Emitter(builder)
            head_dim = _head_dim(signature)
            rows, width = pv_shape(head_dim)
            vectors = width // LANES
            p, p_off, p_row, p_step, v, v_off, v_stride, acc, acc_off, acc_stride, count = args[:11]
            pp = _data(context, builder, signature.args[0], p)
            vp = _data(context, builder, signature.args[4], v)
            ap = _data(context, builder, signature.args[7], acc)
            acc_rows = [e.offset(acc_off, stride=acc_stride, times=r) for r in range(rows)]
            p_rows = [e.offset(p_off, stride=p_row, times=r) for r in range(rows)]
            accumulate_run(e, pp, p_rows, p_step, vp, v_off, v_stride, ap, acc_rows, vectors, count)
            return context.get_dummy_value()

        @intrinsic
        def strided_pv(
            typingctx,
            p,
            p_off,
            p_row,
            p_step,
            v,
            v_off,
            v_stride,
            acc,
            acc_off,
            acc_stride,
            count,
            marker,
        ):
            if not isinstance(marker, types.UniTuple):
                return None
            sig = types.void(p, intp, intp, intp, v, intp, intp, acc, intp, intp, intp, marker)
            return sig, generate

        return strided_pv

    _P = make_p_kernel(QK_ROWS)
    _DS = make_ds_kernel(QK_ROWS)
    _PV = make_strided_pv_kernel()

    @numba.njit(nogil=True, cache=True)
    def _backward_tasks(
        q,
        do,
        lse,
        delta,
        kp,
        vp,
        k_rows,
        dk,
        dv,
        out_strides,
        heads,
        lq_pad,
        lk,
        tile_q,
        block_k,
        marker,
        chunk,
        rows_pv,
        width_pv,
        dq,
        first,
        step,
    ):
        """Tasks ``first, first + step, ...`` of the backward pass (see the module docstring).

        q, do: (G, lq_pad, D) heads-first, padded rows zero; lse, delta: (G, lq_pad); kp, vp: key
        and value panels (G, lk_pad // 16, D, 16); k_rows: (G, lk, D); dq: this worker's
        (G, lq_pad, D) accumulator; dk, dv: outputs written through ``out_strides``
        (stride_b, stride_h, stride_l) as the forward's outputs. All flat float32. Not compiled
        with fastmath (the kernels' exp2 and clamps rely on IEEE semantics).
        """
        d = len(marker)
        panel, rows_qk = PANEL, QK_ROWS
        groups = lse.shape[0] // lq_pad
        lk_pad = kp.shape[0] // (groups * d)
        nk = (lk + block_k - 1) // block_k
        ln2 = np.float32(_LN2)
        probs = np.zeros(tile_q * block_k, np.float32)
        dsb = np.zeros(tile_q * block_k, np.float32)
        dk_acc = np.zeros(block_k * d, np.float32)
        dv_acc = np.zeros(block_k * d, np.float32)
        stripes = dq.shape[0] // (groups * lq_pad * d)
        for task in range(first, groups * stripes, step):
            g = task // stripes
            stripe = task % stripes
            dq_group = stripe * groups * lq_pad * d  # this stripe's dq buffer
            for block in range(stripe, nk, stripes):
                j0 = block * block_k
                w = min(block_k, lk - j0)
                w_panels = (w + panel - 1) // panel * panel
                w_rows = (w + rows_pv - 1) // rows_pv * rows_pv
                if w < block_k:  # columns past the last panel must read as zero probabilities
                    probs[:] = 0.0
                    dsb[:] = 0.0
                dk_acc[:] = 0.0
                dv_acc[:] = 0.0
                k_off = (g * lk_pad + j0) * d
                kr_off = (g * lk + j0) * d
                for i0 in range(0, lq_pad, tile_q):
                    q_base = (g * lq_pad + i0) * d
                    m_base = g * lq_pad + i0
                    # p and ds, one chunk of panels at a time (the chunk's key and value panels stay
                    # in L1 over the tile's rows)
                    for c0 in range(0, w_panels, chunk):
                        c1 = min(c0 + chunk, w_panels)
                        for i in range(0, tile_q, rows_qk):
                            for jj in range(c0, c1, panel):
                                s_off = i * block_k + jj
                                _P(
                                    q,
                                    q_base + i * d,
                                    d,
                                    kp,
                                    k_off + jj * d,
                                    probs,
                                    s_off,
                                    block_k,
                                    lse,
                                    m_base + i,
                                    min(panel, w - jj),
                                    marker,
                                )
                                _DS(
                                    do,
                                    q_base + i * d,
                                    d,
                                    vp,
                                    k_off + jj * d,
                                    probs,
                                    dsb,
                                    s_off,
                                    block_k,
                                    delta,
                                    m_base + i,
                                    marker,
                                )
                    # dv += p^T dout, dk += ds^T q: register blocks of keys, the tile's rows summed
                    for r in range(0, w_rows, rows_pv):
                        for col in range(0, d, width_pv):
                            _PV(
                                probs,
                                r,
                                1,
                                block_k,
                                do,
                                q_base + col,
                                d,
                                dv_acc,
                                r * d + col,
                                d,
                                tile_q,
                                marker,
                            )
                            _PV(
                                dsb,
                                r,
                                1,
                                block_k,
                                q,
                                q_base + col,
                                d,
                                dk_acc,
                                r * d + col,
                                d,
                                tile_q,
                                marker,
                            )
                    # dq += ds k: register blocks of query rows, the block's keys summed
                    for c0 in range(0, w, chunk):
                        keys = min(chunk, w - c0)
                        for col in range(0, d, width_pv):
                            for i in range(0, tile_q, rows_pv):
                                _PV(
                                    dsb,
                                    i * block_k + c0,
                                    block_k,
                                    1,
                                    k_rows,
                                    kr_off + c0 * d + col,
                                    d,
                                    dq,
                                    dq_group + q_base + i * d + col,
                                    d,
                                    keys,
                                    marker,
                                )
                base = (g // heads) * out_strides[0] + (g % heads) * out_strides[1]
                for j in range(w):
                    row = base + (j0 + j) * out_strides[2]
                    for c in range(d):
                        dk[row + c] = dk_acc[j * d + c] * ln2
                        dv[row + c] = dv_acc[j * d + c]


def stripes_for(groups: int, key_blocks: int, threads: int | None = None) -> int:
    """Key-block stripes per group: tasks are (group, stripe) pairs, each with its own ``dq``
    buffer, so that the gradients do not depend on which thread ran which task. Enough stripes
    for :data:`TASKS_PER_THREAD` tasks per thread, at most :data:`MAX_STRIPES` (each costs a
    ``(G, Lq, D)`` float32 buffer) and at most one per key block."""
    workers = threads or num_threads()
    wanted = -(-TASKS_PER_THREAD * workers // groups)
    return max(1, min(wanted, MAX_STRIPES, key_blocks))


def attention_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    lse: np.ndarray,
    dout: np.ndarray,
    *,
    layout: str = "heads_first",
    block_q: int | None = None,
    block_k: int | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of the base-2 attention of :func:`._host_attention.attention_forward`.

    Parameters
    ----------
    q, k, v
        The forward's inputs (queries already multiplied by ``scale * log2(e)``), float32, shape
        (..., L, D) with ``layout="heads_first"`` or (..., L, H, D) with ``layout="bshd"``.
    out, lse
        The forward's outputs: the attention output (shaped as ``q``) and the base-2
        log-sum-exp, (..., Lq) or (..., H, Lq).
    dout
        The gradient with respect to ``out``.
    layout
        ``"heads_first"`` or ``"bshd"``.
    block_q, block_k
        Query rows per tile and keys per task (default :data:`DEFAULT_BLOCKS`; rounded up to
        multiples of 12 and 48).
    threads
        Worker threads (default :func:`._host_attention.num_threads`).

    Returns
    -------
    dq, dk, dv
        Gradients with respect to the ``q`` argument (the scaled queries), ``k`` and ``v``,
        float32, shaped as the inputs.
    """
    if layout not in ("heads_first", "bshd"):
        raise ValueError(f"Unknown layout {layout!r}; choose 'heads_first' or 'bshd'.")
    q, k, v, out, dout, lse = (
        np.ascontiguousarray(x, dtype=np.float32) for x in (q, k, v, out, dout, lse)
    )
    if layout == "bshd":
        *lead, lq, heads, d = q.shape
        lk = k.shape[-3]
    else:
        *lead, lq, d = q.shape
        lk, heads = k.shape[-2], 1
    if not supported(d):
        raise RuntimeError(
            f"the host attention backward needs numba, AVX2/FMA and D % 8 == 0, D <= 64 (got D={d})"
        )
    batch = int(np.prod(lead, dtype=np.int64))
    groups = batch * heads
    dk = np.empty(k.shape, np.float32)
    dv = np.empty(v.shape, np.float32)
    if groups == 0 or lq == 0 or lk == 0:
        dk[...] = 0.0
        dv[...] = 0.0
        return np.zeros(q.shape, np.float32), dk, dv

    def heads_first(x, length):
        if layout == "bshd":
            return np.moveaxis(x.reshape(batch, length, heads, d), 2, 1).reshape(groups, length, d)
        return x.reshape(groups, length, d)

    default_q, default_k = DEFAULT_BLOCKS
    tile_q = _round_up(max(1, min(int(block_q or default_q), lq)), _ROW_MULTIPLE)
    block_k = _round_up(max(1, min(int(block_k or default_k), lk)), _KEY_MULTIPLE)
    lq_pad = _round_up(lq, tile_q)
    # Queries and output gradients heads-first, padded with zero rows: each is read once per key
    # block; rows H * D apart would thrash the caches.
    q_hf = _simd_kernels.aligned_empty((groups, lq_pad, d))
    do_hf = _simd_kernels.aligned_empty((groups, lq_pad, d))
    q_hf[:, :lq] = heads_first(q, lq)
    do_hf[:, :lq] = heads_first(dout, lq)
    q_hf[:, lq:] = 0.0
    do_hf[:, lq:] = 0.0
    lse_p = np.full((groups, lq_pad), _PAD_LSE, np.float32)
    lse_p[:, :lq] = lse.reshape(groups, lq)
    delta = np.zeros((groups, lq_pad), np.float32)
    delta[:, :lq] = np.einsum("gld,gld->gl", do_hf[:, :lq], heads_first(out, lq))
    k_hf = heads_first(k, lk)
    lk_pad = _round_up(lk, PANEL)
    kp = _simd_kernels.pack_key_panels(k_hf, lk_pad)
    vp = _simd_kernels.pack_key_panels(heads_first(v, lk), lk_pad)
    k_rows = _simd_kernels.aligned_empty((groups, lk, d))
    k_rows[...] = k_hf
    if layout == "bshd":
        out_strides = np.array([lk * heads * d, d, heads * d], np.int64)
    else:
        out_strides = np.array([lk * d, 0, d], np.int64)
    rows_pv, width_pv = _simd_kernels.pv_shape(d)
    args = (
        q_hf.reshape(-1),
        do_hf.reshape(-1),
        lse_p.reshape(-1),
        delta.reshape(-1),
        kp,
        vp,
        k_rows.reshape(-1),
    )
    args += (dk.reshape(-1), dv.reshape(-1), out_strides, heads, lq_pad, lk, tile_q, block_k)
    args += (_simd_kernels.head_dim_marker(d), _simd_kernels.key_chunk(d), rows_pv, width_pv)
    stripes = stripes_for(groups, -(-lk // block_k), threads)
    dq_parts = np.zeros((stripes, groups, lq_pad, d), np.float32)
    _run_tasks(_backward_tasks, (*args, dq_parts.reshape(-1)), groups * stripes, threads)
    dq_hf = dq_parts[0, :, :lq]
    for part in dq_parts[1:]:  # in a fixed order: the same sums whichever thread ran a task
        dq_hf += part[:, :lq]
    dq_hf *= _LN2
    if layout == "bshd":
        dq = np.moveaxis(dq_hf.reshape(batch, heads, lq, d), 1, 2).reshape(q.shape)
        return np.ascontiguousarray(dq), dk, dv
    return np.ascontiguousarray(dq_hf.reshape(q.shape)), dk, dv
