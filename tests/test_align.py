"""Gene alignment (Ensembl ids, HGNC symbols) and input value checks, on real data."""

from __future__ import annotations

import gzip
import json
import warnings
from importlib import resources

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bulkrnabert_sv.model import random_model
from bulkrnabert_sv.pp import (
    DuplicateGenesWarning,
    ExpressionValueError,
    ExpressionValueWarning,
    GeneCoverageWarning,
    align_genes,
    check_expression,
    strip_ensembl_version,
)
from bulkrnabert_sv.pp._tokens import token_batches
from conftest import load_tool, shared_path

VOCAB = ["ENSG00000000003", "ENSG00000000005", "ENSG00000000419", "ENSG00000000457"]


def _adata(names, values=None, **var_columns) -> ad.AnnData:
    values = np.ones((2, len(names))) if values is None else np.asarray(values, dtype=float)
    var = pd.DataFrame(var_columns, index=pd.Index(names, dtype=str))
    return ad.AnnData(values, var=var)


def _tcga4() -> ad.AnnData:
    table = pd.read_csv(shared_path("data/tcga_gbmlgg_4_samples_tpm.csv"))
    adata = ad.AnnData(table.drop(columns="identifier").to_numpy(dtype=float))
    adata.obs_names = table["identifier"].astype(str).to_numpy()
    adata.var_names = table.columns[:-1].astype(str)
    return adata


def _hgnc_approved() -> pd.DataFrame:
    """Approved symbol ↔ Ensembl id, read independently of the package's table."""
    hgnc = pd.read_csv(
        shared_path("data/annotation/hgnc_complete_2020-07.csv.gz"),
        usecols=["Status", "Approved symbol", "Ensembl gene ID"],
        dtype=str,
    ).drop_duplicates()
    return hgnc[hgnc["Status"] == "Approved"].dropna()


# ------------------------------------------------------------------------------ Ensembl ids
def test_strip_ensembl_version_only_on_real_ensembl_ids():
    assert strip_ensembl_version("ENSG00000141510.16") == "ENSG00000141510"
    assert strip_ensembl_version("ENSG00000141510") == "ENSG00000141510"
    assert strip_ensembl_version("ENSMUSG00000059552.8") == "ENSMUSG00000059552"
    assert strip_ensembl_version("ENSG00000182378.14_PAR_Y") is None
    # Symbols and clone names with dots are never cut at the dot.
    assert strip_ensembl_version("RP11-34P13.3") is None
    assert strip_ensembl_version("ENSG0000014151.1") is None  # 10 digits: not an Ensembl id


def test_versions_par_y_duplicates_and_missing_genes():
    names = [
        "ENSG00000000003.14",
        "ENSG00000000419.12_PAR_Y",
        "ENSG00000000419.12",
        "ENSG00000000005.5",
        "ENSG00000000005.6",
        "RP11-34P13.3",
    ]
    values = [[1.0, 100.0, 2.0, 3.0, 4.0, 5.0], [0.0, 100.0, 1.0, 1.0, 1.0, 7.0]]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        alignment = align_genes(_adata(names, values), VOCAB)
    categories = {w.category for w in record}
    assert categories == {DuplicateGenesWarning, GeneCoverageWarning}
    assert "ENSG00000000005 <- ENSG00000000005.5, ENSG00000000005.6" in str(record[0].message)
    assert alignment.id_type == "ensembl"
    assert alignment.n_matched == 3
    assert alignment.missing == ["ENSG00000000457"]
    assert alignment.duplicated == ["ENSG00000000005"]
    assert alignment.dropped == ["ENSG00000000419.12_PAR_Y"]
    assert "PAR_Y" in alignment.dropped_reasons["ENSG00000000419.12_PAR_Y"]
    assert alignment.unmapped == ["RP11-34P13.3"]
    # Vocabulary order; the two versions of ENSG...005 summed; PAR_Y ignored; missing gene = 0.
    np.testing.assert_array_equal(
        alignment.transform(np.asarray(values)), [[1.0, 7.0, 2.0, 0.0], [0.0, 2.0, 1.0, 0.0]]
    )
    report = alignment.report()
    assert report["n_matched"] == 3 and report["n_missing"] == 1
    assert report["n_unmapped"] == 1 and report["n_duplicated"] == 1
    assert report["n_dropped"] == 1 and report["coverage"] == pytest.approx(0.75)


