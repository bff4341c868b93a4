"""pp.counts_to_tpm against an independent TPM computation from the GTF (GTEx lung, chr21)."""

from __future__ import annotations

import gzip
import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import bulkrnabert_sv as bs
from conftest import shared_path

GTEX = "data/gtex_lung_chr21/gtex_lung.first30.chr21.csv.gz"
GTF = "data/gtex_lung_chr21/gencode.v26.annotation.chr21.gtf.gz"


def union_exon_lengths(gtf_path) -> dict[str, int]:
    """Own parser: per gene_id, the number of bases covered by at least one exon."""
    exons: dict[str, list[tuple[int, int]]] = {}
    with gzip.open(gtf_path, "rt") as handle:
        for line in handle:
            if line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if fields[2] != "exon":
                continue
            gene = re.search(r'gene_id "([^"]+)"', fields[8]).group(1)
            exons.setdefault(gene, []).append((int(fields[3]), int(fields[4])))
    lengths = {}
    for gene, intervals in exons.items():
        covered = set()
        for start, end in intervals:  # 1-based, inclusive
            covered.update(range(start, end + 1))
        lengths[gene] = len(covered)
    return lengths


@pytest.fixture(scope="module")
def gtex() -> ad.AnnData:
    table = pd.read_csv(shared_path(GTEX), index_col=0)
    return ad.AnnData(
        table.to_numpy(dtype=np.float64),
        obs=pd.DataFrame(index=table.index),
        var=pd.DataFrame(index=table.columns),
    )


def test_gtex_counts_to_tpm_agrees_with_an_independent_computation(gtex):
    adata = gtex.copy()
    counts = adata.X.copy()
    gtf = shared_path(GTF)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bs.pp.counts_to_tpm(adata, gtf=gtf)
    lengths = union_exon_lengths(gtf)
    per_base = counts / np.array([lengths[g] for g in adata.var_names])
    expected = per_base / per_base.sum(axis=1, keepdims=True) * 1e6
    np.testing.assert_allclose(adata.layers["tpm"], expected, rtol=1e-10)
    np.testing.assert_array_equal(adata.X, counts)  # X untouched
    assert adata.uns["counts_to_tpm"] == {
        "gene_lengths": str(gtf),
        "layer": "X",
        "key_added": "tpm",
        "n_genes_with_length": 818,
        "n_genes_without_length": 0,
    }
    assert bs.pp.check_expression(adata, layer="tpm")["looks_like"] == "tpm"


def test_unversioned_ids_missing_genes_and_output_to_x(gtex):
    adata = gtex[:, :50].copy()
    names = [n.split(".")[0] for n in adata.var_names]
    names[3] = "NOT_A_GENE"
    adata.var_names = names
    counts = adata.X.copy()
    with pytest.warns(UserWarning, match="1 of 50 genes .*NOT_A_GENE.* set to 0"):
        result = bs.pp.counts_to_tpm(adata, gtf=shared_path(GTF), key_added=None, copy=True)
    np.testing.assert_array_equal(adata.X, counts)  # copy=True leaves the input alone
    assert set(result.layers.keys()) <= {None} and result.X[:, 3].max() == 0
    np.testing.assert_allclose(result.X.sum(axis=1), 1e6)
    lengths = union_exon_lengths(shared_path(GTF))
    by_id = {k.split(".")[0]: v for k, v in lengths.items()}
    kept = [i for i in range(50) if i != 3]
    per_base = counts[:, kept] / np.array([by_id[names[i]] for i in kept])
    np.testing.assert_allclose(
        result.X[:, kept], per_base / per_base.sum(axis=1, keepdims=True) * 1e6, rtol=1e-10
    )


def test_gene_lengths_series_and_bad_input(gtex):
    adata = gtex[:4, :6].copy()
    lengths = pd.Series([1000, 2000, 500, 1500, 1000, 250], index=adata.var_names)
    bs.pp.counts_to_tpm(adata, gene_lengths=lengths, key_added="my_tpm")
    per_base = adata.X / lengths.to_numpy()
    np.testing.assert_allclose(
        adata.layers["my_tpm"], per_base / per_base.sum(axis=1, keepdims=True) * 1e6
    )
    with pytest.raises(ValueError, match="exactly one of gtf"):
        bs.pp.counts_to_tpm(adata)
    with pytest.raises(ValueError, match="None of the 6 genes"):
        bs.pp.counts_to_tpm(adata, gene_lengths=pd.Series([100], index=["ENSG99999999999"]))
    negative = adata.copy()
    negative.X[1, 2] = -3
    with pytest.raises(ValueError, match="negative values"):
        bs.pp.counts_to_tpm(negative, gene_lengths=lengths)
    assert "tpm" not in negative.layers
    with pytest.warns(UserWarning, match="non-integer values"):
        bs.pp.counts_to_tpm(adata, gene_lengths=lengths, layer="my_tpm", key_added="again")
