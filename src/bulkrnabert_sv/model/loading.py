"""``load_model``: one entry point for every place a BulkRNABert checkpoint can come from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import (
    FINETUNED_BACKBONE_DIR,
    FINETUNED_META_FILE,
    PRETRAIN_CONFIG_FILE,
    PRETRAIN_FINAL_MODEL_DIR,
)
from .._settings import DEFAULT_REPO, MODEL_ENV, default_model_source
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

#: The only files fetched from the hub: weights, configs and the gene order.
HUB_FILES = (WEIGHTS_FILE, HF_CONFIG_FILE, HF_TOKENIZER_FILE, HF_GENES_FILE)


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
        ``$BULKRNABERT_SV_MODEL`` or ``"InstaDeepAI/BulkRNABert"``);
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
    resolved = resolve_source(source, revision=revision, cache_dir=cache_dir)
    return load_resolved(resolved, allow_pickle=allow_pickle, genes=genes, **config_overrides)


@dataclass(frozen=True)
class ResolvedSource:
    """Where a model source's files are, and in which format (see :func:`resolve_source`)."""

    #: The source as named (the default source when none was).
    name: str
    #: The checkpoint folder (the hub cache's snapshot for a repo id).
    folder: Path
    #: ``"own"``, ``"huggingface"`` or ``"haiku"`` (see :func:`detect_format`).
    kind: str
    #: The hub revision asked for, or the snapshot's commit; None for a local folder.
    revision: str | None


def resolve_source(
    source: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    etag_timeout: float | None = None,
) -> ResolvedSource:
    """The folder and format of a model source, downloading a hub repo id (or using its cache).

    The one resolution of model sources, for :func:`load_model`, the CLI and the demo:
    ``None`` is ``$BULKRNABERT_SV_MODEL``, else :data:`DEFAULT_REPO`; ``"compact"`` the bundled
    model (a local folder of that name is reached as ``"./compact"``); an existing folder is
    read in the format :func:`detect_format` finds; ``"owner/name"`` is a Hugging Face repo id.

    Raises
    ------
    CheckpointError
        A file instead of a folder, a name that is neither a folder nor a repo id, a repo that
        cannot be downloaded, or a folder holding no model (the message says what it holds).
    """
    source = default_model_source() if source is None else source
    name = str(source)
    path = Path(os.path.expanduser(name))
    if name == COMPACT_SOURCE:
        return ResolvedSource(name, compact_model_folder(), "own", revision)
    if path.is_dir():
        return ResolvedSource(name, path, detect_format(path), revision)
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that contains it.")
    if looks_like_repo_id(name):
        folder = download(name, revision=revision, cache_dir=cache_dir, etag_timeout=etag_timeout)
        return ResolvedSource(name, folder, "huggingface", revision or snapshot_revision(folder))
    raise CheckpointError(
        f"{source!r} is neither an existing folder nor a Hugging Face repo id "
        f"(like {DEFAULT_REPO!r})."
    )


def load_resolved(
    resolved: ResolvedSource,
    *,
    allow_pickle: bool = False,
    genes: list[str] | None = None,
    **config_overrides: Any,
) -> BulkRNABert:
    """The model in ``resolved.folder``, read in its format, with its ``source`` and
    ``revision`` set from ``resolved`` (arguments as :func:`load_model`'s)."""
    if resolved.kind == "own":
        model = load_own_folder(resolved.folder, genes=genes, **config_overrides)
    elif resolved.kind == "huggingface":
        model = load_hf_folder(resolved.folder, genes=genes, **config_overrides)
    else:
        model = load_haiku_folder(
            resolved.folder, allow_pickle=allow_pickle, genes=genes, **config_overrides
        )
    model.source = resolved.name
    model.revision = resolved.revision
    return model


def looks_like_repo_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face repo id (``"owner/name"``)."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def snapshot_revision(folder: Path) -> str | None:
    """The commit of a hub cache snapshot folder (``.../snapshots/<commit hash>/``), else None."""
    return folder.name if folder.parent.name == "snapshots" else None