def test_gene_key_column_and_sparse_rows():
    import scipy.sparse as sp

    adata = _adata(["a", "b", "c"], [[1, 2, 3], [4, 5, 6]], gene_ids=[*VOCAB[2::-1]])
    alignment = align_genes(adata, VOCAB[:3], gene_key="gene_ids")
    assert alignment.n_matched == 3 and alignment.gene_key == "gene_ids"
    expected = [[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]]
    np.testing.assert_array_equal(alignment.transform(adata.X), expected)
    np.testing.assert_array_equal(alignment.transform(sp.csr_matrix(adata.X)), expected)
    with pytest.raises(KeyError, match="gene_ids"):
        align_genes(adata, VOCAB, gene_key="gene_id")


# ------------------------------------------------------------------------------ zero overlap
def test_zero_overlap_names_the_cause():
    mouse = _adata(["ENSMUSG00000059552.8", "ENSMUSG00000020122.15"])
    with pytest.raises(ValueError, match="mouse Ensembl ids"):
        align_genes(mouse, VOCAB)
    wrong_column = _adata(["0", "1"], gene_ids=VOCAB[:2])
    with pytest.raises(ValueError, match="gene_key='gene_ids'"):
        align_genes(wrong_column, VOCAB)
    numbers = _adata(["7157", "672"])
    with pytest.raises(ValueError, match="NCBI/Entrez"):
        align_genes(numbers, VOCAB)
    mouse_symbols = _adata(["Actb", "Gapdh", "Trp53"])
    with pytest.raises(ValueError, match="mouse or rat gene symbols"):
        align_genes(mouse_symbols, VOCAB)


# ------------------------------------------------------------------------------ symbols
def test_symbol_priority_ambiguity_and_shadowing():
    septin1 = "ENSG00000180096"  # SEPTIN1, previously SEPT1
    vocab = [septin1, "ENSG00000141510"]  # TP53
    alignment = align_genes(_adata(["SEPT1", "TP53"]), vocab)
    assert alignment.id_type == "symbol" and alignment.n_matched == 2
    assert alignment.matched_by == {
        "ensembl": 0,
        "entrez": 0,
        "approved": 1,
        "previous": 1,
        "alias": 0,
    }
    # With the approved symbol present, the previous symbol is dropped, not summed.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateGenesWarning)
        both = align_genes(_adata(["SEPT1", "SEPTIN1", "TP53"], [[5, 1, 2], [5, 3, 4]]), vocab)
    assert both.dropped == ["SEPT1"] and "SEPTIN1" in both.dropped_reasons["SEPT1"]
    np.testing.assert_array_equal(both.transform(np.array([[5.0, 1, 2]])), [[1.0, 2.0]])
    # An ambiguous symbol is dropped and says which genes it could name.
    ambiguous = align_genes(_adata(["GGTA1P", "TP53"]), vocab, warn=False)
    assert "GGTA1P" in ambiguous.dropped
    assert "ENSG00000204136" in ambiguous.dropped_reasons["GGTA1P"]
    assert "HGNC" in ambiguous.report()["symbol_table"]


