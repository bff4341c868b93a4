"""Read GDC (TCGA) STAR-Counts files, the GDC sample sheet and the clinical table into AnnData."""

from __future__ import annotations

import dataclasses
import gzip
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from ._gdc_download import download_gdc

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["GDCFormatError", "download_gdc", "read_gdc"]

#: File name ending of GDC "STAR - Counts" gene expression files (data release 32 and later).
STAR_COUNTS_SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
_STAR_GLOBS = ("*star_gene_counts.tsv", "*star_gene_counts.tsv.gz")
_GENE_COLUMNS = ("gene_id", "gene_name", "gene_type")
_TPM_COLUMN = "tpm_unstranded"
_COUNT_COLUMN = "unstranded"
_SUMMARY_ROWS = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
_MISSING = ("'--", "--", "")
#: Clinical fields copied to ``obs`` by default (when present in the clinical table).
DEFAULT_CLINICAL_COLUMNS = (
    "age_at_index",
    "gender",
    "race",
    "ethnicity",
    "primary_diagnosis",
    "ajcc_pathologic_stage",
    "tumor_grade",
    "tissue_or_organ_of_origin",
)
_NUMERIC_CLINICAL = ("days_to_death", "days_to_last_follow_up", "age_at_index")
#: TCGA barcode sample codes (characters 14-15) → GDC sample type.
TCGA_SAMPLE_CODES = {
    "01": "Primary Tumor",
    "02": "Recurrent Tumor",
    "03": "Primary Blood Derived Cancer - Peripheral Blood",
    "05": "Additional - New Primary",
    "06": "Metastatic",
    "07": "Additional Metastatic",
    "10": "Blood Derived Normal",
    "11": "Solid Tissue Normal",
}
_TCGA_SAMPLE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-(\d{2})")
# New-style GDC clinical headers are "<entity>.<field>"; these map onto the classic names.
_CLINICAL_RENAMES = {
    "cases.submitter_id": "case_submitter_id",
    "cases.case_id": "case_id",
    "project.project_id": "project_id",
}


class GDCFormatError(ValueError):
    """A file that does not look like the GDC file it should be."""


