"""Checkpoint loaders: a :class:`BulkRNABert` built from each format's files.

The files are read by :mod:`.files`, their tensors mapped to NNX paths by the name tables of
:mod:`.params`; every problem (configuration, gene list, tensors) is reported at once, in one
:class:`CheckpointError` headed by the checkpoint folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from flax import nnx

from .config import BulkRNABertConfig
from .errors import CheckpointError, checkpoint_error, general_fixes
from .files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GENES_FILE,
    HAIKU_CONFIG_FILE,
    HAIKU_PARAMS_FILE,
    HF_CONFIG_FILE,
    HF_GENES_FILE,
    HF_TOKENIZER_FILE,
    OWN_CONFIG_FILE,
    WEIGHTS_FILE,
    gene_list_problems,
    read_csv_genes,
    read_genes_file,
    read_json,
    read_safetensors,
)
from .modeling import BulkRNABert
from .params import (
    HAIKU_RULES,
    OWN_RULES,
    TORCH_RULES,
    assign,
    flat_state,
    flatten_haiku,
    is_hook,
    tensor_problems,
)


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
    if any(is_hook(name) and name != "mask_embedding" for name in tensors):
        model.enable_ia3()
    if "mask_embedding" in tensors:
        model.enable_mask_embedding()
    targets = flat_state(model, nnx.Param)
    mapped, found = tensor_problems(tensors, rules, targets)
    problems += [f"{weights_name}: {p}" for p in found]
    if problems:
        raise checkpoint_error(str(folder), problems, fixes + general_fixes(problems))
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
