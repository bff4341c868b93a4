"""GDC reader and downloader on folders laid out exactly like GDC downloads (real TCGA TPM)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bulkrnabert_sv.datasets import download_gdc, read_gdc
from bulkrnabert_sv.datasets._gdc import GDCFormatError
from bulkrnabert_sv.datasets._gdc_download import GDCDownloadError
from conftest import shared_path
from gdc_layout import (
    breast_samples,
    clinical_table,
    gencode_genes,
    glioma_samples,
    md5,
    write_gdc_folder,
)


@pytest.fixture(scope="module")
def genes():
    return gencode_genes()


@pytest.fixture(scope="module")
def samples(genes):
    return glioma_samples(genes) + breast_samples(genes, n=3)


@pytest.fixture(scope="module")
def clinical(samples):
    return clinical_table(samples)


@pytest.fixture(scope="module")
def gdc_folder(tmp_path_factory, samples, genes, clinical):
    return write_gdc_folder(tmp_path_factory.mktemp("gdc"), samples, genes, clinical=clinical)


@pytest.fixture(scope="module")
def adata(gdc_folder):
    return read_gdc(gdc_folder)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _file(folder: Path, sample) -> Path:
    return folder / sample.file_id / sample.file_name


def expected_survival(clinical: pd.DataFrame, case: str) -> tuple[float, float]:
    rows = clinical[clinical["case_submitter_id"] == case]
    if rows.empty:
        return np.nan, np.nan
    row = rows.iloc[0]
    if row["vital_status"] == "Dead":
        return float(row["days_to_death"]), 1.0
    return float(row["days_to_last_follow_up"]), 0.0


# ------------------------------------------------------------------------------ read_gdc


def test_values_ids_and_layers(adata, samples, genes):
    assert adata.shape == (len(samples), len(genes))
    assert list(adata.obs_names) == [s.file_id for s in samples]
    assert list(adata.var_names) == list(genes["gene_id"])
    assert adata.var_names.str.endswith("_PAR_Y").sum() == 3
    np.testing.assert_array_equal(adata.var["gene_name"], genes["gene_name"])
    np.testing.assert_array_equal(adata.var["gene_type"], genes["gene_type"])
    assert adata.X.dtype == np.float32
    for i, s in enumerate(samples):
        written = np.array([f"{v:.4f}" for v in s.tpm], dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(adata.X[i], written)
        np.testing.assert_array_equal(adata.layers["counts"][i], s.counts.to_numpy())
    assert adata.layers["counts"].dtype == np.int32
    assert adata.obs["n_unmapped"].tolist() == [2_100_000.0] * len(samples)
    assert adata.obs["n_ambiguous"].tolist() == [900_000.0] * len(samples)
    assert adata.uns["gdc"]["gene_model"] == "GENCODE v36"
    assert adata.uns["gdc"]["n_files"] == len(samples)


def test_tpm_matches_the_original_samples_after_alignment(adata, vocabulary):
    from bulkrnabert_sv.pp import align_genes

    csv = pd.read_csv(shared_path("data/tcga_gbmlgg_4_samples_tpm.csv"))
    original = csv.drop(columns="identifier").to_numpy()
    alignment = align_genes(adata, vocabulary, warn=False)
    aligned = alignment.transform(np.asarray(adata.X[:4], dtype=np.float64))
    in_file = set(adata.var_names.str.split(".").str[0])
    present = np.array([g in in_file for g in vocabulary])
    assert present.sum() == 18_981  # the vocabulary genes GENCODE v22 has
    np.testing.assert_allclose(aligned[:, present], original[:, present], rtol=1e-6, atol=5e-5)
    assert (aligned[:, ~present] == 0).all()


def test_obs_from_sample_sheet_and_clinical(adata, samples, clinical):
    obs = adata.obs
    assert obs["project_id"].tolist() == [s.project_id for s in samples]
    assert obs["cohort"].tolist() == [s.project_id.removeprefix("TCGA-") for s in samples]
    assert obs["case_id"].tolist() == [s.case_id for s in samples]
    assert obs["sample_id"].tolist() == [s.sample_id for s in samples]
    assert (obs["sample_type"] == "Primary Tumor").all()
    for i, s in enumerate(samples):
        time, event = expected_survival(clinical, s.case_id)
        assert obs["os_time"].iloc[i] == time
        assert obs["os_event"].iloc[i] == event
    assert obs["os_event"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    ages = clinical.drop_duplicates("case_submitter_id").set_index("case_submitter_id")
    assert obs["age_at_index"].tolist() == ages.loc[obs["case_id"], "age_at_index"].tolist()
    assert obs["gender"].iloc[-1] == "female"
    assert "treatment_type" not in obs  # not in the default clinical columns


def test_h5ad_round_trip(adata, tmp_path):
    adata.write_h5ad(tmp_path / "gdc.h5ad")
    back = ad.read_h5ad(tmp_path / "gdc.h5ad")
    np.testing.assert_array_equal(back.X, adata.X)
    pd.testing.assert_series_equal(back.obs["os_time"], adata.obs["os_time"])


def test_without_sample_sheet_and_by_sample_id(gdc_folder, samples):
    plain = read_gdc(gdc_folder, sample_sheet=False)
    assert sorted(plain.obs_names) == sorted(s.file_id for s in samples)
    assert "os_time" not in plain.obs and "project_id" not in plain.obs
    by_sample = read_gdc(gdc_folder, obs_names="sample_id", clinical=False)
    assert list(by_sample.obs_names) == [s.sample_id for s in samples]
    np.testing.assert_array_equal(by_sample.X, plain[by_sample.obs["file_id"]].X)


def test_new_style_clinical_headers_and_missing_cases(gdc_folder, samples, clinical, tmp_path):
    renamed = clinical.rename(
        columns={
            "case_submitter_id": "cases.submitter_id",
            "case_id": "cases.case_id",
            "project_id": "project.project_id",
            "vital_status": "demographic.vital_status",
            "days_to_death": "demographic.days_to_death",
            "days_to_last_follow_up": "diagnoses.days_to_last_follow_up",
            "age_at_index": "demographic.age_at_index",
        }
    )
    dropped = renamed[renamed["cases.submitter_id"] != samples[1].case_id]
    path = tmp_path / "clinical.tsv"
    dropped.to_csv(path, sep="\t", index=False)
    with pytest.warns(UserWarning, match="1 of 7 samples have no row"):
        adata = read_gdc(gdc_folder, clinical=path)
    assert np.isnan(adata.obs["os_time"].iloc[1]) and np.isnan(adata.obs["os_event"].iloc[1])
    for i in (0, 2, 5):
        time, event = expected_survival(clinical, samples[i].case_id)
        assert (adata.obs["os_time"].iloc[i], adata.obs["os_event"].iloc[i]) == (time, event)


def test_gene_order_may_differ_between_files(gdc_folder, samples, tmp_path, adata):
    folder = _copy(gdc_folder, tmp_path)
    path = _file(folder, samples[2])
    lines = path.read_text().splitlines()
    head, body = lines[:6], lines[6:]
    path.write_text("\n".join(head + body[::-1]) + "\n")
    back = read_gdc(folder)
    np.testing.assert_array_equal(back.X, adata.X)
    np.testing.assert_array_equal(back.layers["counts"], adata.layers["counts"])


def test_gzipped_files_are_read(gdc_folder, samples, tmp_path, adata):
    folder = _copy(gdc_folder, tmp_path)
    for s in samples:
        path = _file(folder, s)
        gz = path.with_name(path.name + ".gz")
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    back = read_gdc(folder, sample_sheet=False)
    np.testing.assert_array_equal(back[adata.obs_names].X, adata.X)


def test_tables_passed_in_are_not_modified(gdc_folder, clinical, adata):
    sheet = pd.read_csv(next(gdc_folder.glob("gdc_sample_sheet*.tsv")), sep="\t")
    sheet_before, clinical_before = sheet.copy(), clinical.copy()
    back = read_gdc(gdc_folder, sample_sheet=sheet, clinical=clinical)
    pd.testing.assert_frame_equal(sheet, sheet_before)
    pd.testing.assert_frame_equal(clinical, clinical_before)
    np.testing.assert_array_equal(back.X, adata.X)
    for column in ("os_time", "os_event", "age_at_index", "cohort"):
        assert back.obs[column].tolist() == adata.obs[column].tolist(), column


def test_new_portal_sample_sheet_without_sample_type(gdc_folder, samples, tmp_path):
    """The 2024 portal's sheet has Tissue Type / Tumor Descriptor instead of Sample Type."""
    folder = _copy(gdc_folder, tmp_path)
    path = next(folder.glob("gdc_sample_sheet*.tsv"))
    sheet = pd.read_csv(path, sep="\t").drop(columns="Sample Type")
    sheet["Tissue Type"] = "Tumor"
    sheet["Tumor Descriptor"] = "Primary"
    sheet.loc[1, "Sample ID"] = samples[1].sample_id.replace("-01A", "-11A")
    sheet.to_csv(path, sep="\t", index=False)
    back = read_gdc(folder, clinical=False)
    assert back.obs["sample_type"].iloc[0] == "Primary Tumor"
    assert back.obs["sample_type"].iloc[1] == "Solid Tissue Normal"
    assert (back.obs["tissue_type"] == "Tumor").all()
    assert (back.obs["tumor_descriptor"] == "Primary").all()