def read_gdc(
    folder: str | Path,
    *,
    sample_sheet: str | Path | pd.DataFrame | Literal[False] | None = None,
    clinical: str | Path | Sequence[str | Path] | pd.DataFrame | Literal[False] | None = None,
    clinical_columns: Sequence[str] | None = None,
    obs_names: Literal["file_id", "sample_id"] = "file_id",
    dtype: str | np.dtype = "float32",
    progress: bool = False,
) -> AnnData:
    """Read GDC STAR-Counts files with their sample sheet and clinical table into one AnnData.

    The folder is laid out as GDC downloads it (portal cart, Data Transfer Tool or
    :func:`~bulkrnabert_sv.datasets.download_gdc`): one folder per file,
    ``<file_id>/<file_name>.rna_seq.augmented_star_gene_counts.tsv``, beside the portal's
    sample sheet ``gdc_sample_sheet.<date>.tsv`` and the clinical cart's ``clinical.tsv``.

    Parameters
    ----------
    folder
        The download folder.
    sample_sheet
        The GDC sample sheet (path or table). ``None`` reads every ``gdc_sample_sheet*.tsv``
        directly in ``folder`` (several are concatenated) and, when there is none, every
        STAR-Counts file found below ``folder`` without sample metadata. ``False`` ignores any
        sample sheet.
    clinical
        The GDC clinical table(s) (``clinical.tsv`` of a clinical cart, classic or
        ``entity.field`` headers). ``None`` reads every ``clinical*.tsv`` found below ``folder``;
        ``False`` skips clinical data. Cases are matched on the sample sheet's ``Case ID``
        (submitter id such as ``TCGA-02-0001``) against ``case_submitter_id``.
    clinical_columns
        Clinical fields copied to ``obs`` besides the survival fields; default
        :data:`DEFAULT_CLINICAL_COLUMNS` (those present). A case with several rows (one per
        diagnosis or treatment) gets its first non-missing value.
    obs_names
        ``"file_id"`` (always unique) or ``"sample_id"`` (the TCGA sample barcode; raises when
        two files share a sample).
    dtype
        Float type of ``X`` (TPM): ``float32`` (default) or ``float64``. GDC writes TPM with 4
        decimals; ``float32`` keeps them. Integer types (they would truncate, or wrap large TPM
        into negative values) and ``float16`` (TPM above 65,504 overflow) are refused.
    progress
        Show a progress bar while reading files.

    Returns
    -------
    AnnData with

    ``X``
        TPM (``tpm_unstranded``), samples × genes.
    ``layers["counts"]``
        Raw read counts (``unstranded``), int32.
    ``var``
        Indexed by the GDC gene id (versioned Ensembl, ``_PAR_Y`` rows kept); ``gene_name``,
        ``gene_type``.
    ``obs``
        ``file_id``, ``file_name`` and, from the sample sheet, ``project_id``, ``cohort``
        (project id without ``TCGA-``), ``case_id``, ``sample_id``, ``sample_type`` (from the
        sheet, or else from the TCGA barcode) and the sheet's other columns in snake case;
        STAR's summary rows ``n_unmapped``, ``n_multimapping``, ``n_nofeature``,
        ``n_ambiguous``; from the clinical table ``vital_status``, ``days_to_death``,
        ``days_to_last_follow_up``, ``os_time`` (days: ``days_to_death`` if ``vital_status``
        is ``Dead``, else ``days_to_last_follow_up``), ``os_event`` (1.0 dead, 0.0 alive) and
        the ``clinical_columns``; missing values are NaN.
    ``uns["gdc"]``
        ``gene_model`` (from the files' ``# gene-model:`` line), ``sample_sheets`` and
        ``clinical_files`` (paths read), ``n_files``.

    Raises
    ------
    TypeError
        ``dtype`` is not ``float32`` or ``float64``.
    GDCFormatError
        A file lacks a required column, holds non-numeric or missing values, or the files use
        different gene sets.
    FileNotFoundError
        The folder holds no STAR-Counts file, or sample-sheet rows name files that are absent.
    """
    import anndata as ad

    if obs_names not in ("file_id", "sample_id"):
        raise ValueError(f"obs_names must be 'file_id' or 'sample_id', not {obs_names!r}.")
    tpm_dtype = _tpm_dtype(dtype)
    folder = _download_folder(folder)
    sheet, sheet_paths = _load_sample_sheet(folder, sample_sheet)
    paths, obs = _files_and_obs(folder, sheet)
    star = _read_star_files(paths, tpm_dtype, progress)
    obs = pd.concat([obs, pd.DataFrame(star.summaries, index=obs.index)], axis=1)
    obs, clinical_paths = _add_clinical(obs, folder, clinical, clinical_columns)
    var = star.genes.copy()
    var.index.name = None
    adata = ad.AnnData(
        X=star.tpm, obs=_finish_obs(obs, obs_names), var=var, layers={"counts": star.counts}
    )
    adata.uns["gdc"] = {
        "gene_model": star.gene_model,
        "sample_sheets": [str(p) for p in sheet_paths],
        "clinical_files": clinical_paths,
        "n_files": len(paths),
    }
    return adata


