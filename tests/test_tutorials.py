"""Execute every tutorial notebook with small parameters, so that a broken tutorial fails CI.

Each notebook's cell tagged ``parameters`` holds the defaults (the bundled compact model and the
shipped TCGA tumours; the stored outputs come from them, ``make tutorials``); as papermill does,
a cell that overrides them is inserted after it: a small random model over real vocabulary genes,
saved in the Hugging Face layout, and a GDC-layout folder made from the real shared TCGA samples
(19 tumours: 4 GBM, 15 BRCA; synthetic clinical table), so the GDC path is executed too. The
stored notebooks are read, never written.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import anndata as ad
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import bulkrnabert_sv
from bulkrnabert_sv.model import export_hf_folder, random_model
from conftest import shared_path
from gdc_layout import (
    breast_samples,
    clinical_table,
    gencode_genes,
    glioma_samples,
    write_gdc_folder,
)

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
#: The notebooks this file executes (one test each, below).
TESTED = (
    "01_embed_umap.ipynb",
    "02_classification.ipynb",
    "03_survival.ipynb",
    "04_your_own_data.ipynb",
    "05_interpretation.ipynb",
)
N_MODEL_GENES = 256
N_CHR21_GENES = 32
GTEX_COUNTS = "data/gtex_lung_chr21/gtex_lung.first30.chr21.csv.gz"


@pytest.fixture(scope="module")
def tutorial_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tutorial_inputs")
    genes = gencode_genes()
    samples = glioma_samples(genes) + breast_samples(genes)
    folder = write_gdc_folder(root / "gdc", samples, genes, clinical=clinical_table(samples))
    # model genes: real vocabulary ids, the most expressed in the TCGA samples plus genes of the
    # GTEx chr21 counts (tutorial 4), in vocabulary order
    vocabulary = shared_path("data/bulkrnabert_gene_ids.txt").read_text().split()
    order = {g: i for i, g in enumerate(vocabulary)}
    tpm = np.mean([s.tpm.to_numpy() for s in samples], axis=0)
    usable = genes["unversioned"].isin(order) & ~genes["gene_id"].str.endswith("_PAR_Y")
    ranked = genes["unversioned"].to_numpy()[np.argsort(-np.where(usable, tpm, -1))]
    with gzip.open(shared_path(GTEX_COUNTS), "rt") as handle:
        chr21 = [g.split(".")[0] for g in handle.readline().strip().split(",")[1:]]
    chosen = [g for g in chr21 if g in order][:N_CHR21_GENES]
    chosen += [g for g in ranked if g not in chosen][: N_MODEL_GENES - len(chosen)]
    chosen = sorted(chosen, key=order.__getitem__)
    model_dir = export_hf_folder(random_model("tiny", genes=chosen, seed=0), root / "model")
    return {"MODEL": str(model_dir), "DATA": str(folder), "root": root}


def _inject(notebook, parameters: dict) -> None:
    # A stored run's own injected parameters (make tutorials) give way to the test's.
    notebook.cells = [
        c
        for c in notebook.cells
        if "injected-parameters" not in c.get("metadata", {}).get("tags", [])
    ]
    (index,) = [
        i
        for i, cell in enumerate(notebook.cells)
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    notebook.cells.insert(index + 1, cell)


def _run(name: str, parameters: dict, cwd: Path, monkeypatch):
    notebook = nbformat.read(TUTORIALS / name, as_version=4)
    _inject(notebook, parameters)
    cwd.mkdir()
    # the kernel runs in cwd: make it import this checkout's package (absolute path)
    package_root = str(Path(bulkrnabert_sv.__file__).resolve().parents[1])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    )
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return notebook


def _outputs(notebook, kind: str) -> list:
    return [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if kind in o.get("data", {})
    ]


def test_every_tutorial_is_tested_and_has_parameters():
    assert NOTEBOOKS == sorted(TESTED)
    for name in NOTEBOOKS:
        notebook = nbformat.read(TUTORIALS / name, as_version=4)
        nbformat.validate(notebook)
        tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert 'MODEL = "compact"' in tagged[0].source  # offline by default
        # Stored executed (make tutorials), every code cell run in order, with figures.
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), name
        assert any(o.get("data", {}).get("image/png") for c in code for o in c.outputs), name
        assert not any(o.get("output_type") == "error" for c in code for o in c.outputs), name
        text = "\n".join(
            str(o.get("data", {}).get("text/plain", o.get("text", "")))
            for c in code
            for o in c.outputs
        )
        assert "compact" in text, name  # the page shows which model produced its figures


@pytest.mark.slow  # a Jupyter kernel per notebook: 15-45 s each on 2 cores
def test_01_embed_umap(tutorial_inputs, tmp_path, monkeypatch):
    params = {k: tutorial_inputs[k] for k in ("MODEL", "DATA")} | {
        "BATCH_SIZE": 8,
        "N_NEIGHBORS": 5,
    }
    notebook = _run("01_embed_umap.ipynb", params, tmp_path / "run", monkeypatch)
    saved = ad.read_h5ad(tmp_path / "run" / "tcga_bulkrnabert.h5ad")
    assert saved.obsm["X_bulkrnabert"].shape == (19, 16)
    assert saved.obsm["X_umap"].shape == (19, 2)
    assert sorted(saved.obs["cohort"].cat.categories) == ["BRCA", "GBMLGG"]
    assert saved.uns["bulkrnabert"]["genes"]["n_matched"] == N_MODEL_GENES
    assert len(_outputs(notebook, "image/png")) == 2  # the UMAPs: embeddings, PCA baseline


@pytest.mark.slow  # a Jupyter kernel per notebook: 15-45 s each on 2 cores
def test_02_classification(tutorial_inputs, tmp_path, monkeypatch):
    params = {k: tutorial_inputs[k] for k in ("MODEL", "DATA")} | {
        "TEST_FRACTION": 0.25,
        "CV_SPLITS": 3,
        "CV_REPEATS": 1,
        "BATCH_SIZE": 8,
    }
    notebook = _run("02_classification.ipynb", params, tmp_path / "run", monkeypatch)
    assert len(_outputs(notebook, "image/png")) == 1  # the confusion matrix
    saved = json.loads((tmp_path / "run" / "cohort_classifier" / "finetuned.json").read_text())
    assert sorted(saved["classes"]) == ["BRCA", "GBMLGG"]


@pytest.mark.slow  # a Jupyter kernel per notebook: 15-45 s each on 2 cores
def test_03_survival(tutorial_inputs, tmp_path, monkeypatch):
    params = {k: tutorial_inputs[k] for k in ("MODEL", "DATA")} | {
        "TEST_FRACTION": 0.35,
        "CV_SPLITS": 2,
        "CV_REPEATS": 1,
        "BATCH_SIZE": 8,
    }
    notebook = _run("03_survival.ipynb", params, tmp_path / "run", monkeypatch)
    figures = _outputs(notebook, "image/png")
    assert len(figures) == 1  # Kaplan-Meier


@pytest.mark.slow  # a Jupyter kernel per notebook: 15-45 s each on 2 cores
def test_04_your_own_data(tutorial_inputs, tmp_path, monkeypatch):
    params = {
        "MODEL": tutorial_inputs["MODEL"],
        "SYMBOL_TABLE": str(shared_path("data/tcga_brca_15_tpm_symbols.tsv.gz")),
        "COUNTS": str(shared_path(GTEX_COUNTS)),
        "GTF": str(shared_path("data/gtex_lung_chr21/gencode.v26.annotation.chr21.gtf.gz")),
        "BATCH_SIZE": 8,
    }
    notebook = _run("04_your_own_data.ipynb", params, tmp_path / "run", monkeypatch)
    text = "\n".join(o["data"]["text/plain"] for o in _outputs(notebook, "text/plain"))
    assert "'id_type': 'symbol'" in text
    assert "(30, 16)" in text  # the 30 GTEx samples embedded from their counts


def _markers(data: str, model: str, per_type: int = 3) -> dict[str, list[str]]:
    """Stand-in markers for the test data: each type's most over-expressed model genes."""
    adata = bulkrnabert_sv.datasets.read_gdc(data)
    genes = set(bulkrnabert_sv.load_model(model).genes)
    keep = adata.var_names.str.split(".").str[0].isin(genes)
    adata = adata[:, keep & ~adata.var_names.str.endswith("_PAR_Y")]
    types = adata.obs["cohort"].astype(str).replace({"GBM": "GBMLGG", "LGG": "GBMLGG"})
    log_tpm = np.log1p(np.asarray(adata.X, dtype=np.float64))
    markers = {}
    for name in sorted(set(types)):
        inside = (types == name).to_numpy()
        excess = log_tpm[inside].mean(axis=0) - log_tpm[~inside].mean(axis=0)
        order = np.argsort(-excess)[:per_type]
        markers[name] = [str(s) for s in adata.var["gene_name"].to_numpy()[order]]
    return markers


@pytest.mark.slow  # a Jupyter kernel per notebook: 15-45 s each on 2 cores
def test_05_interpretation(tutorial_inputs, tmp_path, monkeypatch):
    params = {k: tutorial_inputs[k] for k in ("MODEL", "DATA")} | {
        "IG_PER_TYPE": 1,
        "IG_STEPS": 2,
        "N_RANDOM_SETS": 2,
        "BATCH_SIZE": 8,
        "MARKERS": _markers(tutorial_inputs["DATA"], tutorial_inputs["MODEL"]),
    }
    notebook = _run("05_interpretation.ipynb", params, tmp_path / "run", monkeypatch)
    # top genes and heatmap of the attributions, the deletions, the attention received
    assert len(_outputs(notebook, "image/png")) == 4
    text = "\n".join(
        str(o.get("data", {}).get("text/plain", o.get("text", "")))
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "completeness error, predicted class" in text
    assert "differential expression" in text  # the marker table
    assert "BRCA markers" in text and "GBMLGG markers" in text  # the deletions
    assert "attention received, 2 tumours" in text
