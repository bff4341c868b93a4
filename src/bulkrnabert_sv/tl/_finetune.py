"""``tl.finetune`` and ``tl.predict``: cancer-type classification and Cox survival with BulkRNABert.

Three ways to adapt the encoder (the paper's two downstream tasks use the first two):

``"probe"``
    Frozen encoder; an MLP head is trained on the mean embeddings (computed once, or reused from
    ``obsm["X_bulkrnabert"]`` when ``tl.embed`` made them with the same model and layer, and
    its fingerprints show that neither the expression values nor the model changed since).
``"ia3"``
    IA3 (Liu et al. 2022): learned vectors rescale keys, values and the FFN activation of every
    block; the backbone stays frozen. Trained with the head.
``"full"``
    Every encoder weight is trained with the head.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from flax import nnx

from .._core.data import get_modality
from .._core.finetuned import (
    EMBEDDING_KEY,
    EMBEDDING_UNS_KEY,
    LOSSES,
    EncoderWithHead,
    FinetunedModel,
    compiled,
    embed_tokens,
    head_key,
    head_outputs,
    load_finetuned,
    stored_embeddings,
    structure_key,
)
from .._core.metrics import classification_metrics
from .._core.survival import concordance_index
from .._core.targets import (
    TASKS,
    Targets,
    check_splittable,
    classification_targets,
    infer_task,
    obs_column,
    survival_targets,
)
from .._core.training import Trainer, stratified_split
from ._embed import SCANPY_OBS_KEYS, HashingBatches, check_data, stale_reason, warn_overwrite

__all__ = ["FinetunedModel", "finetune", "load_finetuned", "predict"]

METHODS = ("probe", "ia3", "full")
#: Defaults per method: epochs, learning rate, training batch size.
DEFAULTS = {
    "probe": {"epochs": 100, "learning_rate": 1e-3, "batch_size": 64},
    "ia3": {"epochs": 10, "learning_rate": 3e-3, "batch_size": 8},
    "full": {"epochs": 10, "learning_rate": 1e-4, "batch_size": 8},
}
UNS_KEY = "bulkrnabert_finetune"
RISK_KEY = "bulkrnabert_risk"


def finetune(
    data,
    obs_key: str,
    *,
    task: Literal["classification", "survival"] | None = None,
    event_key: str | None = None,
    method: Literal["probe", "ia3", "full"] = "probe",
    model=None,
    hidden_sizes: Sequence[int] = (256, 128),
    layer_norm: bool = False,
    embedding_layer: int = -1,
    epochs: int | None = None,
    learning_rate: float | None = None,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    validation_fraction: float = 0.2,
    early_stopping: int | None = 10,
    class_weight: str | Mapping | None = None,
    random_state: int = 0,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    key_added: str | None = None,
    remat: bool = True,
    inference_batch_size: int = 8,
    progress: bool = True,
    copy: bool = False,
):
    """Train a cancer-type classifier or a Cox survival model on BulkRNABert.

    Predictions for every sample (labelled or not) are written back into ``data``.

    Parameters
    ----------
    data
        AnnData (or MuData, modality ``mod``) with TPM in ``X`` or ``layers[layer]``.
    obs_key
        The ``obs`` column to learn: class labels (classification) or durations (survival,
        > 0, any time unit). Samples with NaN there are left out of training, with a warning
        that counts them, and still get predictions.
    task
        ``"classification"`` or ``"survival"``. Default: survival when ``event_key`` is given,
        classification for categorical/string labels (numeric labels need ``task``).
    event_key
        Survival only: the ``obs`` column of event indicators (1/True = event observed,
        0/False = censored).
    method
        ``"probe"`` (frozen encoder, MLP on mean embeddings), ``"ia3"`` (IA3 vectors on keys,
        values and FFN activations + head; backbone frozen) or ``"full"`` (all weights + head).
    model
        A :class:`~bulkrnabert_sv.model.BulkRNABert` or anything
        :func:`~bulkrnabert_sv.load_model` accepts (hub id, folder). Default:
        ``$BULKRNABERT_MODEL`` if set, else ``"InstaDeepAI/BulkRNABert"``. It is never modified.
    hidden_sizes, layer_norm
        The head: ``Linear + SELU`` per hidden size, optional LayerNorm, final ``Linear`` (as
        the released heads: ``(256, 128)`` for classification; ``(512, 256)`` with LayerNorm
        for the pan-cancer survival head).
    embedding_layer
        The block (1-indexed; -1 = last) whose mean embedding feeds the head.
    epochs, learning_rate, batch_size
        Training length, AdamW learning rate and samples per step. Defaults: probe 100 /
        1e-3 / 64, ia3 10 / 3e-3 / 8, full 10 / 1e-4 / 8.
    weight_decay
        AdamW decoupled weight decay, applied to weight matrices only (not to biases,
        LayerNorm parameters or IA3 vectors). Gradients are clipped to global norm 1.
    validation_fraction
        Share of the labelled samples held out for validation (stratified by class, or by
        event indicator for survival); 0 disables validation and early stopping.
    early_stopping
        Stop after this many epochs without a lower validation loss and keep the best epoch's
        weights; None trains for all ``epochs`` (still keeping the best epoch's weights).
    class_weight
        Classification only: None (equal), ``"balanced"`` (``n / (n_classes * n_class)`` on
        the training split) or a dict ``{class: weight}`` (missing classes weigh 1).
    random_state
        Seed of the head's initialisation, the split and the shuffling: the same seed gives
        the same model and predictions.
    layer, gene_key, mod
        Where the TPM values (``layers[layer]``), gene ids (``var[gene_key]``) and modality are.
    key_added
        Name of the prediction field (defaults below); the ``uns`` entry is then
        ``f"{key_added}_finetune"``. Refused: the label columns (``obs_key``, ``event_key``)
        and the ``obs`` columns scanpy writes (``leiden``, ``louvain``, ``dpt_pseudotime``,
        ``dpt_groups``, ``dpt_order``, ``dpt_order_indices``, ``n_genes``, ``n_counts``,
        ``n_genes_by_counts``, ``total_counts``, ``log1p_n_genes_by_counts``,
        ``log1p_total_counts``, ``doublet_score``, ``predicted_doublet``). Replacing the fields
        of an earlier run warns.
    remat
        Rematerialise each block in the backward pass (``ia3``/``full``): much less memory for
        about a third more compute.
    inference_batch_size
        Samples per encoder forward pass when computing embeddings and predictions.
    progress
        Show progress bars.
    copy
        Work on a copy of ``data`` and return it with the model.

    Returns
    -------
    The :class:`FinetunedModel` (``predict``, ``save``), or ``(data_copy, model)`` with
    ``copy=True``. Written into ``data`` (its modality ``mod`` for a MuData):

    ``obs[f"{obs_key}_bulkrnabert"]``
        Classification: the predicted class (categorical, categories = classes).
    ``obsm[f"{obs_key}_bulkrnabert_proba"]``
        Classification: class probabilities, float32 (n_obs, n_classes), columns in
        ``uns["bulkrnabert_finetune"]["classes"]`` order.
    ``obs["bulkrnabert_risk"]``
        Survival: the Cox risk score (log relative hazard; higher = shorter survival).
    ``uns["bulkrnabert_finetune"]``
        ``params`` (every setting above with the resolved defaults, the model's source and
        revision, ``n_train``, ``n_validation``, ``n_unlabelled``, ``best_epoch``,
        ``epochs_run``, ``reused_embeddings``, the gene ``coverage`` when tokens were made),
        ``metrics`` (``train`` and ``validation``: ``n`` and accuracy, balanced_accuracy,
        f1_macro, f1_weighted, or c_index), ``history`` (per epoch: ``loss``, and with
        validation ``val_loss`` and ``val_<metric>``) and ``classes`` (classification).

    Raises
    ------
    KeyError
        ``obs_key``/``event_key`` missing from ``obs``.
    TypeError
        ``data`` is not an AnnData or MuData (a DataFrame: wrap it in ``anndata.AnnData``), or
        ``model`` is a fine-tuned model (pass its ``encoder``).
    ValueError
        A single class; a class (or, for survival, events or censored samples) too small to
        split; durations <= 0; events not in {0, 1}; no event; a bad argument (e.g. a
        ``key_added`` that is a label column or one of scanpy's ``obs`` columns).

    Warns
    -----
    UserWarning
        Prediction fields of an earlier run are replaced; ``obsm["X_bulkrnabert"]`` is not
        reused because X or the model changed since :func:`~bulkrnabert_sv.tl.embed`.
    """
    check_data(data, "tl.finetune")
    method, task, settings = _check_arguments(
        method=method,
        task=task,
        event_key=event_key,
        class_weight=class_weight,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        weight_decay=weight_decay,
        validation_fraction=validation_fraction,
        early_stopping=early_stopping,
        hidden_sizes=hidden_sizes,
        inference_batch_size=inference_batch_size,
        key_added=key_added,
        obs_key=obs_key,
    )
    adata = get_modality(data, mod)
    column = obs_column(data, adata, obs_key, "the labels to learn")
    task = task or infer_task(column, obs_key, event_key)
    if task == "survival":
        if event_key is None:
            raise ValueError(
                "task='survival' needs event_key=<obs column of event indicators> "
                f"(1 = event, 0 = censored); obs[{obs_key!r}] holds the durations."
            )
        events = obs_column(data, adata, event_key, "the event indicators")
        targets = survival_targets(column, events, obs_key, event_key)
    else:
        targets = classification_targets(column, obs_key)
    check_splittable(targets, validation_fraction, obs_key)
    rng = np.random.default_rng(random_state)
    train, validation = stratified_split(targets.strata, validation_fraction, rng)
    class_weights = None
    if task == "classification":
        class_weights = targets.set_class_weight(class_weight, train)

    encoder = nnx.clone(_load_encoder(model))
    depth = encoder._resolve_layer(embedding_layer)
    n_outputs = len(targets.classes) if task == "classification" else 1
    from ..model import MLPHead

    head = MLPHead(
        encoder.config.embed_dim,
        settings["hidden_sizes"],
        n_outputs,
        layer_norm=layer_norm,
        rngs=nnx.Rngs(random_state),
    )
    full_targets = _expand(targets, adata.n_obs)
    train_rows, validation_rows = targets.rows[train], targets.rows[validation]
    trainer_kw = dict(
        targets=full_targets,
        train_index=train_rows,
        validation_index=validation_rows,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        patience=early_stopping,
        rng=rng,
        learning_rate=settings["learning_rate"],
        weight_decay=float(weight_decay),
        evaluate=_evaluator(targets, full_targets),
        progress=progress,
    )
    info: dict = {"reused_embeddings": False}

    if method == "probe":
        embeddings = _stored_or_embed(
            encoder,
            data,
            depth,
            layer=layer,
            gene_key=gene_key,
            mod=mod,
            batch_size=inference_batch_size,
            progress=progress,
            info=info,
            function="tl.finetune",
        )
        graphdef, params, frozen = nnx.split(head, nnx.Param, ...)
        trainer = _trainer(("probe", task, head_key(head)), graphdef, task)
        result = trainer.fit(params, frozen, inputs=embeddings, **trainer_kw)
        final_encoder = encoder
        final_head = nnx.merge(graphdef, result.params, frozen)
    else:
        from .._core.tokens import token_batches

        original_config = encoder.config
        if method == "ia3":
            encoder.enable_ia3()
        if remat:
            encoder.config = original_config.replace(remat=True)
        batches = token_batches(
            data, encoder, layer=layer, gene_key=gene_key, mod=mod, batch_size=inference_batch_size
        )
        info["coverage"] = float(batches.alignment.coverage)
        tokens = np.zeros((batches.n_obs, encoder.config.n_genes), dtype=np.int32)
        for start, stop, block in batches:
            tokens[start:stop] = block
        bundle = EncoderWithHead(encoder, head, depth)
        graphdef, params, frozen = nnx.split(bundle, _trainable(method, depth), ...)
        key = (method, task, *structure_key(encoder), depth, head_key(head))
        trainer = _trainer(key, graphdef, task)

        def trained_modules(params):
            trained = nnx.merge(graphdef, params, frozen)
            trained.encoder.config = original_config
            return trained.encoder, trained.head

        def validation_outputs(params, index):
            # The same computation as the final predictions (embeddings, then the head).
            tuned_encoder, tuned_head = trained_modules(params)
            batches = _ArrayBatches(tokens[index], inference_batch_size)
            return head_outputs(
                tuned_head,
                embed_tokens(
                    tuned_encoder,
                    batches,
                    embedding_layer=depth,
                    batch_size=inference_batch_size,
                    progress=False,
                ),
            )

        result = trainer.fit(
            params, frozen, inputs=tokens, predict=validation_outputs, **trainer_kw
        )
        final_encoder, final_head = trained_modules(result.params)
        embeddings = embed_tokens(
            final_encoder,
            _ArrayBatches(tokens, inference_batch_size),
            embedding_layer=depth,
            batch_size=inference_batch_size,
            progress=progress,
        )

    params_record = {
        **settings,
        "task": task,
        "method": method,
        "obs_key": obs_key,
        "event_key": event_key,
        "model": encoder.source,
        "revision": encoder.revision,
        "embedding_layer": depth,
        "layer_norm": bool(layer_norm),
        "weight_decay": float(weight_decay),
        "validation_fraction": float(validation_fraction),
        "early_stopping": early_stopping,
        "class_weight": class_weights,
        "random_state": int(random_state),
        "layer": layer,
        "gene_key": gene_key,
        "remat": bool(remat) if method != "probe" else False,
        "n_train": int(train.size),
        "n_validation": int(validation.size),
        "n_unlabelled": int(targets.n_dropped),
        "best_epoch": int(result.best_epoch),
        "epochs_run": int(result.epochs_run),
        **info,
    }
    finetuned = FinetunedModel(
        final_encoder,
        final_head,
        task=task,
        method=method,
        classes=targets.classes,
        obs_key=obs_key,
        event_key=event_key,
        embedding_layer=depth,
        params=_drop_none(params_record),
        history=result.history,
    )
    outputs = finetuned.outputs(embeddings)
    finetuned.metrics = {
        "train": _metrics(targets, full_targets, outputs, train_rows),
        "validation": _metrics(targets, full_targets, outputs, validation_rows),
    }
    target_data = data.copy() if copy else data
    _write(get_modality(target_data, mod), finetuned, outputs, key_added, "tl.finetune")
    return (target_data, finetuned) if copy else finetuned


def predict(
    data,
    model: FinetunedModel | str,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    batch_size: int = 8,
    key_added: str | None = None,
    progress: bool = True,
    copy: bool = False,
):
    """Predict with a fine-tuned model and write the same fields as :func:`finetune` did.

    Parameters
    ----------
    data
        AnnData or MuData with TPM (``layer``, ``gene_key``, ``mod`` as in :func:`finetune`).
    model
        A :class:`FinetunedModel`, or the folder it was saved to.
    batch_size
        Samples per encoder forward pass.
    key_added
        Name of the prediction field (default and refused names as in :func:`finetune`).
    progress
        Show a progress bar.
    copy
        Write into a copy of ``data`` and return it.

    Returns
    -------
    None, or the annotated copy with ``copy=True``. Written: ``obs[f"{obs_key}_bulkrnabert"]``
    and ``obsm[f"{obs_key}_bulkrnabert_proba"]`` (classification) or ``obs["bulkrnabert_risk"]``
    (survival), and ``uns["bulkrnabert_finetune"]`` (the model's training ``params``,
    ``metrics``, ``history`` and ``classes``). A probe reuses ``obsm["X_bulkrnabert"]`` when
    ``tl.embed`` computed it with the model's encoder and layer, and its fingerprints show that
    neither the expression values nor the encoder changed since.

    Raises
    ------
    TypeError
        ``data`` is not an AnnData or MuData (a DataFrame: wrap it in ``anndata.AnnData``), or
        ``model`` is an encoder (:class:`~bulkrnabert_sv.model.BulkRNABert`) rather than a
        fine-tuned model.
    ValueError
        ``key_added`` names the model's label columns or one of scanpy's ``obs`` columns.

    Warns
    -----
    UserWarning
        Prediction fields of an earlier run are replaced; ``obsm["X_bulkrnabert"]`` is not
        reused because X or the model changed since :func:`~bulkrnabert_sv.tl.embed`.
    """
    check_data(data, "tl.predict")
    model = _finetuned_model(model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    _check_key_added(key_added, model.obs_key, model.event_key)
    if model.method == "probe":
        embeddings = _stored_or_embed(
            model.encoder,
            data,
            model.embedding_layer,
            layer=layer,
            gene_key=gene_key,
            mod=mod,
            batch_size=batch_size,
            progress=progress,
            info={},
            function="tl.predict",
        )
    else:
        embeddings = model.embed(
            data, layer=layer, gene_key=gene_key, mod=mod, batch_size=batch_size, progress=progress
        )
    outputs = model.outputs(embeddings)
    target_data = data.copy() if copy else data
    _write(get_modality(target_data, mod), model, outputs, key_added, "tl.predict")
    return target_data if copy else None


def _finetuned_model(model) -> FinetunedModel:
    """``model`` itself, or the model saved in that folder; a clear error for anything else."""
    from ..model import BulkRNABert

    if isinstance(model, FinetunedModel):
        return model
    if isinstance(model, BulkRNABert):
        raise TypeError(
            "tl.predict needs a fine-tuned model (an encoder with a trained head), got a "
            "BulkRNABert encoder. Train one with tuned = tl.finetune(adata, obs_key, "
            "model=encoder), or load a saved one with bulkrnabert_sv.load_finetuned(folder); "
            "for sample embeddings alone use tl.embed(adata, encoder)."
        )
    if isinstance(model, str | os.PathLike):
        return load_finetuned(model)
    raise TypeError(
        "model must be a FinetunedModel (from tl.finetune or bulkrnabert_sv.load_finetuned) or "
        f"the folder it was saved to, got {type(model).__name__}."
    )


# ---------------------------------------------------------------------------------- helpers
def _check_arguments(
    *,
    method,
    task,
    event_key,
    class_weight,
    epochs,
    learning_rate,
    batch_size,
    weight_decay,
    validation_fraction,
    early_stopping,
    hidden_sizes,
    inference_batch_size,
    key_added,
    obs_key,
):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}.")
    if task == "classification" and event_key is not None:
        raise ValueError(
            "event_key is for survival; drop it for classification, or pass task='survival'."
        )
    if class_weight is not None and (task == "survival" or event_key is not None):
        raise ValueError("class_weight is for classification; a Cox model has no classes.")
    defaults = DEFAULTS[method]
    settings = {
        "epochs": defaults["epochs"] if epochs is None else epochs,
        "learning_rate": defaults["learning_rate"] if learning_rate is None else learning_rate,
        "batch_size": defaults["batch_size"] if batch_size is None else batch_size,
    }
    for name in ("epochs", "batch_size"):
        value = settings[name]
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        settings[name] = int(value)
    if not isinstance(inference_batch_size, numbers.Integral) or inference_batch_size < 1:
        raise ValueError(
            f"inference_batch_size must be a positive integer, got {inference_batch_size!r}."
        )
    if not (np.isfinite(settings["learning_rate"]) and settings["learning_rate"] > 0):
        raise ValueError(f"learning_rate must be > 0, got {settings['learning_rate']!r}.")
    settings["learning_rate"] = float(settings["learning_rate"])
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    if not 0 <= validation_fraction < 1:
        raise ValueError(
            f"validation_fraction must be in [0, 1), got {validation_fraction!r} "
            "(0 disables validation and early stopping)."
        )
    if early_stopping is not None and (
        not isinstance(early_stopping, numbers.Integral)
        or isinstance(early_stopping, bool)
        or early_stopping < 1
    ):
        raise ValueError(
            f"early_stopping must be a patience in epochs (>= 1) or None, got {early_stopping!r}."
        )
    sizes = list(hidden_sizes)
    if not all(isinstance(h, numbers.Integral) and h >= 1 for h in sizes):
        raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes!r}.")
    settings["hidden_sizes"] = [int(h) for h in sizes]
    _check_key_added(key_added, obs_key, event_key)
    return method, task, settings


def _check_key_added(key_added, obs_key, event_key) -> None:
    """Refuse a prediction key that is not a string, names the labels or a scanpy column."""
    if key_added is None:
        return
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string or None, got {key_added!r}.")
    if key_added in (obs_key, event_key):
        raise ValueError(
            f"key_added={key_added!r} would overwrite the labels in obs[{key_added!r}]; "
            "choose another name."
        )
    if key_added in SCANPY_OBS_KEYS:
        raise ValueError(
            f"key_added={key_added!r} is not allowed: obs[{key_added!r}] belongs to scanpy "
            f"(one of {sorted(SCANPY_OBS_KEYS)}). Choose another name, e.g. the default "
            "(None: f'{obs_key}_bulkrnabert', or 'bulkrnabert_risk' for survival)."
        )


def _trainer(key, graphdef, task: str) -> Trainer:
    """A trainer per model structure and task (compiled once, reused across calls)."""

    def build():
        def apply(params, frozen, x):
            return nnx.merge(graphdef, params, frozen)(x)

        return Trainer(apply, LOSSES[task])

    return compiled(("trainer", *key), build)


def _load_encoder(model):
    from ..model import BulkRNABert, load_model

    if isinstance(model, FinetunedModel):
        raise TypeError(
            "tl.finetune takes an encoder (BulkRNABert) or a model source, got a fine-tuned "
            "model. Fine-tune its encoder again with model=tuned.encoder, or predict with "
            "tl.predict(adata, tuned)."
        )
    encoder = model if isinstance(model, BulkRNABert) else load_model(model)
    if encoder.genes is None:
        raise ValueError(
            "The model has no gene list, so the data cannot be aligned to it. Load it from a "
            "checkpoint, or build it with genes=<vocabulary in model order>."
        )
    return encoder


def _stored_or_embed(
    encoder, data, depth, *, layer, gene_key, mod, batch_size, progress, info, function
):
    """``obsm["X_bulkrnabert"]`` if still valid for ``encoder`` and the data, else new embeddings.

    Valid: :func:`stored_embeddings` accepts its record (source, revision, layers, gene key) and
    the fingerprints ``tl.embed`` stored match (the encoder's, and the tokens' of the data as
    it is now, hashed in one pass without embedding). Otherwise the embeddings are recomputed,
    with a warning saying why when there were stored ones.
    """
    from .._core.tokens import token_batches

    adata = get_modality(data, mod)
    stored = stored_embeddings(adata, encoder, depth, layer, gene_key)
    batches = HashingBatches(
        token_batches(data, encoder, layer=layer, gene_key=gene_key, mod=mod, batch_size=batch_size)
    )
    info["coverage"] = float(batches.alignment.coverage)
    if stored is not None:
        reason = stale_reason(adata.uns[EMBEDDING_UNS_KEY]["params"], encoder, batches)
        if reason is None:
            info["reused_embeddings"] = True
            return stored
        warnings.warn(
            f"{function} does not reuse obsm[{EMBEDDING_KEY!r}]: {reason}. The embeddings are "
            f"recomputed; obsm[{EMBEDDING_KEY!r}] itself is left as it is (run tl.embed again "
            "to update it).",
            UserWarning,
            stacklevel=3,
        )
    return embed_tokens(
        encoder, batches, embedding_layer=depth, batch_size=batch_size, progress=progress
    )


class _ArrayBatches:
    """``(start, stop, tokens)`` batches of a token array (the interface of ``token_batches``)."""

    def __init__(self, tokens: np.ndarray, batch_size: int):
        self.tokens = tokens
        self.batch_size = batch_size
        self.n_obs = tokens.shape[0]

    def __len__(self) -> int:
        return -(-self.n_obs // self.batch_size)

    def __iter__(self):
        for start in range(0, self.n_obs, self.batch_size):
            stop = min(start + self.batch_size, self.n_obs)
            yield start, stop, self.tokens[start:stop]


def _trainable(method: str, depth: int):
    """Which variables of ``EncoderWithHead`` are trained (the rest stays frozen)."""
    from ..model import IA3Param, MaskEmbeddingParam

    def predicate(path, variable) -> bool:
        if not isinstance(variable, nnx.Param) or isinstance(variable, MaskEmbeddingParam):
            return False
        if path[0] == "head":
            return True
        # Encoder: the LM head and blocks above the embedding layer get no gradient.
        if path[1] == "lm_head" or (path[1] == "layers" and int(path[2]) >= depth):
            return False
        return isinstance(variable, IA3Param) if method == "ia3" else True

    return predicate


def _expand(targets: Targets, n_obs: int) -> dict[str, np.ndarray]:
    """Targets indexed by ``obs`` position (zeros where unlabelled, never used)."""
    full = {}
    for name, values in targets.arrays.items():
        array = np.zeros(n_obs, dtype=values.dtype)
        array[targets.rows] = values
        full[name] = array
    return full


def _evaluator(targets: Targets, full: Mapping[str, np.ndarray]):
    def evaluate(outputs: np.ndarray, index: np.ndarray) -> dict[str, float]:
        return _scores(targets, full, outputs, index)

    return evaluate


def _scores(targets: Targets, full, outputs: np.ndarray, index: np.ndarray) -> dict[str, float]:
    if targets.task == "classification":
        return classification_metrics(
            full["label"][index], outputs.argmax(axis=1), len(targets.classes)
        )
    try:
        value = concordance_index(full["time"][index], outputs[:, 0], full["event"][index])
    except ValueError:
        value = float("nan")
    return {"c_index": value}


def _metrics(targets: Targets, full, outputs: np.ndarray, rows: np.ndarray) -> dict:
    if rows.size == 0:
        return {"n": 0}
    return {"n": int(rows.size), **_scores(targets, full, outputs[rows], rows)}


def _drop_none(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _write(
    adata, model: FinetunedModel, outputs: np.ndarray, key_added: str | None, function: str
) -> None:
    """Write predictions and the ``uns`` record: all of them, or none (values computed first).

    Warns (at the caller of ``function``) when fields of an earlier run are replaced.
    """
    frame = model.frame(outputs, adata.obs_names)
    uns_key = UNS_KEY if key_added is None else f"{key_added}_finetune"
    record = {
        "params": dict(model.params),
        "metrics": {k: dict(v) for k, v in model.metrics.items()},
        "history": {k: list(v) for k, v in model.history.items()},
    }
    fields: dict[tuple[str, str], object] = {}
    if model.task == "classification":
        key = key_added or f"{model.obs_key}_bulkrnabert"
        codes = np.asarray(outputs).argmax(axis=1)
        fields["obs", key] = pd.Categorical.from_codes(codes, categories=list(model.classes))
        fields["obsm", f"{key}_proba"] = frame.to_numpy(dtype=np.float32)
        record["classes"] = list(model.classes)
    else:
        fields["obs", key_added or RISK_KEY] = frame["risk"].to_numpy()
    fields["uns", uns_key] = record
    old = {
        (where, key): getattr(adata, where)[key]
        for where, key in fields
        if key in getattr(adata, where)
    }
    warn_overwrite([f"{where}[{key!r}]" for where, key in old], function, stacklevel=3)
    try:
        for (where, key), value in fields.items():
            getattr(adata, where)[key] = value
    except BaseException:
        for where, key in fields:
            container = getattr(adata, where)
            if (where, key) in old:
                container[key] = old[where, key]
            elif key in container:
                del container[key]
        raise
