"""Cross-validated quality of the default probe against linear baselines on the same folds.

For each cohort and task, ``tl.cross_validate`` runs 5-fold cross-validation repeated
``--repeats`` times (stratified by class, or by event) with the bundled compact encoder
(``load_model("compact")``) and reports, with corrected 95% intervals:

* ``default``: ``tl.finetune``'s default probe (linear head, L2 by inner 5-fold CV);
* ``embedding ridge``: ridge logistic / Cox models on the same embeddings at fixed penalties
  (alpha 0.1, 1, 10, 100; the best one picked with hindsight);
* ``PCA ridge``: the same models on 32 principal components of log1p TPM (all genes);
* ``MLP split``: the previous default (the paper's MLP head (256, 128), early-stopped on one 20%
  validation split) and ``MLP inner CV`` (the same head, its epochs chosen by inner 5-fold CV),
  unless ``--no-mlp``.

Cohorts: three simulated designs over the compact model's genes (``datasets.simulate_cohort``) and the
real TCGA tumours of ``build/tcga_tpm.h5ad`` (ACC, DLBC, UVM, GBM, LGG; overall survival),
written by ``tools/build_bundled_data.py``.

    PYTHONPATH=src python benchmarks/finetune_quality.py [--repeats 5] [--json results.json]
    PYTHONPATH=src python benchmarks/finetune_quality.py --cohorts sim_small --repeats 1 --quick
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

import bulkrnabert_sv as bs
from bulkrnabert_sv.datasets import simulate_cohort

ROOT = Path(__file__).resolve().parents[1]
TCGA = ROOT / "build" / "tcga_tpm.h5ad"
TASKS = {"classification": "balanced_accuracy", "survival": "c_harrell"}
SECONDARY = {
    "classification": ("auroc", "log_loss"),
    "survival": ("c_uno", "auc", "integrated_brier_score"),
}


# ------------------------------------------------------------------------------ cohorts
def sim_small(genes):
    """The issue's design: 120 samples, 3 types, a hazard program over a third of the genes,
    about half the deaths observed."""
    return simulate_cohort(
        120, genes, n_types=3, risk_program_size=len(genes) // 3, censoring_days=1200, seed=11
    )


def sim_weak(genes):
    """300 samples, 5 types with weak programs (20 genes, 2-fold), a weak hazard in 50 genes,
    about a third of the deaths observed, noisier expression."""
    return simulate_cohort(
        300,
        genes,
        n_types=5,
        program_size=20,
        fold_change=2.0,
        risk_program_size=50,
        risk_effect=0.5,
        hazard_coefficient=0.7,
        censoring_days=500,
        noise=0.5,
        seed=12,
    )


def sim_imbalanced(genes):
    """226 samples of 4 types in proportions 53/27/13/7% (120/60/30/16), 4-fold programs, a
    moderate hazard in 200 genes, about half the deaths observed."""
    data = simulate_cohort(
        600,
        genes,
        n_types=4,
        fold_change=4.0,
        risk_program_size=200,
        risk_effect=0.7,
        hazard_coefficient=1.0,
        censoring_days=800,
        seed=13,
    )
    rng = np.random.default_rng(13)
    keep = []
    for name, count in zip(("type_0", "type_1", "type_2", "type_3"), (120, 60, 30, 16)):
        members = np.flatnonzero(data.obs["cancer_type"] == name)
        keep.extend(rng.choice(members, count, replace=False))
    return data[np.sort(keep)].copy()


def tcga(_genes):
    """The shared TCGA tumours with overall survival (durations > 0)."""
    import anndata as ad

    data = ad.read_h5ad(TCGA)
    obs = data.obs
    known = obs["os_time_days"].notna() & (obs["os_time_days"] > 0) & obs["os_event"].notna()
    data = data[known & (obs["cancer_type"] != "GBMLGG")].copy()
    data.obs["cancer_type"] = data.obs["cancer_type"].astype(str).astype("category")
    data.obs["time"] = data.obs["os_time_days"].astype(float)
    data.obs["event"] = data.obs["os_event"].astype(int)
    return data


COHORTS = {"sim_small": sim_small, "sim_weak": sim_weak, "sim_imbalanced": sim_imbalanced,
           "tcga": tcga}  # fmt: skip


# ------------------------------------------------------------------------------ runs
def run(data, encoder, task, repeats, mlp, quick):
    kw = dict(model=encoder, n_repeats=repeats, progress=False)
    if quick:
        kw["baseline_alphas"] = (1.0, 10.0)
    keys = ("cancer_type",) if task == "classification" else ("time",)
    extra = {} if task == "classification" else {"event_key": "event"}
    results = {}
    start = time.perf_counter()
    results["default"] = bs.tl.cross_validate(data, *keys, **extra, **kw)
    timings = {"default": time.perf_counter() - start}
    if mlp:
        variants = {
            "MLP split": dict(head="mlp", inner_folds=0),
            "MLP inner CV": dict(head="mlp"),
        }
        for name, settings in variants.items():
            start = time.perf_counter()
            results[name] = bs.tl.cross_validate(
                data, *keys, **extra, **kw, baselines=False, **settings
            )
            timings[name] = time.perf_counter() - start
    return results, timings


def interval(row) -> str:
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def summarise(cohort, task, data, results, timings) -> dict:
    metric = TASKS[task]
    main = results["default"]
    summary = main.summary.set_index(["model", "metric"])
    best_embedding = main.best(metric, prefix="embedding")
    best_pca = main.best(metric, prefix="pca")
    compare = main.compare().set_index(["model", "metric"])
    record = {
        "cohort": cohort,
        "task": task,
        "metric": metric,
        "n": int(main.params["n_samples"]),
        "events": main.params["n_events"],
        "classes": None if task == "survival" else len(main.params["classes"]),
        "folds": int(main.params["n_splits"] * main.params["n_repeats"]),
        "default": summary.loc[("bulkrnabert", metric)].to_dict(),
        "best_embedding": best_embedding,
        "embedding": summary.loc[(best_embedding, metric)].to_dict(),
        "difference_embedding": compare.loc[(best_embedding, metric)].to_dict(),
        "best_pca": best_pca,
        "pca": summary.loc[(best_pca, metric)].to_dict(),
        "difference_pca": compare.loc[(best_pca, metric)].to_dict(),
        "seconds": timings,
        "secondary": {
            name: {
                model: summary.loc[(model, name)].to_dict()
                for model in ("bulkrnabert", best_embedding, best_pca)
            }
            for name in SECONDARY[task]
        },
        "all": main.summary.to_dict(orient="records"),
    }
    for name, result in results.items():
        if name != "default":
            record[name] = (
                result.summary.set_index(["model", "metric"]).loc[("bulkrnabert", metric)].to_dict()
            )
    record["holds"] = bool(record["default"]["mean"] >= record["embedding"]["mean"] - 0.02)
    return record


def print_record(r) -> None:
    d = r["difference_embedding"]
    line = (
        f"| {r['cohort']} | {r['task']} | {r['metric']} | {interval(r['default'])} | "
        f"{interval(r['embedding'])} ({r['best_embedding']}) | "
        f"{d['mean_difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | "
        f"{interval(r['pca'])} ({r['best_pca']}) |"
    )
    for name in ("MLP split", "MLP inner CV"):
        if name in r:
            line += f" {interval(r[name])} |"
    line += f" {'yes' if r['holds'] else 'NO'} |"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", nargs="+", default=list(COHORTS), choices=list(COHORTS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-mlp", action="store_true", help="skip the MLP variants")
    parser.add_argument("--quick", action="store_true", help="two baseline alphas only")
    parser.add_argument("--subset", type=int, default=None, help="samples per cohort (dev)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    encoder = bs.load_model("compact")
    genes = list(encoder.genes)
    print(
        f"encoder: compact ({encoder.config.num_layers} layers x {encoder.config.embed_dim}, "
        f"{len(genes)} genes); 5-fold x {args.repeats}; 95% corrected intervals"
    )
    header = (
        "| cohort | task | metric | default probe | best embedding ridge | default - it | "
        "best PCA ridge |"
    )
    if not args.no_mlp:
        header += " MLP split (old default) | MLP inner CV |"
    header += " holds |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    records = []
    for cohort in args.cohorts:
        data = COHORTS[cohort](genes)
        if args.subset:
            data = data[np.random.default_rng(0).permutation(data.n_obs)[: args.subset]].copy()
        bs.tl.embed(data, encoder, progress=False)  # once per cohort; cross_validate reuses it
        for task in args.tasks:
            results, timings = run(data, encoder, task, args.repeats, not args.no_mlp, args.quick)
            record = summarise(cohort, task, data, results, timings)
            records.append(record)
            print_record(record)
    print()
    print("secondary metrics (default probe / best embedding ridge / best PCA ridge):")
    for r in records:
        for name, values in r["secondary"].items():
            cells = " / ".join(interval(v) for v in values.values())
            print(f"  {r['cohort']:<15} {name:<24} {cells}")
    print()
    for r in records:
        events = f", {r['events']} events" if r["events"] is not None else ""
        classes = f", {r['classes']} classes" if r["classes"] else ""
        seconds = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items())
        print(f"  {r['cohort']:<15} {r['task']:<15} n={r['n']}{classes}{events}; {seconds}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, default=float))


if __name__ == "__main__":
    main()
