"""Exact blockwise softmax attention on the CPU host (numba kernels).

XLA's CPU backend runs the attention inner loop at roughly a third of the machine's GEMM rate: its
small matrix products are slow and the softmax passes are separate loops. This module computes the
same blockwise attention with one of two kernels (:func:`resolve_kernel` picks):

``"simd"`` (CPUs with AVX2 and FMA, head sizes that are multiples of 8 up to 64)
    Register-blocked micro-kernels generated as LLVM IR (:mod:`._simd_kernels`): ``Q K^T`` on
    panels of 16 keys with the shift, clamp, ``exp2`` and row sums fused in, so the logits are
    never stored raw, and ``P V`` with its accumulators in registers over a whole key block.
``"blas"`` (everywhere else)
    The two matrix products of each (query block, key block) tile by OpenBLAS ``sgemm`` (through
    numba's ``np.dot``), single-threaded per tile, then one fused, vectorised softmax pass.

Both share the softmax scheme:

* ``p = 2**(s - m)`` with a polynomial ``exp2`` (relative error below 1e-7, i.e. about one
  float32 ulp);
* a *lazy* running maximum: each row keeps the maximum of its first key block as the softmax shift
  and only rescales (after recomputing the row's logits) when a later logit exceeds it by more than
  ``2**THRESHOLD``, which is detected for free from the row sum. Shifting by any value not below
  the true maximum minus ``THRESHOLD`` is exact in float32 (no overflow; underflow only below
  ``2**-125`` relative to the largest term);
* in the ``"simd"`` kernel, no clamp before the ``exp2`` for the probability tiles where the
  Cauchy-Schwarz bound ``|q_i| max_j |k_j|`` already keeps every shifted logit in range (nearly
  all of them in practice; two vector operations fewer per 8 logits, about 2% of the time);
* independent (head, query block) tasks spread over one Python thread per core (the kernels
  release the GIL).

Inputs are float32, heads-first ``(G, L, D)`` or the model's own ``(B, L, H, D)``, with the
queries already multiplied by ``scale * log2(e)``; outputs are the attention output (shaped as the
queries) and the base-2 log-sum-exp of the scaled logits, ``(G, Lq)`` or ``(B, H, Lq)``, from
which the backward pass (:mod:`._host_backward`, or the JAX loops) recomputes the tiles.

The module imports without numba; :func:`available` says whether the kernel can run.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._settings import HOST_KERNEL_ENV, NUM_THREADS_ENV, env
from ._simd_kernels import EXP2_COEFFICIENTS, EXP2_MIN, LANES, PANEL, QK_ROWS

try:  # numba is a dependency of scanpy, hence of this package, but keep the import soft.
    import numba

    # numba's np.dot calls the BLAS that scipy ships; load it now so that thread limits set later
    # (threadpoolctl only sees libraries that are already loaded) apply to it.
    import scipy.linalg.cython_blas  # noqa: F401
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

__all__ = [
    "DEFAULT_BLOCKS",
    "KERNELS",
    "THRESHOLD",
    "attention_forward",
    "available",
    "num_threads",
    "resolve_kernel",
]

#: log2 of the largest softmax term allowed before a row is rescaled.
THRESHOLD = 20.0
#: Where the Cauchy-Schwarz bound keeps every shifted logit of a tile within
#: ``[-UNCLAMPED_BELOW, UNCLAMPED_ABOVE]``, the ``"simd"`` kernel skips the clamp before its
#: ``exp2`` (exact up to 2**126 and down to 2**-125; the margins absorb rounding). Terms above
#: ``2**THRESHOLD`` still flag their row for the rescale path through the row sum.
UNCLAMPED_ABOVE = 100.0
UNCLAMPED_BELOW = 120.0
_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_BLAS_CONTROLLER = None


def available() -> bool:
    """Whether the host kernel can run (numba importable)."""
    return _HAVE_NUMBA


def num_threads() -> int:
    """Worker threads: ``$BULKRNABERT_SV_NUM_THREADS`` or the CPUs this process may use."""
    value = env(NUM_THREADS_ENV)
    if value:
        return max(1, int(value))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


if _HAVE_NUMBA:
    _F32 = np.float32
    _FASTMATH = {"nsz", "reassoc", "contract", "arcp", "afn"}  # no nnan/ninf: NaN stays NaN
    _T = np.float32(THRESHOLD)
    _T_SUM = np.float32(2.0**THRESHOLD)
    # Least-squares fit of 2**f on [-1/2, 1/2] (Chebyshev nodes), degree 6: rel. error 2.6e-9;
    # the same coefficients as the vector kernels'.
    _C0, _C1, _C2, _C3, _C4, _C5, _C6 = (np.float32(c) for c in EXP2_COEFFICIENTS)
    _EXP2_MIN = np.float32(EXP2_MIN)

    @intrinsic
    def _f32_bits(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(types.float32), codegen

    @intrinsic
    def _bits_f32(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), codegen

    @intrinsic
    def _fmax(typingctx, a, b):
        # llvm.maxnum vectorises as a reduction where numba's max() does not.
        def codegen(context, builder, signature, args):
            fnty = ir.FunctionType(ir.FloatType(), [ir.FloatType(), ir.FloatType()])
            fn = builder.module.declare_intrinsic("llvm.maxnum", [ir.FloatType()], fnty)
            return builder.call(fn, args)

        return types.float32(types.float32, types.float32), codegen

    @numba.njit(fastmath=_FASTMATH, inline="always")
    def _exp2(x):
        x = max(x, _EXP2_MIN)
        n = np.floor(x + _F32(0.5))
        f = x - n
        p = _C6
        p = p * f + _C5
        p = p * f + _C4
        p = p * f + _C3
        p = p * f + _C2
        p = p * f + _C1
        p = p * f + _C0
        return _bits_f32(_f32_bits(p) + (np.int32(n) << 23))

    @numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
    def _softmax_row_first(row):
        # Exact two-pass softmax of one row of the first key block, in place: returns the shift
        # (the row maximum) and the sum of 2**(row - shift).
        mx = _F32(-3.0e38)
        for j in range(row.shape[0]):
            mx = _fmax(mx, row[j])
        total = _F32(0.0)
        for j in range(row.shape[0]):
            p = _exp2(row[j] - mx)
            row[j] = p
            total += p
        return mx, total

    @numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
    def _softmax_first(s, m, denom):
        # First key block of a row block: sets the shift m and the sums.
        for i in range(s.shape[0]):
            m[i], denom[i] = _softmax_row_first(s[i])

    @numba.njit(nogil=True, inline="always")
    def _accept_row_sum(i, total, denom, flagged):
        # A block's row sum reaches 2**THRESHOLD exactly when a logit exceeded the row's shift by
        # THRESHOLD (clamped there): flag the row for the rescale path, which redoes its sum.
        # Otherwise add the sum to the row's denominator. Returns 1 if flagged.
        if total >= _T_SUM:
            flagged[i] = True
            return 1
        flagged[i] = False
        denom[i] += total
        return 0

    @numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
    def _softmax_next(s, m, denom, flagged):
        # Later key blocks: one fused pass with the row's current shift; rows whose sum reaches
        # 2**THRESHOLD (which any logit above the shift + THRESHOLD forces) are flagged.
        n, w = s.shape
        count = 0
        for i in range(n):
            shift = m[i]
            total = _F32(0.0)
            for j in range(w):
                p = _exp2(min(s[i, j] - shift, _T))
                s[i, j] = p
                total += p
            count += _accept_row_sum(i, total, denom, flagged)
        return count

    @numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
    def _fix_rows(s, qb, kb, m, denom, flagged, acc):
        # Rare path: recompute the flagged rows' logits, move the shift up to their maximum.
        n, w = s.shape
        d = qb.shape[1]
        for i in range(n):
            if not flagged[i]:
                continue
            for j in range(w):
                dot = _F32(0.0)
                for c in range(d):
                    dot += qb[i, c] * kb[j, c]
                s[i, j] = dot
            mx = m[i]
            for j in range(w):
                mx = _fmax(mx, s[i, j])
            corr = _exp2(m[i] - mx)
            total = _F32(0.0)
            for j in range(w):
                p = _exp2(s[i, j] - mx)
                s[i, j] = p
                total += p
            for c in range(d):
                acc[i, c] *= corr
            denom[i] = denom[i] * corr + total
            m[i] = mx

    @numba.njit(nogil=True, cache=True)
    def _exp2_needs_no_clamp(q_norm, key_norm, m):
        # Whether every shifted logit q_i . k_j - m_i of these rows provably lies in
        # [-UNCLAMPED_BELOW, UNCLAMPED_ABOVE] (Cauchy-Schwarz: |q_i . k_j| <= |q_i| max_j |k_j|),
        # so that the exp2 needs no clamp. False for NaN or infinite inputs.
        for i in range(q_norm.shape[0]):
            bound = np.float64(q_norm[i]) * key_norm
            shift = np.float64(m[i])
            if not (bound - shift <= UNCLAMPED_ABOVE and bound + shift <= UNCLAMPED_BELOW):
                return False
        return True

    @numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
    def _add_into(acc, tile):
        n, d = tile.shape
        for i in range(n):
            for c in range(d):
                acc[i, c] += tile[i, c]

    @numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
    def _attention_tasks(q, k, v, out, lse, groups, block_q, block_k, first, step):
        # q (G*Lq, D), k/v (G*Lk, D), out (G*Lq, D), lse (G*Lq,): tasks first, first+step, ...
        lq = q.shape[0] // groups
        lk = k.shape[0] // groups
        d = q.shape[1]
        nq = (lq + block_q - 1) // block_q
        buf = np.empty(block_q * block_k, np.float32)
        tile = np.empty((block_q, d), np.float32)
        acc = np.empty((block_q, d), np.float32)
        m = np.empty(block_q, np.float32)
        denom = np.empty(block_q, np.float32)
        flagged = np.zeros(block_q, np.bool_)
        for task in range(first, groups * nq, step):
            g = task // nq
            i0 = (task % nq) * block_q
            n = min(block_q, lq - i0)
            qb = q[g * lq + i0 : g * lq + i0 + n]
            a = acc[:n]
            a[:] = 0.0
            for j0 in range(0, lk, block_k):
                w = min(block_k, lk - j0)
                s = buf[: n * w].reshape((n, w))
                kb = k[g * lk + j0 : g * lk + j0 + w]
                np.dot(qb, kb.T, s)
                if j0 == 0:
                    _softmax_first(s, m, denom)
                elif _softmax_next(s, m, denom, flagged) > 0:
                    _fix_rows(s, qb, kb, m, denom, flagged, a)
                t = tile[:n]
                np.dot(s, v[g * lk + j0 : g * lk + j0 + w], t)
                _add_into(a, t)
            for i in range(n):
                inv = _F32(1.0) / denom[i]
                for c in range(d):
                    out[g * lq + i0 + i, c] = a[i, c] * inv
                lse[g * lq + i0 + i] = m[i] + np.log2(denom[i])


if _HAVE_NUMBA:
    # The micro-kernels (specialised for the head size when _simd_tasks is compiled). numba's disk
    # cache watches only the calling function's file (see docs/architecture.md).
    from ._simd_kernels import make_pv_kernel, make_qk_kernel

    _QK_RAW = make_qk_kernel(QK_ROWS, "raw", THRESHOLD)
    _QK_EXP = make_qk_kernel(QK_ROWS, "exp", THRESHOLD)
    _QK_EXP_FULL = make_qk_kernel(QK_ROWS, "exp_full", THRESHOLD)
    _PV = make_pv_kernel()

    @numba.njit(nogil=True, cache=True)
    def _simd_tasks(
        q,
        q_strides,
        kp,
        key_norms,
        v,
        v_strides,
        out,
        lse,
        heads,
        lq,
        lk,
        block_q,
        tile_q,
        block_k,
        marker,
        chunk,
        rows_pv,
        width_pv,
        first,
        step,
    ):
        """The attention task loop around the vector micro-kernels of :mod:`._simd_kernels`.

        ``marker`` is :func:`._simd_kernels.head_dim_marker` of the head size D: its type carries
        D, so numba compiles (and caches on disk) one version per head size, with kernels
        specialised for it. Not compiled with fastmath: the kernels' exp2 and clamps rely on exact
        IEEE semantics. ``chunk`` and ``rows_pv, width_pv`` are :func:`._simd_kernels.key_chunk`
        and :func:`._simd_kernels.pv_shape` of D.

        q and v are read, and out written, through element strides, so that it takes heads-first
        ``(G, L, D)`` arrays as well as ``(B, L, H, D)`` ones without a transpose: group ``g`` is
        batch ``g // heads``, head ``g % heads``, and row ``l`` of a group starts at
        ``(g // heads) * stride_b + (g % heads) * stride_h + l * stride_l``.
        """
        # q, v, out: flat float32; q_strides/v_strides: (stride_b, stride_h, stride_l), out has
        # q's. kp: the key panels (G, lk_pad // 16, D, 16), flat. key_norms: (G,), the largest
        # key norm of each group. lse: (G, lq), flat.
        # A task is block_q query rows of one group, done as sub-blocks of tile_q rows per key
        # block, so that each key block (panels and values) is read once per task.
        d = len(marker)
        rows_qk, panel, lanes = QK_ROWS, PANEL, LANES
        groups = lse.shape[0] // lq
        lk_pad = kp.shape[0] // (groups * d)
        nq = (lq + block_q - 1) // block_q
        q_tile = np.zeros((block_q, d), np.float32)
        q_flat = q_tile.reshape(-1)
        k_tile = np.empty((block_k, d), np.float32)
        probs = np.empty(tile_q * block_k, np.float32)
        probs2 = probs.reshape((tile_q, block_k))
        acc = np.empty((block_q, d), np.float32)
        acc_flat = acc.reshape(-1)
        m = np.empty(block_q, np.float32)
        denom = np.empty(block_q, np.float32)
        sums = np.empty(block_q * lanes, np.float32)
        flagged = np.zeros(block_q, np.bool_)
        q_norm = np.zeros(block_q, np.float32)
        unclamped = np.zeros((block_q + tile_q - 1) // tile_q, np.bool_)
        for task in range(first, groups * nq, step):
            g = task // nq
            i0 = (task % nq) * block_q
            n = min(block_q, lq - i0)
            n_tiles = (n + tile_q - 1) // tile_q
            q_base = (g // heads) * q_strides[0] + (g % heads) * q_strides[1]
            v_base = (g // heads) * v_strides[0] + (g % heads) * v_strides[1]
            for i in range(n):  # the task's query rows, contiguous; rows past lq stay zero
                row = q_base + (i0 + i) * q_strides[2]
                for c in range(d):
                    q_tile[i, c] = q[row + c]
            if n < block_q:
                q_tile[n:] = 0.0
            for i in range(block_q):
                total = np.float32(0.0)
                for c in range(d):
                    total += q_tile[i, c] * q_tile[i, c]
                q_norm[i] = np.sqrt(total)
            acc[:] = 0.0
            for j0 in range(0, lk, block_k):
                w = min(block_k, lk - j0)
                k_off = (g * lk_pad + j0) * d
                v_off = v_base + j0 * v_strides[2]
                full = w - w % panel
                for t in range(n_tiles):
                    r0 = t * tile_q
                    r1 = r0 + tile_q
                    # Q K^T one chunk of keys at a time, so that its panels stay in L1 over all
                    # the tile's rows.
                    if j0 == 0:
                        for c0 in range(0, w, chunk):
                            for i in range(r0, r1, rows_qk):
                                for jj in range(c0, min(c0 + chunk, w), panel):
                                    p_off = (i - r0) * block_k + jj
                                    _QK_RAW(
                                        q_flat,
                                        i * d,
                                        d,
                                        kp,
                                        k_off + jj * d,
                                        probs,
                                        p_off,
                                        block_k,
                                        marker,
                                    )
                        for i in range(tile_q):
                            row = probs[i * block_k : i * block_k + w]
                            m[r0 + i], denom[r0 + i] = _softmax_row_first(row)
                        unclamped[t] = _exp2_needs_no_clamp(q_norm[r0:r1], key_norms[g], m[r0:r1])
                    else:
                        sums[r0 * lanes : r1 * lanes] = 0.0
                        for c0 in range(0, full, chunk):
                            for i in range(r0, r1, rows_qk):
                                p_row = (i - r0) * block_k
                                for jj in range(c0, min(c0 + chunk, full), panel):
                                    _QK_EXP_FULL(
                                        q_flat,
                                        i * d,
                                        d,
                                        kp,
                                        k_off + jj * d,
                                        probs,
                                        p_row + jj,
                                        block_k,
                                        m,
                                        i,
                                        sums,
                                        i * lanes,
                                        panel,
                                        not unclamped[t],
                                        marker,
                                    )
                        if full < w:
                            for i in range(r0, r1, rows_qk):
                                _QK_EXP(
                                    q_flat,
                                    i * d,
                                    d,
                                    kp,
                                    k_off + full * d,
                                    probs,
                                    (i - r0) * block_k + full,
                                    block_k,
                                    m,
                                    i,
                                    sums,
                                    i * lanes,
                                    w - full,
                                    not unclamped[t],
                                    marker,
                                )
                        count = 0
                        for i in range(r0, r1):
                            total = np.float32(0.0)
                            for c in range(lanes):
                                total += sums[i * lanes + c]
                            count += _accept_row_sum(i, total, denom, flagged)
                        if count > 0:  # rare: unpack this block's keys for the rescale path
                            for j in range(w):
                                at = k_off + (j // panel) * panel * d + j % panel
                                for c in range(d):
                                    k_tile[j, c] = kp[at + c * panel]
                            rows = slice(r0, r1)
                            _fix_rows(
                                probs2[:, :w],
                                q_tile[rows],
                                k_tile[:w],
                                m[rows],
                                denom[rows],
                                flagged[rows],
                                acc[rows],
                            )
                            unclamped[t] = _exp2_needs_no_clamp(q_norm[rows], key_norms[g], m[rows])
                    # P V by the same key chunks (their values stay in L1), one column slice of
                    # the accumulators at a time.
                    for c0 in range(0, w, chunk):
                        keys = min(chunk, w - c0)
                        v_chunk = v_off + c0 * v_strides[2]
                        for col in range(0, d, width_pv):
                            for i in range(0, tile_q, rows_pv):
                                _PV(
                                    probs,
                                    i * block_k + c0,
                                    block_k,
                                    v,
                                    v_chunk + col,
                                    v_strides[2],
                                    acc_flat,
                                    (r0 + i) * d + col,
                                    keys,
                                    marker,
                                )
            for i in range(n):
                inv = np.float32(1.0) / denom[i]
                row = q_base + (i0 + i) * q_strides[2]
                for c in range(d):
                    out[row + c] = acc[i, c] * inv
                lse[g * lq + i0 + i] = m[i] + np.log2(denom[i])


def _blas_single_thread():
    """A context manager limiting BLAS to one thread (a no-op without threadpoolctl)."""
    global _BLAS_CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


KERNELS = ("auto", "simd", "blas")
#: Default tiles per kernel: (query rows per task, keys per tile). A ``"simd"`` task reads every
#: key block of its head from the last-level cache once and then reuses it from L2 for each of its
#: 48-row tiles (20 tiles of 960 rows; docs/benchmarks.md compares task sizes).
DEFAULT_BLOCKS = {"simd": (960, 512), "blas": (256, 512)}
#: Query rows of one probability tile of the ``"simd"`` kernel: a 48 x 512 float32 tile is
#: 96 KiB, a fifth of a 512 KiB L2 cache, next to one key block's panels and values.
SIMD_TILE_ROWS = 48


def resolve_kernel(kernel: str | None, head_dim: int) -> str:
    """``"simd"`` (vector micro-kernels) where the CPU and head size allow, else ``"blas"``.

    ``kernel`` None reads ``BULKRNABERT_SV_HOST_KERNEL`` (default ``"auto"``). An explicit
    ``"simd"`` that cannot run here falls back to ``"blas"``.
    """
    from . import _simd_kernels

    kernel = kernel or env(HOST_KERNEL_ENV) or "auto"
    if kernel not in KERNELS:
        raise ValueError(f"Unknown host attention kernel {kernel!r}; choose one of {KERNELS}.")
    if kernel == "blas":
        return "blas"
    simd_ok = _simd_kernels.host_supports_simd() and _simd_kernels.supports_head_dim(head_dim)
    return "simd" if simd_ok else "blas"


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


#: Interleaved task sets per worker thread (see :func:`_run_tasks`).
TASK_SETS_PER_THREAD = 32


def _run_tasks(function, args: tuple, tasks: int, threads: int | None) -> None:
    """Run ``function(*args, first, step)`` (tasks ``first, first + step, ...``) on the workers.

    The tasks are split into ``TASK_SETS_PER_THREAD`` interleaved sets per thread, queued, and each
    idle thread takes the next set, so that a thread slowed by other work on the machine takes
    fewer of them. Sets are interleaved rather than contiguous so that the threads work on the
    same head at the same time and share its keys and values in the last-level cache (contiguous
    ranges were slower: docs/benchmarks.md). BLAS is limited to one thread meanwhile. Tasks
    write disjoint outputs, so the result does not depend on which thread ran which set.
    """
    workers = max(1, min(threads or num_threads(), tasks))
    global _POOL
    with _LOCK, _blas_single_thread():
        if workers == 1:
            function(*args, 0, 1)
            return
        # An empty range first: compiles (or loads from the disk cache) the function on this
        # thread, so that the workers do not each type it while waiting for numba's lock.
        function(*args, tasks, 1)
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(workers, thread_name_prefix="bulkrnabert-attn")
        sets = min(tasks, workers * TASK_SETS_PER_THREAD)
        futures = [_POOL.submit(function, *args, first, sets) for first in range(sets)]
        for future in futures:
            future.result()


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    layout: str = "heads_first",
    block_q: int | None = None,
    block_k: int | None = None,
    threads: int | None = None,
    kernel: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax attention in base 2 over float32 arrays.

    Parameters
    ----------
    q
        Queries, already multiplied by ``scale * log2(e)``: shape (..., Lq, D) with
        ``layout="heads_first"`` or (..., Lq, H, D) with ``layout="bshd"`` (the model's own
        layout, read in place by the ``"simd"`` kernel).
    k, v
        Keys and values, shape (..., Lk, D) or (..., Lk, H, D); leading dimensions as ``q``.
    layout
        ``"heads_first"`` or ``"bshd"``.
    block_q, block_k
        Tile sizes (default: :data:`DEFAULT_BLOCKS` of the kernel). The ``"simd"`` kernel rounds
        them up to multiples of 12 (up to 48, then of 48) and 16.
    threads
        Worker threads (default :func:`num_threads`).
    kernel
        ``"simd"``, ``"blas"`` or ``"auto"`` (see :func:`resolve_kernel`).

    Returns
    -------
    out
        ``softmax2(q k^T) v``, float32, shaped as ``q``.
    lse
        ``log2(sum_j 2**(q_i . k_j))``, float32, shape (..., Lq) or (..., H, Lq).
    """
    if not _HAVE_NUMBA:
        raise RuntimeError("the host attention kernel needs numba")
    if layout not in ("heads_first", "bshd"):
        raise ValueError(f"Unknown layout {layout!r}; choose 'heads_first' or 'bshd'.")
    q = np.ascontiguousarray(q, dtype=np.float32)
    k = np.ascontiguousarray(k, dtype=np.float32)
    v = np.ascontiguousarray(v, dtype=np.float32)
    if layout == "bshd":
        *lead, lq, heads, d = q.shape
        lk = k.shape[-3]
        lse_shape = (*lead, heads, lq)
    else:
        *lead, lq, d = q.shape
        lk, heads = k.shape[-2], 1
        lse_shape = (*lead, lq)
    batch = int(np.prod(lead, dtype=np.int64))
    groups = batch * heads
    out = np.empty(q.shape, np.float32)
    lse = np.empty(lse_shape, np.float32)
    if groups == 0 or lq == 0:
        return out, lse
    kernel = resolve_kernel(kernel, d)
    default_q, default_k = DEFAULT_BLOCKS[kernel]
    block_q = max(1, min(int(block_q or default_q), lq))
    block_k = max(1, min(int(block_k or default_k), lk))
    if kernel == "blas":
        if layout == "bshd":  # the OpenBLAS kernel reads heads-first arrays

            def heads_first(x):
                return np.ascontiguousarray(np.moveaxis(x.reshape(batch, -1, heads, d), 2, 1))

            out_hf, lse_hf = attention_forward(
                heads_first(q),
                heads_first(k),
                heads_first(v),
                block_q=block_q,
                block_k=block_k,
                threads=threads,
                kernel="blas",
            )
            out[...] = np.moveaxis(out_hf, 1, 2).reshape(q.shape)
            return out, lse_hf.reshape(lse_shape)
        args = (
            q.reshape(-1, d),
            k.reshape(-1, d),
            v.reshape(-1, d),
            out.reshape(-1, d),
            lse.reshape(-1),
            groups,
            block_q,
            block_k,
        )
        _run_tasks(_attention_tasks, args, groups * (-(-lq // block_q)), threads)
        return out, lse

    from . import _simd_kernels

    if layout == "bshd" and batch > 1:
        # One sample at a time: the key panels and the values' copy then take the memory of one
        # sample, not of the batch.
        for flat, (q_i, k_i, v_i) in enumerate(
            zip(
                q.reshape(batch, lq, heads, d),
                k.reshape(batch, lk, heads, d),
                v.reshape(batch, lk, heads, d),
            )
        ):
            index = np.unravel_index(flat, lead)
            out[index], lse[index] = attention_forward(
                q_i,
                k_i,
                v_i,
                layout="bshd",
                block_q=block_q,
                block_k=block_k,
                threads=threads,
                kernel="simd",
            )
        return out, lse

    tile_q = min(_round_up(block_q, _simd_kernels.TILE_ROWS_MULTIPLE), SIMD_TILE_ROWS)
    block_q = _round_up(block_q, tile_q)
    block_k = _round_up(block_k, _simd_kernels.PANEL)
    # Keys become panels and values heads-first rows: both are streamed once per query block, and
    # rows H * D apart would thrash the caches. Queries and outputs are used in place.
    if layout == "bshd":
        k_heads_first = np.moveaxis(k.reshape(batch, lk, heads, d), 2, 1)
        v_heads_first = _simd_kernels.aligned_empty((batch, heads, lk, d))
        v_heads_first[...] = np.moveaxis(v.reshape(batch, lk, heads, d), 2, 1)
        q_strides = np.array([lq * heads * d, d, heads * d], np.int64)
    else:
        k_heads_first, v_heads_first = k, v
        q_strides = np.array([lq * d, 0, d], np.int64)
    v_strides = np.array([heads * lk * d, lk * d, d], np.int64)
    panels = _simd_kernels.pack_key_panels(
        k_heads_first.reshape(groups, lk, d), _round_up(lk, _simd_kernels.PANEL)
    )
    key_norms = np.sqrt(
        np.einsum("gld,gld->gl", *(k_heads_first.reshape(groups, lk, d),) * 2).max(axis=1),
        dtype=np.float64,
    )
    args = (
        q.reshape(-1),
        q_strides,
        panels,
        key_norms,
        v_heads_first.reshape(-1),
        v_strides,
        out.reshape(-1),
        lse.reshape(-1),
        heads,
        lq,
        lk,
        block_q,
        tile_q,
        block_k,
    )
    rows_pv, width_pv = _simd_kernels.pv_shape(d)
    args += (_simd_kernels.head_dim_marker(d), _simd_kernels.key_chunk(d), rows_pv, width_pv)
    _run_tasks(_simd_tasks, args, groups * (-(-lq // block_q)), threads)
    return out, lse
