"""Gene symbols and Entrez ids → Ensembl ids through tables shipped with the package (from HGNC).

The table ``data/hgnc_symbol_to_ensembl.tsv.gz`` is built by ``tools/build_symbol_table.py`` from
the HGNC complete set (release 2020-07, CC0); ``data/hgnc_symbol_to_ensembl.json`` states its
source, date and counts. Each symbol maps at its best level only: an approved symbol first, then
a previous symbol, then an alias. Symbols naming genes with different Ensembl ids at that level are
ambiguous and never mapped. ``data/hgnc_entrez_to_ensembl.tsv.gz``, built by the same script,
maps the NCBI (Entrez) gene ids of approved HGNC genes to their Ensembl ids.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
from collections.abc import Sequence
from importlib import resources

import pandas as pd

TABLE = "hgnc_symbol_to_ensembl.tsv.gz"
ENTREZ_TABLE = "hgnc_entrez_to_ensembl.tsv.gz"
SIDECAR = "hgnc_symbol_to_ensembl.json"
#: Priority of a match: lower is better. Ensembl and Entrez ids given directly rank with approved
#: symbols.
LEVELS = {"ensembl": 0, "entrez": 0, "approved": 0, "previous": 1, "alias": 2}


@dataclasses.dataclass(frozen=True)
class SymbolTable:
    """The shipped symbol table: ``symbol -> (ensembl id, kind)`` and ambiguous symbols."""

    mapping: dict[str, tuple[str, str]]
    ambiguous: dict[str, str]
    info: dict


@functools.lru_cache(maxsize=1)
def symbol_table() -> SymbolTable:
    """Load (once) the symbol table shipped with the package."""
    folder = resources.files("bulkrnabert_sv") / "data"
    with resources.as_file(folder / TABLE) as path:
        table = read_table(path)
    info = json.loads((folder / SIDECAR).read_text())
    ambiguous_rows = table["kind"] == "ambiguous"
    mapping = dict(
        zip(
            table.loc[~ambiguous_rows, "symbol"],
            zip(table.loc[~ambiguous_rows, "ensembl_id"], table.loc[~ambiguous_rows, "kind"]),
        )
    )
    ambiguous = dict(
        zip(table.loc[ambiguous_rows, "symbol"], table.loc[ambiguous_rows, "ensembl_id"])
    )
    return SymbolTable(mapping=mapping, ambiguous=ambiguous, info=info)


@functools.lru_cache(maxsize=1)
def entrez_table() -> dict[str, str]:
    """Load (once) the shipped Entrez id → Ensembl id table."""
    folder = resources.files("bulkrnabert_sv") / "data"
    with resources.as_file(folder / ENTREZ_TABLE) as path:
        table = read_table(path)
    return dict(zip(table["entrez_id"], table["ensembl_id"]))


def entrez_to_ensembl(names: Sequence[str]) -> list[str | None]:
    """Map NCBI (Entrez) gene ids (digits, as strings) to unversioned Ensembl ids, or None."""
    table = entrez_table()
    return [table.get(str(name).strip()) for name in names]


def read_table(path) -> pd.DataFrame:
    """Read the table: leading ``#`` lines are the header comment (symbols may contain ``#``)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        n_comments = 0
        for line in handle:
            if not line.startswith("#"):
                break
            n_comments += 1
    return pd.read_csv(
        path, sep="\t", skiprows=n_comments, dtype=str, keep_default_na=False, na_filter=False
    )


def symbol_table_source() -> str:
    """A one-line description of the table's source, for reports and ``uns``."""
    info = symbol_table().info
    return f"{info['source']}, release {info['date']}"


def symbols_to_ensembl(
    names: Sequence[str],
) -> tuple[list[str | None], list[str | None], dict[str, str]]:
    """Map HGNC symbols to unversioned Ensembl gene ids.

    Returns
    -------
    keys
        The Ensembl id for each name, or None.
    kinds
        How each name matched: ``"approved"``, ``"previous"``, ``"alias"`` or None.
    dropped
        Ambiguous names, with the reason (their candidate ids).
    """
    table = symbol_table()
    keys: list[str | None] = []
    kinds: list[str | None] = []
    dropped: dict[str, str] = {}
    for name in names:
        hit = table.mapping.get(name.strip())
        if hit is None:
            keys.append(None)
            kinds.append(None)
            candidates = table.ambiguous.get(name.strip())
            if candidates is not None:
                dropped[name] = f"ambiguous symbol (names {candidates.replace('|', ', ')})"
        else:
            keys.append(hit[0])
            kinds.append(hit[1])
    return keys, kinds, dropped
