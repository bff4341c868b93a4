"""Checkpoint formats: name tables from each format to the NNX state, and the loaders.

Three formats are read, one is written:

* Hugging Face (``model.safetensors`` with PyTorch names, Linear weights stored (out, in)),
  with ``config.json``, ``tokenizer_config.json`` and the gene order from ``data/tcga_sample.csv``;
* Haiku (``jax_params/params.joblib``, a pickle, read only with ``allow_pickle=True``) with
  ``jax_params/config.json``;
* our own (``model.safetensors`` with NNX paths, ``bulkrnabert_sv.json``, ``genes.txt``), written
  by :meth:`BulkRNABert.save`.

Every name table is a list of ``(regex, target template, transform)``. Mapping a checkpoint
collects *all* problems (unmapped or unexpected tensors, missing parameters, wrong shapes, NaN or
infinite weights, a gene list of the wrong length, with repeated or malformed ids) and reports them
together in one :class:`CheckpointError`, each under the file it comes from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import BulkRNABertConfig

if TYPE_CHECKING:  # pragma: no cover
    from .modeling import BulkRNABert

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


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message lists every problem and the fix."""


Transform = Callable[[np.ndarray], np.ndarray]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T) if a.ndim == 2 else a


_HK_PARAM = {"w": "kernel", "b": "bias", "scale": "scale", "offset": "bias"}
_HK_ATTENTION = {"query": "query", "key": "key", "value": "value", "mha_output": "output"}
_HK_BLOCK_PART = {
    "self_attention_layer_norm": "attention_norm",
    "final_layer_norm": "mlp_norm",
    "fc1": "fc1",
    "fc2": "fc2",
}
_PT_PARAM = {"weight": "kernel", "bias": "bias"}
_PT_NORM_PARAM = {"weight": "scale", "bias": "bias"}
_PT_ATTENTION = {"w_q": "query", "w_k": "key", "w_v": "value", "output": "output"}
_PT_NORM = {"layer_norm_self_attention": "attention_norm", "layer_norm_mlp": "mlp_norm"}

# (pattern, function(match) -> target NNX path, transform)
Rule = tuple[str, Callable[[re.Match], str], Transform]

HAIKU_RULES: list[Rule] = [
    (
        r"bulk_bert/~/expression_embedding/embeddings",
        lambda m: "expression_embedding.embedding",
        _identity,
    ),
    (r"bulk_bert/~/gene_embedding/embeddings", lambda m: "gene_embedding.embedding", _identity),
    (r"bulk_bert/~/linear/(w|b)", lambda m: f"gene_projection.{_HK_PARAM[m[1]]}", _identity),
    (
        r"bulk_bert/self_attention_block_(\d+)/~/self_attention/(query|key|value|mha_output)/(w|b)",
        lambda m: f"layers.{m[1]}.attention.{_HK_ATTENTION[m[2]]}.{_HK_PARAM[m[3]]}",
        _identity,
    ),
    (
        r"bulk_bert/self_attention_block_(\d+)/~/"
        r"(self_attention_layer_norm|final_layer_norm|fc1|fc2)/(w|b|scale|offset)",
        lambda m: f"layers.{m[1]}.{_HK_BLOCK_PART[m[2]]}.{_HK_PARAM[m[3]]}",
        _identity,
    ),
    (
        r"bulk_bert/~/simple_lm_head/~/lm_final_fc/(w|b)",
        lambda m: f"lm_head.{_HK_PARAM[m[1]]}",
        _identity,
    ),
]

TORCH_RULES: list[Rule] = [
    (r"expression_embedding_layer\.weight", lambda m: "expression_embedding.embedding", _identity),
    (r"gene_embedding_layer\.weight", lambda m: "gene_embedding.embedding", _identity),
    (
        r"fc_gene_embedding\.(weight|bias)",
        lambda m: f"gene_projection.{_PT_PARAM[m[1]]}",
        _transpose,
    ),
    (
        r"transformer_layers\.(\d+)\.mha\.(w_q|w_k|w_v|output)\.(weight|bias)",
        lambda m: f"layers.{m[1]}.attention.{_PT_ATTENTION[m[2]]}.{_PT_PARAM[m[3]]}",
        _transpose,
    ),
    (
        r"transformer_layers\.(\d+)\.(layer_norm_self_attention|layer_norm_mlp)\.(weight|bias)",
        lambda m: f"layers.{m[1]}.{_PT_NORM[m[2]]}.{_PT_NORM_PARAM[m[3]]}",
        _identity,
    ),
    (
        r"transformer_layers\.(\d+)\.(fc1|fc2)\.(weight|bias)",
        lambda m: f"layers.{m[1]}.{m[2]}.{_PT_PARAM[m[3]]}",
        _transpose,
    ),
    (r"lm_head\.(weight|bias)", lambda m: f"lm_head.{_PT_PARAM[m[1]]}", _transpose),
]

