"""The demo job behind ``bulkrnabert-sv demo`` and ``make demo``: embed real TCGA tumours, offline.

Steps: choose the model (the published weights when they can be had, else the bundled compact
model), embed the TCGA tumours shipped with the package, measure how well the five cohorts
separate against PCA of log TPM on the same samples, and write the ``.h5ad`` and a UMAP figure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ._keys import EMBEDDING_KEY, EMBEDDING_UNS_KEY
from ._settings import DEFAULT_REPO, MODEL_ENV, env

#: Seconds to wait for the Hugging Face Hub's answer before falling back on the compact model.
HUB_TIMEOUT_S = 5.0
#: Neighbours of the leave-one-out kNN classifier that measures cohort separation.
KNN_NEIGHBOURS = 5
PCA_COMPONENTS = 50


@dataclasses.dataclass
class ModelChoice:
    """The model the demo uses and the one line that says which and why."""

    model: object
    line: str


def choose_model(
    source: str | None = None, *, revision: str | None = None, allow_pickle: bool = False
) -> ModelChoice:
    """The model named by ``source`` (or ``$BULKRNABERT_SV_MODEL``); else the published weights
    from the Hugging Face cache or network (waiting at most :data:`HUB_TIMEOUT_S`); else the
    bundled compact model.

    A source the user named that cannot be loaded is an error (a :class:`CheckpointError`), never
    silently replaced.
    """
    from .model import CheckpointError, load_model
    from .model.loading import load_resolved, resolve_source
    from .model.vocabulary import COMPACT_SOURCE

    named = source or env(MODEL_ENV)
    if named:
        model = load_model(named, revision=revision, allow_pickle=allow_pickle)
        return ModelChoice(model, f"model: {model.source} (as asked)")
    try:
        resolved = resolve_source(DEFAULT_REPO, revision=revision, etag_timeout=HUB_TIMEOUT_S)
        model = load_resolved(resolved)
    except CheckpointError as error:
        reason = str(error).splitlines()[0]
        model = load_model(COMPACT_SOURCE)
        return ModelChoice(
            model,
            f"model: compact (bundled with bulkrnabert-sv, {model.config.n_genes} genes, our "
            f"own weights), because the published weights could not be had: {reason}",
        )
    return ModelChoice(
        model, f"model: {DEFAULT_REPO} (the published weights, from {resolved.folder})"
    )


def cohort_separation(representation: np.ndarray, labels) -> dict[str, float]:
    """How well a representation separates labelled groups (scikit-learn).

    Returns the leave-one-out accuracy of a :data:`KNN_NEIGHBOURS`-nearest-neighbour classifier
    (Euclidean) and the silhouette score (Euclidean, in [-1, 1]).
    """
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import LeaveOneOut, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    x = np.asarray(representation, dtype=np.float64)
    y = np.asarray(labels)
    knn = KNeighborsClassifier(n_neighbors=min(KNN_NEIGHBOURS, len(y) - 1))
    accuracy = cross_val_score(knn, x, y, cv=LeaveOneOut()).mean()
    return {"knn_accuracy": float(accuracy), "silhouette": float(silhouette_score(x, y))}


def log_tpm_pca(tpm: np.ndarray, n_components: int = PCA_COMPONENTS) -> np.ndarray:
    """The baseline representation: PCA of ``log10(1 + TPM)`` (genes centred, not scaled)."""
    from sklearn.decomposition import PCA

    x = np.log10(1.0 + np.asarray(tpm, dtype=np.float64))
    n = min(n_components, x.shape[0] - 1, x.shape[1])
    return PCA(n_components=n, svd_solver="full", random_state=0).fit_transform(x)


def umap_figure(adata, groupby: str, representations: dict[str, str], path: Path, title: str):
    """One UMAP panel per representation (an ``obsm`` key), coloured by ``obs[groupby]``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import scanpy as sc

    fig, axes = plt.subplots(1, len(representations), figsize=(5.2 * len(representations), 4.6))
    axes = np.atleast_1d(axes)
    for ax, (label, key) in zip(axes, representations.items()):
        view = adata.copy()
        sc.pp.neighbors(view, use_rep=key, n_neighbors=10, random_state=0)
        sc.tl.umap(view, random_state=0)
        sc.pl.umap(view, color=groupby, ax=ax, show=False, title=label, size=60, frameon=True)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(
    output: Path,
    *,
    source: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    echo=print,
) -> dict:
    """Run the demo: returns the separation scores and the paths written."""
    from .datasets import tcga_demo
    from .tl._embed import embed

    output = Path(output)
    figure = output.with_name(output.name.removesuffix(".h5ad") + "_umap.png")
    choice = choose_model(source, revision=revision, allow_pickle=allow_pickle)
    echo(choice.line)
    model = choice.model
    adata = tcga_demo()
    cohorts = adata.obs["cohort"].value_counts().sort_index()
    echo(
        f"samples: {adata.n_obs} real TCGA tumours shipped with the package ("
        + ", ".join(f"{n} {c}" for c, n in cohorts.items())
        + ")"
    )
    embed(adata, model, batch_size=batch_size, progress=progress)
    report = adata.uns[EMBEDDING_UNS_KEY]["genes"]
    echo(f"genes matched: {report['n_matched']} of the model's {report['n_vocabulary']}")
    adata.obsm["X_pca_log_tpm"] = log_tpm_pca(adata.X)
    scores = {
        "BulkRNABert": cohort_separation(adata.obsm[EMBEDDING_KEY], adata.obs["cohort"]),
        "PCA of log TPM": cohort_separation(adata.obsm["X_pca_log_tpm"], adata.obs["cohort"]),
    }
    echo(f"cohort separation ({KNN_NEIGHBOURS}-NN leave-one-out accuracy, silhouette):")
    for name, score in scores.items():
        echo(
            f"  {name:<16} accuracy {score['knn_accuracy']:.3f}   silhouette {score['silhouette']:.3f}"
        )
    adata.uns["bulkrnabert_demo"] = {
        "model": str(model.source),
        "model_line": choice.line,
        "separation": scores,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(output)
    umap_figure(
        adata,
        "cohort",
        {
            f"BulkRNABert ({model.source})": EMBEDDING_KEY,
            "PCA of log10(1 + TPM)": "X_pca_log_tpm",
        },
        figure,
        f"{adata.n_obs} TCGA tumours, UMAP of two representations",
    )
    echo(f"wrote {output} and {figure}")
    return {"scores": scores, "output": output, "figure": figure, "model": str(model.source)}
