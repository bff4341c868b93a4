"""One IA3 and one full fine-tuning step at the published size (19,062 genes), batch 1, on CPU.

Each method runs in a fresh subprocess; the parent records its peak resident memory (VmHWM) and
kills it if it goes over ``--limit-gb``. Prints seconds (model build, first step including
compilation) and peak RSS per method.

    PYTHONPATH=src python benchmarks/finetune_step_memory.py [--methods ia3 full] [--limit-gb 24]

The blockwise attention's custom gradient keeps memory linear in the number of genes, and each
transformer block is rematerialised (``remat=True``) unless ``--no-remat`` is given.

The gene list is read from ``../shared/data/bulkrnabert_gene_ids.txt`` (random weights: only
the shapes matter here).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENES = Path(os.environ.get("BULKRNABERT_SHARED", ROOT.parent / "shared")) / (
    "data/bulkrnabert_gene_ids.txt"
)


def child(method: str, remat: bool) -> None:
    """Run one training step and print a JSON line with timings."""
    t0 = time.perf_counter()
    import numpy as np
    from train_step import finetune_setup

    genes = [g.strip() for g in GENES.read_text().splitlines() if g.strip()]
    trainer, params, opt_state, frozen, tokens, _ = finetune_setup(method, 1, remat, genes)
    targets = {"label": np.array([2], np.int32), "weight": np.ones(1, np.float32)}
    mask = np.ones(1, bool)
    n_trainable = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(params))
    t1 = time.perf_counter()
    _new_params, _, loss = trainer._step(params, opt_state, frozen, tokens, targets, mask)
    loss = float(loss)
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "method": method,
                "remat": remat,
                "trainable_parameters": n_trainable,
                "build_s": round(t1 - t0, 1),
                "first_step_s": round(t2 - t1, 1),
                "loss": loss,
            }
        ),
        flush=True,
    )


def peak_rss_gb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, in GB."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount, _unit = line.split()
                values[name] = int(amount) / 1024**2
    return values.get("VmRSS:", 0.0), values.get("VmHWM:", 0.0)


def run(method: str, remat: bool, limit_gb: float) -> dict:
    command = [sys.executable, __file__, "--child", method]
    command += [] if remat else ["--no-remat"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    peak, killed = 0.0, False
    while process.poll() is None:
        try:
            current, hwm = peak_rss_gb(process.pid)
        except FileNotFoundError:
            break
        peak = max(peak, hwm, current)
        if current > limit_gb:
            process.kill()
            killed = True
            break
        time.sleep(0.2)
    out, _ = process.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"method": method, "remat": remat}
    result["peak_rss_gb"] = round(peak, 2)
    result["status"] = (
        f"killed above {limit_gb} GB" if killed else ("ok" if process.returncode == 0 else "failed")
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["ia3", "full"])
    parser.add_argument("--limit-gb", type=float, default=24.0)
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, not args.no_remat)
        return
    print(f"{'method':>6} {'remat':>5} {'build s':>8} {'step s':>8} {'peak RSS GB':>12}")
    for method in args.methods:
        r = run(method, not args.no_remat, args.limit_gb)
        print(
            f"{r['method']:>6} {r['remat']!s:>5} "
            f"{r.get('build_s', float('nan')):>8} "
            f"{r.get('first_step_s', float('nan')):>8} {r['peak_rss_gb']:>12}  {r['status']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
