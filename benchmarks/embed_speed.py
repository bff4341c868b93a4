"""Embedding speed of the full published configuration (random weights), per batch size.

For each batch size a fresh subprocess builds ``random_model("tcga")`` (19,062 genes, 4 layers,
8 heads of 32), compiles ``model.mean_embedding`` under ``jax.jit``, runs it once to warm up and
then ``--repeats`` times, and reports:

* ``s/sample``: the fastest repeat divided by the batch size;
* ``model GFLOP/s``: the analytic FLOP count of a forward pass (attention ``4 L^2 H D`` per layer
  plus every Linear layer, a multiply-add counted as 2) divided by that time;
* ``GEMM GFLOP/s``: the best float32 4096x4096 matrix product rate of numpy and of jax, measured
  in the same run (before and after the model runs, and on CPU also right before each timed
  repeat; the best of all kept);
* ``ratio``: model rate / GEMM rate, i.e. best against best;
* ``paired``: on CPU, the median over repeats of the model rate divided by the GEMM rate measured
  just before it. Other work on the machine (a shared cloud host) slows both alike, so this is
  the steadier figure when the machine is noisy; ``ratio`` is the one the goal is stated in;
* ``peak RSS``: the subprocess's peak resident memory (``VmHWM``), i.e. per batch size; the
  high-water mark is reset after each in-between GEMM so that its 192 MB of matrices do not count;
* ``+MiB/sample``: on CPU, how far one timed run raised the resident memory above what the process
  held just before it, divided by the batch size (the largest over the repeats): the memory the
  forward pass itself needs per sample, which should not grow with the batch size;
* ``1st call s``: compilation plus the first run;
* ``CPU s/sample``: process CPU time (all threads) of the fastest repeat, per sample; on an idle
  machine about ``cores x s/sample``, and a check on timings taken while other work shares the
  CPUs;
* ``load``: the 1-minute load average before/after the timed runs (other work on the machine).

On a GPU (if jax sees one) it also runs the model in bfloat16 (cuDNN attention) and float32, with a
bfloat16 GEMM reference and the relative error of the bf16 embeddings against the fp32 ones, and
times one layer's attention alone (same shape, dtype and implementation) for each row.

Usage::

    python benchmarks/embed_speed.py                      # batch sizes 1 2 4, 3 repeats
    python benchmarks/embed_speed.py --batch-sizes 1 --repeats 3
    python benchmarks/embed_speed.py --implementation blockwise_jax
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def model_flops(config, batch: int) -> int:
    """Analytic FLOPs of ``mean_embedding`` (no LM head) for ``batch`` samples."""
    n, e, f = config.n_genes, config.embed_dim, config.ffn_embed_dim
    hd = config.num_attention_heads * config.key_size
    per_layer = 4 * n * n * hd  # QK^T and PV over all heads
    per_layer += 2 * n * (3 * e * hd + hd * e)  # q, k, v, output projections
    per_layer += 2 * n * (e * f + f * e)  # fc1, fc2
    total = batch * config.num_layers * per_layer
    if config.use_gene_embedding and config.project_gene_embedding:
        total += 2 * n * config.init_gene_embed_dim * e  # gene projection, once per batch
    return total


def _proc_status_mib(field: str) -> float | None:
    """A memory field of ``/proc/self/status`` (e.g. ``"VmHWM"``) in MiB; None where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (VmHWM, else ru_maxrss)."""
    peak = _proc_status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident set size of this process now, in MiB (VmRSS; NaN where unavailable)."""
    rss = _proc_status_mib("VmRSS")
    return float("nan") if rss is None else rss


def reset_peak_rss() -> None:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ``clear_refs``; else nothing)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _best_time(fn, repeats: int) -> float:
    return _best_times(fn, repeats)[0]


def _best_times(fn, repeats: int) -> tuple[float, float]:
    """Fastest wall-clock time and fastest process CPU time (all threads) over ``repeats`` runs."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu


def gemm_rates(
    n: int = 4096, repeats: int = 3, dtypes=("float32",), include_jax: bool = True
) -> dict[str, float]:
    """GFLOP/s of an n x n x n matrix product with numpy (fp32) and jax (each dtype)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    rates = {}
    if jax.default_backend() == "cpu":
        a @ b
        rates["numpy_float32"] = flops / _best_time(lambda: a @ b, repeats) / 1e9
    if not include_jax:
        return rates
    matmul = jax.jit(jnp.matmul)
    for dtype in dtypes:
        ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        matmul(ja, jb).block_until_ready()
        t = _best_time(lambda ja=ja, jb=jb: matmul(ja, jb).block_until_ready(), repeats)
        rates[f"jax_{dtype}"] = flops / t / 1e9
    return rates