# ------------------------------------------------------------------------------ bad input


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_missing_tpm_column_is_rejected(gdc_folder, samples, tmp_path):
    folder = _copy(gdc_folder, tmp_path)
    _edit(_file(folder, samples[1]), "tpm_unstranded", "tpm")
    with pytest.raises(GDCFormatError, match=r"tpm_unstranded.*STAR - Counts") as err:
        read_gdc(folder)
    assert samples[1].file_name in str(err.value)


def test_non_numeric_value_is_rejected(gdc_folder, samples, genes, tmp_path):
    folder = _copy(gdc_folder, tmp_path)
    path = _file(folder, samples[0])
    gene = genes["gene_id"].iloc[10]
    lines = path.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(gene + "\t"))
    fields = lines[i].split("\t")
    fields[6] = "1.2.3"
    lines[i] = "\t".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(GDCFormatError, match=rf"invalid value '1.2.3'.*tpm_unstranded.*{gene}"):
        read_gdc(folder)


def test_empty_tpm_and_non_integer_counts_are_rejected(gdc_folder, samples, genes, tmp_path):
    folder = _copy(gdc_folder, tmp_path)
    path = _file(folder, samples[0])
    text = path.read_text()
    line = next(x for x in text.splitlines() if x.startswith(genes["gene_id"].iloc[3] + "\t"))
    fields = line.split("\t")
    path.write_text(text.replace(line, "\t".join([*fields[:6], "", *fields[7:]])))
    with pytest.raises(GDCFormatError, match="missing in column 'tpm_unstranded'"):
        read_gdc(folder)
    path.write_text(text.replace(line, "\t".join([*fields[:3], "2.5", *fields[4:]])))
    with pytest.raises(GDCFormatError, match="non-integer counts"):
        read_gdc(folder)