#: Our own format stores NNX paths as they are.
OWN_RULES: list[Rule] = [(r"(.+)", lambda m: m[1], _identity)]


#: An unversioned Ensembl gene id (``ENSG00000141510``; other species' prefixes too).
_UNVERSIONED_ENSEMBL = re.compile(r"ENS[A-Z]*G\d{11}")
#: Offending entries listed per kind of problem before "and N more".
_MAX_LISTED = 5


# ------------------------------------------------------------------------------------ mapping
def flat_state(module: nnx.Module, filter=nnx.Param) -> dict[str, nnx.Variable]:
    """The module's variables keyed by dotted NNX path (``layers.0.fc1.kernel``)."""
    return {
        ".".join(str(p) for p in path): variable
        for path, variable in nnx.to_flat_state(nnx.state(module, filter))
    }


def tensor_problems(
    tensors: Mapping[str, np.ndarray],
    rules: list[Rule],
    targets: Mapping[str, nnx.Variable],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Map checkpoint tensors to NNX paths and list what is wrong with them.

    Returns
    -------
    mapped
        ``{nnx_path: array}`` for every tensor that mapped to a target with the right shape.
    problems
        One line per unmapped, unexpected, duplicated, missing or misshapen tensor, and per
        tensor holding NaN or infinite values (a damaged file, or a training run that
        diverged: such weights make every output NaN).
    """
    problems: list[str] = []
    mapped: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        rule = next(
            (
                (re.fullmatch(pattern, name), target_of, transform)
                for pattern, target_of, transform in rules
                if re.fullmatch(pattern, name)
            ),
            None,
        )
        if rule is None:
            problems.append(f"unexpected tensor {name!r} {array.shape}: no parameter of this model")
            continue
        match, target_of, transform = rule
        target = target_of(match)
        if target not in targets:
            problems.append(
                f"unexpected tensor {name!r} {array.shape}: maps to {target!r}, "
                "which this model configuration does not have"
            )
            continue
        if target in origin:
            problems.append(f"tensors {origin[target]!r} and {name!r} both map to {target!r}")
            continue
        origin[target] = name
        non_finite = _non_finite(array)
        if non_finite:
            problems.append(f"tensor {name!r} {tuple(array.shape)} holds {non_finite}")
        value = transform(array)
        expected = tuple(targets[target].shape)
        if tuple(value.shape) != expected:
            problems.append(
                f"tensor {name!r} has shape {tuple(array.shape)}, but {target!r} needs "
                f"{expected}{' (after transposing)' if transform is _transpose else ''}"
            )
            continue
        mapped[target] = value
    for target in sorted(set(targets) - set(origin) - {t for t in targets if _is_hook(t)}):
        problems.append(f"missing tensor for {target!r} {tuple(targets[target].shape)}")
    return mapped, problems


def _non_finite(array: np.ndarray) -> str:
    """``"3 NaN and 1 infinite values (of 4096)"``, or ``""`` when every value is finite."""
    if array.dtype.kind in "biu" or array.size == 0:
        return ""
    values = array if array.dtype.kind in "fc" else array.astype(np.float32)  # e.g. bfloat16
    if np.isfinite(values).all():
        return ""
    n_nan = int(np.isnan(values).sum())
    n_inf = int(np.isinf(values).sum())
    return f"{n_nan} NaN and {n_inf} infinite values (of {array.size})"


def checkpoint_error(source: str, problems: list[str], fixes: list[str] | None = None):
    """One :class:`CheckpointError` listing ``problems`` in ``source``, then how to fix them."""
    if fixes is None:
        fixes = _fixes(problems)
    return CheckpointError(
        f"Cannot load {source}: {len(problems)} problem(s):\n  - "
        + "\n  - ".join(problems)
        + "\n"
        + " ".join(fixes)
    )


def _fixes(problems: list[str]) -> list[str]:
    fixes = []
    if any(" NaN and " in p for p in problems):
        fixes.append(
            "NaN or infinite weights make every output NaN: the file is damaged, or the "
            "training that wrote it diverged. Re-download it, or use an earlier checkpoint "
            "(for a diverged run: a lower learning rate, or max_grad_norm)."
        )
    fixes.append(
        "Check that the files belong together (same checkpoint and configuration) and "
        "were not modified; re-download them if in doubt."
    )
    return fixes


def map_tensors(
    tensors: Mapping[str, np.ndarray],
    rules: list[Rule],
    targets: Mapping[str, nnx.Variable],
    *,
    source: str,
    extra_problems: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Map checkpoint tensors to NNX paths, checking names, shapes and values.

    Returns ``{nnx_path: array}`` covering every target, or raises :class:`CheckpointError`
    listing every unmapped, unexpected, duplicated, missing, misshapen or non-finite tensor at
    once (and ``extra_problems``).
    """
    mapped, problems = tensor_problems(tensors, rules, targets)
    problems = list(extra_problems or ()) + problems
    if problems:
        raise checkpoint_error(source, problems)
    return mapped


def _is_hook(path: str) -> bool:
    return path.split(".")[-1] in ("ia3_key", "ia3_value", "ia3_ffn") or path == "mask_embedding"


def assign(module: nnx.Module, mapped: Mapping[str, np.ndarray]) -> None:
    """Write mapped arrays into the module's variables (dtype of each variable kept)."""
    targets = flat_state(module, nnx.Variable)
    for path, array in mapped.items():
        variable = targets[path]
        variable.set_value(jnp.asarray(array, dtype=variable.dtype))


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
            f"{where}: {len(repeated)} repeated gene id(s): {_listed(repeated)}; each gene must "
            "appear once"
        )
    if malformed:
        problems.append(
            f"{where}: {len(malformed)} entr{'y is' if len(malformed) == 1 else 'ies are'} not "
            f"an unversioned Ensembl gene id (like 'ENSG00000141510'): {_listed(malformed)}"
        )
    return problems


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown} and {len(items) - _MAX_LISTED} more"


