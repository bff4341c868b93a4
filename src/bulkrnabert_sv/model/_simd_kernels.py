"""Register-blocked AVX2/FMA micro-kernels for the host attention, written as LLVM IR.

OpenBLAS runs the two thin products of attention with 32-wide heads (``Q K^T`` has an inner
dimension of 32, ``P V`` an output width of 32) at about two thirds of its large-GEMM rate, and the
softmax then needs its own pass over every tile. The three kernels here keep their accumulators in
the 16 vector registers of an AVX2 core instead, as a GEMM micro-kernel does:

:func:`make_qk_kernel`
    ``R`` query rows (:data:`QK_ROWS`) against one *panel* of 16 keys (the keys of a panel stored
    ``(D, 16)``, contiguous): ``2 R`` accumulators, the head dimension unrolled. In its ``"exp"``
    form the logits never leave the registers raw: each is shifted by its row's running maximum,
    clamped as in :mod:`._host_attention`, passed through a vectorised ``exp2`` and stored as a
    probability, and the row sums are accumulated on the way (per lane, summed by the caller).
:func:`make_pv_kernel`
    ``acc[r, c0 : c0 + W] += sum_j p[r, j] v[j, c0 : c0 + W]`` for ``R`` rows and a column slice
    of width ``W`` (:func:`pv_shape`), over a run of keys; the ``R * W / 8`` accumulators stay in
    registers for the whole run.

Both use 12 accumulators: an FMA has a latency of 4 cycles on two ports, so 8 independent chains
would only just keep the ports busy, and the 4 spare chains leave room for the ``exp2`` and the
loads (the measurements are in docs/benchmarks.md). 12 accumulators plus the loaded keys (or values) and one broadcast fill the 16 AVX2 registers.

The kernels are :func:`numba.extending.intrinsic` functions, inlined into the numba code that
calls them. They are specialised for the row count when built, and for the head dimension when
compiled: it is the length of their last argument, a tuple (:func:`head_dim_marker`), so that it is
part of the argument types. numba then compiles (and caches on disk) one version of the calling
function per head size, and finds it again on each call without re-typing.

``exp2`` here: ``n = rint(x)``, ``f = x - n`` in ``[-1/2, 1/2]``, ``2**f`` by the degree-6 fit
:data:`EXP2_COEFFICIENTS` (shared with the scalar code of :mod:`._host_attention`; relative error
below 3e-9), and ``2**n`` added to the exponent bits.
Inputs are clamped to ``[-125, THRESHOLD]`` first (NaN stays NaN), so the result is always a
normal float32, unless the caller says that it knows them to be in range.
"""

from __future__ import annotations

import numpy as np

try:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

#: Keys per panel: two 8-lane AVX vectors.
PANEL = 16
LANES = 8
#: Query rows of one ``Q K^T`` kernel call (12 accumulators of 8 lanes).
QK_ROWS = 6
#: Rows of a probability tile must be a multiple of this (both kernels' row counts divide it).
TILE_ROWS_MULTIPLE = 12
#: Degree-6 polynomial for 2**f on [-1/2, 1/2] (least squares at Chebyshev nodes), lowest degree
#: first; also used by the scalar code of _host_attention.
EXP2_COEFFICIENTS = (
    1.0,
    0.69314718,
    0.24022651,
    0.055503272,
    0.0096180253,
    0.0013400437,
    0.00015469737,
)
#: Lower clamp of the exponent: 2**-125 is still a normal float32.
EXP2_MIN = -125.0


def host_supports_simd() -> bool:
    """Whether numba compiles for a CPU with AVX2 and FMA (the kernels' vector width)."""
    if not _HAVE_NUMBA:
        return False
    import llvmlite.binding as llvm
    from numba.core import config

    if config.CPU_NAME not in (None, "host", llvm.get_host_cpu_name()):
        return False  # compiling for another (e.g. generic) CPU: vector FMAs would be emulated
    features = llvm.get_host_cpu_features()
    return bool(features.get("avx2")) and bool(features.get("fma"))


def pv_shape(head_dim: int) -> tuple[int, int]:
    """Rows and column width of one :func:`make_pv_kernel` call: 12 accumulators of 8 lanes.

    Width 16 (6 rows) where the head dimension is a multiple of 16, else 8 (12 rows); wider heads
    take several calls, one per column slice.
    """
    width = 2 * LANES if head_dim % (2 * LANES) == 0 else LANES
    return 12 * LANES // width, width