# ------------------------------------------------------------------------------ read_gdc's steps
def _download_folder(folder: str | Path) -> Path:
    """``folder`` as a path, refused when it is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder. Pass the folder GDC files were downloaded into "
            "(or download them with bulkrnabert_sv.datasets.download_gdc(project_id, folder))."
        )
    return folder


def _files_and_obs(folder: Path, sheet: pd.DataFrame | None) -> tuple[list[Path], pd.DataFrame]:
    """The STAR-Counts files to read and their ``obs`` (from the sample sheet when there is one).

    Without a sheet, every STAR-Counts file below ``folder``, described by its id and name.
    """
    if sheet is not None:
        return _resolve_sheet_files(folder, sheet), _sheet_to_obs(sheet)
    paths = _find_count_files(folder)
    if not paths:
        raise FileNotFoundError(
            f"No STAR-Counts file (*{STAR_COUNTS_SUFFIX}) below {folder}. Download the "
            "'Gene Expression Quantification' files of workflow 'STAR - Counts' there, e.g. "
            "with bulkrnabert_sv.datasets.download_gdc(project_id, folder)."
        )
    obs = pd.DataFrame(
        {"file_id": [p.parent.name for p in paths], "file_name": [p.name for p in paths]}
    )
    return paths, obs


@dataclasses.dataclass
class _StarMatrices:
    """Every file's TPM and counts (samples x genes, genes in the first file's order)."""

    genes: pd.DataFrame
    gene_model: str | None
    tpm: np.ndarray
    counts: np.ndarray
    summaries: list


def _read_star_files(paths: list[Path], tpm_dtype: np.dtype, progress: bool) -> _StarMatrices:
    """Read the files into one matrix each for TPM and counts, checking they agree on genes."""
    from .._logging import progress_bar

    first = _read_star_file(paths[0])
    gene_ids = first.genes.index
    tpm = np.empty((len(paths), len(gene_ids)), dtype=tpm_dtype)
    counts = np.empty((len(paths), len(gene_ids)), dtype=np.int32)
    summaries = []
    for i, path in enumerate(progress_bar(paths, progress=progress, desc="reading GDC files")):
        table = first if i == 0 else _read_star_file(path)
        if i and not table.genes.index.equals(gene_ids):
            table = _reorder_like(table, gene_ids, paths[0], path)
        if table.gene_model != first.gene_model:
            raise GDCFormatError(
                f"{path} uses gene model {table.gene_model!r} but {paths[0]} uses "
                f"{first.gene_model!r}. Read files of one GDC data release together."
            )
        tpm[i] = table.tpm
        counts[i] = table.counts
        summaries.append(table.summary)
    return _StarMatrices(first.genes, first.gene_model, tpm, counts, summaries)


def _add_clinical(
    obs: pd.DataFrame, folder: Path, clinical, clinical_columns
) -> tuple[pd.DataFrame, list[str]]:
    """``obs`` joined with the clinical table(s) on the case id, and the paths read."""
    if clinical is False or "case_id" not in obs:
        return obs, []
    table, clinical_paths = _load_clinical(folder, clinical)
    if table is not None:
        obs = _join_clinical(obs, table, clinical_columns)
    return obs, clinical_paths


def _tpm_dtype(dtype) -> np.dtype:
    """``dtype`` as a NumPy dtype that holds TPM, or a TypeError naming the fix."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(
            f"dtype={dtype!r} is not a NumPy data type. Pass dtype='float32' (default) or "
            "'float64'."
        ) from err
    # TPM reach about 1e6 with 4 decimals: float16 overflows at 65,504 and integers truncate
    # (or, for small ones such as int8, wrap into negative values).
    if not np.issubdtype(resolved, np.floating) or resolved.itemsize < 4:
        raise TypeError(
            f"dtype={dtype!r} cannot hold TPM values (up to about 1e6, with decimals). Pass "
            "dtype='float32' (default) or 'float64'; raw counts are in layers['counts'] (int32)."
        )
    return resolved


# --------------------------------------------------------------------------- STAR-Counts files


class _StarTable:
    __slots__ = ("counts", "gene_model", "genes", "summary", "tpm")

    def __init__(self, genes, tpm, counts, summary, gene_model):
        self.genes, self.tpm, self.counts = genes, tpm, counts
        self.summary, self.gene_model = summary, gene_model


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def _read_star_file(path: Path) -> _StarTable:
    """One GDC augmented STAR gene-counts TSV → genes, TPM, counts, STAR summary rows."""
    gene_model, n_comments, header = "unknown", 0, []
    try:
        with _open_text(path) as handle:
            for line in handle:
                if not line.startswith("#"):
                    header = line.rstrip("\r\n").split("\t")
                    break
                n_comments += 1
                if ":" in line and "gene-model" in line:
                    gene_model = line.split(":", 1)[1].strip()
    except (UnicodeDecodeError, EOFError, OSError) as err:
        raise GDCFormatError(
            f"{path} cannot be read as text ({err}). The file is corrupted: delete it and "
            "download it again."
        ) from err
    required = (*_GENE_COLUMNS, _COUNT_COLUMN, _TPM_COLUMN)
    absent = [c for c in required if c not in header]
    if absent:
        raise GDCFormatError(
            f"{path} has no column(s) {absent} (its header is {header[:9]}). read_gdc reads "
            "GDC 'STAR - Counts' files (*.rna_seq.augmented_star_gene_counts.tsv, GDC data "
            "release 32 and later); download the 'Gene Expression Quantification' files of "
            "workflow 'STAR - Counts', not HTSeq or other quantifications."
        )
    try:
        df = pd.read_csv(
            path,
            sep="\t",
            skiprows=n_comments,
            usecols=list(required),
            dtype={c: str for c in _GENE_COLUMNS},
            keep_default_na=False,
            na_values=[""],
            low_memory=False,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, ValueError) as err:
        raise GDCFormatError(
            f"{path} cannot be parsed as a GDC STAR-Counts TSV ({err}). The file is probably "
            "truncated or corrupted: delete it and download it again."
        ) from err
    is_summary = df["gene_id"].isin(_SUMMARY_ROWS).to_numpy()
    summary_rows = df.loc[is_summary].set_index("gene_id")[_COUNT_COLUMN]
    summary = {
        f"n_{name[2:].lower()}": _as_number(summary_rows.get(name, np.nan), path, name)
        for name in _SUMMARY_ROWS
    }
    genes = df.loc[~is_summary]
    if genes["gene_id"].isna().any() or genes["gene_id"].duplicated().any():
        bad = genes["gene_id"][genes["gene_id"].isna() | genes["gene_id"].duplicated()].iloc[0]
        raise GDCFormatError(
            f"{path} has a missing or duplicated gene_id ({bad!r}). The file is corrupted: "
            "delete it and download it again."
        )
    tpm = _numeric_column(genes, _TPM_COLUMN, path, np.float64)
    counts = _numeric_column(genes, _COUNT_COLUMN, path, np.float64)
    if np.any(counts != np.round(counts)) or counts.max(initial=0) >= 2**31:
        raise GDCFormatError(
            f"{path}: column {_COUNT_COLUMN!r} holds non-integer counts. It is not a STAR-Counts "
            "file as GDC writes it: download it again."
        )
    info = genes.loc[:, list(_GENE_COLUMNS)].set_index("gene_id")
    return _StarTable(info, tpm, counts.astype(np.int32), summary, gene_model)


