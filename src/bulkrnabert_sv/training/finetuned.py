"""The fine-tuned model: encoder (possibly with IA3 vectors) + head, its losses and its files.

The head is an :class:`~bulkrnabert_sv.model.MLPHead` (a linear head is one without hidden
layers) or a :class:`HeadEnsemble` of several, averaged. Survival models also keep Breslow's
baseline cumulative hazard, from which survival curves follow.

Layout of a saved fine-tuned model (no pickle anywhere)::

    path/
      backbone/            the encoder, written by BulkRNABert.save (IA3 vectors included)
      head.safetensors     the head's weights (NNX paths)
      finetuned.json       task, method, classes, head settings, obs keys, training parameters,
                           metrics and history, baseline hazard (survival), package version

Format versions: 1, a single head; 2, an ensemble head; 3 (written now, for every model), the
block recorded as ``embedding_block`` (``embedding_layer`` before: files of versions 1 and 2 are
still read).
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx

from .._files import FINETUNED_BACKBONE_DIR as BACKBONE_DIR
from .._files import FINETUNED_META_FILE as META_FILE
from .._keys import (
    BLOCK_KEY,
    EMBEDDING_KEY,
    EMBEDDING_UNS_KEY,
    OLD_BLOCK_KEY,
    RISK_COLUMN,
    recorded_block,
)
from .._settings import COMPILE_CACHE_SIZE
from .._validation import renamed_keywords
from ..model.heads import HeadSettings
from .inference import embed_tokens
from .survival import cox_negative_log_likelihood
from .targets import TASKS

FORMAT_NAME = "bulkrnabert-sv-finetuned"
FORMAT_VERSION = 3
#: How an ensemble head combines its members (see HeadEnsemble).
COMBINE = ("probabilities", "mean")
HEAD_FILE = "head.safetensors"
#: How the encoder was fine-tuned (see tl.finetune).
METHODS = ("probe", "ia3", "full")


# ------------------------------------------------------------------------------------ losses
def classification_loss(outputs, targets, mask):
    """Class-weighted cross-entropy, averaged over the real samples of the batch."""
    log_p = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, targets["label"][:, None].astype(jnp.int32), axis=1)[:, 0]
    weight = targets["weight"] * mask
    return jnp.sum(weight * nll) / jnp.maximum(jnp.sum(mask), 1)


def survival_loss(outputs, targets, mask):
    """Negative Cox partial log-likelihood (Breslow ties) of the risk scores, per event."""
    return cox_negative_log_likelihood(
        outputs[:, 0].astype(jnp.float32), targets["time"], targets["event"], mask
    )


LOSSES = {"classification": classification_loss, "survival": survival_loss}


# ------------------------------------------------------------------------------------ modules
class EncoderWithHead(nnx.Module):
    """The encoder's mean embedding of one block, then the head."""

    def __init__(self, encoder, head, block: int):
        self.encoder = encoder
        self.head = head
        self.block = block

    def __call__(self, tokens):
        return self.head(self.encoder.mean_embedding(tokens, block=self.block))


class HeadEnsemble(nnx.Module):
    """Several heads of the same shape, trained with different seeds, averaged.

    Parameters
    ----------
    members
        The heads (:class:`~bulkrnabert_sv.model.MLPHead`, same settings).
    combine
        ``"probabilities"`` (classification): the output is the log of the members' mean
        class probabilities, so its softmax is that mean; ``"mean"`` (survival): the mean of
        the members' risk scores.
    """

    def __init__(self, members, combine: str):
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}.")
        members = list(members)
        if len(members) < 2:
            raise ValueError("An ensemble needs at least two heads.")
        self.members = nnx.List(members)
        self.settings = HeadSettings(
            {**members[0].settings, "members": len(members), "combine": combine}
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        outputs = jnp.stack([member(x) for member in self.members])
        if self.settings["combine"] == "probabilities":
            return jnp.log(jnp.mean(jax.nn.softmax(outputs, axis=-1), axis=0))
        return jnp.mean(outputs, axis=0)


def build_head(settings: Mapping, rngs: nnx.Rngs):
    """A head (or an ensemble of heads) from its ``settings`` dict."""
    from ..model import MLPHead

    settings = dict(settings)
    members = settings.pop("members", None)
    combine = settings.pop("combine", None)
    shape = (settings.pop("in_features"), settings.pop("hidden_sizes"), settings.pop("n_outputs"))
    if members is None:
        return MLPHead(*shape, **settings, rngs=rngs)
    return HeadEnsemble([MLPHead(*shape, **settings, rngs=rngs) for _ in range(members)], combine)


@functools.lru_cache(maxsize=COMPILE_CACHE_SIZE)
def head_function(graphdef):
    """The jitted ``(state, embeddings) -> outputs`` of heads of this structure.

    Cached by ``graphdef`` (hashable: heads hold their settings as a ``HeadSettings``), so
    heads of equal structure share one compilation.
    """
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))