def blas_info() -> str:
    """What numpy's BLAS is (threadpoolctl), e.g. ``openblas 0.3.27 Haswell 2 threads``."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl missing)"
    parts = []
    for info in threadpool_info():
        if info.get("user_api") == "blas" and "numpy" in info.get("filepath", ""):
            parts.append(
                f"{info.get('internal_api')} {info.get('version')} "
                f"{info.get('architecture')} {info.get('num_threads')} threads"
            )
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    text = "; ".join(parts) or "unknown"
    return text + (f" (OPENBLAS_CORETYPE={coretype})" if coretype else "")


def run_child(args) -> dict:
    """One batch size (and dtype) in this process: time the model, report a JSON dict."""
    sys.path.insert(0, str(SRC))
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from bulkrnabert_sv.model import random_model
    from bulkrnabert_sv.model.attention import resolve_implementation

    batch = args.batch_size
    results = {"batch": batch, "dtype": args.dtype, "backend": jax.default_backend()}
    model = random_model(
        "tcga",
        attention_implementation=args.implementation,
        compute_dtype=args.dtype,
        attention_block_q=args.block_q,
        attention_block_k=args.block_k,
    )
    cfg = model.config
    results["implementation"] = resolve_implementation(
        args.implementation, length=cfg.n_genes, dtype=jnp.dtype(args.dtype)
    )
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, tokens):
        return nnx.merge(graphdef, state).mean_embedding(tokens)

    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.n_expressions_bins, (batch, cfg.n_genes)), jnp.int32)
    start = time.perf_counter()
    first = embed(state, tokens).block_until_ready()
    results["first_call_s"] = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    flops = model_flops(cfg, batch)
    on_cpu = jax.default_backend() == "cpu"
    best, best_cpu, gemm_cpu, pairs, growth = float("inf"), float("inf"), 0.0, [], []
    peak = peak_rss_mib()  # imports, compilation and the first run
    for _ in range(args.repeats):
        if on_cpu:  # the machine's GEMM rate just before this repeat
            gemm_now = gemm_rates(repeats=2, include_jax=False)["numpy_float32"]
            gemm_cpu = max(gemm_cpu, gemm_now)
            reset_peak_rss()
        resting = current_rss_mib()
        seconds, cpu_seconds = _best_times(lambda: embed(state, tokens).block_until_ready(), 1)
        best, best_cpu = min(best, seconds), min(best_cpu, cpu_seconds)
        peak = max(peak, peak_rss_mib())
        growth.append((peak_rss_mib() - resting) / batch)
        if on_cpu:
            pairs.append(flops / seconds / 1e9 / gemm_now)
    if on_cpu:
        from bulkrnabert_sv.model._host_attention import resolve_kernel

        results["gemm_child_gflops"] = gemm_cpu
        results["paired_ratio"] = float(np.median(pairs))
        if results["implementation"] == "blockwise_host":
            results["implementation"] += "/" + resolve_kernel(None, cfg.key_size)
    results.update(
        load_before=load_before,
        load_after=os.getloadavg()[0],
        cpu_seconds_per_sample=best_cpu / batch,
        seconds=best,
        seconds_per_sample=best / batch,
        gflop=flops / 1e9,
        model_gflops=flops / best / 1e9,
        peak_rss_mib=peak,
        rss_growth_per_sample_mib=max(growth) if on_cpu and growth else float("nan"),
    )
    if not on_cpu:
        results.update(attention_only_rate(cfg, batch, args))
    if args.save_embedding:
        np.save(args.save_embedding, np.asarray(first, np.float32))
    return results


def attention_only_rate(cfg, batch: int, args) -> dict:
    """One layer's attention alone (same shape, dtype and implementation): s and GFLOP/s.

    Reported on accelerators, where it tells how much of the model's time is attention.
    """
    import jax

    from bulkrnabert_sv.model.attention import dot_product_attention, flops_per_layer

    shape = (batch, cfg.n_genes, cfg.num_attention_heads, cfg.key_size)
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, shape, args.dtype) for key in keys)
    attend = jax.jit(
        lambda q, k, v: dot_product_attention(
            q,
            k,
            v,
            implementation=args.implementation,
            block_q=args.block_q,
            block_k=args.block_k,
        )
    )
    attend(q, k, v).block_until_ready()
    seconds = _best_time(lambda: attend(q, k, v).block_until_ready(), max(args.repeats, 3))
    flops = flops_per_layer(cfg.n_genes, cfg.num_attention_heads, cfg.key_size, batch)
    return {"attention_s": seconds, "attention_gflops": flops / seconds / 1e9}


def spawn(args, batch: int, dtype: str, save: str | None = None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--batch-size",
        str(batch),
        "--dtype",
        dtype,
        "--repeats",
        str(args.repeats),
        "--implementation",
        args.implementation,
    ]
    if args.block_q:
        command += ["--block-q", str(args.block_q)]
    if args.block_k:
        command += ["--block-k", str(args.block_k)]
    if save:
        command += ["--save-embedding", save]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"batch {batch} ({dtype}) failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _seconds(value: float) -> str:
    """Seconds with two decimals, or four below 0.1 s (GPU rows)."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--implementation", default="auto", help="attention implementation")
    parser.add_argument("--block-q", type=int, default=None)
    parser.add_argument("--block-k", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--save-embedding", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return

    sys.path.insert(0, str(SRC))
    import jax
    import numpy as np

    on_gpu = jax.default_backend() == "gpu"
    gemm_dtypes = ("float32", "bfloat16") if on_gpu else ("float32",)
    print(f"jax {jax.__version__} backend {jax.default_backend()}: {jax.devices()[0]}")
    print(f"numpy {np.__version__} BLAS: {blas_info()}")
    print(f"CPUs available: {len(os.sched_getaffinity(0))}")
    gemm = gemm_rates(dtypes=gemm_dtypes)
    rows = []
    dtypes = ("float32", "bfloat16") if on_gpu else ("float32",)
    for batch in args.batch_sizes:
        for dtype in dtypes:
            save = None
            if on_gpu:
                save = f"/tmp/embed_speed_{os.getpid()}_{batch}_{dtype}.npy"
            row = spawn(args, batch, dtype, save)
            row["embedding_file"] = save
            rows.append(row)
    for key, value in gemm_rates(dtypes=gemm_dtypes).items():
        gemm[key] = max(gemm.get(key, 0.0), value)
    for row in rows:  # rates measured inside the children, between the timed repeats
        if "gemm_child_gflops" in row:
            gemm["numpy_float32"] = max(gemm.get("numpy_float32", 0.0), row["gemm_child_gflops"])
    best_fp32 = max(v for k, v in gemm.items() if k.endswith("float32"))
    print(
        "GEMM 4096^3 GFLOP/s (best of runs before, between and after): "
        + ", ".join(f"{k} {v:.1f}" for k, v in gemm.items())
    )
    header = (
        f"{'batch':>5} {'dtype':>8} {'attention':>20} {'s/sample':>9} {'model GF/s':>10} "
        f"{'GEMM GF/s':>9} {'ratio':>6} {'paired':>6} {'peak RSS MiB':>12} {'+MiB/sample':>11} "
        f"{'1st call s':>10} "
        f"{'CPU s/sample':>12} {'load':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ref = gemm.get(f"jax_{row['dtype']}", best_fp32) if on_gpu else best_fp32
        row["gemm_gflops"] = ref
        row["ratio"] = row["model_gflops"] / ref
        print(
            f"{row['batch']:>5} {row['dtype']:>8} {row['implementation']:>20} "
            f"{_seconds(row['seconds_per_sample']):>9} {row['model_gflops']:>10.1f} {ref:>9.1f} "
            f"{row['ratio']:>6.2f} {row.get('paired_ratio', float('nan')):>6.2f} "
            f"{row['peak_rss_mib']:>12.0f} {row['rss_growth_per_sample_mib']:>11.0f} "
            f"{row['first_call_s']:>10.1f} "
            f"{row['cpu_seconds_per_sample']:>12.2f} "
            f"{row['load_before']:>4.1f}/{row['load_after']:<4.1f}"
        )
    if on_gpu:
        for batch in args.batch_sizes:
            pair = {r["dtype"]: np.load(r["embedding_file"]) for r in rows if r["batch"] == batch}
            ref, low = pair["float32"], pair["bfloat16"]
            err = np.linalg.norm(low - ref) / np.linalg.norm(ref)
            print(f"batch {batch}: bf16 vs fp32 embedding relative error {err:.2e}")
            for r in rows:
                if r["batch"] == batch:
                    r["bf16_rel_error"] = float(err)
        for row in rows:
            ref = row["gemm_gflops"]
            print(
                f"batch {row['batch']} {row['dtype']}: one layer's attention alone "
                f"{row['attention_s'] * 1e3:.2f} ms, {row['attention_gflops']:.0f} GFLOP/s "
                f"({row['attention_gflops'] / ref:.2f} of the {row['dtype']} GEMM)"
            )
    if args.json:
        args.json.write_text(json.dumps({"gemm": gemm, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