def _as_number(value, path: Path, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise GDCFormatError(
            f"{path}: non-numeric value {value!r} in row {what!r}. The file is corrupted: "
            "delete it and download it again."
        ) from None


def _numeric_column(genes: pd.DataFrame, column: str, path: Path, dtype) -> np.ndarray:
    values = pd.to_numeric(genes[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = genes[column].iloc[i]
        what = "missing" if pd.isna(raw) else f"invalid value {raw!r}"
        raise GDCFormatError(
            f"{path}: {what} in column {column!r} for gene {genes['gene_id'].iloc[i]} "
            f"({int(bad.sum())} such rows; values must be finite numbers >= 0). The file is "
            "truncated or corrupted: delete it and download it again."
        )
    return values.astype(dtype, copy=False)


def _reorder_like(table: _StarTable, gene_ids: pd.Index, ref: Path, path: Path) -> _StarTable:
    if len(table.genes.index) != len(gene_ids) or not table.genes.index.isin(gene_ids).all():
        extra = table.genes.index.difference(gene_ids)
        missing = gene_ids.difference(table.genes.index)
        raise GDCFormatError(
            f"{path} and {ref} list different genes ({len(missing)} of the first missing, "
            f"{len(extra)} extra, e.g. {[*missing[:2], *extra[:2]]}). Read files of one GDC "
            "data release (one gene model) together."
        )
    order = table.genes.index.get_indexer(gene_ids)
    return _StarTable(
        table.genes.iloc[order],
        table.tpm[order],
        table.counts[order],
        table.summary,
        table.gene_model,
    )


def _find_count_files(folder: Path) -> list[Path]:
    found = {p for pattern in _STAR_GLOBS for p in folder.rglob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: (p.parent.name, p.name))


# --------------------------------------------------------------------------- sample sheet


def _load_sample_sheet(folder: Path, sample_sheet) -> tuple[pd.DataFrame | None, list[Path]]:
    if sample_sheet is False:
        return None, []
    if isinstance(sample_sheet, pd.DataFrame):
        sheets, paths = [sample_sheet.copy()], []
    else:
        if sample_sheet is None:
            paths = sorted(folder.glob("gdc_sample_sheet*.tsv"))
            if not paths:
                return None, []
        else:
            paths = [Path(sample_sheet)]
            if not paths[0].is_file():
                raise FileNotFoundError(
                    f"Sample sheet {paths[0]} does not exist. Pass the path of the "
                    "gdc_sample_sheet.<date>.tsv downloaded from the GDC portal cart, or "
                    "sample_sheet=None to use the ones in the folder."
                )
        sheets = [pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False) for p in paths]
    for sheet, path in zip(sheets, paths or ["the sample_sheet table"]):
        absent = [c for c in ("File ID", "File Name") if c not in sheet.columns]
        if absent:
            raise GDCFormatError(
                f"{path} has no column(s) {absent} (it has {list(sheet.columns)}). Pass the "
                "sample sheet that the GDC portal cart downloads (columns 'File ID', 'File "
                "Name', 'Project ID', 'Case ID', 'Sample ID', 'Sample Type')."
            )
    sheet = pd.concat(sheets, ignore_index=True).drop_duplicates("File ID")
    sheet = sheet.reset_index(drop=True)
    if "Data Type" in sheet:
        other = sheet["Data Type"] != "Gene Expression Quantification"
        if other.any():
            warnings.warn(
                f"Skipping {int(other.sum())} sample-sheet rows whose Data Type is not 'Gene "
                f"Expression Quantification' (e.g. {sheet['File Name'][other].iloc[0]!r}).",
                stacklevel=3,
            )
            sheet = sheet.loc[~other].reset_index(drop=True)
    if sheet.empty:
        raise FileNotFoundError(
            f"The sample sheet(s) {[str(p) for p in paths]} list no gene expression file. "
            "Download the sample sheet of a cart holding 'STAR - Counts' files."
        )
    return sheet, paths


def _resolve_sheet_files(folder: Path, sheet: pd.DataFrame) -> list[Path]:
    paths: list[Path | None] = []
    by_name: dict[str, Path] | None = None
    for file_id, name in zip(sheet["File ID"], sheet["File Name"]):
        path = folder / file_id / name
        if not path.is_file():
            if by_name is None:
                by_name = {p.name: p for p in _find_count_files(folder)}
            path = by_name.get(name)
        paths.append(path)
    absent = [f"{i}/{n}" for p, i, n in zip(paths, sheet["File ID"], sheet["File Name"]) if not p]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} file(s) listed in the sample sheet are not in {folder} "
            f"(e.g. {absent[:3]}). Download them (bulkrnabert_sv.datasets.download_gdc, or the "
            "GDC Data Transfer Tool with the cart's manifest) or remove their rows from the "
            "sample sheet."
        )
    return paths  # type: ignore[return-value]


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _unique_join(value: str) -> str:
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    return ", ".join(dict.fromkeys(parts))


