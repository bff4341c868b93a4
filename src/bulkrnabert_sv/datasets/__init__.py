"""Data sets: GDC (TCGA) STAR-Counts reader and downloader."""

from .._lazy import lazy_getattr

_ATTRIBUTES = {
    "read_gdc": "._gdc",
    "download_gdc": "._gdc",
    "GDCFormatError": "._gdc",
    "GDCDownloadError": "._gdc_download",
}
__all__ = sorted(_ATTRIBUTES)
__getattr__ = lazy_getattr(__name__, _ATTRIBUTES)


def __dir__():
    return __all__