def test_shipped_symbol_table_is_derived_and_documented():
    folder = resources.files("bulkrnabert_sv") / "data"
    info = json.loads((folder / "hgnc_symbol_to_ensembl.json").read_text())
    assert info["date"] == "2020-07" and "HGNC" in info["source"]
    assert info["priority"] == ["approved", "previous", "alias"]
    with resources.as_file(folder / "hgnc_symbol_to_ensembl.tsv.gz") as path:
        header = gzip.open(path, "rt").readline()
        table = pd.read_csv(path, sep="\t", skiprows=3, dtype=str, keep_default_na=False)
    assert "HGNC complete set (2020-07" in header
    assert list(table.columns) == ["symbol", "ensembl_id", "kind"]
    assert table["symbol"].is_unique
    assert set(table["kind"]) == {"approved", "previous", "alias", "ambiguous"}
    counts = table["kind"].value_counts().to_dict()
    assert {k: counts[k] for k in info["counts"] if k in counts} == {
        k: v for k, v in info["counts"].items() if k != "no_ensembl_id"
    }
    # Each approved symbol maps to its own gene in the HGNC set.
    approved = _hgnc_approved()
    approved = approved[~approved["Ensembl gene ID"].duplicated(keep=False)]
    expected = dict(zip(approved["Approved symbol"], approved["Ensembl gene ID"]))
    mine = table[table["kind"] == "approved"].set_index("symbol")["ensembl_id"]
    assert len(mine) > 39_000
    assert all(mine[s] == e for s, e in expected.items())


def _load_builder():
    return load_tool("build_symbol_table")


def test_symbol_table_builder_rules():
    rows = [
        # HGNC ID, status, approved, previous, alias, ensembl
        ("HGNC:1", "Approved", "AAA", "OLD1", "X1", "ENSG00000000001"),
        ("HGNC:2", "Approved", "BBB", None, "AAA", "ENSG00000000002"),  # alias AAA loses
        ("HGNC:3", "Approved", "CCC", "OLD1", None, "ENSG00000000003"),  # OLD1 ambiguous
        ("HGNC:4", "Approved", "DDD", None, "X1", "ENSG00000000004"),  # alias X1 ambiguous
        ("HGNC:5", "Approved", "EEE", "OLD5", None, None),  # no Ensembl id
        ("HGNC:6", "Entry Withdrawn", "FFF", None, None, None),
        ("HGNC:7", "Approved", "GGG", None, "44076", "ENSG00000000007"),  # mangled date
    ]
    hgnc = pd.DataFrame(
        rows,
        columns=[
            "HGNC ID",
            "Status",
            "Approved symbol",
            "Previous symbol",
            "Alias symbol",
            "Ensembl gene ID",
        ],
    )
    table, counts = _load_builder().build_table(hgnc)
    result = {s: (e, k) for s, e, k in table.itertuples(index=False)}
    assert result["AAA"] == ("ENSG00000000001", "approved")
    assert result["OLD1"] == ("ENSG00000000001|ENSG00000000003", "ambiguous")
    assert result["X1"][1] == "ambiguous"
    assert "EEE" not in result and "OLD5" not in result and "FFF" not in result
    assert "44076" not in result
    assert counts["no_ensembl_id"] == 2 and counts["approved"] == 5


# ------------------------------------------------------------------------------ real data
def test_tcga_four_samples_match_every_gene(vocabulary):
    adata = _tcga4()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alignment = align_genes(adata, vocabulary)
    assert alignment.n_matched == 19_062 == len(vocabulary)
    assert alignment.report()["n_missing"] == 0 and not alignment.duplicated
    np.testing.assert_array_equal(alignment.transform(adata.X[:2]), adata.X[:2])


def test_tcga_samples_with_approved_symbols_match_back(vocabulary):
    adata = _tcga4()
    approved = _hgnc_approved().drop_duplicates("Ensembl gene ID")
    symbol_of = dict(zip(approved["Ensembl gene ID"], approved["Approved symbol"]))
    keep = [g for g in adata.var_names if g in symbol_of]
    symbols = adata[:, keep].copy()
    symbols.var_names = [symbol_of[g] for g in keep]
    with pytest.warns(GeneCoverageWarning):
        alignment = align_genes(symbols, vocabulary)
    assert alignment.id_type == "symbol"
    assert alignment.n_matched >= 18_900
    # The symbol columns land on their own genes: same values as the Ensembl input.
    by_symbol = alignment.transform(np.asarray(symbols.X))
    matched = np.isin(vocabulary, alignment.missing, invert=True)
    np.testing.assert_array_equal(by_symbol[:, matched], np.asarray(adata.X)[:, matched])
    assert (by_symbol[:, ~matched] == 0).all()


