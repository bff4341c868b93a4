"""Checkpoint files: the file names of each format, their readers, and the writers.

Three formats are read, one is written:

* Hugging Face (``model.safetensors`` with PyTorch names, Linear weights stored (out, in)),
  with ``config.json``, ``tokenizer_config.json`` and the gene order from ``data/tcga_sample.csv``;
* Haiku (``jax_params/params.joblib``, a pickle, read only with ``allow_pickle=True``) with
  ``jax_params/config.json``;
* our own (``model.safetensors`` with NNX paths, ``bulkrnabert_sv.json``, ``genes.txt``), written
  by :meth:`BulkRNABert.save`; :func:`export_hf_folder` writes the Hugging Face layout.

The readers return what a file holds (or raise :class:`CheckpointError` with the fix); the name
tables are in :mod:`.params` and the loaders, which build a model from the files, in
:mod:`.checkpoints`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from .errors import CheckpointError, listed
from .params import flat_state, torch_state_dict

FORMAT_NAME = "bulkrnabert-sv"
FORMAT_VERSION = 1
OWN_CONFIG_FILE = "bulkrnabert_sv.json"
WEIGHTS_FILE = "model.safetensors"
GENES_FILE = "genes.txt"
HF_CONFIG_FILE = "config.json"
HF_TOKENIZER_FILE = "tokenizer_config.json"
HF_GENES_FILE = "data/tcga_sample.csv"
HAIKU_PARAMS_FILE = "jax_params/params.joblib"
HAIKU_CONFIG_FILE = "jax_params/config.json"


#: An unversioned Ensembl gene id (``ENSG00000141510``; other species' prefixes too).
_UNVERSIONED_ENSEMBL = re.compile(r"ENS[A-Z]*G\d{11}")


# ------------------------------------------------------------------------------------ readers
def read_json(path: Path) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: the checkpoint folder is incomplete; "
            "re-download it or pass the folder that holds it."
        ) from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); re-download it.") from None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: the checkpoint folder is incomplete; "
            "re-download it or pass the folder that holds it."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({error}). It may be truncated or "
            "corrupt: delete it (or its Hugging Face cache entry) and download it again."
        ) from None


def read_csv_genes(path: Path) -> list[str]:
    """Gene order from the header of an upstream samples×genes CSV (last column ``identifier``)."""
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: the gene order of a Hugging Face checkpoint is the header of "
            "data/tcga_sample.csv. Download that file too, or pass genes= explicitly."
        )
    with open(path) as handle:
        header = handle.readline().rstrip("\r\n").split(",")
    if header and header[-1].strip() == "identifier":
        header = header[:-1]
    return [g.strip() for g in header]


def read_genes_file(path: Path) -> tuple[list[str], list[str], list[str]]:
    """The gene ids of a ``genes.txt`` (one per line), their line labels, and blank-line problems.

    Trailing blank lines are ignored; a blank line between genes is reported (the file was
    edited or damaged).
    """
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the model folder is incomplete.")
    lines = [line.strip() for line in path.read_text().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [f"line {i + 1}" for i, line in enumerate(lines) if not line]
    problems = [f"{path.name}: blank line(s) between genes: {listed(blank)}"] if blank else []
    genes = [line for line in lines if line]
    positions = [f"line {i + 1}" for i, line in enumerate(lines) if line]
    return genes, positions, problems


def gene_list_problems(
    genes: list[str] | tuple[str, ...],
    n_genes: int,
    *,
    where: str,
    positions: list[str] | None = None,
    n_genes_from: str | None = None,
) -> list[str]:
    """What is wrong with a model's gene list: its length, repeated ids, malformed ids.

    Parameters
    ----------
    genes
        The gene ids in model order.
    n_genes
        The model's ``config.n_genes``, which the list must match.
    where
        Where the list comes from, prefixed to every problem (``"genes.txt"``).
    positions
        How to name each entry in messages (``"line 3"``); default ``"entry 1"``, ...
    n_genes_from
        The file that sets ``n_genes`` (``"bulkrnabert_sv.json"``), named in the message.

    Returns
    -------
    One line per problem (empty: the list is fine). The ids must be unversioned Ensembl gene ids
    (``ENSG00000141510``, not ``ENSG00000141510.16`` nor ``TP53``), each once: data are aligned
    to the model by these ids, so a wrong one silently misplaces expression values.
    """
    if positions is None:
        positions = [f"entry {i + 1}" for i in range(len(genes))]
    problems = []
    if len(genes) != n_genes:
        problems.append(
            f"{where}: the gene list has {len(genes)} genes but the model has n_genes={n_genes}"
            + (f" (in {n_genes_from})" if n_genes_from else "")
        )
    first: dict[str, str] = {}
    repeated, malformed = [], []
    for gene, position in zip(genes, positions):
        if gene in first:
            repeated.append(f"{position} repeats {gene!r} (first at {first[gene]})")
        else:
            first[gene] = position
        if not _UNVERSIONED_ENSEMBL.fullmatch(gene):
            versioned = _UNVERSIONED_ENSEMBL.fullmatch(gene.split(".")[0]) is not None
            malformed.append(
                f"{position} {gene!r}" + (" (has a version suffix)" if versioned else "")
            )
    if repeated:
        problems.append(
            f"{where}: {len(repeated)} repeated gene id(s): {listed(repeated)}; each gene must "
            "appear once"
        )
    if malformed:
        problems.append(
            f"{where}: {len(malformed)} entr{'y is' if len(malformed) == 1 else 'ies are'} not "
            f"an unversioned Ensembl gene id (like 'ENSG00000141510'): {listed(malformed)}"
        )
    return problems


# ------------------------------------------------------------------------------------ writers
def save_model(model, path) -> Path:
    """Write ``model`` to a folder in our own format (read by :func:`~.checkpoints.load_own_folder`)."""
    from safetensors.numpy import save_file

    from .._version import __version__

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: np.asarray(jax.device_get(v[...])) for name, v in flat_state(model, nnx.Param).items()
    }
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": model.config.to_dict(),
        "n_genes_file": model.genes is not None,
    }
    (folder / OWN_CONFIG_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    if model.genes is not None:
        (folder / GENES_FILE).write_text("\n".join(model.genes) + "\n")
    elif (folder / GENES_FILE).exists():
        (folder / GENES_FILE).unlink()
    return folder


def export_hf_folder(model, path) -> Path:
    """Write ``model`` in the Hugging Face repo's layout (what ``InstaDeepAI/BulkRNABert`` holds).

    ``model.safetensors`` (PyTorch names), ``config.json``, ``tokenizer_config.json`` and the gene
    order as the header of ``data/tcga_sample.csv`` (no samples).
    """
    from safetensors.numpy import save_file

    if model.genes is None:
        raise CheckpointError("The Hugging Face layout stores the gene order: the model has none.")
    folder = Path(path)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    save_file(torch_state_dict(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        **model.config.architecture(),
        "embeddings_layers_to_save": [],
        "attention_maps_to_save": [],
        "architectures": ["BulkRNABert"],
    }
    (folder / HF_CONFIG_FILE).write_text(json.dumps(config, indent=1))
    tokenizer = {
        "n_expressions_bins": model.config.n_expressions_bins,
        "min_omic_value": 0.0,
        "max_omic_value": 1.0,
        "use_max_normalization": True,
        "normalization_factor": model.config.normalization_factor,
        "prepend_cls_token": False,
    }
    (folder / HF_TOKENIZER_FILE).write_text(json.dumps(tokenizer, indent=1))
    (folder / HF_GENES_FILE).write_text(",".join(model.genes) + ",identifier\n")
    return folder