# ------------------------------------------------------------------------------------ files
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
    problems = [f"{path.name}: blank line(s) between genes: {_listed(blank)}"] if blank else []
    genes = [line for line in lines if line]
    positions = [f"line {i + 1}" for i, line in enumerate(lines) if line]
    return genes, positions, problems


def flatten_haiku(params: Mapping) -> dict[str, np.ndarray]:
    """Haiku params as ``{"module/name": array}``, from nested ``{module: {name: array}}``
    (as ``hk.data_structures`` and the released joblib files hold them) or already flat."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}/{name}": np.asarray(leaf) for name, leaf in value.items()})
        else:
            flat[key] = np.asarray(value)
    return flat


# ------------------------------------------------------------------------------------ builders
def _build(
    config: BulkRNABertConfig,
    genes,
    tensors,
    rules,
    *,
    source: str,
    extra_problems=(),
    genes_source: str | None = None,
    gene_positions: list[str] | None = None,
    n_genes_from: str | None = None,
    folder: Path | None = None,
) -> BulkRNABert:
    """A model of ``config`` with ``tensors`` (the weights file ``source``) and gene list ``genes``.

    Every problem is reported at once: ``extra_problems`` (configuration files), the gene list's
    (under ``genes_source``, its entries named by ``gene_positions``) and the tensors' (under
    the name of ``source`` relative to ``folder``, by default its parent); the message is headed
    by the checkpoint folder.
    """
    from .modeling import BulkRNABert

    weights = Path(source)
    folder = weights.parent if folder is None else Path(folder)
    weights_name = (
        weights.relative_to(folder).as_posix() if weights.is_relative_to(folder) else str(weights)
    )
    problems = list(extra_problems)
    fixes = []
    if genes is not None:
        gene_problems = gene_list_problems(
            list(genes),
            config.n_genes,
            where=genes_source or "the gene list",
            positions=gene_positions,
            n_genes_from=n_genes_from,
        )
        problems += gene_problems
        if gene_problems:
            fixes.append(
                f"The gene list must hold the model's {config.n_genes} unversioned Ensembl ids "
                "in model order, each once (data are aligned to the model by them): restore "
                "the original file, or pass the right list with load_model(..., genes=[...])."
            )
    # Abstract init: shapes only, no random numbers drawn for weights about to be overwritten.
    model = nnx.eval_shape(lambda: BulkRNABert(config, rngs=nnx.Rngs(0)))
    if any(_is_hook(name) and name != "mask_embedding" for name in tensors):
        model.enable_ia3()
    if "mask_embedding" in tensors:
        model.enable_mask_embedding()
    targets = flat_state(model, nnx.Param)
    mapped, found = tensor_problems(tensors, rules, targets)
    problems += [f"{weights_name}: {p}" for p in found]
    if problems:
        raise checkpoint_error(str(folder), problems, fixes + _fixes(problems))
    assign(model, mapped)
    model.genes = None if genes is None else tuple(genes)
    return model


def load_hf_folder(folder: Path, *, genes=None, **overrides) -> BulkRNABert:
    """Load a folder in the Hugging Face repo's layout (PyTorch names)."""
    hf_config = read_json(folder / HF_CONFIG_FILE)
    tokenizer = read_json(folder / HF_TOKENIZER_FILE)
    problems = []
    if "normalization_factor" not in tokenizer:
        problems.append(f"{folder / HF_TOKENIZER_FILE} has no normalization_factor")
    elif tokenizer.get("n_expressions_bins", hf_config.get("n_expressions_bins")) != hf_config.get(
        "n_expressions_bins"
    ):
        problems.append(
            f"{HF_TOKENIZER_FILE} says n_expressions_bins={tokenizer.get('n_expressions_bins')} "
            f"but {HF_CONFIG_FILE} says {hf_config.get('n_expressions_bins')}"
        )
    if tokenizer.get("prepend_cls_token"):
        problems.append(f"{HF_TOKENIZER_FILE} asks for a CLS token, which BulkRNABert never uses")
    if (tokenizer.get("min_omic_value", 0.0), tokenizer.get("max_omic_value", 1.0)) != (0.0, 1.0):
        problems.append(f"{HF_TOKENIZER_FILE} has bins other than linspace(0, 1): unsupported")
    config = _config_from(
        hf_config,
        folder / HF_CONFIG_FILE,
        normalization_factor=tokenizer.get("normalization_factor", 1.0),
        **overrides,
    )
    genes_source, positions = _gene_origin(genes)
    if genes is None:
        genes = read_csv_genes(folder / HF_GENES_FILE)
        positions = [f"column {i + 1}" for i in range(len(genes))]
    tensors = read_safetensors(folder / WEIGHTS_FILE)
    return _build(
        config,
        genes,
        tensors,
        TORCH_RULES,
        source=str(folder / WEIGHTS_FILE),
        extra_problems=problems,
        genes_source=genes_source,
        gene_positions=positions,
        n_genes_from=HF_CONFIG_FILE,
        folder=folder,
    )