def test_absent_file_in_sample_sheet_is_rejected(gdc_folder, samples, tmp_path):
    folder = _copy(gdc_folder, tmp_path)
    _file(folder, samples[3]).unlink()
    with pytest.raises(FileNotFoundError, match="remove their rows from the sample sheet") as err:
        read_gdc(folder)
    assert samples[3].file_id in str(err.value)


def test_different_gene_sets_are_rejected(gdc_folder, samples, tmp_path):
    folder = _copy(gdc_folder, tmp_path)
    path = _file(folder, samples[4])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(GDCFormatError, match="list different genes"):
        read_gdc(folder)


def test_bad_clinical_and_sheet_and_folder(gdc_folder, clinical, tmp_path):
    bad = clinical.copy()
    bad.loc[0, "days_to_death"] = "about a year"
    path = tmp_path / "bad_clinical.tsv"
    bad.to_csv(path, sep="\t", index=False)
    with pytest.raises(GDCFormatError, match="non-numeric days_to_death 'about a year'"):
        read_gdc(gdc_folder, clinical=path)
    sheet = tmp_path / "sheet.tsv"
    pd.DataFrame({"file": ["x"]}).to_csv(sheet, sep="\t", index=False)
    with pytest.raises(GDCFormatError, match="'File ID'"):
        read_gdc(gdc_folder, sample_sheet=sheet)
    with pytest.raises(FileNotFoundError, match="download_gdc"):
        read_gdc(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No STAR-Counts file"):
        read_gdc(tmp_path / "empty")
    with pytest.raises(ValueError, match="obs_names"):
        read_gdc(gdc_folder, obs_names="case")


@pytest.mark.parametrize("dtype", ["int8", np.int32, "uint16", "float16", bool, "U8"])
def test_dtype_must_be_a_float_that_holds_tpm(gdc_folder, dtype):
    # int8 used to wrap TPM into negative values, float16 to overflow to inf.
    with pytest.raises(TypeError, match=r"cannot hold TPM.*dtype='float32'.*'float64'"):
        read_gdc(gdc_folder, dtype=dtype)
    with pytest.raises(TypeError, match="not a NumPy data type"):
        read_gdc(gdc_folder, dtype="float33")


def test_float64_dtype_keeps_the_values(gdc_folder, adata):
    wide = read_gdc(gdc_folder, dtype="float64")
    assert wide.X.dtype == np.float64 and (wide.X >= 0).all()
    np.testing.assert_array_equal(wide.X.astype(np.float32), adata.X)


# ------------------------------------------------------------------------------ download_gdc


class FakeGDC:
    """A local GDC API (files/cases search with paging, data download) over fixture files."""

    page = 2  # small pages so that paging runs

    def __init__(self, folder: Path, samples, clinical: pd.DataFrame):
        self.files = {s.file_id: _file(folder, s).read_bytes() for s in samples}
        self.hits = [
            {
                "id": s.file_id,
                "file_id": s.file_id,
                "file_name": s.file_name,
                "md5sum": md5(_file(folder, s)),
                "file_size": _file(folder, s).stat().st_size,
                "data_category": "Transcriptome Profiling",
                "data_type": "Gene Expression Quantification",
                "cases": [
                    {
                        "submitter_id": s.case_id,
                        "project": {"project_id": s.project_id},
                        "samples": [{"submitter_id": s.sample_id, "sample_type": s.sample_type}],
                    }
                ],
            }
            for s in samples
        ]
        self.cases = []
        for case, rows in clinical.groupby("case_submitter_id", sort=False):
            row = rows.iloc[0]

            def value(key, row=row):
                v = row[key]
                return None if v == "'--" else int(v) if key.startswith(("days", "age")) else v

            self.cases.append(
                {
                    "id": row["case_id"],
                    "case_id": row["case_id"],
                    "submitter_id": case,
                    "project": {"project_id": row["project_id"]},
                    "demographic": {
                        k: value(k)
                        for k in ("vital_status", "days_to_death", "gender", "age_at_index")
                    },
                    "diagnoses": [
                        {
                            "days_to_last_follow_up": value("days_to_last_follow_up"),
                            "primary_diagnosis": row["primary_diagnosis"],
                        }
                    ],
                }
            )
        self.requests: list[str] = []
        self.corrupt: set[str] = set()

    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: bytes, kind: str):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                fake.requests.append(f"GET {url.path}")
                if url.path.startswith("/data/"):
                    file_id = url.path.rsplit("/", 1)[1]
                    body = fake.files[file_id]
                    if file_id in fake.corrupt:
                        body = body[:-10]
                    return self._send(body, "text/tab-separated-values")
                query = urllib.parse.parse_qs(url.query)
                filters = json.loads(query["filters"][0])
                if url.path == "/files":
                    hits = fake.search_files(filters, query["fields"][0].split(","))
                elif url.path == "/cases":
                    hits = fake.search_cases(filters)
                else:
                    self.send_error(404)
                    return
                start = int(query["from"][0])
                size = min(int(query["size"][0]), fake.page)
                payload = {
                    "data": {
                        "hits": hits[start : start + size],
                        "pagination": {"total": len(hits), "from": start, "size": size},
                    },
                    "warnings": {},
                }
                self._send(json.dumps(payload).encode(), "application/json")

            def do_POST(self):
                fake.requests.append(f"POST {self.path}")
                ids = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["ids"]
                buffer = io.BytesIO()
                with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
                    names = {h["file_id"]: h["file_name"] for h in fake.hits}
                    for file_id in ids:
                        data = fake.files[file_id]
                        info = tarfile.TarInfo(f"{file_id}/{names[file_id]}")
                        info.size = len(data)
                        archive.addfile(info, io.BytesIO(data))
                    manifest = b"id\tfilename\n"
                    info = tarfile.TarInfo("MANIFEST.txt")
                    info.size = len(manifest)
                    archive.addfile(info, io.BytesIO(manifest))
                self._send(buffer.getvalue(), "application/x-tar")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def search_files(self, filters, fields):
        assert filters["op"] == "and"
        content = {f["content"]["field"]: f["content"]["value"] for f in filters["content"]}
        assert content["data_type"] == ["Gene Expression Quantification"]
        assert content["analysis.workflow_type"] == ["STAR - Counts"]
        assert content["access"] == ["open"]
        assert {"file_id", "file_name", "md5sum", "cases.samples.submitter_id"} <= set(fields)
        projects = content["cases.project.project_id"]
        return [h for h in self.hits if h["cases"][0]["project"]["project_id"] in projects]

    def search_cases(self, filters):
        assert filters["content"]["field"] == "project.project_id"
        projects = filters["content"]["value"]
        return [c for c in self.cases if c["project"]["project_id"] in projects]


