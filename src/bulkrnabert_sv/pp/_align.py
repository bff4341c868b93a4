"""Align an AnnData's genes to a model's vocabulary."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .. import _logging as logg
from .._anndata import get_matrix, get_modality, iter_row_batches

#: Below this many of its 19,062 genes matched the upstream preprocessing refused a sample; for
#: another vocabulary the threshold is the same fraction of its size.
MIN_MATCHED_GENES = 18_000
UPSTREAM_VOCABULARY_SIZE = 19_062
#: ``obs`` columns of :func:`align_to_vocabulary`: model genes found in each sample's source.
N_GENES_MATCHED_KEY = "n_genes_matched"
GENE_COVERAGE_KEY = "gene_coverage"
ID_TYPES = ("auto", "ensembl", "symbol", "entrez")
_ENSEMBL = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")
#: ``SYMBOL|ENTREZ`` as in the TCGA RNASeqV2 tables (Firehose, cBioPortal, RTCGA): ``TP53|7157``.
_SYMBOL_ENTREZ = re.compile(r"^([^|]*)\|(\d+)$")
_ENTREZ = re.compile(r"^\d+$")
#: The ``id_type`` reported for the identifiers read in each form.
_ID_TYPE_OF_FORM = {
    "ensembl": "ensembl",
    "symbol_entrez": "symbol|entrez",
    "entrez": "entrez",
    "symbol": "symbol",
    "none": "none",
}
_SPECIES = {
    "ENSMUSG": "mouse",
    "ENSRNOG": "rat",
    "ENSDARG": "zebrafish",
    "ENSGALG": "chicken",
    "ENSSSCG": "pig",
    "ENSBTAG": "cow",
    "ENSMMUG": "macaque",
    "ENSCAFG": "dog",
}


class GeneCoverageWarning(UserWarning):
    """Model genes are missing from the input (they are set to TPM 0)."""


class DuplicateGenesWarning(UserWarning):
    """Several input columns map to one model gene (their values are summed)."""


@dataclasses.dataclass(repr=False)
class GeneAlignment:
    """How the input's genes map onto the model vocabulary.

    Attributes
    ----------
    genes
        The vocabulary, in model order.
    matrix
        Sparse (n_input_genes, n_vocabulary) 0/1 matrix: ``tpm_aligned = tpm_input @ matrix``
        (several inputs mapping to one vocabulary gene are summed; absent genes get 0).
    id_type
        How the matched identifiers were read: ``"ensembl"``, ``"symbol"``, ``"entrez"`` (NCBI
        gene ids), ``"symbol|entrez"`` (TCGA RNASeqV2 pairs) or ``"mixed"`` (several kinds).
    input_names
        The input identifiers used (``var_names`` or the ``gene_key`` column).
    n_matched
        Vocabulary genes found in the input.
    missing
        Vocabulary genes absent from the input (filled with TPM 0).
    unmapped
        Input identifiers that map to no vocabulary gene.
    duplicated
        Vocabulary genes that several input columns map to (their TPM summed).
    dropped
        Input identifiers dropped on purpose (``_PAR_Y`` copies, ambiguous symbols, symbols
        shadowed by a better match); ``dropped_reasons`` says why for each.
    matched_by
        Number of input columns used, by how they matched: ``ensembl``, ``entrez``,
        ``approved``, ``previous`` or ``alias`` (the last three: HGNC symbols).
    gene_key
        The ``var`` column the identifiers came from (None: ``var_names``).
    symbol_source
        The symbol table's source and release, when symbols were mapped.
    """

    genes: tuple[str, ...]
    matrix: sp.csr_matrix
    id_type: str
    input_names: np.ndarray
    n_matched: int
    missing: list[str]
    unmapped: list[str]
    duplicated: list[str]
    dropped: list[str] = dataclasses.field(default_factory=list)
    dropped_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    matched_by: dict[str, int] = dataclasses.field(default_factory=dict)
    gene_key: str | None = None
    symbol_source: str | None = None

    @property
    def coverage(self) -> float:
        """Fraction of the vocabulary found in the input."""
        return self.n_matched / len(self.genes)

    def report(self) -> dict[str, int | float | str]:
        """Counts for logs and ``uns``: matched / missing / unmapped / duplicated / dropped.

        Every value is a string, an int or a float, so the report can be written to ``.h5ad``.
        """
        out: dict[str, int | float | str] = {
            "id_type": self.id_type,
            "gene_key": self.gene_key if self.gene_key is not None else "var_names",
            "n_vocabulary": len(self.genes),
            "n_input": len(self.input_names),
            "n_matched": self.n_matched,
            "n_missing": len(self.missing),
            "n_unmapped": len(self.unmapped),
            "n_duplicated": len(self.duplicated),
            "n_dropped": len(self.dropped),
            "coverage": float(self.coverage),
        }
        for kind, n in self.matched_by.items():
            out[f"n_matched_by_{kind}"] = int(n)
        if self.symbol_source is not None:
            out["symbol_table"] = self.symbol_source
        return out

    def transform(self, rows) -> np.ndarray:
        """Map input rows (n, n_input_genes), dense or sparse, to vocabulary order (n, n_vocabulary)."""
        out = sp.csr_matrix(rows) @ self.matrix if sp.issparse(rows) else rows @ self.matrix
        if sp.issparse(out):
            out = out.toarray()
        return np.asarray(out, dtype=np.float64)

    def __repr__(self) -> str:
        r = self.report()
        return (
            f"GeneAlignment({r['n_matched']} of {r['n_vocabulary']} model genes matched "
            f"({100 * self.coverage:.1f}%) from {r['n_input']} {self.id_type} ids; "
            f"missing {r['n_missing']}, unmapped {r['n_unmapped']}, "
            f"duplicated {r['n_duplicated']}, dropped {r['n_dropped']})"
        )


def strip_ensembl_version(name: str) -> str | None:
    """``ENSG00000141510.16`` → ``ENSG00000141510``; None for non-Ensembl ids or ``_PAR_Y`` rows."""
    match = _ENSEMBL.match(name)
    if match is None or match.group(3):
        return None
    return match.group(1)


def _vocabulary(genes_or_model) -> tuple[str, ...]:
    genes = getattr(genes_or_model, "genes", genes_or_model)
    if genes is None:
        raise ValueError(
            "The model has no gene list; load it from a checkpoint (load_model) or pass the "
            "vocabulary with genes=."
        )
    return tuple(str(g) for g in genes)


def align_genes(
    data,
    genes,
    *,
    gene_key: str | None = None,
    mod: str = "rna",
    id_type: str = "auto",
    warn: bool = True,
) -> GeneAlignment:
    """Align the input's genes to a model's vocabulary.

    Identifiers may be Ensembl gene ids (with or without version suffixes; ``_PAR_Y`` rows of
    GENCODE are dropped), HGNC gene symbols, NCBI (Entrez) gene ids, or the ``SYMBOL|ENTREZ``
    pairs of the TCGA RNASeqV2 tables (``TP53|7157``, ``?|100130426``: the Entrez id is used, the
    symbol only when the Entrez id is unknown). Symbols and Entrez ids are mapped through tables
    shipped with the package, derived from the HGNC complete set (release 2020-07): for symbols,
    approved symbols first, then previous symbols, then aliases; ambiguous symbols are dropped.
    By default each identifier is read by its form, so a mixture (Ensembl ids beside symbols) is
    mapped whole. When several input columns map
    to one model gene, only those that matched best are used (an approved symbol beats a previous
    symbol, which beats an alias; the others are dropped) and those are summed, with a warning.
    Model genes absent from the input get TPM 0.

    Parameters
    ----------
    data
        AnnData or MuData (``mod`` picks the modality). Not modified.
    genes
        A model (its ``genes``) or a sequence of unversioned Ensembl ids in model order.
    gene_key
        A ``var`` column holding the identifiers; default ``var_names``.
    mod
        The MuData modality holding the expression.
    id_type
        ``"auto"`` (each identifier by its form: Ensembl id, ``SYMBOL|ENTREZ``, digits as Entrez
        ids unless they are a default index ``0, 1, 2, ...``, anything else as a symbol),
        ``"ensembl"`` (Ensembl ids only), ``"symbol"`` (symbols and Ensembl ids) or ``"entrez"``
        (Entrez ids, ``SYMBOL|ENTREZ`` pairs and Ensembl ids).
    warn
        Warn about missing model genes (:class:`GeneCoverageWarning`) and summed duplicates
        (:class:`DuplicateGenesWarning`).

    Returns
    -------
    A :class:`GeneAlignment` (``.report()`` gives the matched / missing / unmapped / duplicated /
    dropped counts).

    Raises
    ------
    ValueError
        No overlap at all; the message names the likely cause (species, annotation, wrong column).
    KeyError
        ``gene_key`` is not a ``var`` column.
    """
    adata = get_modality(data, mod)
    vocabulary = _vocabulary(genes)
    names = _input_names(adata, gene_key)
    if id_type not in ID_TYPES:
        raise ValueError(f"id_type must be one of {ID_TYPES}, got {id_type!r}.")
    keys, kinds, dropped = _resolve(names, id_type)
    forms = [_ID_TYPE_OF_FORM[f] for f in _name_forms(names, id_type)]
    alignment = _build_alignment(vocabulary, names, keys, kinds, dropped, forms)
    alignment.gene_key = gene_key
    if any(alignment.matched_by[k] for k in ("entrez", "approved", "previous", "alias")):
        from ._symbols import symbol_table_source

        alignment.symbol_source = symbol_table_source()
    if alignment.n_matched == 0:
        read_as = guess_id_type(names) if id_type == "auto" else id_type
        raise ValueError(_no_overlap_message(adata, names, read_as, gene_key, len(vocabulary)))
    if warn:
        _warn(alignment)
    return alignment


def align_to_vocabulary(
    data,
    genes,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    id_type: str = "auto",
    warn: bool = True,
    batch_size: int = 256,
) -> AnnData:
    """A new AnnData whose genes are the model's vocabulary, in model order.

    The values of ``X`` (or ``layers[layer]``) are mapped as :func:`align_genes` describes: model
    genes absent from the input are 0, input columns mapping to one model gene are summed, the
    others are left out. Inputs from several sources (Ensembl ids, symbols, ``SYMBOL|ENTREZ``)
    aligned this way share their ``var_names`` and can be concatenated with
    :func:`anndata.concat`; ``obs["n_genes_matched"]`` keeps each sample's coverage.

    Parameters
    ----------
    data
        AnnData or MuData (``mod`` picks the modality). Not modified.
    genes
        A model (its ``genes``) or a sequence of unversioned Ensembl ids in model order.
    layer
        Where the values are (default ``X``).
    gene_key, mod, id_type, warn
        As for :func:`align_genes`.
    batch_size
        Rows densified at a time.

    Returns
    -------
    An AnnData with ``X`` (float32, samples x vocabulary), a copy of ``obs`` plus
    ``obs["n_genes_matched"]`` and ``obs["gene_coverage"]`` (model genes found in the input, per
    sample), ``var["matched"]`` and ``uns["align_genes"]`` (the alignment report).
    """
    adata = get_modality(data, mod)
    alignment = align_genes(adata, genes, gene_key=gene_key, mod=mod, id_type=id_type, warn=warn)
    matrix = get_matrix(adata, layer)
    out = np.empty((adata.n_obs, len(alignment.genes)), dtype=np.float32)
    for start, stop, rows in iter_row_batches(matrix, batch_size):
        out[start:stop] = alignment.transform(rows)
    matched = np.zeros(len(alignment.genes), dtype=bool)
    matched[alignment.matrix.nonzero()[1]] = True
    obs = adata.obs.copy()
    obs[N_GENES_MATCHED_KEY] = np.int32(alignment.n_matched)
    obs[GENE_COVERAGE_KEY] = float(alignment.coverage)
    aligned = AnnData(out, obs=obs, var=pd.DataFrame({"matched": matched}, index=alignment.genes))
    aligned.uns["align_genes"] = alignment.report()
    return aligned


def guess_id_type(names: Sequence[str]) -> str:
    """The most common form among the names: ``"ensembl"``, ``"entrez"`` or ``"symbol"``."""
    forms = _name_forms(names, "auto")
    counts = Counter("entrez" if f == "symbol_entrez" else f for f in forms if f != "none")
    return counts.most_common(1)[0][0] if counts else "symbol"


def _is_default_index(names: Sequence[str]) -> bool:
    """Names ``0, 1, ..., n-1`` (or ``1, ..., n``): a default index, not Entrez ids."""
    if len(names) == 0 or not all(_ENTREZ.match(n) for n in names):
        return False
    values = sorted(int(n) for n in names)
    return values == list(range(values[0], values[0] + len(values))) and values[0] in (0, 1)


def _name_forms(names: Sequence[str], id_type: str) -> list[str]:
    """Per name, how it is read: ``ensembl``, ``symbol_entrez``, ``entrez``, ``symbol`` or ``none``."""
    index_like = id_type == "auto" and _is_default_index(names)
    forms = []
    for name in names:
        if _ENSEMBL.match(name):
            form = "ensembl"
        elif _SYMBOL_ENTREZ.match(name):
            form = "symbol_entrez" if id_type in ("auto", "entrez") else "symbol"
        elif _ENTREZ.match(name):
            if id_type == "entrez" or (id_type == "auto" and not index_like):
                form = "entrez"
            else:  # digits read as a symbol only when asked (the table holds none)
                form = "symbol" if id_type == "symbol" else "none"
        else:
            form = "symbol" if id_type in ("auto", "symbol") else "none"
        if id_type == "ensembl" and form != "ensembl":
            form = "none"
        forms.append(form)
    return forms


def _input_names(adata, gene_key: str | None) -> np.ndarray:
    if gene_key is None:
        return np.asarray(adata.var_names.astype(str))
    if gene_key not in adata.var.columns:
        raise KeyError(
            f"adata.var has no column {gene_key!r}; available: {list(adata.var.columns)}. "
            "Pass gene_key=None to use var_names."
        )
    return np.asarray(adata.var[gene_key].astype(str))


def _resolve(names, id_type: str):
    """Per name: Ensembl key (or None), how it matched, and dropped names with reasons."""
    from ._symbols import entrez_to_ensembl, symbols_to_ensembl

    forms = _name_forms(names, id_type)
    keys: list[str | None] = [None] * len(names)
    kinds: list[str | None] = [None] * len(names)
    dropped: dict[str, str] = {}
    symbol_rows: list[int] = []
    symbols: list[str] = []
    entrez_rows = [i for i, f in enumerate(forms) if f in ("entrez", "symbol_entrez")]
    entrez_ids = [
        _SYMBOL_ENTREZ.match(names[i]).group(2) if forms[i] == "symbol_entrez" else names[i]
        for i in entrez_rows
    ]
    for i, key in zip(entrez_rows, entrez_to_ensembl(entrez_ids)):
        if key is not None:
            keys[i], kinds[i] = key, "entrez"
        elif forms[i] == "symbol_entrez":
            symbol = _SYMBOL_ENTREZ.match(names[i]).group(1)
            if symbol not in ("", "?"):  # "?|100130426": no symbol to fall back on
                symbol_rows.append(i)
                symbols.append(symbol)
    for i, (name, form) in enumerate(zip(names, forms)):
        if form == "ensembl":
            key = strip_ensembl_version(name)
            if key is None:
                dropped[name] = "GENCODE _PAR_Y copy of a chrX gene"
            keys[i], kinds[i] = key, "ensembl" if key is not None else None
        elif form == "symbol":
            symbol_rows.append(i)
            symbols.append(name)
    sym_keys, sym_kinds, sym_dropped = symbols_to_ensembl(symbols)
    for i, symbol, key, kind in zip(symbol_rows, symbols, sym_keys, sym_kinds):
        keys[i], kinds[i] = key, kind
        if symbol in sym_dropped:
            dropped[names[i]] = sym_dropped[symbol]
    return keys, kinds, dropped


def _build_alignment(vocabulary, names, keys, kinds, dropped, forms) -> GeneAlignment:
    from ._symbols import LEVELS

    position = {g: i for i, g in enumerate(vocabulary)}
    hits: dict[int, list[tuple[int, int]]] = {}  # vocabulary column -> [(level, input row)]
    unmapped = []
    for i, (name, key, kind) in enumerate(zip(names, keys, kinds)):
        j = position.get(key) if key is not None else None
        if j is None:
            if name not in dropped:
                unmapped.append(name)
            continue
        hits.setdefault(j, []).append((LEVELS[kind], i))
    dropped = dict(dropped)
    rows, cols = [], []
    duplicated_cols = []
    used_kinds: Counter[str] = Counter()
    for j, candidates in sorted(hits.items()):
        best = min(level for level, _ in candidates)
        kept = [i for level, i in candidates if level == best]
        for level, i in candidates:
            if level != best:
                dropped[names[i]] = (
                    f"maps to {vocabulary[j]} through a weaker match than another input column "
                    f"({', '.join(names[k] for k in kept)})"
                )
        if len(kept) > 1:
            duplicated_cols.append(j)
        rows.extend(kept)
        cols.extend([j] * len(kept))
        used_kinds.update(kinds[i] for i in kept)
    matrix = sp.csr_matrix(
        (np.ones(len(rows)), (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
        shape=(len(names), len(vocabulary)),
    )
    matched = np.zeros(len(vocabulary), dtype=bool)
    matched[list(hits)] = True
    matched_by = {k: used_kinds[k] for k in ("ensembl", "entrez", "approved", "previous", "alias")}
    used = sorted({forms[i] for i in rows})
    id_type = used[0] if len(used) == 1 else ("mixed" if used else "none")
    return GeneAlignment(
        genes=tuple(vocabulary),
        matrix=matrix,
        id_type=id_type,
        input_names=np.asarray(names),
        n_matched=int(matched.sum()),
        missing=[vocabulary[j] for j in np.flatnonzero(~matched)],
        unmapped=unmapped,
        duplicated=[vocabulary[j] for j in duplicated_cols],
        dropped=list(dropped),
        dropped_reasons=dropped,
        matched_by=matched_by,
    )


def min_matched_genes(n_vocabulary: int) -> int:
    """Matched genes below which coverage is called low: 18,000 of 19,062, scaled to the vocabulary."""
    return math.ceil(MIN_MATCHED_GENES * n_vocabulary / UPSTREAM_VOCABULARY_SIZE)


def _warn(alignment: GeneAlignment) -> None:
    n_vocab = len(alignment.genes)
    if alignment.duplicated:
        example = alignment.duplicated[0]
        j = alignment.genes.index(example)
        inputs = alignment.input_names[alignment.matrix[:, j].nonzero()[0]]
        logg.warn(
            f"{len(alignment.duplicated)} model genes receive several input columns (e.g. "
            f"{example} <- {', '.join(map(str, inputs))}); their values are summed. Aggregate "
            "or drop duplicated genes first to control this.",
            DuplicateGenesWarning,
        )
    n_missing = len(alignment.missing)
    if n_missing == 0:
        return
    share = f"{alignment.n_matched} of {n_vocab} model genes ({100 * alignment.coverage:.1f}%)"
    required = min_matched_genes(n_vocab)
    if alignment.n_matched < required:
        message = (
            f"Only {share} were found in the input; the other {n_missing} are set to TPM 0. "
            f"The original preprocessing required at least {MIN_MATCHED_GENES} of its "
            f"{UPSTREAM_VOCABULARY_SIZE} genes ({required} of this model's {n_vocab}), and "
            "embeddings of samples with low coverage are less reliable. Check the identifiers "
            "(gene_key=, id_type=) or use data quantified on the full GENCODE gene set."
        )
    else:
        message = (
            f"{share} were found in the input; the other {n_missing} (e.g. "
            f"{', '.join(alignment.missing[:3])}) are set to TPM 0."
        )
    logg.warn(message, GeneCoverageWarning)


def _no_overlap_message(adata, names, id_type, gene_key, n_vocab) -> str:
    where = "var_names" if gene_key is None else f"var[{gene_key!r}]"
    example = ", ".join(map(str, names[:3]))
    head = (
        f"None of the {len(names)} input genes in {where} (e.g. {example}) matches the model's "
        f"{n_vocab} human genes (read as {id_type} ids)."
    )
    return f"{head} {_likely_cause(adata, names, gene_key)}"


def _likely_cause(adata, names, gene_key) -> str:
    names = [str(n) for n in names]
    if not names:
        return "The input has no genes."
    prefixes = Counter(m.group(1)[:-11] for n in names if (m := _ENSEMBL.match(n)))
    if prefixes:
        prefix, _ = prefixes.most_common(1)[0]
        if prefix != "ENSG":
            species = _SPECIES.get(prefix, "non-human")
            return (
                f"They look like {species} Ensembl ids ({prefix}...): BulkRNABert is a human "
                "model. Map the genes to human orthologs (ENSG ids) first."
            )
    suggestion = _suggest_gene_key(adata, gene_key)
    if suggestion:
        return f"var[{suggestion!r}] does match: pass gene_key={suggestion!r}."
    from ._symbols import symbol_table

    symbols = symbol_table().mapping
    # Genes in obs_names and samples in var_names: a genes x samples matrix read as it was.
    # Ensembl ids decide alone; symbols also need more rows than columns (samples named S1 or C3
    # are symbols too).
    obs = [str(n) for n in adata.obs_names[:2000]]
    n_ensembl = sum(_ENSEMBL.match(n) is not None for n in obs)
    n_genes = n_ensembl + sum(n in symbols for n in obs)
    if obs and (
        n_ensembl >= 0.5 * len(obs) or (n_genes >= 0.5 * len(obs) and adata.n_obs > adata.n_vars)
    ):
        return (
            f"The obs_names look like gene ids (e.g. {obs[0]}): the data look transposed, genes "
            "in rows and samples in columns. Transpose them first: adata = adata.T (on the "
            "command line: --transpose for a .csv/.tsv table)."
        )
    # Human symbols in lower case (tp53): symbols are matched case-sensitively.
    lower = [n for n in names if n.islower()]
    n_human = sum(n.upper() in symbols for n in lower)
    if len(lower) > 0.5 * len(names) and n_human > 0.5 * len(lower):
        where = "adata.var_names" if gene_key is None else f"adata.var[{gene_key!r}]"
        return (
            f"They look like human gene symbols in lower case (e.g. {lower[0]} for "
            f"{lower[0].upper()}); symbols are matched case-sensitively. Upper-case them first: "
            f"{where} = {where}.str.upper()."
        )
    if _is_default_index(names):
        return (
            "They are a default index (0, 1, 2, ...), not gene ids. Put Ensembl gene ids, HGNC "
            "symbols or NCBI/Entrez ids in var_names or pass gene_key= naming the var column "
            "that holds them."
        )
    if all(n.isdigit() for n in names):
        return (
            "They were read as NCBI/Entrez gene ids, and none names a model gene. If they are "
            "another kind of number, put Ensembl gene ids or HGNC symbols in var_names or pass "
            "gene_key= naming the var column that holds them."
        )
    if sum(re.fullmatch(r"[A-Z][a-z0-9-]+", n) is not None for n in names) > 0.5 * len(names):
        return (
            "They look like mouse or rat gene symbols (capitalised, e.g. Actb): BulkRNABert is a "
            "human model. Map the genes to human orthologs first."
        )
    if sum(n.endswith("_at") for n in names) > 0.5 * len(names):
        return "They look like microarray probe ids: BulkRNABert needs RNA-seq TPM per gene."
    return (
        "Likely causes: identifiers in another var column (pass gene_key=...), another annotation "
        "or identifier type (pass id_type='symbol' or 'ensembl'), or another species."
    )


def _suggest_gene_key(adata, gene_key) -> str | None:
    """A var column (other than the one used) whose values match Ensembl ids or HGNC symbols."""
    from ._symbols import symbol_table

    table = symbol_table().mapping
    for column in adata.var.columns:
        if column == gene_key:
            continue
        values = adata.var[column]
        if not (
            pd.api.types.is_object_dtype(values)
            or pd.api.types.is_string_dtype(values)
            or isinstance(values.dtype, pd.CategoricalDtype)
        ):
            continue
        sample = values.astype(str).iloc[:2000]
        hits = sum(
            (strip_ensembl_version(v) is not None and v.startswith("ENSG")) or v in table
            for v in sample
        )
        if hits >= 0.3 * len(sample) and hits > 0:
            return str(column)
    return None
