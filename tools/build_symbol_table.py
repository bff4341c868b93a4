"""Build the gene symbol → Ensembl table shipped with the package from the HGNC complete set.

Usage::

    python tools/build_symbol_table.py ../shared/data/annotation/hgnc_complete_2020-07.csv.gz

Writes ``src/bulkrnabert_sv/data/hgnc_symbol_to_ensembl.tsv.gz`` (columns ``symbol``,
``ensembl_id``, ``kind``) and its sidecar ``hgnc_symbol_to_ensembl.json`` (source, date, counts),
and ``hgnc_entrez_to_ensembl.tsv.gz`` (columns ``entrez_id``, ``ensembl_id``): the NCBI (Entrez)
gene id of every approved HGNC gene that has both ids and whose Entrez id names one Ensembl id.

Rules, per symbol:

1. Only HGNC entries with status "Approved" count (withdrawn entries have no gene).
2. A symbol's *level* is the best way it names a gene: ``approved`` (an approved symbol), then
   ``previous`` (a previous symbol), then ``alias`` (an alias symbol). Lower levels are ignored:
   ``TP53`` is an approved symbol, so no alias ``TP53`` of another gene is used.
3. If the genes the symbol names at that level have one Ensembl id, the symbol maps to it. If they
   have several different Ensembl ids (or some have none), the symbol is ``ambiguous``: written
   with all candidate ids joined by ``|`` and never used for mapping. If none has an Ensembl id,
   the symbol is left out.

The HGNC complete set is CC0 (https://www.genenames.org/about/license/).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "bulkrnabert_sv" / "data"
TABLE = "hgnc_symbol_to_ensembl.tsv.gz"
ENTREZ_TABLE = "hgnc_entrez_to_ensembl.tsv.gz"
SIDECAR = "hgnc_symbol_to_ensembl.json"
LEVELS = ("approved", "previous", "alias")


def symbol_levels(hgnc: pd.DataFrame) -> pd.DataFrame:
    """(symbol, level, hgnc_id, ensembl_id) for every way a symbol names an approved gene."""
    hgnc = hgnc[hgnc["Status"] == "Approved"]
    parts = []
    for level, column in zip(LEVELS, ("Approved symbol", "Previous symbol", "Alias symbol")):
        part = hgnc[[column, "HGNC ID", "Ensembl gene ID"]].dropna(subset=[column])
        part.columns = ["symbol", "hgnc_id", "ensembl_id"]
        part = part.assign(level=LEVELS.index(level))
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    out["symbol"] = out["symbol"].astype(str).str.strip()
    return out.drop_duplicates(["symbol", "level", "hgnc_id"])


def build_table(hgnc: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The derived table and counts for the sidecar."""
    levels = symbol_levels(hgnc)
    # Purely numeric "symbols" in some copies of the set are spreadsheet-mangled dates.
    levels = levels[~levels["symbol"].str.fullmatch(r"\d+")]
    best = levels.groupby("symbol")["level"].transform("min")
    levels = levels[levels["level"] == best]
    grouped = levels.groupby("symbol", sort=True)
    summary = pd.DataFrame(
        {
            "level": grouped["level"].first(),
            "n_ids": grouped["ensembl_id"].nunique(),
            "has_missing": grouped["ensembl_id"].apply(lambda s: s.isna().any()),
            "ids": grouped["ensembl_id"].apply(lambda s: "|".join(sorted(set(s.dropna())))),
        }
    )
    no_id = summary["n_ids"] == 0
    ambiguous = ~no_id & ((summary["n_ids"] > 1) | summary["has_missing"])
    kind = summary["level"].map(dict(enumerate(LEVELS))).where(~ambiguous, "ambiguous")
    table = pd.DataFrame(
        {"symbol": summary.index, "ensembl_id": summary["ids"].values, "kind": kind.values}
    )[~no_id.values]
    counts = {k: int((table["kind"] == k).sum()) for k in (*LEVELS, "ambiguous")}
    counts["no_ensembl_id"] = int(no_id.sum())
    return table.reset_index(drop=True), counts


def build_entrez_table(hgnc: pd.DataFrame) -> pd.DataFrame:
    """Entrez id -> Ensembl id of approved genes; ids naming several Ensembl genes are left out."""
    approved = hgnc[hgnc["Status"] == "Approved"].dropna(subset=["NCBI gene ID", "Ensembl gene ID"])
    pairs = approved[["NCBI gene ID", "Ensembl gene ID"]].drop_duplicates()
    pairs.columns = ["entrez_id", "ensembl_id"]
    pairs = pairs[pairs["entrez_id"].str.fullmatch(r"\d+")]
    unique = ~pairs["entrez_id"].duplicated(keep=False)
    table = pairs[unique].copy()
    table["order"] = table["entrez_id"].astype(int)
    return table.sort_values("order").drop(columns="order").reset_index(drop=True)


def write_gzip_tsv(path: Path, header: str, table: pd.DataFrame) -> None:
    """A gzipped TSV with ``#`` header lines, byte-identical between runs (mtime 0)."""
    buffer = io.StringIO()
    table.to_csv(buffer, sep="\t", index=False, lineterminator="\n")
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as handle:
        handle.write((header + buffer.getvalue()).encode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hgnc", type=Path, help="hgnc_complete_2020-07.csv(.gz)")
    parser.add_argument("--date", default="2020-07", help="release date of the HGNC set")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)

    # Symbols like "NA" are real: only empty fields are missing.
    hgnc = pd.read_csv(args.hgnc, dtype=str, keep_default_na=False, na_values=[""])
    table, counts = build_table(hgnc)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Gene symbol -> Ensembl gene id, derived from the HGNC complete set ({args.date}, CC0)\n"
        "# by tools/build_symbol_table.py. kind: approved | previous | alias | ambiguous\n"
        "# (ambiguous: several candidate ids joined by '|', never used for mapping).\n"
    )
    write_gzip_tsv(args.out_dir / TABLE, header, table)
    entrez = build_entrez_table(hgnc)
    entrez_header = (
        f"# NCBI (Entrez) gene id -> Ensembl gene id, derived from the HGNC complete set\n"
        f"# ({args.date}, CC0) by tools/build_symbol_table.py: approved genes with both ids.\n"
    )
    write_gzip_tsv(args.out_dir / ENTREZ_TABLE, entrez_header, entrez)
    sidecar = {
        "source": "HGNC complete set (https://www.genenames.org/download/archive/)",
        "source_file": args.hgnc.name,
        "date": args.date,
        "license": "CC0 (HGNC data); this derived table: BSD-3-Clause with the package",
        "built_by": "tools/build_symbol_table.py",
        "priority": list(LEVELS),
        "counts": counts,
        "n_rows": len(table),
        "entrez_table": {"file": ENTREZ_TABLE, "n_rows": len(entrez)},
    }
    (args.out_dir / SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    print(f"wrote {len(table)} symbols to {args.out_dir / TABLE}: {counts}")


if __name__ == "__main__":
    main()