def head_outputs(head, embeddings: np.ndarray) -> np.ndarray:
    """The head's raw outputs for mean embeddings (n, embed_dim), as a numpy array."""
    graphdef, state = nnx.split(head)
    apply = head_function(graphdef)
    return np.asarray(apply(state, jnp.asarray(embeddings, dtype=jnp.float32)))


def stored_embeddings(
    adata, encoder, block: int, layer: str | None, gene_key: str | None = None
) -> np.ndarray | None:
    """``obsm["X_bulkrnabert"]`` when ``tl.embed`` computed it with this model and block.

    The check reads ``uns["bulkrnabert"]["params"]``: same ``model`` source and ``revision``,
    same ``embedding_block`` (``embedding_layer`` in older records) and, when recorded, the
    same expression ``layer`` and ``gene_key``. Anything else (or a model of unknown origin)
    returns None: the embeddings are then recomputed.
    """
    stored = adata.obsm[EMBEDDING_KEY] if EMBEDDING_KEY in adata.obsm else None
    info = adata.uns.get(EMBEDDING_UNS_KEY, {})
    params = info.get("params") if isinstance(info, Mapping) else None
    if stored is None or not isinstance(params, Mapping) or encoder.source is None:
        return None
    if str(params.get("model")) != str(encoder.source):
        return None
    if (params.get("revision") or None) != (encoder.revision or None):
        return None
    try:
        same_block = encoder.resolve_block(int(recorded_block(params, -1))) == (
            encoder.resolve_block(block)
        )
    except (TypeError, ValueError):
        return None
    if not same_block:
        return None
    # tl.embed records the defaults as "X" and "var_names".
    if "layer" in params and _default(params["layer"], "X") != layer:
        return None
    if "gene_key" in params and _default(params["gene_key"], "var_names") != gene_key:
        return None
    stored = np.asarray(stored, dtype=np.float32)
    if stored.shape != (adata.n_obs, encoder.config.embed_dim) or not np.isfinite(stored).all():
        return None
    return stored


def _default(value, default_name: str):
    return None if value in (None, "", default_name) else value


