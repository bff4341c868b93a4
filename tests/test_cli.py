"""The bulkrnabert-sv command line, called in-process: embed and demo."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest

import bulkrnabert_sv as bs
from bulkrnabert_sv.cli import main
from bulkrnabert_sv.model import BulkRNABertConfig, random_model
from checkpoint_layouts import random_haiku_params, write_hf_folder, write_sample_csv
from conftest import shared_path

N_GENES = 160
pytestmark = pytest.mark.filterwarnings("ignore::bulkrnabert_sv.pp.GeneCoverageWarning")


@pytest.fixture(scope="module")
def tcga4() -> pd.DataFrame:
    """The 4 real TCGA samples (TPM), first N_GENES vocabulary genes, plus `identifier`."""
    table = pd.read_csv(shared_path("data/tcga_gbmlgg_4_samples_tpm.csv"))
    return pd.concat([table.iloc[:, :N_GENES], table[["identifier"]]], axis=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tcga4):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    random_model("tiny", genes=list(tcga4.columns[:-1]), seed=5).save(folder)
    return folder


def run_embed(source, output, *options, model=None) -> int:
    argv = ["embed", str(source), "-o", str(output), "--no-progress", *map(str, options)]
    return main([*argv, "--model", str(model)] if model is not None else argv)


def _expected(model_dir, adata: ad.AnnData) -> np.ndarray:
    return bs.tl.embed(adata, str(model_dir), copy=True, progress=False).obsm["X_bulkrnabert"]


def _adata(tcga4: pd.DataFrame) -> ad.AnnData:
    adata = ad.AnnData(tcga4.iloc[:, :-1].to_numpy(dtype=float))
    adata.obs_names = tcga4["identifier"].to_numpy()
    adata.var_names = tcga4.columns[:-1]
    adata.obs["cohort"] = ["GBMLGG"] * 4
    return adata


def test_embed_h5ad_to_h5ad(model_dir, tcga4, tmp_path, capsys):
    adata = _adata(tcga4)
    adata.write_h5ad(tmp_path / "in.h5ad")
    code = run_embed(
        tmp_path / "in.h5ad", tmp_path / "out.h5ad", "--batch-size", 3, model=model_dir
    )
    assert code == 0
    assert "embedded 4 samples into 16 dimensions" in capsys.readouterr().out
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(out.obsm["X_bulkrnabert"], _expected(model_dir, adata))
    np.testing.assert_array_equal(out.X, adata.X)
    pd.testing.assert_frame_equal(out.obs, adata.obs)
    assert out.uns["bulkrnabert"]["params"]["model"] == str(model_dir)
    assert out.uns["bulkrnabert"]["genes"]["n_matched"] == N_GENES
    assert "X_bulkrnabert" not in ad.read_h5ad(tmp_path / "in.h5ad").obsm  # input untouched
    # Writing into the input file itself adds the fields and keeps the rest.
    assert run_embed(tmp_path / "in.h5ad", tmp_path / "in.h5ad", model=model_dir) == 0
    updated = ad.read_h5ad(tmp_path / "in.h5ad")
    np.testing.assert_array_equal(updated.obsm["X_bulkrnabert"], out.obsm["X_bulkrnabert"])
    np.testing.assert_array_equal(updated.X, adata.X)


def test_embed_csv_and_tsv_tables(model_dir, tcga4, tmp_path):
    expected = _expected(model_dir, _adata(tcga4))
    tcga4.to_csv(tmp_path / "samples.csv", index=False)
    assert run_embed(tmp_path / "samples.csv", tmp_path / "emb.csv", model=model_dir) == 0
    table = pd.read_csv(tmp_path / "emb.csv", index_col="sample")
    assert list(table.index) == list(tcga4["identifier"])
    assert list(table.columns[:2]) == ["bulkrnabert_0", "bulkrnabert_1"]
    np.testing.assert_allclose(table.to_numpy(), expected, rtol=1e-6)

    # Genes in rows (GDC style), gzipped TSV, output as .npy.
    genes_by_samples = tcga4.set_index("identifier").T
    genes_by_samples.index.name = "gene_id"
    genes_by_samples.to_csv(tmp_path / "genes.tsv.gz", sep="\t")
    code = run_embed(
        tmp_path / "genes.tsv.gz", tmp_path / "emb.npy", "--transpose", model=model_dir
    )
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "emb.npy"), expected)

    assert run_embed(tmp_path / "samples.csv", tmp_path / "t.h5ad", model=model_dir) == 0
    out = ad.read_h5ad(tmp_path / "t.h5ad")
    assert list(out.obs_names) == list(tcga4["identifier"])
    np.testing.assert_array_equal(out.obsm["X_bulkrnabert"], expected)


def test_embed_h5mu_modality(model_dir, tcga4, tmp_path):
    mdata = md.MuData({"expr": _adata(tcga4), "clin": ad.AnnData(np.ones((4, 2)))})
    mdata.write(tmp_path / "in.h5mu")
    options = ["--mod", "expr", "--key-added", "X_brb"]
    assert run_embed(tmp_path / "in.h5mu", tmp_path / "out.h5mu", *options, model=model_dir) == 0
    out = md.read_h5mu(tmp_path / "out.h5mu")
    np.testing.assert_array_equal(
        out.mod["expr"].obsm["X_brb"], _expected(model_dir, _adata(tcga4))
    )
    assert "brb" in out.mod["expr"].uns and "X_brb" not in out.mod["clin"].obsm


def test_exit_codes_and_one_line_errors(model_dir, tcga4, tmp_path, capsys):
    tcga4.to_csv(tmp_path / "samples.csv", index=False)
    csv, out = tmp_path / "samples.csv", tmp_path / "out.csv"
    cases = [
        ((tmp_path / "missing.h5ad", out), {}, 2, "does not exist"),
        ((csv, tmp_path / "x.json"), {}, 2, "unsupported output"),
        ((csv, out, "--layer", "tpm"), {"model": model_dir}, 2, "no 'tpm'"),
        ((csv, out), {"model": tmp_path / "no_model"}, 3, "could not load the model"),
        ((csv, out, "--batch-size", 0), {}, 2, "positive integer"),
    ]
    for args, kwargs, code, message in cases:
        assert run_embed(*args, **kwargs) == code, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert "Traceback" not in err
    assert main(["embed", str(csv)]) == 2
    assert "-o/--output" in capsys.readouterr().err
    bad = tcga4.copy()
    bad.iloc[2, 5] = -1.0
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert run_embed(tmp_path / "bad.csv", out, model=model_dir) == 2
    assert "negative values (first at row 2" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "embed" in capsys.readouterr().out
    assert main(["embed", "--help"]) == 0
    assert "--gene-key" in capsys.readouterr().out


def _hf_checkpoint(folder, table: pd.DataFrame, **overrides):
    genes = list(table.columns[:-1])
    config = BulkRNABertConfig.tiny(n_genes=len(genes), **overrides).to_dict()
    write_hf_folder(folder, random_haiku_params(config, seed=2), config, genes)
    write_sample_csv(folder, genes, table.iloc[:, :-1].to_numpy())
    return folder


def test_demo_with_a_small_checkpoint_in_the_hub_layout(tcga4, tmp_path, capsys):
    folder = _hf_checkpoint(tmp_path / "BulkRNABert", tcga4)
    output = tmp_path / "demo.h5ad"
    assert main(["demo", "--model", str(folder), "--output", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "cosine similarity" in printed and "embedding shape (16,)" in printed
    result = ad.read_h5ad(output)
    assert result.obsm["X_bulkrnabert"].shape == (4, 16)
    direct = bs.tl.embed(result, bs.load_model(folder), copy=True, progress=False)
    np.testing.assert_array_equal(result.obsm["X_bulkrnabert"], direct.obsm["X_bulkrnabert"])
    np.testing.assert_allclose(np.diag(result.obsp["bulkrnabert_cosine"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(result.X, tcga4.iloc[:, :-1].to_numpy(), rtol=1e-15)


def test_demo_full_vocabulary(tmp_path, capsys):
    """The real 4-sample CSV over all 19,062 genes, as `make demo` reads it (1-layer model)."""
    table = pd.read_csv(shared_path("data/tcga_gbmlgg_4_samples_tpm.csv"))
    folder = _hf_checkpoint(
        tmp_path / "BulkRNABert", table, num_layers=1, num_attention_heads=1, key_size=4
    )
    argv = ["demo", "--model", str(folder), "--output", str(tmp_path / "d.h5ad")]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "genes matched: 19062 of 19062" in printed
    assert ad.read_h5ad(tmp_path / "d.h5ad").obsm["X_bulkrnabert"].shape == (4, 16)


def test_demo_offline_without_a_model_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("BULKRNABERT_MODEL", raising=False)
    assert main(["demo", "--output", str(tmp_path / "d.h5ad")]) == 3
    err = capsys.readouterr().err
    assert "--model" in err and "BULKRNABERT_MODEL" in err and "Traceback" not in err
    assert not (tmp_path / "d.h5ad").exists()