def test_brca_symbols_match_every_named_vocabulary_gene(vocabulary):
    table = pd.read_csv(
        shared_path("data/tcga_brca_15_tpm_symbols.tsv.gz"), sep="\t", index_col="sample"
    )
    adata = ad.AnnData(table.to_numpy(dtype=float))
    adata.var_names = table.columns.astype(str)
    with pytest.warns(GeneCoverageWarning, match="original preprocessing required"):
        alignment = align_genes(adata, vocabulary)
    approved = _hgnc_approved()
    named = set(approved.loc[approved["Approved symbol"].isin(adata.var_names), "Ensembl gene ID"])
    named &= set(vocabulary)
    matched = set(vocabulary) - set(alignment.missing)
    assert named <= matched
    assert 8_200 <= len(named) <= alignment.n_matched < 8_400
    assert alignment.matched_by["approved"] >= len(named) - 5


def test_airway_warns_about_counts_and_coverage(vocabulary):
    adata = ad.read_h5ad(shared_path("data/airway.h5ad"))
    model = random_model("tiny", genes=vocabulary)
    with pytest.warns(GeneCoverageWarning) as coverage:
        batches = token_batches(adata, model, batch_size=4)
    assert "18752 of 19062" in str(coverage[0].message)
    # Every batch is checked; one warning, naming the samples, once all batches are read.
    with pytest.warns(ExpressionValueWarning, match="8 sample.*raw counts.*counts_to_tpm"):
        list(batches)
    with pytest.warns(ExpressionValueWarning, match="raw counts"):
        assert check_expression(adata)["looks_like"] == "counts"


# ------------------------------------------------------------------------------ value checks
def _tpm(rng, n=6, genes=40) -> np.ndarray:
    values = rng.lognormal(2.0, 2.0, (n, genes))
    return values / values.sum(axis=1, keepdims=True) * 8e5