@pytest.fixture
def fake_gdc(gdc_folder, samples, clinical):
    fake = FakeGDC(gdc_folder, samples, clinical)
    url = fake.start()
    yield fake, url
    fake.server.shutdown()
    fake.server.server_close()


PROJECTS = ["TCGA-GBM", "TCGA-LGG", "TCGA-BRCA"]


def test_download_writes_what_read_gdc_reads(fake_gdc, adata, tmp_path):
    fake, url = fake_gdc
    folder = download_gdc(PROJECTS, tmp_path / "dl", api_url=url, progress=False, batch_size=3)
    # 7 files in batches of 3: two tar archives, then one plain file
    assert sum(r == "POST /data" for r in fake.requests) == 2
    assert sum(r.startswith("GET /data/") for r in fake.requests) == 1
    assert sum(r == "GET /files" for r in fake.requests) == 4  # 7 hits, pages of 2
    back = read_gdc(folder)
    order = back.obs_names.get_indexer(adata.obs_names)
    assert (order >= 0).all()
    back = back[order]
    np.testing.assert_array_equal(back.X, adata.X)
    np.testing.assert_array_equal(back.layers["counts"], adata.layers["counts"])
    for column in (
        "project_id",
        "cohort",
        "case_id",
        "sample_id",
        "sample_type",
        "os_time",
        "os_event",
        "age_at_index",
        "gender",
        "primary_diagnosis",
    ):
        assert back.obs[column].tolist() == adata.obs[column].tolist(), column
    assert [p.rsplit("/", 1)[1] for p in back.uns["gdc"]["sample_sheets"]] == [
        "gdc_sample_sheet.TCGA-GBM_TCGA-LGG_TCGA-BRCA.tsv"
    ]


