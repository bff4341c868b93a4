"""``load_model``: one entry point for every place a BulkRNABert checkpoint can come from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._files import (
    FINETUNED_BACKBONE_DIR,
    FINETUNED_META_FILE,
    PRETRAIN_CONFIG_FILE,
    PRETRAIN_FINAL_MODEL_DIR,
)
from .checkpoints import load_haiku_folder, load_hf_folder, load_own_folder
from .errors import CheckpointError
from .files import (
    FORMAT_NAME,
    HAIKU_PARAMS_FILE,
    HF_CONFIG_FILE,
    HF_GENES_FILE,
    HF_TOKENIZER_FILE,
    OWN_CONFIG_FILE,
    WEIGHTS_FILE,
)
from .modeling import BulkRNABert
from .vocabulary import COMPACT_SOURCE, compact_model_folder

DEFAULT_REPO = "InstaDeepAI/BulkRNABert"
#: Environment variable naming a default model source (a folder or a hub repo id).
MODEL_ENV = "BULKRNABERT_MODEL"
#: The only files fetched from the hub: weights, configs and the gene order.
HUB_FILES = (WEIGHTS_FILE, HF_CONFIG_FILE, HF_TOKENIZER_FILE, HF_GENES_FILE)


def default_source() -> str:
    """``$BULKRNABERT_MODEL`` if set, else the published repo id."""
    return os.environ.get(MODEL_ENV) or DEFAULT_REPO


def detect_format(folder: Path) -> str:
    """``"own"``, ``"huggingface"`` or ``"haiku"`` for a checkpoint folder.

    Raises
    ------
    CheckpointError
        The folder holds no model: the message says what it holds instead when it is a
        fine-tuned model (``load_finetuned``), a ``tl.pretrain`` checkpoint folder (its ``model/``
        subfolder) or a model saved by ``model.save`` that lost its ``bulkrnabert_sv.json``.
    """
    if (folder / OWN_CONFIG_FILE).is_file():
        return "own"
    if _own_weights(folder / WEIGHTS_FILE):
        # Without this, the folder would be read as the Hugging Face layout and the error would
        # name a config.json that this format never had.
        raise CheckpointError(
            f"{folder / OWN_CONFIG_FILE} is missing: {folder} holds a model saved by model.save "
            f"({WEIGHTS_FILE} is in the {FORMAT_NAME} format), whose configuration is that "
            "file. Restore it from the original save, or save the model again."
        )
    if (folder / WEIGHTS_FILE).is_file() or (folder / HF_CONFIG_FILE).is_file():
        return "huggingface"
    if (folder / HAIKU_PARAMS_FILE).is_file():
        return "haiku"
    # Not a model: say what the folder is when another saver of this package wrote it.
    if (folder / FINETUNED_META_FILE).is_file():
        raise CheckpointError(
            f"{folder} holds a fine-tuned model (written by FinetunedModel.save), not an encoder: "
            f"load it with bulkrnabert_sv.load_finetuned({str(folder)!r}); its encoder alone is "
            f"in {folder / FINETUNED_BACKBONE_DIR} (load_model or --model accept that folder)."
        )
    if (folder / PRETRAIN_CONFIG_FILE).is_file():
        final = folder / PRETRAIN_FINAL_MODEL_DIR
        where = (
            f"the finished model is in {final}: pass that folder (load_model or --model)."
            if final.is_dir()
            else f"the run has not finished, so there is no {final} yet: call tl.pretrain again "
            "with the same arguments to finish it (it resumes from the latest checkpoint); the "
            f"model is then saved in {final}."
        )
        raise CheckpointError(
            f"{folder} is a tl.pretrain checkpoint folder (training states, not a model): {where}"
        )
    raise CheckpointError(
        f"{folder} holds no BulkRNABert checkpoint: expected {OWN_CONFIG_FILE} (a model saved "
        f"with model.save), {WEIGHTS_FILE} + {HF_CONFIG_FILE} (the Hugging Face layout) or "
        f"{HAIKU_PARAMS_FILE} (the Haiku params)."
    )


def _own_weights(path: Path) -> bool:
    """Whether ``path`` is a safetensors file written by model.save (its metadata says so)."""
    if not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # unreadable: the loader reports it with the fix
        return False
    return metadata.get("format") == FORMAT_NAME and not (path.parent / HF_CONFIG_FILE).exists()


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir=None,
    etag_timeout: float | None = None,
) -> Path:
    """Fetch the files a model needs from the Hugging Face Hub (or its cache) and return the folder.

    Honours ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE`` and ``cache_dir``. ``etag_timeout``
    bounds the wait (seconds) for the hub's answer about each file (the hub client's default:
    10 s); without network, the cache is used.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    timeout = {} if etag_timeout is None else {"etag_timeout": etag_timeout}
    try:
        folder = snapshot_download(
            repo_id=repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=list(HUB_FILES),
            **timeout,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        raise CheckpointError(
            f"Could not get {repo_id!r} from the Hugging Face Hub"
            f"{' (HF_HUB_OFFLINE is set and it is not in the cache)' if offline else ''}: "
            f"{type(error).__name__}: {error}\nDownload it once with network access "
            f"(`hf download {repo_id}`), or pass a local folder in the hub's layout "
            f"(load_model('/path/to/folder'), --model, or ${MODEL_ENV})."
        ) from None
    return Path(folder)


def load_model(
    source: str | os.PathLike | BulkRNABert | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    genes: list[str] | None = None,
    **config_overrides: Any,
) -> BulkRNABert:
    """Load a BulkRNABert model.

    Parameters
    ----------
    source
        ``"compact"``: the compact model bundled with the package (our own weights, 2,048
        genes, works offline; see its model card); a Hugging Face repo id (default
        ``$BULKRNABERT_MODEL`` or ``"InstaDeepAI/BulkRNABert"``);
        a local folder in the hub's layout (``model.safetensors`` + ``config.json`` +
        ``tokenizer_config.json`` + ``data/tcga_sample.csv``); a folder with the Haiku params
        ``jax_params/params.joblib`` + ``jax_params/config.json``; a folder written by
        :meth:`BulkRNABert.save`; or an already loaded model (returned as is).
    revision
        Hub revision (branch, tag or commit).
    cache_dir
        Hugging Face cache folder (default: the usual ``HF_HUB_CACHE``).
    allow_pickle
        Allow reading the Haiku ``params.joblib`` pickle. Unpickling can run arbitrary code:
        only for files you trust.
    genes
        Override the gene order (otherwise read from the checkpoint).
    **config_overrides
        Execution settings to change, e.g. ``attention_implementation="blockwise"``,
        ``compute_dtype="bfloat16"``, ``remat=True``.

    Returns
    -------
    The model, with ``model.config`` and ``model.genes`` set and ``model.source`` recording where it
    came from.

    Raises
    ------
    CheckpointError
        A missing, corrupt or mismatched checkpoint; the message lists every problem.
    """
    if isinstance(source, BulkRNABert):
        return source
    source = default_source() if source is None else source
    path = Path(os.path.expanduser(str(source)))
    revision_used = revision
    if str(source) == COMPACT_SOURCE:
        # The bundled model; a local folder of that name is reached as "./compact".
        folder = compact_model_folder()
        kind = "own"
    elif path.is_dir():
        folder = path
        kind = detect_format(folder)
    elif path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that contains it.")
    elif _looks_like_repo_id(str(source)):
        folder = download(str(source), revision=revision, cache_dir=cache_dir)
        kind = "huggingface"
        revision_used = revision or _snapshot_revision(folder)
    else:
        raise CheckpointError(
            f"{source!r} is neither an existing folder nor a Hugging Face repo id "
            f"(like {DEFAULT_REPO!r})."
        )
    if kind == "own":
        model = load_own_folder(folder, genes=genes, **config_overrides)
    elif kind == "huggingface":
        model = load_hf_folder(folder, genes=genes, **config_overrides)
    else:
        model = load_haiku_folder(
            folder, allow_pickle=allow_pickle, genes=genes, **config_overrides
        )
    model.source = str(source)
    model.revision = revision_used
    return model


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _snapshot_revision(folder: Path) -> str | None:
    # Hub cache layout: .../snapshots/<commit hash>/
    return folder.name if folder.parent.name == "snapshots" else None
