"""Download GDC STAR-Counts files, a sample sheet and a clinical table through the GDC API."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

#: The public GDC API.
GDC_API_URL = "https://api.gdc.cancer.gov"
SAMPLE_SHEET_COLUMNS = (
    "File ID",
    "File Name",
    "Data Category",
    "Data Type",
    "Project ID",
    "Case ID",
    "Sample ID",
    "Sample Type",
)
_FILE_FIELDS = (
    "file_id",
    "file_name",
    "md5sum",
    "file_size",
    "data_category",
    "data_type",
    "cases.submitter_id",
    "cases.project.project_id",
    "cases.samples.submitter_id",
    "cases.samples.sample_type",
)
_DEMOGRAPHIC = ("vital_status", "days_to_death", "gender", "race", "ethnicity", "age_at_index")
_DIAGNOSIS = (
    "days_to_last_follow_up",
    "age_at_diagnosis",
    "primary_diagnosis",
    "ajcc_pathologic_stage",
    "tumor_grade",
    "tissue_or_organ_of_origin",
)
_PAGE_SIZE = 500
_CHUNK = 1 << 20


class GDCDownloadError(RuntimeError):
    """The GDC API answered something unusable, or a download failed its checksum."""


def download_gdc(
    project_id: str | Sequence[str],
    folder: str | Path,
    *,
    max_files: int | None = None,
    workflow: str = "STAR - Counts",
    clinical: bool = True,
    batch_size: int = 10,
    progress: bool = True,
    api_url: str = GDC_API_URL,
    timeout: float = 120.0,
    retries: int = 3,
) -> Path:
    """Download a GDC project's open STAR-Counts files, sample sheet and clinical table.

    Writes the layout :func:`~bulkrnabert_sv.datasets.read_gdc` reads, the same as a GDC portal
    download: ``<folder>/<file_id>/<file_name>`` per file, ``gdc_sample_sheet.<project>.tsv``
    (the portal's sample-sheet columns) and ``clinical.<project>.tsv`` (one row per case and
    diagnosis, classic clinical-cart column names, ``'--`` for missing). Files already present
    with the right MD5 checksum are not downloaded again, so an interrupted download resumes.

    Parameters
    ----------
    project_id
        GDC project id(s), e.g. ``"TCGA-BRCA"`` or ``["TCGA-LUAD", "TCGA-LUSC"]``.
    folder
        Where to write (created if needed).
    max_files
        Download at most this many files per call (the first by file id; a deterministic,
        unordered subset of the project). ``None`` downloads all.
    workflow
        GDC ``analysis.workflow_type`` of the gene expression files.
    clinical
        Also write the clinical table (from the API's ``cases`` endpoint).
    batch_size
        Files fetched per request (several files come as one tar archive, as from the portal).
    progress
        Show a progress bar.
    api_url
        Base URL of the GDC API.
    timeout
        Seconds to wait for the server per request.
    retries
        Attempts per request before giving up (network errors and HTTP 5xx are retried).

    Returns
    -------
    The folder, for :func:`~bulkrnabert_sv.datasets.read_gdc`.
    """
    from .._logging import progress_bar

    projects = [project_id] if isinstance(project_id, str) else list(project_id)
    if not projects or not all(isinstance(p, str) and p for p in projects):
        raise ValueError(
            f"project_id must be a GDC project id such as 'TCGA-BRCA', not {project_id!r}."
        )
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files must be a positive number or None, not {max_files!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size!r}.")
    client = _Client(api_url, timeout=timeout, retries=retries)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hits = client.search_files(projects, workflow)
    if not hits:
        raise GDCDownloadError(
            f"The GDC has no open '{workflow}' gene expression files for {projects}. Check the "
            "project ids (e.g. 'TCGA-BRCA') on https://portal.gdc.cancer.gov/projects."
        )
    hits = sorted(hits, key=lambda h: h["file_id"])[:max_files]
    todo = [h for h in hits if not _is_cached(folder, h)]
    with progress_bar(
        total=len(hits),
        initial=len(hits) - len(todo),
        unit="file",
        desc="GDC download",
        progress=progress,
    ) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            client.download(batch, folder)
            bar.update(len(batch))
    tag = "_".join(projects)
    sheet = pd.DataFrame([_sheet_row(h) for h in hits], columns=list(SAMPLE_SHEET_COLUMNS))
    sheet.to_csv(folder / f"gdc_sample_sheet.{tag}.tsv", sep="\t", index=False)
    if clinical:
        wanted = set(sheet["Case ID"].str.split(", ").explode())
        cases = [c for c in client.search_cases(projects) if c.get("submitter_id") in wanted]
        table = pd.DataFrame(
            [row for case in cases for row in _clinical_rows(case)], columns=_clinical_columns()
        )
        table.to_csv(folder / f"clinical.{tag}.tsv", sep="\t", index=False)
    return folder


class _Client:
    """The few GDC API calls we need, over urllib (JSON search with paging, file download)."""

    def __init__(self, api_url: str, *, timeout: float, retries: int):
        self.base = api_url.rstrip("/")
        self.timeout = timeout
        self.retries = max(1, retries)

    # -- requests
    def _open(self, url: str, data: bytes | None = None):
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(url, data=data, headers=headers)
        for attempt in range(self.retries):
            try:
                return urllib.request.urlopen(request, timeout=self.timeout)
            except urllib.error.HTTPError as err:
                if err.code < 500 or attempt == self.retries - 1:
                    detail = err.read().decode("utf-8", "replace")[:300]
                    raise GDCDownloadError(
                        f"GDC API request {url} failed with HTTP {err.code}: {detail}"
                    ) from err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries - 1:
                    raise GDCDownloadError(
                        f"Cannot reach the GDC API at {self.base} ({err}). Check the network "
                        "connection (the API is https://api.gdc.cancer.gov), or download with the "
                        "GDC portal and read the folder with read_gdc."
                    ) from err
            time.sleep(2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _search(self, endpoint: str, filters: dict, fields: Sequence[str]) -> Iterator[dict]:
        offset = 0
        while True:
            query = urllib.parse.urlencode(
                {
                    "filters": json.dumps(filters),
                    "fields": ",".join(fields),
                    "format": "JSON",
                    "size": _PAGE_SIZE,
                    "from": offset,
                }
            )
            with self._open(f"{self.base}/{endpoint}?{query}") as response:
                try:
                    payload = json.load(response)
                    data = payload["data"]
                    hits, total = data["hits"], int(data["pagination"]["total"])
                except (ValueError, KeyError, TypeError) as err:
                    raise GDCDownloadError(
                        f"Unexpected answer from {self.base}/{endpoint} ({err!r}); is api_url "
                        "the GDC API?"
                    ) from err
            yield from hits
            offset += len(hits)
            if not hits or offset >= total:
                return

    def search_files(self, projects: list[str], workflow: str) -> list[dict]:
        filters = _and(
            _in("cases.project.project_id", projects),
            _in("data_type", ["Gene Expression Quantification"]),
            _in("analysis.workflow_type", [workflow]),
            _in("access", ["open"]),
        )
        return _unique(self._search("files", filters, _FILE_FIELDS), "file_id")

    def search_cases(self, projects: list[str]) -> list[dict]:
        fields = (
            "case_id",
            "submitter_id",
            "project.project_id",
            *(f"demographic.{f}" for f in _DEMOGRAPHIC),
            *(f"diagnoses.{f}" for f in _DIAGNOSIS),
        )
        return _unique(
            self._search("cases", _in("project.project_id", projects), fields), "submitter_id"
        )

    # -- downloads
    def download(self, hits: list[dict], folder: Path) -> None:
        """Fetch ``hits`` into ``<folder>/<file_id>/<file_name>``, verifying MD5 sums."""
        with tempfile.TemporaryDirectory(dir=folder, prefix=".gdc-") as tmp:
            body = tmp + "/body"
            if len(hits) == 1:
                url, data = f"{self.base}/data/{hits[0]['file_id']}", None
            else:
                url = f"{self.base}/data"
                data = json.dumps({"ids": [h["file_id"] for h in hits]}).encode()
            with self._open(url, data) as response, open(body, "wb") as out:
                shutil.copyfileobj(response, out, _CHUNK)
            if tarfile.is_tarfile(body):
                with tarfile.open(body) as archive:
                    members = {m.name.lstrip("./"): m for m in archive.getmembers() if m.isfile()}
                    for hit in hits:
                        member = members.get(f"{hit['file_id']}/{hit['file_name']}")
                        if member is None:
                            raise GDCDownloadError(
                                f"The archive from {url} lacks {hit['file_id']}/"
                                f"{hit['file_name']}; run download_gdc again to retry."
                            )
                        with archive.extractfile(member) as handle:
                            _store(handle, hit, folder)
            elif len(hits) == 1:
                with open(body, "rb") as handle:
                    _store(handle, hits[0], folder)
            else:
                raise GDCDownloadError(
                    f"{url} answered a multi-file request with something that is not a tar "
                    "archive; run download_gdc again, or pass batch_size=1."
                )


def _store(handle: io.BufferedIOBase, hit: dict, folder: Path) -> None:
    target = folder / hit["file_id"] / hit["file_name"]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    with open(partial, "wb") as out:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    if hit.get("md5sum") and digest.hexdigest() != hit["md5sum"]:
        partial.unlink()
        raise GDCDownloadError(
            f"{hit['file_id']}/{hit['file_name']} arrived corrupted (MD5 {digest.hexdigest()}, "
            f"GDC says {hit['md5sum']}); run download_gdc again to fetch it anew."
        )
    partial.replace(target)


def _is_cached(folder: Path, hit: dict) -> bool:
    path = folder / hit["file_id"] / hit["file_name"]
    if not path.is_file():
        return False
    if hit.get("file_size") is not None and path.stat().st_size != int(hit["file_size"]):
        return False
    if hit.get("md5sum"):
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == hit["md5sum"]
    return True


def _unique(hits, key: str) -> list[dict]:
    """Hits in order, without repeats (pages must not overlap, but do not rely on it)."""
    seen: dict = {}
    for hit in hits:
        seen.setdefault(hit.get(key), hit)
    return list(seen.values())


def _in(field: str, values: list[str]) -> dict:
    return {"op": "in", "content": {"field": field, "value": list(values)}}


def _and(*filters: dict) -> dict:
    return {"op": "and", "content": list(filters)}


def _joined(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values if v is not None))


def _sheet_row(hit: dict) -> list[str]:
    cases = hit.get("cases") or []
    samples = [s for c in cases for s in c.get("samples") or []]
    return [
        hit["file_id"],
        hit["file_name"],
        hit.get("data_category", ""),
        hit.get("data_type", ""),
        _joined(c.get("project", {}).get("project_id") for c in cases),
        _joined(c.get("submitter_id") for c in cases),
        _joined(s.get("submitter_id") for s in samples),
        _joined(s.get("sample_type") for s in samples),
    ]


def _clinical_columns() -> list[str]:
    return ["case_id", "case_submitter_id", "project_id", *_DEMOGRAPHIC, *_DIAGNOSIS]


def _missing(value) -> str:
    return "'--" if value is None or value == "" else str(value)


def _clinical_rows(case: dict) -> list[list[str]]:
    demographic = case.get("demographic") or {}
    head = [
        case.get("case_id") or case.get("id"),
        case.get("submitter_id"),
        (case.get("project") or {}).get("project_id"),
        *(demographic.get(f) for f in _DEMOGRAPHIC),
    ]
    diagnoses = case.get("diagnoses") or [{}]
    return [[_missing(v) for v in (*head, *(d.get(f) for f in _DIAGNOSIS))] for d in diagnoses]