def _gene_origin(genes) -> tuple[str, list[str] | None]:
    """How messages name the gene list: the ``genes=`` argument, or the checkpoint's CSV."""
    if genes is None:
        return HF_GENES_FILE, None
    return "genes= (the gene order passed in)", [f"genes[{i}]" for i in range(len(genes))]


def load_haiku_folder(
    folder: Path, *, allow_pickle: bool = False, genes=None, **overrides
) -> BulkRNABert:
    """Load the Haiku params (``jax_params/params.joblib``, a pickle) of a checkpoint folder."""
    params_path = folder / HAIKU_PARAMS_FILE
    if not allow_pickle:
        raise CheckpointError(
            f"{params_path} is a joblib pickle, and unpickling can run arbitrary code. "
            "Load it only if you trust its origin, with load_model(..., allow_pickle=True); "
            "or use the folder's model.safetensors, which is safe to read."
        )
    if not params_path.is_file():
        raise CheckpointError(f"{params_path} is missing.")
    import joblib

    hk_config = read_json(folder / HAIKU_CONFIG_FILE)
    config = _config_from(hk_config, folder / HAIKU_CONFIG_FILE, **overrides)
    genes_source, positions = _gene_origin(genes)
    if genes is None:
        genes = read_csv_genes(folder / HF_GENES_FILE)
        positions = [f"column {i + 1}" for i in range(len(genes))]
    try:
        params = joblib.load(params_path)
    except Exception as error:
        raise CheckpointError(
            f"{params_path} could not be read ({error}); re-download it."
        ) from None
    return _build(
        config,
        genes,
        flatten_haiku(params),
        HAIKU_RULES,
        source=str(params_path),
        genes_source=genes_source,
        gene_positions=positions,
        n_genes_from=HAIKU_CONFIG_FILE,
        folder=folder,
    )


