"""Data sets: shipped TCGA tumours, the GDC (TCGA) reader and downloader, simulated cohorts."""

from .._lazy import lazy_module

_ATTRIBUTES = {
    "tcga_demo": "._bundled",
    "gene_lengths": "._bundled",
    "read_gdc": "._gdc",
    "download_gdc": "._gdc",
    "GDCFormatError": "._gdc",
    "GDCDownloadError": "._gdc_download",
    "simulate_cohort": "._simulate",
}
__all__, __getattr__, __dir__ = lazy_module(__name__, _ATTRIBUTES)