def _sheet_to_obs(sheet: pd.DataFrame) -> pd.DataFrame:
    obs = sheet.rename(columns=_snake)
    for column in ("case_id", "sample_id", "project_id", "sample_type"):
        if column in obs:
            obs[column] = obs[column].map(_unique_join)
    return obs


def _finish_obs(obs: pd.DataFrame, obs_names: str) -> pd.DataFrame:
    if "project_id" in obs:
        obs.insert(
            obs.columns.get_loc("project_id") + 1,
            "cohort",
            obs["project_id"].str.replace(r"^TCGA-", "", regex=True),
        )
    if "sample_type" not in obs and "sample_id" in obs:
        codes = obs["sample_id"].str.extract(_TCGA_SAMPLE, expand=False)
        obs["sample_type"] = codes.map(TCGA_SAMPLE_CODES)
    for column in obs.columns:
        if column not in ("file_id", "file_name", "case_id", "sample_id") and (
            obs[column].dtype == object
        ):
            obs[column] = obs[column].astype("category")
    if obs_names not in obs:
        raise ValueError(
            f"obs_names={obs_names!r} needs a sample sheet with that column; pass "
            "obs_names='file_id'."
        )
    names = obs[obs_names].astype(str)
    if names.duplicated().any():
        raise ValueError(
            f"Several files share {obs_names} {names[names.duplicated()].iloc[0]!r}; pass "
            "obs_names='file_id' (unique), or drop the extra files from the sample sheet."
        )
    obs.index = pd.Index(names.to_numpy(), name=None)
    return obs


# --------------------------------------------------------------------------- clinical table


def _load_clinical(folder: Path, clinical) -> tuple[pd.DataFrame | None, list[str]]:
    if isinstance(clinical, pd.DataFrame):
        return _normalise_clinical(clinical.fillna("").astype(str), "the clinical table"), []
    if clinical is None:
        paths = sorted(folder.rglob("clinical*.tsv"))
        if not paths:
            return None, []
    elif isinstance(clinical, str | Path):
        paths = [Path(clinical)]
    else:
        paths = [Path(p) for p in clinical]
    tables = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"Clinical table {path} does not exist. Pass the clinical.tsv of a GDC clinical "
                "cart download, or clinical=False to skip clinical data."
            )
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        tables.append(_normalise_clinical(raw, path))
    return pd.concat(tables, ignore_index=True), [str(p) for p in paths]


