"""Train the compact BulkRNABert model that ships with the package, from the shared TCGA files.

Usage::

    python tools/build_bundled_data.py            # writes build/tcga_tpm.h5ad
    python tools/train_compact_model.py [--steps 800]

The recipe, all seeds fixed (a rerun on the same machine gives the same weights):

1. Data: the TCGA tumours of ``build/tcga_tpm.h5ad`` whose ``split`` is ``train`` (ACC, DLBC,
   UVM, GBM, LGG and the 4 GBMLGG samples of the BulkRNABert repository); the ``heldout``
   samples (the ones :func:`bulkrnabert_sv.datasets.tcga_demo` ships) are never trained on.
2. Genes: of the published model's 19,062 vocabulary genes, those detected (TPM > 0) in at least
   one training sample of every source, ranked by the variance of ``log10(1 + TPM)`` over the
   training samples; the top 2,048 are kept, in vocabulary order.
3. Architecture: :meth:`BulkRNABertConfig.compact` (width 64, 4 heads of 16, feed-forward 128,
   3 blocks, the published tokenizer: 64 bins, normalisation factor 5.547).
4. Training: :func:`bulkrnabert_sv.tl.pretrain`, masked expression modelling (15% of genes),
   batch 8, AdamW (peak learning rate 2e-3, 50 warm-up steps, cosine decay, weight decay
   0.01, gradient clipping at 1), checkpoints in ``build/compact_pretrain`` (resumable).
5. Evaluation: the masked cross-entropy on the held-out samples, in the order
   ``datasets.tcga_demo`` ships them (5 fixed masks per sample), against the per-gene marginal
   baseline estimated on the training samples.

Writes the model to ``src/bulkrnabert_sv/data/compact/`` (``model.safetensors``,
``bulkrnabert_sv.json``, ``genes.txt``) and its card ``card.json`` (data, genes, steps, time,
losses), which ``docs/model_card_compact.md`` reports.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "build" / "tcga_tpm.h5ad"
CHECKPOINTS = ROOT / "build" / "compact_pretrain"
OUT = ROOT / "src" / "bulkrnabert_sv" / "data" / "compact"
N_GENES = 2_048
SEED = 0
SETTINGS = dict(
    mask_rate=0.15,
    batch_size=8,
    learning_rate=2e-3,
    warmup_steps=50,
    weight_decay=0.01,
    max_grad_norm=1.0,
    random_state=SEED,
)
EVAL_MASKS = 5


def select_genes(adata: ad.AnnData, n_genes: int = N_GENES) -> list[str]:
    """Top ``n_genes`` by variance of log10(1 + TPM) among genes detected in every source."""
    train = adata[adata.obs["split"] == "train"]
    x = np.log10(1.0 + np.asarray(train.X, dtype=np.float64))
    detected = np.ones(train.n_vars, dtype=bool)
    for source in train.obs["source"].unique():
        rows = np.asarray(train.obs["source"] == source)
        detected &= (x[rows] > 0).any(axis=0)
    variance = np.where(detected, x.var(axis=0), -np.inf)
    top = np.sort(np.argsort(-variance, kind="stable")[:n_genes])
    return [str(g) for g in train.var_names[top]]


def heldout_masked_loss(model, tokens: np.ndarray, log_baseline: np.ndarray) -> dict[str, float]:
    """Masked cross-entropy of the model and of the marginal baseline on fixed random masks."""
    from bulkrnabert_sv.training.masking import masked_sums, sample_mask

    table = jnp.asarray(log_baseline)

    @jax.jit
    def sums(toks, mask):
        logits = model(toks, mask=mask)["logits"]
        return masked_sums(logits, toks, mask, table)

    total = {"loss": 0.0, "correct": 0.0, "baseline": 0.0, "count": 0.0}
    key = jax.random.key(12345)
    for repeat in range(EVAL_MASKS):
        for start in range(0, len(tokens), 8):
            toks = jnp.asarray(tokens[start : start + 8], dtype=jnp.int32)
            mask = sample_mask(jax.random.fold_in(key, repeat * 10_000 + start), toks.shape, 0.15)
            out = jax.device_get(sums(toks, mask))
            for name in total:
                total[name] += float(out[name])
    return {
        "masked_loss": total["loss"] / total["count"],
        "marginal_baseline_loss": total["baseline"] / total["count"],
        "masked_accuracy": total["correct"] / total["count"],
        "n_masked_positions": int(total["count"]),
    }


def evaluate(model, train: ad.AnnData) -> dict[str, dict]:
    """Masked loss on the shipped held-out tumours (``datasets.tcga_demo``) and on ``train``.

    The marginal baseline is estimated on the training samples.
    """
    import bulkrnabert_sv as brb
    from bulkrnabert_sv.pp._tokens import token_batches
    from bulkrnabert_sv.training.masking import marginal_log_probs

    def tokens_of(data) -> np.ndarray:
        return np.concatenate([b for _, _, b in token_batches(data, model, batch_size=64)])

    train_tokens = tokens_of(train)
    log_baseline = marginal_log_probs(train_tokens, model.config.n_expressions_bins)
    return {
        "heldout": heldout_masked_loss(model, tokens_of(brb.datasets.tcga_demo()), log_baseline),
        "train": heldout_masked_loss(model, train_tokens, log_baseline),
    }


def main(argv: list[str] | None = None) -> None:
    import bulkrnabert_sv as brb
    from bulkrnabert_sv.model import BulkRNABertConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="recompute the card's evaluation of the saved model (no training)",
    )
    args = parser.parse_args(argv)

    adata = ad.read_h5ad(DATA)
    genes = select_genes(adata)
    subset = adata[:, genes].copy()
    train = subset[subset.obs["split"] == "train"].copy()
    heldout = subset[subset.obs["split"] == "heldout"].copy()
    if args.evaluate_only:
        card = json.loads((OUT / "card.json").read_text())
        card["evaluation"] = evaluate(brb.load_model(OUT), train)
        (OUT / "card.json").write_text(json.dumps(card, indent=1) + "\n")
        print(json.dumps(card["evaluation"], indent=1))
        return
    config = BulkRNABertConfig.compact(n_genes=len(genes))

    started = time.perf_counter()
    model, history = brb.tl.pretrain(
        train,
        model=config,
        genes=genes,
        steps=args.steps,
        checkpoint_dir=CHECKPOINTS,
        checkpoint_every=args.checkpoint_every,
        **SETTINGS,
    )
    seconds = time.perf_counter() - started

    evaluation = evaluate(model, train)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save(OUT)
    last = history.tail(50)
    card = {
        "name": "bulkrnabert-sv compact",
        "licence": "BSD-3-Clause (weights trained by bulkrnabert-sv on TCGA open-access data)",
        "architecture": config.architecture(),
        "n_parameters": config.num_parameters,
        "genes": {
            "n": len(genes),
            "rule": "of the 19,062 published vocabulary genes, those with TPM > 0 in at least "
            "one training sample of every source, top 2,048 by variance of log10(1 + TPM) over "
            "the training samples, kept in vocabulary order",
        },
        "data": {
            "train": {k: int(v) for k, v in train.obs["cancer_type"].value_counts().items()},
            "heldout": {k: int(v) for k, v in heldout.obs["cancer_type"].value_counts().items()},
            "sources": sorted(set(adata.obs["source"])),
        },
        "training": {
            **SETTINGS,
            "steps": args.steps,
            "seconds": round(seconds, 1),
            "machine": f"{platform.machine()}, {jax.device_count()} JAX device(s) "
            f"({jax.devices()[0].platform}), {__import__('os').cpu_count()} cores",
            "resumed_from": history.attrs.get("resumed_from"),
            "loss_last_50_steps": float(last["loss"].mean()),
            "baseline_loss_last_50_steps": float(last["baseline_loss"].mean()),
        },
        "evaluation": evaluation,
    }
    (OUT / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    history.to_csv(ROOT / "build" / "compact_history.csv", index=False)
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
