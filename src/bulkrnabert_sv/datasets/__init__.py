"""Data sets: GDC (TCGA) STAR-Counts reader and downloader."""

from .._lazy import lazy_module

_ATTRIBUTES = {
    "read_gdc": "._gdc",
    "download_gdc": "._gdc",
    "GDCFormatError": "._gdc",
    "GDCDownloadError": "._gdc_download",
}
__all__, __getattr__, __dir__ = lazy_module(__name__, _ATTRIBUTES)
