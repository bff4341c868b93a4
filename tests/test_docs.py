"""The documentation builds with warnings as errors (offline) and holds every public name."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-4000:]
    return out / "html"


def test_pages_and_tutorials(html):
    pages = ("index", "installation", "quickstart", "api", "model_card", "model_card_compact")
    for page in (*pages, "faq", "benchmarks", "architecture"):
        assert (html / f"{page}.html").is_file(), page
    notebooks = sorted(p.stem for p in (ROOT / "tutorials").glob("*.ipynb"))
    assert notebooks  # the four tutorials
    for name in notebooks:
        page = html / "tutorials" / f"{name}.html"
        assert page.is_file(), name
        # The stored outputs are rendered: every tutorial page shows its figures.
        images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page.read_text())
        assert images, name
        assert all((page.parent / src).resolve().is_file() for src in images), name
    # The front page shows the demo's figure.
    front = re.findall(r'<img[^>]+src="([^"]+\.png)"', (html / "index.html").read_text())
    assert any(src.endswith("demo_umap.png") for src in front)
    assert all((html / src).resolve().is_file() for src in front)
    text = (html / "model_card.html").read_text()
    assert "CC BY-NC-SA 4.0" in text and "6,005,104" in text


def test_api_page_documents_every_public_name(html):
    api = (html / "api.html").read_text()
    for package in ("pp", "tl", "pl", "datasets"):
        module = importlib.import_module(f"bulkrnabert_sv.{package}")
        for name in module.__all__:
            target = (
                importlib.import_module(f"bulkrnabert_sv.{package}")
                .__dict__.get("_ATTRIBUTES", {})
                .get(name)
            )
            if target and importlib.util.find_spec(target, f"bulkrnabert_sv.{package}") is None:
                continue  # declared before its module is merged: conf.py leaves it out
            full = f"bulkrnabert_sv.{package}.{name}"
            assert (html / "generated" / f"{full}.html").is_file(), full
            assert f"generated/{full}.html" in api, full
    page = (html / "generated" / "bulkrnabert_sv.datasets.read_gdc.html").read_text()
    assert "tpm_unstranded" in page and "os_event" in page
