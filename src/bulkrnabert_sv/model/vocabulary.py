"""The published model's gene vocabulary and the bundled compact model, shipped as package data."""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from pathlib import Path

#: ``load_model`` source name of the compact model bundled with the package.
COMPACT_SOURCE = "compact"
_VOCABULARY_FILE = "vocabulary_tcga.txt.gz"
_COMPACT_FOLDER = "compact"


@functools.lru_cache(maxsize=1)
def published_genes() -> tuple[str, ...]:
    """The 19,062 genes of the published BulkRNABert (``InstaDeepAI/BulkRNABert``), in model order.

    Unversioned Ensembl gene ids, as listed by the BulkRNABert repository (a public fact; no
    weights). Every published checkpoint uses this order.
    """
    data = resources.files("bulkrnabert_sv") / "data" / _VOCABULARY_FILE
    with resources.as_file(data) as path, gzip.open(path, "rt", encoding="ascii") as handle:
        return tuple(line.strip() for line in handle if line.strip())


def compact_model_folder() -> Path:
    """The folder of the bundled compact model (``model.safetensors``, ``genes.txt``, ...)."""
    folder = resources.files("bulkrnabert_sv") / "data" / _COMPACT_FOLDER
    return Path(str(folder))
