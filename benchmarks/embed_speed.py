"""Speed of ``tl.embed`` at full size: samples per second for a few batch sizes.

Usage::

    python benchmarks/embed_speed.py [--model InstaDeepAI/BulkRNABert] [--samples 8]
                                     [--batch-sizes 1,4,8] [--attention auto]

Without ``--model`` a randomly initialised model with the published TCGA configuration is used
(same cost as the real one). Inputs are simulated TPM over the model's genes. Prints one JSON line
per batch size: the first call (with compilation) and a second call (compiled) in seconds, and
samples per second of the second call. Run it on the machine you want numbers for; report the
device with the numbers.
"""

from __future__ import annotations

import argparse
import json
import time

import anndata as ad
import jax
import numpy as np

import bulkrnabert_sv as bs
from bulkrnabert_sv.model import random_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="repo id or folder (default: random TCGA-size model)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--attention", default="auto", help="attention implementation")
    parser.add_argument("--dtype", default="float32", help="compute dtype")
    args = parser.parse_args()

    overrides = {"attention_implementation": args.attention, "compute_dtype": args.dtype}
    if args.model:
        model = bs.load_model(args.model, **overrides)
    else:
        genes = [f"ENSG{i:011d}" for i in range(19_062)]
        model = random_model("tcga", genes=genes, **overrides)
    rng = np.random.default_rng(0)
    tpm = rng.lognormal(1.0, 2.0, (args.samples, model.config.n_genes))
    tpm = tpm / tpm.sum(axis=1, keepdims=True) * 1e6
    adata = ad.AnnData(tpm)
    adata.var_names = list(model.genes)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            bs.tl.embed(adata, model, batch_size=batch_size, progress=False)
            timings.append(time.perf_counter() - start)
        print(
            json.dumps(
                {
                    "device": str(jax.devices()[0].device_kind),
                    "n_devices": jax.local_device_count(),
                    "batch_size": batch_size,
                    "samples": args.samples,
                    "attention": args.attention,
                    "dtype": args.dtype,
                    "first_call_s": round(timings[0], 3),
                    "second_call_s": round(timings[1], 3),
                    "samples_per_s": round(args.samples / timings[1], 4),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