def _normalise_clinical(raw: pd.DataFrame, where) -> pd.DataFrame:
    renamed: dict[str, str] = {}
    for column in raw.columns:
        name = _CLINICAL_RENAMES.get(column, column.split(".", 1)[-1])
        if name not in renamed.values():
            renamed[column] = name
    table = raw.loc[:, list(renamed)].rename(columns=renamed)
    if "case_submitter_id" not in table:
        raise GDCFormatError(
            f"{where} has no 'case_submitter_id' (or 'cases.submitter_id') column. Pass the "
            "clinical.tsv of a GDC clinical cart download (tab-separated)."
        )
    table = table.mask(table.isin(_MISSING))
    for column in _NUMERIC_CLINICAL:
        if column in table:
            values = pd.to_numeric(table[column], errors="coerce")
            bad = values.isna() & table[column].notna()
            if bad.any():
                i = np.flatnonzero(bad.to_numpy())[0]
                raise GDCFormatError(
                    f"{where}: non-numeric {column} {table[column].iloc[i]!r} for case "
                    f"{table['case_submitter_id'].iloc[i]}. Days and ages must be numbers or "
                    "'-- (missing); fix or remove that row."
                )
            table[column] = values
    return table


def _first_valid(series: pd.Series):
    valid = series.dropna()
    return valid.iloc[0] if len(valid) else np.nan


def _case_survival(rows: pd.DataFrame) -> pd.Series:
    status = rows["vital_status"].dropna().str.capitalize() if "vital_status" in rows else None
    vital = np.nan
    if status is not None and len(status):
        vital = (
            "Dead" if (status == "Dead").any() else "Alive" if (status == "Alive").any() else np.nan
        )
    death = rows["days_to_death"].max() if "days_to_death" in rows else np.nan
    follow = rows["days_to_last_follow_up"].max() if "days_to_last_follow_up" in rows else np.nan
    if vital == "Dead":
        time, event = death, 1.0
    elif vital == "Alive":
        time, event = follow, 0.0
    else:
        time, event = np.nan, np.nan
    return pd.Series(
        {
            "vital_status": vital,
            "days_to_death": death,
            "days_to_last_follow_up": follow,
            "os_time": float(time),
            "os_event": event,
        }
    )


def _join_clinical(
    obs: pd.DataFrame, table: pd.DataFrame, columns: Sequence[str] | None
) -> pd.DataFrame:
    table = table.dropna(subset=["case_submitter_id"])
    grouped = table.groupby("case_submitter_id", sort=False)
    per_case = grouped.apply(_case_survival, include_groups=False)
    if columns is None:
        columns = [c for c in DEFAULT_CLINICAL_COLUMNS if c in table]
    else:
        absent = [c for c in columns if c not in table]
        if absent:
            raise ValueError(
                f"clinical_columns {absent} are not in the clinical table (it has e.g. "
                f"{list(table.columns)[:12]}). Pass names from the table's header."
            )
    extra = [c for c in columns if c not in per_case and c not in obs]
    if extra:
        per_case = per_case.join(grouped[extra].agg(_first_valid))
    joined = per_case.reindex(obs["case_id"].to_numpy())
    joined.index = obs.index
    unmatched = joined["os_time"].isna() & ~obs["case_id"].isin(per_case.index)
    if unmatched.all():
        warnings.warn(
            f"No sample's Case ID (e.g. {obs['case_id'].iloc[0]!r}) is in the clinical table "
            "(column case_submitter_id); survival fields are all NaN. Pass the clinical table of "
            "the same project(s).",
            stacklevel=3,
        )
    elif unmatched.any():
        warnings.warn(
            f"{int(unmatched.sum())} of {len(obs)} samples have no row in the clinical table; "
            "their clinical fields are NaN.",
            stacklevel=3,
        )
    for column in ("os_time", "os_event", "days_to_death", "days_to_last_follow_up"):
        joined[column] = joined[column].astype(np.float64)
    for column in extra:
        if column in _NUMERIC_CLINICAL:
            joined[column] = joined[column].astype(np.float64)
    return pd.concat([obs, joined], axis=1)