# ------------------------------------------------------------------------------------ the model
class FinetunedModel:
    """A BulkRNABert encoder and a trained head, for classification or Cox survival.

    Made by :func:`bulkrnabert_sv.tl.finetune`, restored by :func:`bulkrnabert_sv.load_finetuned`.

    Attributes
    ----------
    encoder
        The :class:`~bulkrnabert_sv.model.BulkRNABert` encoder (with IA3 vectors for
        ``method="ia3"``, all weights fine-tuned for ``"full"``, unchanged for ``"probe"``).
    head
        The :class:`~bulkrnabert_sv.model.MLPHead` on the mean embedding (no hidden layers for
        the linear head), or a :class:`HeadEnsemble` of them.
    task
        ``"classification"`` or ``"survival"``.
    method
        ``"probe"``, ``"ia3"`` or ``"full"``.
    classes
        Class names in output order (classification), else None.
    obs_key, event_key
        The ``obs`` columns trained on.
    embedding_block
        The encoder block (1-indexed) whose mean embedding feeds the head (``embedding_layer``
        is its deprecated name).
    params, metrics, history
        Training parameters, final train/validation metrics and per-epoch history.
    selection
        How the head's settings were chosen by inner cross-validation (the L2 grid and its
        scores, or the epoch curves), empty when they were not.
    baseline_hazard
        Survival: ``{"time": [...], "cumulative_hazard": [...]}``, Breslow's estimate on the
        training samples' risk scores (see :meth:`survival_function`); else None.
    """

    @renamed_keywords("FinetunedModel", embedding_layer="embedding_block")
    def __init__(
        self,
        encoder,
        head,
        *,
        task: str,
        method: str,
        classes: list | None,
        obs_key: str,
        event_key: str | None,
        embedding_block: int,
        params: dict | None = None,
        metrics: dict | None = None,
        history: dict | None = None,
        selection: dict | None = None,
        baseline_hazard: Mapping | None = None,
    ):
        self.encoder = encoder
        self.head = head
        self.task = task
        self.method = method
        self.classes = None if classes is None else list(classes)
        self.obs_key = obs_key
        self.event_key = event_key
        self.embedding_block = int(embedding_block)
        self.params = dict(params or {})
        self.metrics = dict(metrics or {})
        self.history = dict(history or {})
        self.selection = dict(selection or {})
        self.baseline_hazard = None
        if baseline_hazard is not None:
            self.baseline_hazard = {
                "time": [float(v) for v in baseline_hazard["time"]],
                "cumulative_hazard": [float(v) for v in baseline_hazard["cumulative_hazard"]],
            }

    def __repr__(self) -> str:
        what = f"{len(self.classes)} classes" if self.classes is not None else "Cox risk"
        return (
            f"FinetunedModel(task={self.task!r}, method={self.method!r}, "
            f"head={self.head_kind!r}, {what}, "
            f"obs_key={self.obs_key!r}, embedding_block={self.embedding_block}, "
            f"encoder={self.encoder.config.num_layers} layers × {self.encoder.config.embed_dim})"
        )

    @property
    def embedding_layer(self) -> int:
        """Deprecated name of :attr:`embedding_block`."""
        from .._logging import user_stacklevel

        warnings.warn(
            "FinetunedModel.embedding_layer is deprecated; use embedding_block (the transformer "
            "block; layer means an AnnData layer in bulkrnabert-sv).",
            DeprecationWarning,
            stacklevel=user_stacklevel(),
        )
        return self.embedding_block

    @property
    def head_kind(self) -> str:
        """``"linear"`` (no hidden layer) or ``"mlp"``; ``" x n"`` appended for an ensemble."""
        settings = self.head.settings
        kind = "mlp" if settings["hidden_sizes"] else "linear"
        return f"{kind} x {settings['members']}" if "members" in settings else kind

    @property
    def genes(self) -> tuple[str, ...] | None:
        """The encoder's vocabulary (model order)."""
        return self.encoder.genes

    # -------------------------------------------------------------------------------- inference
    def embed(
        self,
        data,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        mod: str = "rna",
        batch_size: int = 8,
        progress: bool = False,
    ) -> np.ndarray:
        """Mean embeddings (n_obs, embed_dim) of ``data`` by the (fine-tuned) encoder."""
        from ..pp._tokens import token_batches

        batches = token_batches(
            data, self.encoder, layer=layer, gene_key=gene_key, mod=mod, batch_size=batch_size
        )
        return embed_tokens(
            self.encoder,
            batches,
            block=self.embedding_block,
            batch_size=batch_size,
            progress=progress,
        )

    def outputs(self, embeddings: np.ndarray) -> np.ndarray:
        """The head's raw outputs (logits, or the risk score in column 0) for mean embeddings."""
        return head_outputs(self.head, embeddings)

    def frame(self, outputs: np.ndarray, index) -> pd.DataFrame:
        """Predictions from raw outputs: class probabilities, or a ``risk`` column."""
        if self.task == "classification":
            proba = np.asarray(jax.nn.softmax(jnp.asarray(outputs, jnp.float32), axis=-1))
            return pd.DataFrame(proba, index=index, columns=pd.Index(self.classes))
        return pd.DataFrame({RISK_COLUMN: np.asarray(outputs[:, 0], dtype=np.float32)}, index=index)

    def survival_function(self, risk, times) -> np.ndarray:
        """Survival probabilities ``S(t | x) = exp(-H0(t) exp(risk))`` at ``times``.

        Parameters
        ----------
        risk
            Risk scores (n,), as :meth:`predict` returns them (column ``risk``).
        times
            Times (same unit as the training durations).

        Returns
        -------
        Array (n, n_times), float64: Breslow's baseline cumulative hazard ``H0`` of the training
        samples (0 before the first observed time); NaN after the last observed training time.

        Raises
        ------
        ValueError
            The model is a classifier, or has no baseline hazard (saved by an older version).
        """
        from .survival import survival_curves

        if self.task != "survival":
            raise ValueError("survival_function is for survival models; this is a classifier.")
        if self.baseline_hazard is None:
            raise ValueError(
                "This model has no baseline hazard (saved by an older version of bulkrnabert-sv):"
                " fine-tune it again to get survival curves."
            )
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if times.size == 0 or not np.isfinite(times).all() or (times < 0).any():
            raise ValueError(f"times must be finite and >= 0, got {times!r}.")
        return survival_curves(
            risk,
            self.baseline_hazard["time"],
            self.baseline_hazard["cumulative_hazard"],
            times,
        )

    def predict_survival(self, data, times, **kwargs) -> pd.DataFrame:
        """Survival probabilities of every sample of ``data`` at ``times`` (nothing is written).

        ``kwargs`` as for :meth:`predict`. Returns a DataFrame indexed by ``obs_names`` with one
        column per time (see :meth:`survival_function`).
        """
        risk = self.predict(data, **kwargs)[RISK_COLUMN].to_numpy()
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        curves = self.survival_function(risk, times)
        from .._anndata import get_modality

        index = get_modality(data, kwargs.get("mod", "rna")).obs_names.copy()
        return pd.DataFrame(curves, index=index, columns=pd.Index(times, name="time"))

    def predict(
        self,
        data,
        *,
        layer: str | None = None,
        gene_key: str | None = None,
        mod: str = "rna",
        batch_size: int = 8,
        progress: bool = False,
    ) -> pd.DataFrame:
        """Predict for every sample of ``data`` (nothing is written into it).

        Parameters
        ----------
        data
            AnnData or MuData with TPM (``layer`` picks a layer, ``gene_key`` a ``var`` column of
            gene ids, ``mod`` the MuData modality).
        batch_size
            Samples per forward pass.

        Returns
        -------
        A DataFrame indexed by ``obs_names``: one column of probabilities per class
        (classification), or the column ``risk`` (Cox log relative hazard; higher = shorter
        survival).
        """
        from .._anndata import get_modality

        adata = get_modality(data, mod)
        embeddings = self.embed(
            data, layer=layer, gene_key=gene_key, mod=mod, batch_size=batch_size, progress=progress
        )
        return self.frame(self.outputs(embeddings), adata.obs_names.copy())

    # -------------------------------------------------------------------------------- files
    def save(self, path) -> Path:
        """Write the fine-tuned model to a folder; :func:`load_finetuned` restores it exactly.

        ``backbone/`` (the encoder with its IA3 vectors, safetensors), ``head.safetensors`` and
        ``finetuned.json`` (task, method, classes, head settings, keys, training parameters,
        metrics, history, package version). An existing folder's files are overwritten.
        """
        from safetensors.numpy import save_file

        from .._version import __version__
        from ..model.params import flat_state

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save(folder / BACKBONE_DIR)
        tensors = {
            name: np.asarray(jax.device_get(v[...]))
            for name, v in flat_state(self.head, nnx.Param).items()
        }
        save_file(tensors, str(folder / HEAD_FILE), metadata={"format": FORMAT_NAME})
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "task": self.task,
            "method": self.method,
            "classes": self.classes,
            "obs_key": self.obs_key,
            "event_key": self.event_key,
            BLOCK_KEY: self.embedding_block,
            "head": self.head.settings.to_dict(),
            "source": self.encoder.source,
            "revision": self.encoder.revision,
            "params": _jsonable(self.params),
            "metrics": _jsonable(self.metrics),
            "history": _jsonable(self.history),
            "selection": _jsonable(self.selection),
            "baseline_hazard": _jsonable(self.baseline_hazard),
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return folder


