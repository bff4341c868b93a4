"""Gene symbols → Ensembl ids through a table shipped with the package (derived from HGNC)."""

from __future__ import annotations

from collections.abc import Sequence


def symbols_to_ensembl(names: Sequence[str]) -> tuple[list[str | None], list[str]]:
    """Map HGNC symbols to Ensembl ids; returns (keys, dropped ambiguous names)."""
    raise NotImplementedError("symbol mapping is being built (issue 4)")
