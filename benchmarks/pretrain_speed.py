"""Speed and memory of ``tl.pretrain`` at the full published size (19,062 genes, batch 1).

Usage::

    python benchmarks/pretrain_speed.py [--steps 3] [--batch-size 1] [--genes 19062]
                                        [--attention auto]
                                        [--dtype float32] [--no-remat]
                                        [--platforms cpu,gpu]

A randomly initialised model with the published TCGA configuration (same cost as the real one),
``remat=True`` by default, trains on simulated TPM. Each platform runs in a fresh subprocess
(CPU always; GPU when JAX sees one) and prints one JSON line: seconds of the first step (with
compilation), seconds per step after it, training tokens per second (genes x samples per second,
every gene is a token of the input), and peak memory (resident set size of the process; on GPU
also the device's peak bytes in use). Report the device with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

N_GENES = 19_062


def child(args: argparse.Namespace) -> None:
    import anndata as ad
    import jax
    import numpy as np

    import bulkrnabert_sv as bs
    from bulkrnabert_sv.model import random_model

    n_genes = args.genes
    genes = [f"ENSG{i:011d}" for i in range(n_genes)]
    model = random_model(
        "tcga",
        genes=genes,
        remat=not args.no_remat,
        attention_implementation=args.attention,
        compute_dtype=args.dtype,
    )
    rng = np.random.default_rng(0)
    n_obs = max(2, args.batch_size)
    tpm = rng.lognormal(1.0, 2.0, (n_obs, n_genes))
    tpm = tpm / tpm.sum(axis=1, keepdims=True) * 1e6
    adata = ad.AnnData(tpm)
    adata.var_names = genes
    stamps = [time.perf_counter()]
    _, history = bs.tl.pretrain(
        adata,
        model=model,
        steps=args.steps,
        batch_size=args.batch_size,
        warmup_steps=0,
        progress=False,
        callback=lambda row: stamps.append(time.perf_counter()),
        devices=jax.devices()[:1],
    )
    per_step = np.diff(stamps)
    after_first = per_step[1:] if len(per_step) > 1 else per_step
    seconds = float(np.mean(after_first))
    device = jax.devices()[0]
    result = {
        "platform": device.platform,
        "device": device.device_kind,
        "genes": n_genes,
        "batch_size": args.batch_size,
        "remat": not args.no_remat,
        "attention": args.attention,
        "dtype": args.dtype,
        "steps": args.steps,
        "first_step_s": round(float(per_step[0]), 2),
        "seconds_per_step": round(seconds, 2),
        "tokens_per_s": round(n_genes * args.batch_size / seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "loss": [round(x, 4) for x in history["loss"].tolist()],
    }
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        result["device_peak_gb"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
    print(json.dumps(result), flush=True)


def gpu_available() -> bool:
    probe = "import jax; print(any(d.platform == 'gpu' for d in jax.devices()))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return out.stdout.strip().endswith("True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per run (first compiles)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--genes", type=int, default=N_GENES, help="sequence length")
    parser.add_argument("--attention", default="auto", help="attention implementation")
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    parser.add_argument("--no-remat", action="store_true", help="do not rematerialise blocks")
    parser.add_argument("--platforms", default=None, help="default: cpu, and gpu if present")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    platforms = args.platforms.split(",") if args.platforms else ["cpu"]
    if args.platforms is None and gpu_available():
        platforms.append("gpu")
    passed = [
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--genes={args.genes}",
        f"--attention={args.attention}",
        f"--dtype={args.dtype}",
        *(["--no-remat"] if args.no_remat else []),
    ]
    for platform in platforms:
        env = {**os.environ, "JAX_PLATFORMS": platform}
        subprocess.run([sys.executable, __file__, "--child", *passed], env=env, check=True)


if __name__ == "__main__":
    main()
