"""Write folders laid out exactly like a GDC download, from the real shared TCGA samples.

Real: the TPM values (4 TCGA glioma samples in the model vocabulary; 15 TCGA breast tumours by
symbol), GENCODE v22 gene ids / names / types. Synthetic (GDC has them, the shared data do not):
the read counts (derived from TPM and gene span so that counts/length is proportional to TPM),
STAR's summary rows, stranded columns, FPKM, file/case ids of the glioma samples and the clinical
table, which each test writes with the survival values it checks.
"""

from __future__ import annotations

import gzip
import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from conftest import shared_path

HEADER = (
    "gene_id",
    "gene_name",
    "gene_type",
    "unstranded",
    "stranded_first",
    "stranded_second",
    "tpm_unstranded",
    "fpkm_unstranded",
    "fpkm_uq_unstranded",
)
SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
SUMMARY = {
    "N_unmapped": 2_100_000,
    "N_multimapping": 3_400_000,
    "N_noFeature": 1_200_000,
    "N_ambiguous": 900_000,
}


@dataclass
class GDCSample:
    file_id: str
    file_name: str
    project_id: str
    case_id: str
    sample_id: str
    sample_type: str
    tpm: pd.Series  # indexed by versioned gene id (the file's genes, in file order)
    counts: pd.Series = field(default=None)


def gencode_genes(n_extra: int = 200) -> pd.DataFrame:
    """GENCODE v22 genes in the model vocabulary, plus ``n_extra`` others and ``_PAR_Y`` rows.

    Columns gene_id (versioned), gene_name, gene_type, length (span), unversioned; in
    annotation order, like GDC files.
    """
    path = shared_path("data/annotation/gencode_v22_genes.txt.gz")
    vocab = set(shared_path("data/bulkrnabert_gene_ids.txt").read_text().split())
    table = pd.read_csv(path, sep="\t", header=None)
    table.columns = [
        "chr",
        "start",
        "end",
        "gene_id",
        "gene_name",
        "strand",
        "gene_type",
        "unversioned",
        "category",
    ]
    in_vocab = table["unversioned"].isin(vocab)
    keep = in_vocab | (np.cumsum(~in_vocab) <= n_extra) & ~in_vocab
    genes = table.loc[keep].copy()
    genes["length"] = genes["end"] - genes["start"] + 1
    # GENCODE v36 (GDC) lists the chrY copies of pseudo-autosomal genes as <id>_PAR_Y.
    par = genes[(genes["chr"] == "chrX") & (genes["end"] < 2_781_479)].head(3).copy()
    par["gene_id"] = par["gene_id"] + "_PAR_Y"
    genes = pd.concat([genes, par])
    return genes.reset_index(drop=True)[
        ["gene_id", "gene_name", "gene_type", "length", "unversioned"]
    ]


def glioma_samples(genes: pd.DataFrame) -> list[GDCSample]:
    """The 4 real TCGA GBMLGG samples on ``genes`` (TPM 0 for genes outside the vocabulary)."""
    csv = pd.read_csv(shared_path("data/tcga_gbmlgg_4_samples_tpm.csv"))
    ids = csv.pop("identifier")
    samples = []
    for i, barcode in enumerate(ids):
        values = csv.iloc[i].reindex(genes["unversioned"]).fillna(0.0).to_numpy()
        values[genes["gene_id"].str.endswith("_PAR_Y").to_numpy()] = 0.0
        file_id = str(uuid.UUID(int=0x5EED0000 + i))
        project = "TCGA-GBM"  # tissue source sites 06 and 27 are glioblastoma sites
        samples.append(
            GDCSample(
                file_id,
                f"{uuid.UUID(int=0xF11E0000 + i)}{SUFFIX}",
                project,
                barcode[:12],
                barcode,
                "Primary Tumor",
                pd.Series(values, index=genes["gene_id"].to_numpy()),
            )
        )
    return samples


def breast_samples(genes: pd.DataFrame, n: int = 15) -> list[GDCSample]:
    """The 15 real TCGA BRCA tumours (by symbol) on ``genes``; their GDC file ids are real."""
    with gzip.open(shared_path("data/tcga_brca_15_tpm_symbols.tsv.gz"), "rt") as handle:
        header = handle.readline().rstrip("\n").split("\t")[1:]
        rows = [line.rstrip("\n").split("\t") for line in handle][:n]
    table = pd.DataFrame(
        np.array([r[1:] for r in rows], dtype=float), index=[r[0] for r in rows], columns=header
    )
    unique_names = genes["gene_name"][~genes["gene_name"].duplicated(keep=False)]
    samples = []
    for i, (raw_id, row) in enumerate(table.iterrows()):
        values = np.zeros(len(genes))
        present = unique_names[unique_names.isin(row.index)]
        values[present.index.to_numpy()] = row[present.to_numpy()].to_numpy()
        file_id = raw_id.lstrip("X").replace(".", "-")
        samples.append(
            GDCSample(
                file_id,
                f"{uuid.UUID(int=0xB5CA0000 + i)}{SUFFIX}",
                "TCGA-BRCA",
                f"TCGA-BR-{i:04d}",
                f"TCGA-BR-{i:04d}-01A",
                "Primary Tumor",
                pd.Series(values, index=genes["gene_id"].to_numpy()),
            )
        )
    return samples