def test_download_uses_its_cache_and_refetches_damaged_files(fake_gdc, samples, tmp_path):
    fake, url = fake_gdc
    folder = download_gdc("TCGA-BRCA", tmp_path / "dl", api_url=url, progress=False, batch_size=1)
    assert sorted(r for r in fake.requests if "/data" in r) == sorted(
        f"GET /data/{s.file_id}" for s in samples if s.project_id == "TCGA-BRCA"
    )
    fake.requests.clear()
    download_gdc("TCGA-BRCA", folder, api_url=url, progress=False)
    assert not [r for r in fake.requests if "/data" in r]
    damaged = _file(folder, samples[5])
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"7")
    download_gdc("TCGA-BRCA", folder, api_url=url, progress=False, batch_size=1)
    assert [r for r in fake.requests if "/data" in r] == [f"GET /data/{samples[5].file_id}"]
    assert damaged.read_bytes() == fake.files[samples[5].file_id]
    clinical = pd.read_csv(folder / "clinical.TCGA-BRCA.tsv", sep="\t")
    assert sorted(clinical["case_submitter_id"]) == sorted(
        s.case_id for s in samples if s.project_id == "TCGA-BRCA"
    )


def test_download_max_files_and_errors(fake_gdc, samples, tmp_path):
    fake, url = fake_gdc
    folder = download_gdc(PROJECTS, tmp_path / "dl", api_url=url, progress=False, max_files=2)
    sheet = pd.read_csv(next(folder.glob("gdc_sample_sheet*.tsv")), sep="\t")
    assert sheet["File ID"].tolist() == sorted(s.file_id for s in samples)[:2]
    fake.corrupt.add(samples[0].file_id)
    with pytest.raises(GDCDownloadError, match="arrived corrupted"):
        download_gdc("TCGA-GBM", tmp_path / "bad", api_url=url, progress=False, batch_size=1)
    assert not list((tmp_path / "bad").rglob("*.tsv*"))
    with pytest.raises(GDCDownloadError, match="no open 'STAR - Counts'"):
        download_gdc("TCGA-NOPE", tmp_path / "none", api_url=url, progress=False)
    with pytest.raises(ValueError, match="project id"):
        download_gdc("", tmp_path / "none", api_url=url)
