"""Interpretation tools: cost at full size, and top genes on real tumours next to markers.

Two parts (``python benchmarks/interpret.py markers|memory|all``):

``markers``
    The 48 shipped TCGA tumours (``datasets.tcga_demo()``: ACC, DLBC, UVM, GBM and LGG; GBM
    and LGG merged into one glial class) and the bundled compact model (2,048 genes). A linear
    probe is fine-tuned on the cohorts (in sample: the point is what it uses, not how well it
    does), then ``tl.attribute`` (integrated gradients, 16 steps), ``tl.gene_attention`` and
    ``tl.perturb`` (each cohort's marker set deleted, against random sets of the same size).
    For each cohort the textbook markers fixed below (those in the compact vocabulary) are
    ranked among the model's genes by each score, next to a plain differential-expression
    ranking (mean log1p TPM in the cohort minus the rest) as a reference.
``memory``
    The full-size random model (``model.random_model("tcga")``, 19,062 genes), one sample:
    wall time of a first (compiling) and a second call, and peak resident memory, of
    ``tl.gene_attention`` (all 4 blocks, streamed), of one forward pass (``tl.embed``) and of one
    integration step of one output (``tl.attribute(n_steps=1, target=...)``: a forward and a
    backward pass), each in its own process (peak RSS from ``getrusage``).

Results are printed as JSON lines and summarised in ``docs/interpretation.md``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

#: Textbook markers per cohort, fixed before looking at any result.
MARKERS = {
    "UVM": ["MLANA", "PMEL", "TYR", "TYRP1", "DCT", "MITF", "SOX10", "S100B", "MLPH", "GPR143"],
    "ACC": [
        "STAR",
        "CYP11A1",
        "CYP11B1",
        "CYP11B2",
        "CYP17A1",
        "CYP21A2",
        "NR5A1",
        "HSD3B2",
        "MC2R",
        "SCARB1",
    ],
    "DLBC": ["CD19", "MS4A1", "CD79A", "CD79B", "PAX5", "CD22", "BLK", "CD37", "FCRLA", "TCL1A"],
    "GBM/LGG": [
        "GFAP",
        "OLIG2",
        "OLIG1",
        "SOX2",
        "AQP4",
        "PLP1",
        "MBP",
        "BCAN",
        "GPM6B",
        "SLC1A3",
    ],
}


def _ranks(scores, names) -> dict[str, int]:
    """1-based rank (highest score first) of each of ``names`` among the scored genes."""
    order = scores.dropna().sort_values(ascending=False, kind="stable")
    position = {g: i + 1 for i, g in enumerate(order.index)}
    return {n: position[n] for n in names if n in position}


def markers() -> list[dict]:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    import bulkrnabert_sv as bs

    warnings.simplefilter("ignore")
    adata = bs.datasets.tcga_demo()
    model = bs.load_model("compact")
    adata = adata[:, [g in set(model.genes) for g in adata.var_names]].copy()
    adata.obs["group"] = pd.Categorical(
        adata.obs["cohort"].astype(str).replace({"GBM": "GBM/LGG", "LGG": "GBM/LGG"})
    )
    symbol_of = dict(zip(adata.var_names, adata.var["symbol"].astype(str)))
    id_of = {s: g for g, s in symbol_of.items()}
    t0 = time.perf_counter()
    tuned = bs.tl.finetune(adata, "group", model=model, progress=False)
    t_finetune = time.perf_counter() - t0
    t0 = time.perf_counter()
    bs.tl.attribute(
        adata, tuned, n_steps=16, batch_size=8, remat=False, groupby="group", progress=False
    )
    t_attribute = time.perf_counter() - t0
    t0 = time.perf_counter()
    bs.tl.gene_attention(adata, model, groupby="group", batch_size=8, progress=False)
    t_attention = time.perf_counter() - t0
    log_tpm = np.log1p(np.asarray(adata.X, dtype=np.float64))
    groups = adata.obs["group"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    results = []
    record = adata.uns["bulkrnabert_attribution"]
    for cohort, symbols in MARKERS.items():
        present = [id_of[s] for s in symbols if s in id_of]
        inside = groups == cohort
        de = pd.Series(
            log_tpm[inside].mean(axis=0) - log_tpm[~inside].mean(axis=0), index=adata.var_names
        )
        scores = {
            "attribution_mean": adata.varm["bulkrnabert_attribution"][cohort],
            "attribution_contrast": adata.varm["bulkrnabert_attribution_contrast"][cohort],
            "attention": adata.varm["bulkrnabert_attention"][cohort],
            "differential_expression": de,
        }
        row = {
            "cohort": cohort,
            "n_samples": int(inside.sum()),
            "markers_in_vocabulary": [symbol_of[g] for g in present],
        }
        for name, score in scores.items():
            ranks = _ranks(score, present)
            top50 = score.dropna().sort_values(ascending=False, kind="stable").index[:50]
            row[name] = {
                "marker_ranks": {symbol_of[g]: r for g, r in ranks.items()},
                "median_rank": float(np.median(list(ranks.values()))),
                "in_top50": len(set(top50) & set(present)),
                "auroc": float(roc_auc_score(np.isin(score.index, present), score.fillna(0))),
                "top15": [symbol_of[g] for g in top50[:15]],
            }
        # deletion of the marker set vs 20 random sets of the same size, in the cohort
        sets = {"markers": present}
        others = [g for g in adata.var_names if g not in present]
        for i in range(20):
            sets[f"random_{i}"] = list(rng.choice(others, size=len(present), replace=False))
        sub = adata[inside].copy()
        bs.tl.perturb(sub, tuned, sets, batch_size=8, progress=False)
        margin = sub.obsm["bulkrnabert_perturb_output"].mean(axis=0)
        shift = sub.obsm["bulkrnabert_perturb"].mean(axis=0)
        random_margin = margin.drop("markers").to_numpy()
        row["deletion"] = {
            "marker_margin_change": float(margin["markers"]),
            "random_margin_change_median": float(np.median(random_margin)),
            "random_margin_change_min": float(random_margin.min()),
            "marker_shift": float(shift["markers"]),
            "random_shift_median": float(np.median(shift.drop("markers"))),
            "n_prediction_changed": int(
                sub.uns["bulkrnabert_perturb"]["summary"].loc["markers", "n_prediction_changed"]
            ),
        }
        results.append(row)
    summary = {
        "part": "markers",
        "n_genes": len(model.genes),
        "train_accuracy": tuned.metrics["train"]["accuracy"],
        "inner_cv_balanced_accuracy": tuned.metrics.get("inner_cv", {}).get("balanced_accuracy"),
        "max_relative_error": record["max_relative_error"],
        "seconds": {
            "finetune": round(t_finetune, 1),
            "attribute_48_samples_16_steps_4_classes": round(t_attribute, 1),
            "gene_attention_48_samples": round(t_attention, 1),
        },
    }
    return [summary, *results]


# ------------------------------------------------------------------------------ full size
_CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np, anndata as ad, pandas as pd
import bulkrnabert_sv as bs
from bulkrnabert_sv.model import random_model
task = sys.argv[1]
model = random_model("tcga", seed=0)
rng = np.random.default_rng(0)
tpm = rng.lognormal(1.0, 2.0, (1, model.config.n_genes)) * (rng.random((1, model.config.n_genes)) < 0.8)
tpm = (tpm * 1e6 / tpm.sum()).astype(np.float32)
adata = ad.AnnData(tpm, var=pd.DataFrame(index=list(model.genes)))
adata.obs["group"] = pd.Categorical(["a"])
if task == "attribute_step":
    from flax import nnx
    from bulkrnabert_sv.tl import FinetunedModel
    from bulkrnabert_sv.model import MLPHead
    head = MLPHead(model.config.embed_dim, [], 2, rngs=nnx.Rngs(0))
    tuned = FinetunedModel(model, head, task="classification", method="probe",
                           classes=["a", "b"], obs_key="group", event_key=None,
                           embedding_block=model.config.num_layers)

def call():
    if task == "embed":
        bs.tl.embed(adata, model, batch_size=1, progress=False)
    elif task == "gene_attention":
        bs.tl.gene_attention(adata, model, batch_size=1, progress=False)
    elif task == "attribute_step":  # one class, one integration point: 1 forward + 1 backward
        bs.tl.attribute(adata, tuned, target="a", n_steps=1, batch_size=1, progress=False)

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
times = []
for _ in range(2):  # the first call compiles
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"task": task, "first_call_s": round(times[0], 1),
                  "second_call_s": round(times[1], 1),
                  "peak_rss_mib": round(peak), "rss_before_mib": round(before)}))
"""


def memory(tasks=("embed", "gene_attention", "attribute_step")) -> list[dict]:
    rows = []
    for task in tasks:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, task], capture_output=True, text=True, check=True
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["part"] = "memory (full size, 1 sample)"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "markers"
    if part in ("markers", "all"):
        for row in markers():
            print(json.dumps(row), flush=True)
    if part in ("memory", "all"):
        tasks = sys.argv[2:] or ("embed", "gene_attention", "attribute_step")
        memory(tasks)
    print(
        f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB"
    )