def counts_from_tpm(tpm: np.ndarray, length: np.ndarray, depth: float = 3e7) -> np.ndarray:
    """Integer counts whose length-normalised values are proportional to TPM."""
    rate = tpm * length / 1e3
    return np.round(rate / max(rate.sum(), 1e-12) * depth).astype(np.int64)


def star_table(sample: GDCSample, genes: pd.DataFrame) -> str:
    """The text of a GDC augmented STAR gene-counts TSV for ``sample``."""
    tpm = sample.tpm.to_numpy()
    length = genes["length"].to_numpy()
    counts = counts_from_tpm(tpm, length)
    sample.counts = pd.Series(counts, index=sample.tpm.index)
    first = counts // 20
    per_kb = counts / (length / 1e3)
    fpkm = per_kb / max(counts.sum(), 1) * 1e6
    uq = np.percentile(counts[counts > 0], 75) if (counts > 0).any() else 1
    fpkm_uq = per_kb / uq * 1e3
    summary = "".join(f"{k}\t\t\t{v}\t{v // 2}\t{v // 2}\t\t\t\n" for k, v in SUMMARY.items())
    columns = (
        genes["gene_id"],
        genes["gene_name"],
        genes["gene_type"],
        counts,
        first,
        counts - first,
        tpm,
        fpkm,
        fpkm_uq,
    )
    row = "%s\t%s\t%s\t%d\t%d\t%d\t%.4f\t%.4f\t%.4f\n"
    body = "".join(row % values for values in zip(*(np.asarray(c).tolist() for c in columns)))
    return "# gene-model: GENCODE v36\n" + "\t".join(HEADER) + "\n" + summary + body


def write_gdc_folder(
    folder: Path,
    samples: list[GDCSample],
    genes: pd.DataFrame,
    *,
    clinical: pd.DataFrame | None = None,
    sheet_name: str = "gdc_sample_sheet.2024-05-01.tsv",
) -> Path:
    """Write ``<file_id>/<file_name>`` per sample, the sample sheet and ``clinical.tsv``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in samples:
        (folder / s.file_id).mkdir(exist_ok=True)
        (folder / s.file_id / s.file_name).write_text(star_table(s, genes))
        rows.append(
            [
                s.file_id,
                s.file_name,
                "Transcriptome Profiling",
                "Gene Expression Quantification",
                s.project_id,
                s.case_id,
                s.sample_id,
                s.sample_type,
            ]
        )
    sheet = pd.DataFrame(
        rows,
        columns=[
            "File ID",
            "File Name",
            "Data Category",
            "Data Type",
            "Project ID",
            "Case ID",
            "Sample ID",
            "Sample Type",
        ],
    )
    sheet.to_csv(folder / sheet_name, sep="\t", index=False)
    if clinical is not None:
        clinical.to_csv(folder / "clinical.tsv", sep="\t", index=False)
    return folder


def clinical_table(samples: list[GDCSample], seed: int = 0) -> pd.DataFrame:
    """A classic clinical.tsv: one row per case (two for the first, as GDC repeats per
    treatment), synthetic survival, ``'--`` for missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, s in enumerate(samples):
        dead = i % 3 != 2
        death = int(rng.integers(30, 3000)) if dead else "'--"
        follow = int(rng.integers(30, 3000)) if not dead else "'--"
        rows.append(
            {
                "case_id": str(uuid.UUID(int=0xCA5E0000 + i)),
                "case_submitter_id": s.case_id,
                "project_id": s.project_id,
                "age_at_index": int(rng.integers(20, 85)),
                "days_to_death": death,
                "days_to_last_follow_up": follow,
                "gender": "female" if s.project_id == "TCGA-BRCA" else ("male", "female")[i % 2],
                "primary_diagnosis": "Infiltrating duct carcinoma, NOS"
                if s.project_id == "TCGA-BRCA"
                else "Glioblastoma",
                "vital_status": "Dead" if dead else "Alive",
                "treatment_type": "Radiation Therapy, NOS",
            }
        )
        if i == 0:
            rows.append({**rows[-1], "treatment_type": "Pharmaceutical Therapy, NOS"})
    return pd.DataFrame(rows)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data)
