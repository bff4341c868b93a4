"""Build the data that ship with the package from the public files in ``../shared/data``.

Usage::

    python tools/build_bundled_data.py [--shared ../shared]

Writes, under ``src/bulkrnabert_sv/data/``:

``vocabulary_tcga.txt.gz``
    The published model's 19,062 gene ids in model order (a public fact of the BulkRNABert
    repository).
``gene_lengths_grch38.tsv.gz``
    Effective exonic length (bp) of the vocabulary genes, from the GRCh38 annotation of the
    R package IOBR (``anno_grch38``); 93 vocabulary genes have none there and are left out.
``tcga_demo.npz`` and ``tcga_demo.json``
    The held-out TCGA tumours (see below) as TPM in vocabulary order, with cohort and overall
    survival: what :func:`bulkrnabert_sv.datasets.tcga_demo` returns.

and ``build/tcga_tpm.h5ad`` (not shipped): every TCGA tumour of the shared files as TPM in
vocabulary order, with ``obs["split"]`` (``train`` / ``heldout``), for
``tools/train_compact_model.py``.

How the TPM are made, with the package's own public functions only:

* ACC, DLBC, UVM (TCGA RNASeqV2, Firehose 2016-01-28): RSEM ``normalized_count`` (upper-quartile
  normalised counts) with ``SYMBOL|ENTREZ`` columns are aligned to the vocabulary by
  :func:`bulkrnabert_sv.pp.align_to_vocabulary` (Entrez ids through the shipped HGNC table), then
  :func:`bulkrnabert_sv.pp.counts_to_tpm` with the shipped gene lengths. The sums run over the
  vocabulary genes that have a length.
* GBM, LGG (TCGAWorkflowData): RSEM ``scaled_estimate`` x 1e6 (TPM), genes in rows; the 1,075
  rows the file repeats verbatim are dropped, then the table is transposed and aligned.
* The 4 GBMLGG samples of the BulkRNABert repository (TPM on the vocabulary): training only.

Genes a source lacks are TPM 0, as the upstream preprocessing does. The held-out set, fixed by
seed 0, is 12 primary tumours each of ACC, DLBC and UVM and 6 each of GBM and LGG.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "bulkrnabert_sv" / "data"
BUILD_DIR = ROOT / "build"
HELDOUT_PER_COHORT = {"ACC": 12, "DLBC": 12, "UVM": 12, "GBM": 6, "LGG": 6}
SEED = 0
RNASEQV2 = "data/tcga_rnaseqv2"


def write_vocabulary(shared: Path) -> list[str]:
    genes = [g.strip() for g in (shared / "data/bulkrnabert_gene_ids.txt").read_text().split()]
    assert len(genes) == 19_062 and len(set(genes)) == len(genes)
    with gzip.GzipFile(OUT_DIR / "vocabulary_tcga.txt.gz", "wb", compresslevel=9, mtime=0) as f:
        f.write(("\n".join(genes) + "\n").encode())
    return genes


def write_gene_lengths(shared: Path, genes: list[str]) -> pd.Series:
    table = pd.read_csv(shared / "data/annotation/grch38_genes.tsv.gz", sep="\t")
    table = table.drop_duplicates("id").set_index("id")  # alternate haplotypes repeat ids
    lengths = table["eff_length"].reindex(genes).dropna().round().astype(np.int64)
    lengths = lengths[lengths > 0]
    buffer = io.StringIO()
    buffer.write(
        "# Effective exonic gene length (bp) of the BulkRNABert vocabulary genes, GRCh38,\n"
        "# from the IOBR annotation (anno_grch38); built by tools/build_bundled_data.py.\n"
    )
    lengths.rename_axis("ensembl_id").rename("length").to_frame().to_csv(
        buffer, sep="\t", lineterminator="\n"
    )
    with gzip.GzipFile(OUT_DIR / "gene_lengths_grch38.tsv.gz", "wb", compresslevel=9, mtime=0) as f:
        f.write(buffer.getvalue().encode())
    return lengths


def _clinical(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", dtype={"sample_type_code": str}).set_index("sample")
    table["sample_type_code"] = table["sample_type_code"].str.zfill(2)
    return table


def rnaseqv2_normalized(shared: Path, genes, lengths) -> ad.AnnData:
    from bulkrnabert_sv.pp import align_to_vocabulary, counts_to_tpm

    table = pd.read_csv(
        shared / RNASEQV2 / "tcga_acc_dlbc_uvm_rsem_normalized.tsv.gz", sep="\t", index_col=0
    )
    raw = ad.AnnData(table.to_numpy(dtype=np.float64), obs=pd.DataFrame(index=table.index))
    raw.var_names = table.columns.astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coverage and the 2 merged genes: reported below
        aligned = align_to_vocabulary(raw, genes)
        # RSEM normalized counts are not integers; counts_to_tpm warns about that.
        counts_to_tpm(aligned, gene_lengths=lengths, key_added=None)
    aligned.obs = aligned.obs.join(_clinical(shared / RNASEQV2 / "tcga_acc_dlbc_uvm_clinical.tsv"))
    aligned.obs["source"] = "RTCGA.rnaseq.20160128 (Firehose 2016-01-28), RSEM normalized_count"
    return aligned


def rnaseqv2_tpm_by_gene(shared: Path, genes) -> ad.AnnData:
    from bulkrnabert_sv.pp import align_to_vocabulary

    table = pd.read_csv(
        shared / RNASEQV2 / "tcga_gbm_lgg_40_tpm_genes_by_samples.tsv.gz", sep="\t", index_col=0
    )
    table = table[~table.index.duplicated()]
    raw = ad.AnnData(table.T.to_numpy(dtype=np.float64), obs=pd.DataFrame(index=table.columns))
    raw.var_names = table.index.astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aligned = align_to_vocabulary(raw, genes)
    aligned.obs = aligned.obs.join(_clinical(shared / RNASEQV2 / "tcga_gbm_lgg_40_clinical.tsv"))
    aligned.obs["source"] = "TCGAWorkflowData, RSEM scaled_estimate x 1e6"
    return aligned


def gbmlgg_4(shared: Path, genes) -> ad.AnnData:
    from bulkrnabert_sv.pp import align_to_vocabulary

    table = pd.read_csv(shared / "data/tcga_gbmlgg_4_samples_tpm.csv")
    raw = ad.AnnData(
        table.drop(columns="identifier").to_numpy(dtype=np.float64),
        obs=pd.DataFrame(index=table["identifier"].astype(str).to_numpy()),
    )
    raw.var_names = table.columns[:-1].astype(str)
    aligned = align_to_vocabulary(raw, genes)
    aligned.obs["cancer_type"] = "GBMLGG"
    aligned.obs["source"] = "BulkRNABert repository data/tcga_sample.csv (GDC STAR TPM)"
    return aligned


def split(obs: pd.DataFrame) -> pd.Series:
    rng = np.random.default_rng(SEED)
    out = pd.Series("train", index=obs.index)
    for cohort, n in HELDOUT_PER_COHORT.items():
        candidates = obs.index[(obs["cancer_type"] == cohort) & (obs["sample_type_code"] == "01")]
        chosen = rng.choice(np.asarray(candidates), size=n, replace=False)
        out[sorted(chosen)] = "heldout"
    return out


def write_demo(adata: ad.AnnData, genes: list[str]) -> None:
    demo = adata[adata.obs["split"] == "heldout"]
    demo = demo[demo.obs.sort_values(["cancer_type"], kind="stable").index]
    tpm = np.asarray(demo.X, dtype=np.float32)
    present = np.flatnonzero((tpm > 0).any(axis=0))
    obs = demo.obs
    time = obs["os_time_days"].astype(float)
    np.savez_compressed(
        OUT_DIR / "tcga_demo.npz",
        tpm=tpm[:, present],
        gene_index=present.astype(np.int32),
        n_genes=np.int32(len(genes)),
        obs_names=np.asarray(obs.index, dtype=str),
        cohort=np.asarray(obs["cancer_type"], dtype=str),
        patient=np.asarray(obs["patient"], dtype=str),
        os_time_days=time.where(time >= 0).to_numpy(),
        os_event=obs["os_event"].astype(float).to_numpy(),
        n_genes_matched=obs["n_genes_matched"].to_numpy(np.int32),
        source=np.asarray(obs["source"], dtype=str),
    )
    info = {
        "what": "TCGA primary tumours held out of the compact model's training, TPM on the "
        "19,062 BulkRNABert vocabulary genes (genes the source lacks are 0)",
        "n_obs": len(obs),
        "cohorts": {k: int(v) for k, v in obs["cancer_type"].value_counts().sort_index().items()},
        "sources": sorted(set(obs["source"])),
        "data licence": "TCGA open access",
        "built_by": "tools/build_bundled_data.py",
        "notes": "os_time_days: days to death, else to last follow-up; negative values of the "
        "clinical files are set to NaN. TPM from RSEM normalized counts use the shipped "
        "GRCh38 gene lengths, summed over the vocabulary genes that have one.",
    }
    (OUT_DIR / "tcga_demo.json").write_text(json.dumps(info, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    BUILD_DIR.mkdir(exist_ok=True)
    genes = write_vocabulary(args.shared)
    lengths = write_gene_lengths(args.shared, genes)
    parts = [
        rnaseqv2_normalized(args.shared, genes, lengths),
        rnaseqv2_tpm_by_gene(args.shared, genes),
        gbmlgg_4(args.shared, genes),
    ]
    adata = ad.concat(parts, join="outer", merge="first")
    adata.obs["split"] = "train"
    rnaseq = adata.obs["cancer_type"] != "GBMLGG"
    adata.obs.loc[rnaseq, "split"] = split(adata.obs[rnaseq])
    for column in adata.obs.columns:
        if adata.obs[column].dtype == object:
            adata.obs[column] = adata.obs[column].astype(str)
    adata.write_h5ad(BUILD_DIR / "tcga_tpm.h5ad", compression="gzip")
    write_demo(adata, genes)
    summary = adata.obs.groupby(["cancer_type", "split"], observed=True).size()
    print(summary.to_string())
    print("matched genes per source:", adata.obs.groupby("source")["n_genes_matched"].median())


if __name__ == "__main__":
    main()
