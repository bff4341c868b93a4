"""Shared fixtures: paths into ../shared (required in CI), the golden model, small models."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BULKRNABERT_SHARED", ROOT.parent / "shared"))
REQUIRE_SHARED = os.environ.get("BULKRNABERT_REQUIRE_SHARED", "") not in ("", "0")


def load_tool(name: str) -> ModuleType:
    """The script ``tools/<name>.py`` as a module, for tests and benchmarks that call its functions.

    It is registered in ``sys.modules`` under ``name`` before it runs (dataclasses and pickle
    look their module up there).
    """
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def shared_path(relative: str) -> Path:
    """A file under ../shared; skips the test when absent, fails when CI requires it."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is missing (../shared beside the checkout)"
        if REQUIRE_SHARED:
            pytest.fail(message + " and BULKRNABERT_REQUIRE_SHARED is set")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return shared_path("golden")


@pytest.fixture(scope="session")
def golden_config(golden_dir) -> dict:
    return json.loads((golden_dir / "config.json").read_text())


@pytest.fixture(scope="session")
def golden_params(golden_dir) -> dict[str, np.ndarray]:
    with np.load(golden_dir / "params.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def vocabulary() -> list[str]:
    """The model's 19,062 genes in model order."""
    path = shared_path("data/bulkrnabert_gene_ids.txt")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