def key_chunk(head_dim: int) -> int:
    """Keys per chunk of the task loop: 16 KiB of key panels (half of a 32 KiB L1 cache)."""
    return max(PANEL, (16384 // (4 * head_dim)) // PANEL * PANEL)


def head_dim_marker(head_dim: int) -> tuple[int, ...]:
    """``head_dim`` zeros: the kernels' last argument, whose tuple type carries the head size."""
    return (0,) * head_dim


def supports_head_dim(head_dim: int) -> bool:
    """The kernels need a head dimension that is a multiple of 8 and at most 64."""
    return head_dim % LANES == 0 and 0 < head_dim <= 64


if _HAVE_NUMBA:
    _F32 = ir.FloatType()
    _I32 = ir.IntType(32)
    _I64 = ir.IntType(64)
    _V8 = ir.VectorType(_F32, LANES)
    _VI8 = ir.VectorType(_I32, LANES)

    class _Emitter:
        """Small helpers over an :class:`llvmlite.ir.IRBuilder` for 8-lane float vectors."""

        def __init__(self, builder: ir.IRBuilder):
            self.b = builder
            module = builder.module
            v3 = ir.FunctionType(_V8, [_V8, _V8, _V8])
            v1 = ir.FunctionType(_V8, [_V8])
            self._fma = cgutils.get_or_insert_function(module, v3, "llvm.fma.v8f32")
            self._rint = cgutils.get_or_insert_function(module, v1, "llvm.rint.v8f32")

        @staticmethod
        def splat(value: float) -> ir.Constant:
            return ir.Constant(_V8, [float(value)] * LANES)

        def offset(self, base, constant: int = 0, stride=None, times: int = 0):
            """``base + stride * times + constant`` as an i64 value."""
            value = base
            if stride is not None and times:
                value = self.b.add(value, self.b.mul(stride, ir.Constant(_I64, times)))
            if constant:
                value = self.b.add(value, ir.Constant(_I64, constant))
            return value

        def _vector_pointer(self, base, offset):
            return self.b.bitcast(self.b.gep(base, [offset]), _V8.as_pointer())

        def load(self, base, offset):
            return self.b.load(self._vector_pointer(base, offset), align=4, typ=_V8)

        def store(self, value, base, offset):
            self.b.store(value, self._vector_pointer(base, offset), align=4)

        def broadcast(self, scalar):
            vector = self.b.insert_element(
                ir.Constant(_V8, ir.Undefined), scalar, ir.Constant(_I32, 0)
            )
            mask = ir.Constant(_VI8, [0] * LANES)
            return self.b.shuffle_vector(vector, ir.Constant(_V8, ir.Undefined), mask)

        def broadcast_load(self, base, offset):
            return self.broadcast(self.b.load(self.b.gep(base, [offset]), typ=_F32))

        def fma(self, a, b, c):
            return self.b.call(self._fma, [a, b, c])

        def clamp(self, x, low: float, high: float):
            """``min(max(x, low), high)``, NaN kept (ordered comparisons are false for NaN)."""
            b = self.b
            x = b.select(b.fcmp_ordered(">", x, self.splat(high)), self.splat(high), x)
            return b.select(b.fcmp_ordered("<", x, self.splat(low)), self.splat(low), x)

        def exp2(self, x):
            """``2**x`` for x in [-125, 126] (see the module docstring)."""
            b = self.b
            n = b.call(self._rint, [x])
            f = b.fsub(x, n)
            p = self.splat(EXP2_COEFFICIENTS[-1])
            for c in reversed(EXP2_COEFFICIENTS[:-1]):
                p = self.fma(p, f, self.splat(c))
            exponent = b.shl(b.fptosi(n, _VI8), ir.Constant(_VI8, [23] * LANES))
            return b.bitcast(b.add(b.bitcast(p, _VI8), exponent), _V8)

    def _data(context, builder, array_type, array):
        return context.make_array(array_type)(context, builder, array).data

    def _head_dim(signature) -> int:
        """The head size a kernel is built for: the length of its last argument's tuple type."""
        return signature.args[-1].count

    def make_qk_kernel(rows: int, mode: str, threshold: float):
        """A kernel for ``rows`` query rows against one panel of 16 keys.

        Its last argument is :func:`head_dim_marker` of the head size: the kernel is specialised
        for that tuple's length, which is part of its type.

        ``mode="raw"``: ``qk(q, q_off, q_stride, kp, k_off, s, s_off, s_stride, marker)`` stores
        the logits ``s[r, c] = sum_d q[q_off + r q_stride + d] kp[k_off + 16 d + c]``.

        ``mode="exp"``: ``qk(q, q_off, q_stride, kp, k_off, s, s_off, s_stride, m, m_off, sums,
        sums_off, valid, clamp, marker)`` stores ``2**clamp(s - m[m_off + r], -125, threshold)`` instead,
        zero for panel columns ``c >= valid``, and adds each row's values lane-wise to
        ``sums[sums_off + 8 r : sums_off + 8 r + 8]``. ``mode="exp_full"`` is the same for a full
        panel (``valid`` is ignored, no masking).

        ``clamp`` zero skips the clamp (two vector operations fewer per 8 logits): the caller must
        then know every shifted logit ``s - m`` to lie in ``[-125, 126]``, where the ``exp2`` is
        exact without it. The branch is taken once per call.
        """
        if mode not in ("raw", "exp", "exp_full"):
            raise ValueError(mode)
        vectors = PANEL // LANES
        intp = types.intp

        def generate(context, builder, signature, args):
            e = _Emitter(builder)
            head_dim = _head_dim(signature)
            q, q_off, q_stride, kp, k_off, s, s_off, s_stride = args[:8]
            qp = _data(context, builder, signature.args[0], q)
            kpp = _data(context, builder, signature.args[3], kp)
            sp = _data(context, builder, signature.args[5], s)
            row_offsets = [e.offset(q_off, stride=q_stride, times=r) for r in range(rows)]
            if mode == "raw":
                acc = [[e.splat(0.0)] * vectors for _ in range(rows)]
            else:
                # Start from -m: the accumulated value is the shifted logit s - m.
                m, m_off = args[8], args[9]
                mp = _data(context, builder, signature.args[8], m)
                acc = []
                for r in range(rows):
                    shift = e.broadcast_load(mp, e.offset(m_off, r))
                    acc.append([e.b.fsub(e.splat(0.0), shift)] * vectors)
            for d in range(head_dim):
                keys = [e.load(kpp, e.offset(k_off, PANEL * d + LANES * c)) for c in range(vectors)]
                for r in range(rows):
                    query = e.broadcast_load(qp, e.offset(row_offsets[r], d))
                    for c in range(vectors):
                        acc[r][c] = e.fma(query, keys[c], acc[r][c])
            if mode == "raw":
                for r in range(rows):
                    out_row = e.offset(s_off, stride=s_stride, times=r)
                    for c in range(vectors):
                        e.store(acc[r][c], sp, e.offset(out_row, LANES * c))
                return context.get_dummy_value()

            sums, sums_off, valid, clamp = args[10:14]
            sump = _data(context, builder, signature.args[10], sums)
            valid_lanes = e.b.insert_element(
                ir.Constant(_VI8, ir.Undefined), e.b.trunc(valid, _I32), ir.Constant(_I32, 0)
            )
            valid_lanes = e.b.shuffle_vector(
                valid_lanes, ir.Constant(_VI8, ir.Undefined), ir.Constant(_VI8, [0] * LANES)
            )

            def store_probabilities(clamped: bool):
                for r in range(rows):
                    out_row = e.offset(s_off, stride=s_stride, times=r)
                    sum_offset = e.offset(sums_off, LANES * r)
                    total = e.load(sump, sum_offset)
                    for c in range(vectors):
                        value = acc[r][c]
                        if clamped:
                            value = e.clamp(value, EXP2_MIN, threshold)
                        value = e.exp2(value)
                        if mode == "exp":
                            lanes = ir.Constant(_VI8, [LANES * c + i for i in range(LANES)])
                            keep = e.b.icmp_signed("<", lanes, valid_lanes)
                            value = e.b.select(keep, value, e.splat(0.0))
                        total = e.b.fadd(total, value)
                        e.store(value, sp, e.offset(out_row, LANES * c))
                    e.store(total, sump, sum_offset)

            with builder.if_else(builder.icmp_signed("!=", clamp, ir.Constant(clamp.type, 0))) as (
                with_clamp,
                without_clamp,
            ):
                with with_clamp:
                    store_probabilities(True)
                with without_clamp:
                    store_probabilities(False)
            return context.get_dummy_value()

        if mode == "raw":

            @intrinsic
            def qk_raw(typingctx, q, q_off, q_stride, kp, k_off, s, s_off, s_stride, marker):
                if not isinstance(marker, types.UniTuple):
                    return None
                sig = types.void(q, intp, intp, kp, intp, s, intp, intp, marker)
                return sig, generate

            return qk_raw

        @intrinsic
        def qk_exp(
            typingctx,
            q,
            q_off,
            q_stride,
            kp,
            k_off,
            s,
            s_off,
            s_stride,
            m,
            m_off,
            sums,
            sums_off,
            valid,
            clamp,
            marker,
        ):
            if not isinstance(marker, types.UniTuple):
                return None
            sig = types.void(
                q, intp, intp, kp, intp, s, intp, intp, m, intp, sums, intp, intp, intp, marker
            )
            return sig, generate

        return qk_exp

    def accumulate_run(e, pp, p_rows, p_step, vp, v_off, v_stride, ap, acc_rows, vectors, count):
        """Emit ``acc[acc_rows[r] : + 8 vectors] += sum_{j < count} p[p_rows[r] + j p_step]
        v[v_off + j v_stride : + 8 vectors]`` for every row ``r``, the accumulators held in
        registers over the whole run (loaded before it, stored after it). ``p_step=None``: the
        ``p`` of a row are contiguous (step 1, no multiply)."""
        builder = e.b
        slots = []
        for row in acc_rows:
            for c in range(vectors):
                offset = e.offset(row, LANES * c)
                slot = cgutils.alloca_once(builder, _V8)
                builder.store(e.load(ap, offset), slot)
                slots.append((slot, offset))

        def step(j):
            v_row = builder.add(v_off, builder.mul(j, v_stride))
            p_col = j if p_step is None else builder.mul(j, p_step)
            values = [e.load(vp, e.offset(v_row, LANES * c)) for c in range(vectors)]
            for r, p_row in enumerate(p_rows):
                weight = e.broadcast_load(pp, builder.add(p_row, p_col))
                for c in range(vectors):
                    slot = slots[r * vectors + c][0]
                    builder.store(e.fma(weight, values[c], builder.load(slot)), slot)

        with cgutils.for_range(builder, count) as loop:
            step(loop.index)
        for slot, offset in slots:
            e.store(builder.load(slot), ap, offset)

    def make_pv_kernel():
        """``pv(p, p_off, p_stride, v, v_off, v_stride, acc, acc_off, count, marker)``: for
        ``r < rows``, ``acc[acc_off + r D : + width] += sum_{j < count} p[p_off + r p_stride + j]
        v[v_off + j v_stride : + width]`` (``D`` the head size, the row stride of ``acc``; ``rows,
        width = pv_shape(D)``). ``marker`` is :func:`head_dim_marker` of ``D``, as for
        :func:`make_qk_kernel`.
        """
        intp = types.intp

        def generate(context, builder, signature, args):
            e = _Emitter(builder)
            head_dim = _head_dim(signature)
            rows, width = pv_shape(head_dim)
            vectors = width // LANES
            p, p_off, p_stride, v, v_off, v_stride, acc, acc_off, count = args[:9]
            pp = _data(context, builder, signature.args[0], p)
            vp = _data(context, builder, signature.args[3], v)
            ap = _data(context, builder, signature.args[6], acc)
            acc_rows = [e.offset(acc_off, r * head_dim) for r in range(rows)]
            p_rows = [e.offset(p_off, stride=p_stride, times=r) for r in range(rows)]
            accumulate_run(e, pp, p_rows, None, vp, v_off, v_stride, ap, acc_rows, vectors, count)
            return context.get_dummy_value()

        @intrinsic
        def pv(typingctx, p, p_off, p_stride, v, v_off, v_stride, acc, acc_off, count, marker):
            if not isinstance(marker, types.UniTuple):
                return None
            sig = types.void(p, intp, intp, v, intp, intp, acc, intp, intp, marker)
            return sig, generate

        return pv


def aligned_empty(shape, dtype=np.float32, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``alignment``-byte boundary.

    numpy only guarantees 16 bytes; the kernels' 32-byte loads from a 16-byte-aligned panel cross
    a cache line every other time.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(count * dtype.itemsize + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)


def pack_key_panels(k: np.ndarray, length_padded: int) -> np.ndarray:
    """``(G, L, D)`` keys as panels ``(G, length_padded // 16, D, 16)``, zero-padded, flattened,
    64-byte aligned (each 16-key row of a panel is one cache line)."""
    groups, length, head_dim = k.shape
    panels = aligned_empty((groups, length_padded // PANEL, head_dim, PANEL))
    full = length // PANEL * PANEL
    panels[:, : full // PANEL] = (
        k[:, :full].reshape(groups, -1, PANEL, head_dim).transpose(0, 1, 3, 2)
    )
    panels[:, full // PANEL :] = 0.0
    if full < length:
        tail = np.zeros((groups, PANEL, head_dim), np.float32)
        tail[:, : length - full] = k[:, full:]
        panels[:, full // PANEL] = tail.transpose(0, 2, 1)
    return panels.reshape(-1)
