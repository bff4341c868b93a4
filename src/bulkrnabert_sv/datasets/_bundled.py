"""Data that ship with the package: real TCGA tumours for demos and tutorials, gene lengths."""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np
import pandas as pd

_DEMO_FILE = "tcga_demo.npz"
_DEMO_INFO = "tcga_demo.json"
_LENGTHS_FILE = "gene_lengths_grch38.tsv.gz"


def tcga_demo():
    """Real TCGA tumours of five cohorts as TPM on the 19,062 BulkRNABert genes.

    48 primary tumours, 12 each of ACC (adrenocortical carcinoma), DLBC (diffuse large B-cell
    lymphoma) and UVM (uveal melanoma) and 6 each of GBM (glioblastoma) and LGG (lower-grade
    glioma), TCGA open access. They were held out of the training of the bundled compact model
    (``load_model("compact")``), so its embeddings of them are not memorised.

    Sources: TCGA RNASeqV2 (Firehose 2016-01-28, via RTCGA.rnaseq.20160128: RSEM normalised
    counts, turned into TPM with :func:`~bulkrnabert_sv.pp.counts_to_tpm` and the shipped GRCh38
    gene lengths) and TCGAWorkflowData (RSEM scaled estimates x 1e6, i.e. TPM); overall survival
    from the TCGA clinical files (RTCGA.clinical.20160128). Built by
    ``tools/build_bundled_data.py``. Vocabulary genes the 2011 RNASeqV2 gene set lacks (about
    1,600) are 0, as upstream's preprocessing sets absent genes.

    Returns
    -------
    An AnnData, samples x genes (``var_names``: unversioned Ensembl ids in model order), ``X``
    float32 TPM, and in ``obs``: ``cohort`` (categorical), ``patient``, ``os_time`` (days to
    death, else to last follow-up; NaN where unknown), ``os_event`` (1 = death), as
    :func:`read_gdc` names them,
    ``n_genes_matched`` (vocabulary genes the sample's source has) and ``source``; in ``var``:
    ``symbol`` (the approved HGNC symbol) and ``entrez_id`` (NCBI gene id), from the shipped
    HGNC tables (empty where HGNC has none). ``uns["tcga_demo"]`` describes the data.
    """
    import anndata as ad

    from ..model.vocabulary import published_genes

    data = _load_demo()
    genes = published_genes()
    if int(data["n_genes"]) != len(genes):  # pragma: no cover - the two files are built together
        raise RuntimeError("The shipped demo data do not match the shipped vocabulary.")
    tpm = np.zeros((len(data["obs_names"]), len(genes)), dtype=np.float32)
    tpm[:, data["gene_index"]] = data["tpm"]
    obs = pd.DataFrame(
        {
            "cohort": pd.Categorical(data["cohort"]),
            "patient": data["patient"],
            "os_time": data["os_time_days"],
            "os_event": data["os_event"],
            "n_genes_matched": data["n_genes_matched"],
            "source": pd.Categorical(data["source"]),
        },
        index=pd.Index(data["obs_names"], name="sample"),
    )
    adata = ad.AnnData(tpm, obs=obs, var=_gene_names(genes))
    adata.uns["tcga_demo"] = dict(_demo_info())
    return adata


def gene_lengths() -> pd.Series:
    """Effective exonic length (bp) of the vocabulary genes, GRCh38 (IOBR ``anno_grch38``).

    For :func:`~bulkrnabert_sv.pp.counts_to_tpm` (``gene_lengths=``) on data aligned to the
    vocabulary, e.g. TCGA RNASeqV2 RSEM counts (see :doc:`/faq`). 18,969 of the 19,062 genes
    have a length; the others are left out of the TPM sums (and get TPM 0).
    """
    from ..pp._symbols import read_table

    folder = resources.files("bulkrnabert_sv") / "data"
    with resources.as_file(folder / _LENGTHS_FILE) as path:
        table = read_table(path)
    return pd.Series(
        table["length"].astype(np.int64).to_numpy(),
        index=pd.Index(table["ensembl_id"], name="ensembl_id"),
        name="length",
    )


def _gene_names(genes) -> pd.DataFrame:
    """Approved HGNC symbol and Entrez id of each gene (from the shipped HGNC tables)."""
    from ..pp._symbols import entrez_table, symbol_table

    approved = {}
    for symbol, (ensembl_id, kind) in symbol_table().mapping.items():
        if kind == "approved":
            approved.setdefault(ensembl_id, symbol)
    entrez = {}
    for entrez_id, ensembl_id in entrez_table().items():
        entrez.setdefault(ensembl_id, entrez_id)
    return pd.DataFrame(
        {
            "symbol": [approved.get(g, "") for g in genes],
            "entrez_id": [entrez.get(g, "") for g in genes],
        },
        index=pd.Index(genes, name="gene_id"),
    )


@functools.lru_cache(maxsize=1)
def _load_demo() -> dict[str, np.ndarray]:
    folder = resources.files("bulkrnabert_sv") / "data"
    with resources.as_file(folder / _DEMO_FILE) as path, np.load(path) as handle:
        return {k: handle[k] for k in handle.files}


@functools.lru_cache(maxsize=1)
def _demo_info() -> dict:
    folder = resources.files("bulkrnabert_sv") / "data"
    return json.loads((folder / _DEMO_INFO).read_text())
