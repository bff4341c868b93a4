"""Held-out quality of tl.finetune (probe, IA3, full) on simulated cohorts with a planted signal.

Cancer types up-regulate their own gene programs; hazards follow a known risk factor that
up-regulates a risk program (see ``bulkrnabert_sv._core.simulate``). A random-weight encoder is
fine-tuned on one cohort and evaluated on another drawn from the same population. Each method's
held-out metric is printed beside the planted oracle's (the program-score classifier; the true
risk factor) and chance.

    PYTHONPATH=src python benchmarks/finetune_quality.py [--n-train 300] [--n-test 300]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import bulkrnabert_sv as bs
from bulkrnabert_sv._core.metrics import classification_metrics
from bulkrnabert_sv._core.simulate import program_oracle, simulate_cohort
from bulkrnabert_sv._core.survival import concordance_index
from bulkrnabert_sv.model import random_model

SETTINGS = {
    "probe": dict(epochs=100),
    "ia3": dict(epochs=8, batch_size=16, learning_rate=1e-2),
    "full": dict(epochs=8, batch_size=16, learning_rate=1e-3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--n-genes", type=int, default=200)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["probe", "ia3", "full"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    genes = [f"ENSG{i:011d}" for i in range(1, args.n_genes + 1)]
    encoder = random_model("tiny", genes=genes, embed_dim=args.embed_dim, seed=args.seed)
    train = simulate_cohort(args.n_train, genes, seed=args.seed)
    test = simulate_cohort(args.n_test, genes, seed=args.seed + 1000)
    labels = test.obs["cancer_type"].to_numpy()
    classes = sorted(set(labels))
    codes = np.searchsorted(classes, labels)
    oracle_accuracy = np.mean(program_oracle(test) == labels)
    obs = test.obs
    oracle_c = concordance_index(obs["time"], obs["risk_factor"], obs["event"])
    print(
        f"train {args.n_train}, held-out {args.n_test} samples; {args.n_genes} genes; encoder "
        f"tiny embed {args.embed_dim} (random weights); events {obs['event'].mean():.0%}"
    )
    print(f"{'task':<15} {'method':<6} {'metric':<18} {'held-out':>9} {'oracle':>7} {'chance':>7}")
    rows = []
    for method in args.methods:
        kw = dict(method=method, model=encoder, progress=False, copy=True, **SETTINGS[method])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            _, model = bs.tl.finetune(train, "cancer_type", random_state=args.seed, **kw)
            proba = model.predict(test)
            seconds_c = time.perf_counter() - start
            start = time.perf_counter()
            _, cox = bs.tl.finetune(train, "time", event_key="event", random_state=args.seed, **kw)
            risk = cox.predict(test)["risk"].to_numpy()
            seconds_s = time.perf_counter() - start
        predicted = np.searchsorted(classes, proba.idxmax(axis=1).to_numpy())
        scores = classification_metrics(codes, predicted, len(classes))
        oracle_scores = classification_metrics(
            codes, np.searchsorted(classes, program_oracle(test)), len(classes)
        )
        for name in ("accuracy", "balanced_accuracy", "f1_macro"):
            rows.append(
                (
                    "classification",
                    method,
                    name,
                    scores[name],
                    oracle_scores[name],
                    1 / 3,
                    seconds_c,
                )
            )
        c_index = concordance_index(obs["time"], risk, obs["event"])
        rows.append(("survival", method, "c_index", c_index, oracle_c, 0.5, seconds_s))
        for row in rows[-4:]:
            task, meth, name, value, oracle, chance, seconds = row
            print(
                f"{task:<15} {meth:<6} {name:<18} {value:>9.3f} {oracle:>7.3f} {chance:>7.3f}"
                f"   ({seconds:.0f} s)",
                flush=True,
            )
    assert oracle_accuracy == 1.0


if __name__ == "__main__":
    main()
