"""Execute the tutorials and store them with their outputs and figures (``make tutorials``).

Usage::

    python tools/run_tutorials.py [NAME ...]

Each notebook runs with its own default parameters (the bundled compact model and the TCGA
tumours shipped with the package; offline) in a scratch folder under ``build/tutorials/``, and is
written back to ``tutorials/`` with its outputs. Tutorial 4 also converts raw counts: when
``../shared`` is beside the checkout, its GTEx lung counts and GENCODE v26 annotation are used
(a cell tagged ``injected-parameters`` says so); without it, that part is skipped by the notebook.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
SCRATCH = ROOT / "build" / "tutorials"
SHARED = Path(os.environ.get("BULKRNABERT_SHARED", ROOT.parent / "shared"))
TIMEOUT_S = 1200


def parameters(name: str) -> dict[str, str]:
    """Overrides of a notebook's parameter cell for the stored run (none for most)."""
    counts = SHARED / "data/gtex_lung_chr21/gtex_lung.first30.chr21.csv.gz"
    gtf = SHARED / "data/gtex_lung_chr21/gencode.v26.annotation.chr21.gtf.gz"
    if name.startswith("04_") and counts.is_file() and gtf.is_file():
        return {"COUNTS": str(counts), "GTF": str(gtf)}
    return {}


def inject(notebook, values: dict[str, str]) -> None:
    """Replace a previous run's injected cell by one with ``values`` (after the parameters)."""
    notebook.cells = [
        c for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])
    ]
    if not values:
        return
    (index,) = [
        i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])
    ]
    source = "# make tutorials: real public files beside the checkout (../shared)\n" + "\n".join(
        f"{k} = {v!r}" for k, v in values.items()
    )
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    notebook.cells.insert(index + 1, cell)


def run(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    inject(notebook, parameters(path.name))
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    cwd = SCRATCH / path.stem
    cwd.mkdir(parents=True, exist_ok=True)
    package = str(ROOT / "src")
    env_path = os.pathsep.join(filter(None, [package, os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"] = env_path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the stored outputs never need the network
    NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},
    ).execute()
    nbformat.write(notebook, path)
    print(f"stored {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    args = parser.parse_args(argv)
    paths = sorted(TUTORIALS.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if p.name in args.names or p.stem in args.names]
    for path in paths:
        run(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