def load_finetuned(path) -> FinetunedModel:
    """Load a model written by :meth:`FinetunedModel.save`: backbone, IA3, head, classes, config.

    Parameters
    ----------
    path
        The folder given to ``save``.

    Returns
    -------
    The :class:`FinetunedModel`; its predictions equal the saved model's bit for bit.

    Raises
    ------
    CheckpointError
        A missing, corrupt or newer-format folder, or a ``finetuned.json`` that does not describe
        the saved head (edited by hand: an unknown task or method, no ``head``, classes that do
        not match the head's outputs, ...); the message lists every problem and what to do. An
        encoder folder (``model.save``) is pointed to ``load_model``.
    """
    from ..model import load_model
    from ..model.errors import CheckpointError, checkpoint_error
    from ..model.files import OWN_CONFIG_FILE, WEIGHTS_FILE, read_json, read_safetensors
    from ..model.params import OWN_RULES, assign, flat_state, map_tensors

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is not a folder: pass the folder written by FinetunedModel.save."
        )
    meta_path = folder / META_FILE
    if not meta_path.is_file() and (
        (folder / OWN_CONFIG_FILE).is_file() or (folder / WEIGHTS_FILE).is_file()
    ):
        raise CheckpointError(
            f"{folder} holds an encoder (a BulkRNABert checkpoint), not a fine-tuned model: it "
            f"has no {META_FILE}. Load it with bulkrnabert_sv.load_model({str(folder)!r}), or "
            "pass the folder written by FinetunedModel.save (tl.finetune(...).save(path))."
        )
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{meta_path} is not a fine-tuned bulkrnabert-sv model (format "
            f"{found!r}); for an encoder alone use bulkrnabert_sv.load_model."
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} was written by a newer bulkrnabert-sv (format {meta['format_version']}); "
            "upgrade the package to read it."
        )
    fix = [
        f"{META_FILE} describes the saved head and how to read its outputs; it was edited or "
        "damaged. Restore it from the original save, or fine-tune and save the model again."
    ]
    problems = meta_problems(meta)
    if problems:
        raise checkpoint_error(str(meta_path), problems, fix)
    encoder = load_model(folder / BACKBONE_DIR)
    encoder.source = meta.get("source")
    encoder.revision = meta.get("revision")
    problems = encoder_problems(meta, encoder)
    try:
        head = nnx.eval_shape(lambda: build_head(meta["head"], nnx.Rngs(0)))
    except (TypeError, ValueError) as error:  # an unknown activation or setting
        problems.append(f"'head' does not describe an MLPHead or an ensemble of them: {error}")
    if problems:
        raise checkpoint_error(str(meta_path), problems, fix)
    targets = flat_state(head, nnx.Param)
    tensors = read_safetensors(folder / HEAD_FILE)
    assign(head, map_tensors(tensors, OWN_RULES, targets, source=str(folder / HEAD_FILE)))
    return FinetunedModel(
        encoder,
        head,
        task=meta["task"],
        method=meta["method"],
        classes=meta.get("classes"),
        obs_key=meta["obs_key"],
        event_key=meta.get("event_key"),
        embedding_block=recorded_block(meta),
        params=meta.get("params"),
        metrics=meta.get("metrics"),
        history=meta.get("history"),
        selection=meta.get("selection"),
        baseline_hazard=meta.get("baseline_hazard"),
    )


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def meta_problems(meta: Mapping) -> list[str]:
    """What is wrong with a ``finetuned.json`` on its own (before the encoder is read).

    Checks the task and method, the head's settings (``in_features``, ``hidden_sizes``,
    ``n_outputs``), the classes against the head's outputs (one per class; survival: one risk
    score and no classes), the obs keys and the embedding layer's type.
    """
    problems = []
    task, method = meta.get("task"), meta.get("method")
    if task not in TASKS:
        problems.append(f"'task' is {task!r}; it must be one of {list(TASKS)}")
    if method not in METHODS:
        problems.append(f"'method' is {method!r}; it must be one of {list(METHODS)}")
    head = meta.get("head")
    n_outputs = None
    if not isinstance(head, Mapping):
        problems.append(
            f"'head' is {'missing' if head is None else repr(head)}; it must hold the head's "
            "settings (in_features, hidden_sizes, n_outputs, ...)"
        )
    else:
        for key in ("in_features", "n_outputs"):
            if not _is_int(head.get(key), 1):
                problems.append(
                    f"'head.{key}' is {head.get(key, '<absent>')!r}, not an integer >= 1"
                )
        sizes = head.get("hidden_sizes")
        if not isinstance(sizes, list) or not all(_is_int(h, 1) for h in sizes):
            problems.append(
                f"'head.hidden_sizes' is {head.get('hidden_sizes', '<absent>')!r}, not a list "
                "of integers >= 1"
            )
        if _is_int(head.get("n_outputs"), 1):
            n_outputs = head["n_outputs"]
        if "members" in head and not _is_int(head.get("members"), 2):
            problems.append(f"'head.members' is {head.get('members')!r}, not an integer >= 2")
        if "members" in head and head.get("combine") not in COMBINE:
            problems.append(f"'head.combine' is {head.get('combine')!r}; one of {list(COMBINE)}")
    classes = meta.get("classes")
    if task == "classification":
        if not isinstance(classes, list) or len(classes) < 2:
            problems.append(
                f"'classes' is {classes!r}; a classifier needs the list of its (at least 2) "
                "class names, in output order"
            )
        else:
            names = [json.dumps(c, sort_keys=True) for c in classes]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                problems.append(f"'classes' repeats {', '.join(repeated)}; each class once")
            if n_outputs is not None and len(classes) != n_outputs:
                problems.append(
                    f"'classes' lists {len(classes)} classes but the head has n_outputs="
                    f"{n_outputs} (one output per class)"
                )
    elif task == "survival":
        if classes is not None:
            problems.append(f"'classes' is {classes!r}; a survival model has none (null)")
        if n_outputs is not None and n_outputs != 1:
            problems.append(
                f"the head has n_outputs={n_outputs}; a survival model outputs 1 risk score"
            )
        if not isinstance(meta.get("event_key"), str):
            problems.append(
                f"'event_key' is {meta.get('event_key')!r}; a survival model records the obs "
                "column of its events"
            )
    if not isinstance(meta.get("obs_key"), str) or not meta.get("obs_key"):
        problems.append(f"'obs_key' is {meta.get('obs_key')!r}, not an obs column name")
    block_key = _block_key(meta)
    if not _is_int(meta.get(block_key), 1):
        problems.append(
            f"'{block_key}' is {meta.get(block_key, '<absent>')!r}, not an encoder "
            "block (an integer >= 1)"
        )
    hazard = meta.get("baseline_hazard")
    if hazard is not None:
        if task != "survival":
            problems.append("'baseline_hazard' is for survival models; a classifier has none")
        elif not (
            isinstance(hazard, Mapping)
            and isinstance(hazard.get("time"), list)
            and isinstance(hazard.get("cumulative_hazard"), list)
            and len(hazard["time"]) == len(hazard["cumulative_hazard"]) > 0
        ):
            problems.append(
                "'baseline_hazard' must hold two lists of the same length, 'time' and "
                "'cumulative_hazard'"
            )
    for key in ("params", "metrics", "history", "selection"):
        if meta.get(key) is not None and not isinstance(meta[key], Mapping):
            problems.append(f"'{key}' is {type(meta[key]).__name__}, not a mapping")
    return problems


def encoder_problems(meta: Mapping, encoder) -> list[str]:
    """What in a (valid on its own) ``finetuned.json`` does not fit the saved encoder."""
    problems = []
    width = encoder.config.embed_dim
    if meta["head"]["in_features"] != width:
        problems.append(
            f"'head.in_features' is {meta['head']['in_features']}, but the encoder in "
            f"{BACKBONE_DIR}/ has embed_dim={width}"
        )
    layers = encoder.config.num_layers
    block_key = _block_key(meta)
    if meta[block_key] > layers:
        problems.append(
            f"'{block_key}' is {meta[block_key]}, but the encoder in {BACKBONE_DIR}/ "
            f"has {layers} layers"
        )
    return problems


def _block_key(meta: Mapping) -> str:
    """The block's key in ``meta``: ``embedding_block`` (before format 3 ``embedding_layer``)."""
    return OLD_BLOCK_KEY if BLOCK_KEY not in meta and OLD_BLOCK_KEY in meta else BLOCK_KEY


def _jsonable(value):
    """Nested dicts/lists of numpy values → plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return value.item()
    return value
