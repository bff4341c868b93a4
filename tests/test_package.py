"""Package-level behaviour: lazy imports, public names, version."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_lazy():
    code = (
        "import sys, bulkrnabert_sv as b; "
        "heavy = [m for m in ('jax', 'flax', 'scanpy', 'anndata', 'optax') if m in sys.modules]; "
        "print(','.join(heavy)); print(b.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, version = out.stdout.split("\n")[:2]
    assert heavy == ""
    assert version.count(".") == 2


def test_public_names_resolve():
    import bulkrnabert_sv as b

    assert b.load_model is b.model.load_model
    assert callable(b.pp.align_genes)
    assert "embed" in dir(b.tl)


def test_every_lazy_name_resolves():
    import importlib

    import bulkrnabert_sv as b

    for package in ("pp", "tl", "pl", "datasets", "model"):
        module = importlib.import_module(f"bulkrnabert_sv.{package}")
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
    for name in b.__all__:
        assert getattr(b, name) is not None, name
