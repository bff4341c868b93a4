"""The bundled compact model: speed, held-out masked loss, and cohort separation against PCA.

Usage::

    python benchmarks/compact_model.py            # needs ../shared beside the checkout

Prints, measured in one run on this machine:

* embedding speed of ``load_model("compact")`` on the 48 shipped TCGA tumours (samples/s, after
  one warm-up pass that compiles), with the machine's float32 GEMM rate for scale;
* the masked cross-entropy on those held-out tumours (5 fixed masks per sample) against the
  per-gene marginal baseline estimated on the training tumours, and the same for the untrained
  model of the same architecture;
* cohort separation of the five cohorts: leave-one-out 5-NN accuracy and silhouette (Euclidean,
  with 95% bootstrap intervals over samples) of the compact embeddings, of the untrained model's
  embeddings, and of PCA of log10(1 + TPM) (all 19,062 genes, and the compact model's 2,048).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = 2000


def _tool(name: str):
    """``tools/<name>.py`` as a module, by the tests' loader (tests/conftest.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import load_tool

    return load_tool(name)


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def separation(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> dict[str, tuple]:
    """LOO 5-NN accuracy and silhouette, each with a 95% bootstrap interval over samples."""
    from sklearn.metrics import silhouette_samples
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    predicted = cross_val_predict(KNeighborsClassifier(n_neighbors=5), x, labels, cv=LeaveOneOut())
    correct = (predicted == labels).astype(float)
    silhouette = silhouette_samples(x, labels)
    out = {}
    for name, values in (("knn_accuracy", correct), ("silhouette", silhouette)):
        draws = rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))
        means = values[draws].mean(axis=1)
        out[name] = (values.mean(), *np.quantile(means, [0.025, 0.975]))
    return out


def main() -> None:
    import anndata as ad

    import bulkrnabert_sv as brb
    from bulkrnabert_sv._demo import log_tpm_pca
    from bulkrnabert_sv.model import BulkRNABertConfig, random_model

    train_tool = _tool("train_compact_model")
    model = brb.load_model("compact")
    demo = brb.datasets.tcga_demo()
    labels = demo.obs["cohort"].astype(str).to_numpy()

    # speed
    brb.tl.embed(demo, model, batch_size=8, progress=False, key_added="warmup")
    start = time.perf_counter()
    brb.tl.embed(demo, model, batch_size=8, progress=False)
    seconds = time.perf_counter() - start
    gemm = gemm_gflops()
    print(
        f"compact model: {model.config.n_genes} genes, {model.config.num_layers} blocks, "
        f"width {model.config.embed_dim}, {model.config.num_parameters:,} parameters"
    )
    print(
        f"embedding: {demo.n_obs} samples in {seconds:.2f} s = {demo.n_obs / seconds:.1f} "
        f"samples/s (batch 8; float32 GEMM on this machine: {gemm:.0f} GFLOP/s)"
    )

    # held-out masked loss against the marginal baseline of the training tumours
    data = ROOT / "build" / "tcga_tpm.h5ad"
    if not data.is_file():
        _tool("build_bundled_data").main([])
    adata = ad.read_h5ad(data)
    train = adata[adata.obs["split"] == "train", list(model.genes)].copy()
    untrained = random_model(
        BulkRNABertConfig.compact(n_genes=len(model.genes)), genes=model.genes, seed=0
    )
    untrained.enable_mask_embedding()
    print("\nmasked cross-entropy on the 48 held-out tumours (5 masks of 15% each):")
    for name, net in (("compact (trained)", model), ("same architecture, untrained", untrained)):
        result = train_tool.evaluate(net, train)["heldout"]
        print(
            f"  {name:<30} {result['masked_loss']:.4f}   marginal baseline "
            f"{result['marginal_baseline_loss']:.4f}   ratio "
            f"{result['masked_loss'] / result['marginal_baseline_loss']:.3f}   masked accuracy "
            f"{result['masked_accuracy']:.3f}"
        )

    # cohort separation
    brb.tl.embed(demo, untrained, batch_size=8, progress=False, key_added="X_untrained")
    representations = {
        "compact embeddings": demo.obsm["X_bulkrnabert"],
        "untrained embeddings": demo.obsm["X_untrained"],
        "PCA log TPM, 19,062 genes": log_tpm_pca(demo.X),
        "PCA log TPM, compact genes": log_tpm_pca(demo[:, list(model.genes)].X),
    }
    rng = np.random.default_rng(0)
    print(f"\ncohort separation, {demo.n_obs} tumours, 5 cohorts (95% bootstrap intervals):")
    print(f"  {'representation':<28} {'5-NN LOO accuracy':<26} silhouette")
    for name, x in representations.items():
        s = separation(np.asarray(x, dtype=np.float64), labels, rng)
        acc, sil = s["knn_accuracy"], s["silhouette"]
        print(
            f"  {name:<28} {acc[0]:.3f} [{acc[1]:.3f}, {acc[2]:.3f}]      "
            f"{sil[0]:.3f} [{sil[1]:.3f}, {sil[2]:.3f}]"
        )


if __name__ == "__main__":
    main()
