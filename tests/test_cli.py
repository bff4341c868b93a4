"""The bulkrnabert-sv command line, called in-process: embed and demo."""

from __future__ import annotations

import os
import re

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
    # Batches of 3 + 1 against one batch of 4 (batches are never padded beyond the data): the
    # compiled shapes differ, so the float32 results agree to rounding, not bit for bit.
    np.testing.assert_allclose(
        out.obsm["X_bulkrnabert"], _expected(model_dir, adata), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(out.X, adata.X)
    pd.testing.assert_frame_equal(out.obs, adata.obs)
    assert out.uns["bulkrnabert"]["params"]["model"] == str(model_dir)
    assert out.uns["bulkrnabert"]["genes"]["n_matched"] == N_GENES
    assert "X_bulkrnabert" not in ad.read_h5ad(tmp_path / "in.h5ad").obsm  # input untouched
    # Writing into the input file itself needs --overwrite; it adds the fields, keeps the rest.
    assert run_embed(tmp_path / "in.h5ad", tmp_path / "in.h5ad", model=model_dir) == 2
    assert "pass --overwrite to add the embeddings to it" in capsys.readouterr().err
    assert "X_bulkrnabert" not in ad.read_h5ad(tmp_path / "in.h5ad").obsm
    code = run_embed(tmp_path / "in.h5ad", tmp_path / "in.h5ad", "--overwrite", model=model_dir)
    assert code == 0
    updated = ad.read_h5ad(tmp_path / "in.h5ad")
    np.testing.assert_allclose(
        updated.obsm["X_bulkrnabert"], out.obsm["X_bulkrnabert"], rtol=1e-5, atol=1e-6
    )
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


def test_demo_with_the_model_asked_for(tmp_path, capsys):
    """--model: the shipped TCGA tumours through a small 19,062-gene checkpoint in the hub layout."""
    table = pd.read_csv(shared_path("data/tcga_gbmlgg_4_samples_tpm.csv"))
    folder = _hf_checkpoint(
        tmp_path / "BulkRNABert", table, num_layers=1, num_attention_heads=1, key_size=4
    )
    output = tmp_path / "demo.h5ad"
    assert main(["demo", "--model", str(folder), "--output", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"model: {folder} (as asked)" in printed
    # The shipped tumours are on the full vocabulary (the genes their sources lack are 0).
    assert "genes matched: 19062 of the model's 19062" in printed
    assert "PCA of log TPM" in printed and "accuracy" in printed
    result = ad.read_h5ad(output)
    assert result.obsm["X_bulkrnabert"].shape == (48, 16)
    assert (tmp_path / "demo_umap.png").stat().st_size > 10_000
    demo = bs.datasets.tcga_demo()
    direct = bs.tl.embed(demo, bs.load_model(folder), copy=True, progress=False)
    np.testing.assert_allclose(
        result.obsm["X_bulkrnabert"], direct.obsm["X_bulkrnabert"], rtol=1e-6, atol=1e-6
    )
    scores = result.uns["bulkrnabert_demo"]["separation"]
    assert 0.0 <= scores["BulkRNABert"]["knn_accuracy"] <= 1.0


def test_demo_offline_uses_the_bundled_compact_model(tmp_path, monkeypatch, capsys):
    """No network, empty Hugging Face cache, no --model: the compact model, and exit 0."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("BULKRNABERT_SV_MODEL", raising=False)
    monkeypatch.delenv("BULKRNABERT_MODEL", raising=False)
    output = tmp_path / "d.h5ad"
    assert main(["demo", "--output", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    first = printed.splitlines()[0]
    assert first.startswith("model: compact (bundled with bulkrnabert-sv")
    assert "because the published weights could not be had" in first
    assert "genes matched: 2048 of the model's 2048" in printed
    result = ad.read_h5ad(output)
    assert result.uns["bulkrnabert_demo"]["model"] == "compact"
    assert result.obsm["X_bulkrnabert"].shape == (48, 64)
    assert (tmp_path / "d_umap.png").stat().st_size > 10_000


def test_demo_with_a_model_that_cannot_be_loaded_exits_3(tmp_path, capsys):
    assert (
        main(["demo", "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "d.h5ad")])
        == 3
    )
    err = capsys.readouterr().err
    assert "could not load the model" in err and "Traceback" not in err
    assert not (tmp_path / "d.h5ad").exists()


# ------------------------------------------------------------------------------ reliability
# Each test below is a regression test for one fault of the command line. Most pass a model
# path that does not exist: a check that runs before the model is loaded then exits 2 with its
# own message, while one that came later would exit 3 ("could not load the model").


def test_output_never_replaces_the_input_and_existing_files_need_overwrite(
    model_dir, tcga4, tmp_path, monkeypatch, capsys
):
    csv = tmp_path / "samples.csv"
    tcga4.to_csv(csv, index=False)
    original = csv.read_bytes()
    (tmp_path / "link.npy").symlink_to(csv)
    (tmp_path / "hard.csv").hardlink_to(csv)
    monkeypatch.chdir(tmp_path)
    # The same file named directly, relatively, through a symbolic or a hard link; with or
    # without --overwrite: refused before any work, and the table is left as it was.
    for output in (csv, "samples.csv", "./sub/../samples.csv", "link.npy", "hard.csv"):
        for options in ((), ("--overwrite",)):
            (tmp_path / "sub").mkdir(exist_ok=True)
            assert run_embed(csv, output, *options, model=tmp_path / "no_model") == 2, output
            err = capsys.readouterr().err
            assert "is the input file" in err and "would replace the expression table" in err
            assert csv.read_bytes() == original
    # An existing file that is not the input is replaced only with --overwrite.
    other = tmp_path / "old.csv"
    other.write_text("keep me\n")
    assert run_embed(csv, other, model=tmp_path / "no_model") == 2
    assert "old.csv already exists; pass --overwrite" in capsys.readouterr().err
    assert other.read_text() == "keep me\n"
    assert run_embed(csv, other, "--overwrite", model=model_dir) == 0
    table = pd.read_csv(other, index_col="sample")
    assert list(table.index) == list(tcga4["identifier"]) and table.shape == (4, 16)
    assert csv.read_bytes() == original


def test_text_in_a_gene_column_is_refused_naming_row_column_and_value(
    model_dir, tcga4, tmp_path, capsys
):
    gene = tcga4.columns[0]
    bad = tcga4.astype({gene: object})
    bad.loc[2, gene] = "low"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "out.csv"
    assert run_embed(tmp_path / "bad.csv", out, model=model_dir) == 2
    err = capsys.readouterr().err
    assert f"bad.csv: row 3, column '{gene}' holds 'low', which is not a number" in err
    assert f"among the TPM values of gene {gene}. Replace it with a number." in err
    assert not out.exists()
    # A decimal comma gets a hint; a gene column named by an Ensembl id is a gene column even
    # when most of its cells are text.
    bad.loc[0, gene] = "0,5"
    bad.loc[1, gene] = "high"
    bad.to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    assert run_embed(tmp_path / "bad.tsv", out, model=model_dir) == 2
    err = capsys.readouterr().err
    assert f"row 1, column '{gene}' holds '0,5'" in err and "(3 text cells" in err
    assert "decimal commas" in err
    # Genes in rows: a text cell in a sample column names the gene (the sample was dropped).
    genes_by_samples = tcga4.set_index("identifier").T.astype(object)
    genes_by_samples.index.name = "gene_id"
    sample = genes_by_samples.columns[1]
    genes_by_samples.iloc[4, 1] = "absent"
    genes_by_samples.to_csv(tmp_path / "genes.csv")
    assert run_embed(tmp_path / "genes.csv", out, "--transpose", model=model_dir) == 2
    err = capsys.readouterr().err
    assert f"row 5 (gene '{tcga4.columns[4]}'), column '{sample}' holds 'absent'" in err
    assert (
        f"while {N_GENES - 1} other cells of that column are numbers (the TPM values of a sample?)"
        in err
    )
    assert "or remove the column if it is not a sample" in err and not out.exists()
    # A mostly numeric column whose header is no gene id may be an annotation: both fixes.
    tcga4.assign(age=["45", "52", "unknown", "61"]).to_csv(tmp_path / "age.csv", index=False)
    assert run_embed(tmp_path / "age.csv", out, model=model_dir) == 2
    err = capsys.readouterr().err
    assert "row 3, column 'age' holds 'unknown'" in err
    assert "or remove the column if it is not a gene" in err
    # Real annotation columns (all text) are still annotations.
    annotated = tcga4.assign(grade=["G2", "G3", "G4", "G4"])
    annotated.to_csv(tmp_path / "annotated.csv", index=False)
    assert run_embed(tmp_path / "annotated.csv", tmp_path / "a.h5ad", model=model_dir) == 0
    result = ad.read_h5ad(tmp_path / "a.h5ad")
    assert list(result.obs_names) == list(tcga4["identifier"])
    assert list(result.obs["grade"]) == ["G2", "G3", "G4", "G4"] and result.n_vars == N_GENES


def test_output_problems_are_found_before_any_work(model_dir, tcga4, tmp_path, capsys):
    csv = tmp_path / "samples.csv"
    tcga4.to_csv(csv, index=False)
    (tmp_path / "folder.csv").mkdir()
    no_model = tmp_path / "no_model"
    cases = [
        (csv / "out.csv", "cannot create the output folder", "is a file, not a folder"),
        (tmp_path / "folder.csv", "is a folder; give a file name", ".npy"),
        (tmp_path / "out.parquet", "unsupported output 'out.parquet'", ".h5ad"),
        (tmp_path / "out.h5mu", "a table input is written as .h5ad", ".npy"),
    ]
    for output, *messages in cases:
        assert run_embed(csv, output, model=no_model) == 2, output
        err = capsys.readouterr().err
        assert all(m in err for m in messages), (output, err)
    h5ad = tmp_path / "in.h5ad"
    _adata(tcga4).write_h5ad(h5ad)
    assert run_embed(h5ad, tmp_path / "out.h5mu", model=no_model) == 2
    assert "cannot write a h5ad input to a .h5mu file" in capsys.readouterr().err
    assert main(["demo", "--model", str(no_model), "--output", str(csv / "d.h5ad")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    # A missing output folder is created (at write time).
    assert run_embed(csv, tmp_path / "new" / "deeper" / "e.npy", model=model_dir) == 0
    assert np.load(tmp_path / "new" / "deeper" / "e.npy").shape == (4, 16)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder")
def test_an_unwritable_output_folder_is_found_before_any_work(tcga4, tmp_path, capsys):
    csv = tmp_path / "samples.csv"
    tcga4.to_csv(csv, index=False)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert run_embed(csv, locked / "sub" / "out.csv", model=tmp_path / "no_model") == 2
    finally:
        locked.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


def _symbols_of(genes) -> list[str]:
    from bulkrnabert_sv.pp._symbols import symbol_table

    approved = {ids[0]: s for s, ids in symbol_table().mapping.items() if ids[1] == "approved"}
    return [approved[g] for g in genes]


def test_transposed_and_lower_case_inputs_say_how_to_fix_them(model_dir, tcga4, tmp_path, capsys):
    out = tmp_path / "out.csv"
    genes_by_samples = tcga4.set_index("identifier").T
    genes_by_samples.index.name = "gene_id"
    genes_by_samples.to_csv(tmp_path / "genes.csv")
    # Genes in rows without --transpose: found when the table is read, before the model.
    assert run_embed(tmp_path / "genes.csv", out, model=tmp_path / "no_model") == 2
    err = capsys.readouterr().err
    assert "genes.csv looks transposed: its column 'gene_id' holds gene ids" in err
    assert "Pass --transpose" in err
    # Samples in rows with --transpose.
    tcga4.to_csv(tmp_path / "samples.csv", index=False)
    code = run_embed(tmp_path / "samples.csv", out, "--transpose", model=tmp_path / "no_model")
    assert code == 2
    assert "samples are already in rows: drop --transpose" in capsys.readouterr().err
    # The same with HGNC symbols (more gene rows than sample columns).
    by_symbol = genes_by_samples.set_axis(_symbols_of(genes_by_samples.index), axis=0)
    by_symbol.to_csv(tmp_path / "symbols.csv")
    assert run_embed(tmp_path / "symbols.csv", out, model=tmp_path / "no_model") == 2
    assert "Pass --transpose" in capsys.readouterr().err
    # A transposed .h5ad: the no-overlap message of align_genes says to transpose it.
    _adata(tcga4).T.write_h5ad(tmp_path / "genes.h5ad")
    assert run_embed(tmp_path / "genes.h5ad", out, model=model_dir) == 2
    err = capsys.readouterr().err
    assert "the data look transposed" in err and "adata = adata.T" in err
    assert "--transpose" in err and not out.exists()
    # Lower-case human symbols: the message says to upper-case them.
    lower = tcga4.set_axis([*(s.lower() for s in _symbols_of(tcga4.columns[:-1])), "id"], axis=1)
    lower.to_csv(tmp_path / "lower.csv", index=False)
    assert run_embed(tmp_path / "lower.csv", out, model=model_dir) == 2
    err = capsys.readouterr().err
    assert f"human gene symbols in lower case (e.g. {lower.columns[0]} for" in err
    assert "adata.var_names = adata.var_names.str.upper()" in err
    # Upper-cased as the message says, the symbols match: all but C1orf112, whose HGNC symbol
    # is not all upper case.
    upper = lower.set_axis([c.upper() for c in lower.columns[:-1]] + ["id"], axis=1)
    upper.to_csv(tmp_path / "upper.csv", index=False)
    assert run_embed(tmp_path / "upper.csv", tmp_path / "u.npy", model=model_dir) == 0
    matched = re.search(r"\((\d+) of 160 model genes matched\)", capsys.readouterr().out)
    assert matched and int(matched.group(1)) >= 159
    assert np.load(tmp_path / "u.npy").shape == (4, 16)


def test_debug_after_the_subcommand(tcga4, tmp_path, capsys):
    from bulkrnabert_sv.cli import CliError

    missing = str(tmp_path / "missing.h5ad")
    out = str(tmp_path / "out.csv")
    for argv in (
        ["embed", missing, "-o", out, "--debug"],
        ["--debug", "embed", missing, "-o", out],
    ):
        with pytest.raises(CliError, match="does not exist"):
            main(argv)
    assert main(["embed", missing, "-o", out]) == 2  # without --debug: one line
    assert "does not exist" in capsys.readouterr().err
    demo = ["demo", "--model", str(tmp_path / "no_model"), "--output", str(tmp_path / "x.h5ad")]
    with pytest.raises(CliError, match="could not load the model"):
        main([*demo, "--debug"])


def test_a_model_without_genes_is_a_model_problem(tcga4, tmp_path, capsys):
    random_model("tiny", genes=None, seed=5).save(tmp_path / "no_genes")  # no gene list
    tcga4.to_csv(tmp_path / "samples.csv", index=False)
    code = run_embed(tmp_path / "samples.csv", tmp_path / "e.npy", model=tmp_path / "no_genes")
    assert code == 3
    err = capsys.readouterr().err
    assert "no_genes has no gene list" in err and "genes.txt" in err
    assert not (tmp_path / "e.npy").exists()


def test_repeated_sample_ids_are_kept(model_dir, tcga4, tmp_path, capsys):
    ids = ["a", "b", "a", "c"]
    tcga4.assign(identifier=ids).to_csv(tmp_path / "dup.csv", index=False)
    assert run_embed(tmp_path / "dup.csv", tmp_path / "e.csv", model=model_dir) == 0
    err = capsys.readouterr().err
    assert "sample ids in column 'identifier' are not unique (1 repeated, e.g. 'a')" in err
    table = pd.read_csv(tmp_path / "e.csv", index_col="sample")
    assert list(table.index) == ids
    np.testing.assert_allclose(table.to_numpy(), _expected(model_dir, _adata(tcga4)), rtol=1e-6)
    assert run_embed(tmp_path / "dup.csv", tmp_path / "e.h5ad", model=model_dir) == 0
    assert list(ad.read_h5ad(tmp_path / "e.h5ad").obs_names) == ids
    # An .h5ad input with repeated obs_names keeps them too.
    adata = _adata(tcga4)
    adata.obs_names = ids
    adata.write_h5ad(tmp_path / "dup.h5ad")
    assert run_embed(tmp_path / "dup.h5ad", tmp_path / "f.tsv", model=model_dir) == 0
    assert list(pd.read_csv(tmp_path / "f.tsv", sep="\t", index_col="sample").index) == ids


def test_an_h5ad_that_is_not_hdf5_is_named_and_described(tmp_path, capsys):
    import gzip

    out = tmp_path / "out.csv"
    cases = {
        "table.h5ad": (b"gene,TP53\ns1,1.5\n", "it is a text file starting with 'gene,TP53'"),
        "empty.h5ad": (b"", "it is empty (0 bytes)"),
        "packed.h5ad": (gzip.compress(b"\x89HDF\r\n"), "it is gzip-compressed"),
        "lfs.h5mu": (b"version https://git-lfs.github.com/spec/v1\n", "it is a Git LFS pointer"),
    }
    for name, (content, description) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert run_embed(tmp_path / name, out, model=tmp_path / "no_model") == 2, name
        err = capsys.readouterr().err
        kind = name.rsplit(".", 1)[1]
        assert f"{tmp_path / name} is not an .{kind} file: {description}" in err, err
        assert "HDF5" in err and "Traceback" not in err