def test_expression_checks_raise_or_warn_with_the_fix():
    rng = np.random.default_rng(0)
    tpm = _tpm(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_expression(ad.AnnData(tpm))["looks_like"] == "tpm"
    with pytest.warns(ExpressionValueWarning, match=r"log-transformed.*2\*\*x - 1"):
        assert check_expression(ad.AnnData(np.log2(tpm + 1)))["looks_like"] == "log"
    with pytest.warns(ExpressionValueWarning, match="does not look like TPM"):
        assert check_expression(ad.AnnData(tpm * 7.5))["looks_like"] == "not_tpm"
    with pytest.warns(ExpressionValueWarning, match="raw counts"):
        assert check_expression(ad.AnnData(np.round(tpm * 30)))["looks_like"] == "counts"
    bad = tpm.copy()
    bad[4, 7] = np.nan
    with pytest.raises(ExpressionValueError, match="row 4, column 7"):
        check_expression(ad.AnnData(bad), batch_size=3)
    bad[4, 7] = np.inf
    with pytest.raises(ExpressionValueError, match="NaN or infinite"):
        check_expression(ad.AnnData(bad))
    bad[4, 7] = -1.0
    with pytest.raises(ExpressionValueError, match=r"negative values.*layer="):
        check_expression(ad.AnnData(bad))


# ------------------------------------------------------------------------------ Entrez ids
def test_entrez_ids_and_symbol_entrez_pairs():
    tp53, brca1, septin1 = "ENSG00000141510", "ENSG00000012048", "ENSG00000180096"
    vocab = [tp53, brca1, septin1]
    plain = align_genes(_adata(["7157", "672"]), vocab, warn=False)
    assert plain.id_type == "entrez" and plain.matched_by["entrez"] == 2
    np.testing.assert_array_equal(plain.transform(np.array([[1.0, 2.0]])), [[1.0, 2.0, 0.0]])
    # TCGA RNASeqV2 names: the Entrez id wins; an unknown id falls back on the symbol; "?|id"
    # without a known id is unmapped.
    pairs = align_genes(
        _adata(["TP53|7157", "WRONGNAME|672", "SEPTIN1|999999999", "?|100130426"]),
        vocab,
        warn=False,
    )
    assert pairs.id_type == "symbol|entrez" and pairs.n_matched == 3
    assert pairs.matched_by["entrez"] == 2 and pairs.matched_by["approved"] == 1
    assert pairs.unmapped == ["?|100130426"]
    np.testing.assert_array_equal(
        pairs.transform(np.array([[1.0, 2.0, 3.0, 4.0]])), [[1.0, 2.0, 3.0]]
    )
    # A default index is not read as Entrez ids (0 -> nothing, 1 would be A1BG).
    with pytest.raises(ValueError, match="default index"):
        align_genes(_adata(["0", "1", "2"]), ["ENSG00000121410"])


def test_mixed_ensembl_ids_and_symbols_are_both_mapped():
    tp53, brca1 = "ENSG00000141510", "ENSG00000012048"
    names = [tp53, "ENSG00000000003", "ENSG00000000005", "BRCA1"]  # mostly Ensembl
    alignment = align_genes(_adata(names), [tp53, brca1], warn=False)
    assert alignment.id_type == "mixed" and alignment.n_matched == 2
    assert alignment.matched_by["ensembl"] == 1 and alignment.matched_by["approved"] == 1
    # Forcing Ensembl reads only the Ensembl ids, and says so through `unmapped`.
    forced = align_genes(_adata(names), [tp53, brca1], id_type="ensembl", warn=False)
    assert forced.n_matched == 1 and "BRCA1" in forced.unmapped


def test_coverage_warning_threshold_scales_with_the_vocabulary():
    from bulkrnabert_sv.pp._align import min_matched_genes

    assert min_matched_genes(19_062) == 18_000
    assert min_matched_genes(1_500) == 1_417  # ceil(18000 * 1500 / 19062)
    vocab = [f"ENSG{i:011d}" for i in range(1_500)]
    with pytest.warns(GeneCoverageWarning) as record:
        align_genes(_adata(vocab[:1_492]), vocab)
    message = str(record[0].message)
    assert "Only" not in message and "1492 of 1500" in message
    with pytest.warns(GeneCoverageWarning, match="1417 of this model's 1500"):
        align_genes(_adata(vocab[:1_000]), vocab)


def test_tcga_rnaseqv2_tables_align_through_entrez_ids(vocabulary):
    """The RTCGA / Firehose files: SYMBOL|ENTREZ columns; the GBM/LGG file genes x samples."""
    table = pd.read_csv(
        shared_path("data/tcga_rnaseqv2/tcga_acc_dlbc_uvm_rsem_normalized.tsv.gz"),
        sep="\t",
        index_col=0,
        nrows=3,
    )
    with pytest.warns(GeneCoverageWarning):
        alignment = align_genes(_adata(list(table.columns), table.to_numpy()), vocabulary)
    assert alignment.n_matched >= 17_400
    assert alignment.matched_by["entrez"] >= 17_400
    by_gene = pd.read_csv(
        shared_path("data/tcga_rnaseqv2/tcga_gbm_lgg_40_tpm_genes_by_samples.tsv.gz"),
        sep="\t",
        index_col=0,
    )
    by_gene = by_gene[~by_gene.index.duplicated()]  # the file repeats 1,075 rows verbatim
    samples = ad.AnnData(by_gene.T.to_numpy(), var=pd.DataFrame(index=by_gene.index))
    with pytest.warns(GeneCoverageWarning):
        gbm = align_genes(samples, vocabulary)
    # The file holds 19,947 distinct genes (584 fewer than the ACC/DLBC/UVM one): all reachable
    # vocabulary genes of it are matched.
    assert gbm.n_matched >= 17_300 and gbm.id_type == "symbol|entrez"