def load_own_folder(folder: Path, *, genes=None, **overrides) -> BulkRNABert:
    """Load a folder written by :meth:`BulkRNABert.save` (``genes`` replaces its gene list)."""
    meta = read_json(folder / OWN_CONFIG_FILE)
    meta_path = folder / OWN_CONFIG_FILE
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path} is not a {FORMAT_NAME} model file.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} was written by a newer bulkrnabert-sv (format {meta['format_version']}); "
            "upgrade the package to read it."
        )
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(
            f"{meta_path} has no 'config' entry (the model's architecture and settings, written "
            "by model.save), so the weights cannot be read. The file was edited or damaged: "
            "restore it from the original save, or save the model again."
        )
    config = _config_from(meta["config"], meta_path, **overrides)
    problems = []
    if genes is not None:
        genes_source, positions = _gene_origin(genes)
        genes = [str(g) for g in genes]
    elif (folder / GENES_FILE).exists():
        genes_source = GENES_FILE
        genes, positions, problems = read_genes_file(folder / GENES_FILE)
    else:
        genes_source, positions = GENES_FILE, None
        # model.save writes genes.txt whenever the model has a gene list, and says so here.
        if meta.get("n_genes_file"):
            problems.append(
                f"{GENES_FILE}: missing, although {OWN_CONFIG_FILE} says the model was saved with "
                f"its gene list ({config.n_genes} genes); restore it from the original save "
                "(or pass genes=[...] to load_model)"
            )
    tensors = read_safetensors(folder / WEIGHTS_FILE)
    return _build(
        config,
        genes,
        tensors,
        OWN_RULES,
        source=str(folder / WEIGHTS_FILE),
        extra_problems=problems,
        genes_source=genes_source,
        gene_positions=positions,
        n_genes_from=OWN_CONFIG_FILE,
        folder=folder,
    )


def _config_from(values: Mapping, where: Path, **overrides) -> BulkRNABertConfig:
    try:
        return BulkRNABertConfig.from_dict(values, **overrides)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where} does not describe a valid model: {error}") from None


def save_model(model, path) -> Path:
    """Write ``model`` to a folder in our own format (see :func:`load_own_folder`)."""
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


# ------------------------------------------------------------------------------------ export
_TORCH_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}
_NNX_TO_TORCH_MODULE = {
    "expression_embedding": "expression_embedding_layer",
    "gene_embedding": "gene_embedding_layer",
    "gene_projection": "fc_gene_embedding",
    "lm_head": "lm_head",
    "attention.query": "mha.w_q",
    "attention.key": "mha.w_k",
    "attention.value": "mha.w_v",
    "attention.output": "mha.output",
    "attention_norm": "layer_norm_self_attention",
    "mlp_norm": "layer_norm_mlp",
    "fc1": "fc1",
    "fc2": "fc2",
}


def torch_state_dict(model) -> dict[str, np.ndarray]:
    """The model's weights under the Hugging Face repo's PyTorch names (Linear weights (out, in))."""
    tensors = {}
    for path, variable in flat_state(model, nnx.Param).items():
        if _is_hook(path):
            raise CheckpointError(
                "IA3 vectors and the mask embedding have no place in the Hugging Face layout; "
                "use model.save() for fine-tuned or pretrained models."
            )
        *module, leaf = path.split(".")
        prefix = ""
        if module[0] == "layers":
            prefix, module = f"transformer_layers.{module[1]}.", module[2:]
        name = f"{prefix}{_NNX_TO_TORCH_MODULE['.'.join(module)]}.{_TORCH_NAMES[leaf]}"
        array = np.asarray(jax.device_get(variable[...]))
        tensors[name] = np.ascontiguousarray(array.T) if leaf == "kernel" else array
    return tensors


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
