"""``tl.finetune`` and ``tl.predict``: cancer-type classification and Cox survival with BulkRNABert.

Three ways to adapt the encoder (the paper's two downstream tasks use the first two):

``"probe"``
    Frozen encoder; a head is fitted on the mean embeddings (computed once, or reused from
    ``obsm["X_bulkrnabert"]`` when ``tl.embed`` made them with the same model and block, and
    its fingerprints show that neither the expression values nor the model changed since).
    The default head is linear (ridge logistic regression or a ridge Cox model) with its L2
    strength chosen by inner cross-validation: on cohorts of tens to hundreds of patients it
    does not lose to a linear model on the same embeddings, which an MLP trained on one small
    validation split did (docs/benchmarks.md). The paper's MLP heads are options
    (``head="mlp"``), their epoch count chosen by inner cross-validation too.
``"ia3"``
    IA3 (Liu et al. 2022): learned vectors rescale keys, values and the FFN activation of every
    block; the backbone stays frozen. Trained with an MLP head, early-stopped on a validation
    split.
``"full"``
    Every encoder weight is trained with an MLP head, early-stopped on a validation split.

Fields are named from ``key_added`` (default ``f"{obs_key}_bulkrnabert"``, and
``f"{obs_key}_bulkrnabert_risk"`` for survival), so runs on other labels or with other keys
coexist. ``copy=True`` returns the annotated copy only (as scanpy); without it ``tl.finetune``
returns the :class:`FinetunedModel`.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from flax import nnx

from .._anndata import get_modality
from .._keys import (
    BLOCK_KEY,
    EMBEDDING_KEY,
    EMBEDDING_UNS_KEY,
    PROBA_SUFFIX,
    SCANPY_OBS_KEYS,
    SURVIVAL_SUFFIX,
    finetune_uns_key,
    prediction_key,
)
from .._logging import user_stacklevel
from .._settings import COMPILE_CACHE_SIZE
from .._validation import (
    check_block_index,
    check_int_at_least,
    check_positive_int,
    renamed_keywords,
)
from ..training.finetuned import (
    LOSSES,
    EncoderWithHead,
    FinetunedModel,
    HeadEnsemble,
    head_outputs,
    load_finetuned,
    stored_embeddings,
)
from ..training.fitting import (
    DEFAULT_PENALTIES,
    L2_GRID,
    Trainer,
    check_penalties,
    fit_linear_head,
    stratified_folds,
    stratified_split,
)
from ..training.inference import embed_token_array, embed_tokens
from ..training.metrics import classification_metrics
from ..training.survival import breslow_baseline, concordance_index
from ..training.targets import (
    TASKS,
    Targets,
    check_splittable,
    classification_targets,
    infer_task,
    obs_column,
    survival_targets,
)
from ._embed import HashingBatches, check_data, stale_reason, warn_overwrite
from ._risk_groups import finetune_records  # noqa: F401 (re-exported)

__all__ = ["FinetunedModel", "finetune", "load_finetuned", "predict"]

METHODS = ("probe", "ia3", "full")
HEADS = ("linear", "mlp")
#: MLP training defaults per method: epochs, learning rate, training batch size.
DEFAULTS = {
    "probe": {"epochs": 100, "learning_rate": 1e-3, "batch_size": 64},
    "ia3": {"epochs": 10, "learning_rate": 3e-3, "batch_size": 8},
    "full": {"epochs": 10, "learning_rate": 1e-4, "batch_size": 8},
}
#: The released classification head's hidden layers (the pan-cancer survival head: (512, 256)
#: with LayerNorm).
DEFAULT_HIDDEN_SIZES = (256, 128)
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_VALIDATION_FRACTION = 0.2
#: Inner cross-validation folds of the probe (L2 strength or epoch count).
DEFAULT_INNER_FOLDS = 5


@renamed_keywords("tl.finetune", embedding_layer="embedding_block")
def finetune(
    data,
    obs_key: str,
    *,
    task: Literal["classification", "survival"] | None = None,
    event_key: str | None = None,
    method: Literal["probe", "ia3", "full"] = "probe",
    model=None,
    head: Literal["linear", "mlp"] | None = None,
    hidden_sizes: Sequence[int] | None = None,
    layer_norm: bool = False,
    l2: float | Sequence[float] | None = None,
    penalty: str | Sequence[str] | None = None,
    inner_folds: int | None = None,
    n_seeds: int = 1,
    embedding_block: int = -1,
    epochs: int | None = None,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
    batch_size: int | None = None,
    validation_fraction: float | None = None,
    early_stopping: int | None = 10,
    class_weight: str | Mapping | None = None,
    survival_times: Sequence[float] | None = None,
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
        ``"probe"`` (frozen encoder, a head on mean embeddings), ``"ia3"`` (IA3 vectors on
        keys, values and FFN activations + MLP head; backbone frozen) or ``"full"`` (all
        weights + MLP head).
    model
        A :class:`~bulkrnabert_sv.model.BulkRNABert` or anything
        :func:`~bulkrnabert_sv.load_model` accepts (hub id, folder). Default:
        ``$BULKRNABERT_SV_MODEL`` if set, else ``"InstaDeepAI/BulkRNABert"``. It is never modified.
    head
        ``"linear"`` (probe only): ridge logistic regression (multinomial) or a ridge Cox model
        on the standardised embeddings, fitted to convergence (scikit-learn's lbfgs; Newton's
        method for Cox), its L2 strength chosen from ``l2`` by inner cross-validation.
        ``"mlp"``: ``Linear + SELU`` per hidden size, optional LayerNorm, final ``Linear``,
        trained with AdamW. Default: ``"linear"`` for the probe unless ``hidden_sizes`` or
        ``layer_norm`` describe an MLP; ``"mlp"`` for ``ia3``/``full``.
    hidden_sizes, layer_norm
        The MLP head: ``(256, 128)`` without LayerNorm by default, as the released
        classification head; the pan-cancer survival head is ``(512, 256)`` with
        ``layer_norm=True``. ``()`` is a single linear layer trained by gradient descent.
    l2
        Linear head: the L2 penalty per sample on standardised embeddings (``mean loss +
        l2 / 2 * ||w||^2``), one value or a grid to choose from. Default: 12 values from 1e-4
        to about 30, log-spaced. The choice maximises the inner folds' pooled balanced
        accuracy, averaged with the two neighbouring grid values (classification; ties: the
        lower log loss), or their cross-validated partial likelihood (survival, Verweij & van
        Houwelingen).
    penalty
        Linear head: how the L2 penalty measures the weights, one or several to choose from by
        the same inner cross-validation as ``l2``: ``"standardised"`` (ridge on embeddings
        scaled to sd 1 per dimension) or ``"whitened"`` (ridge on PCA-whitened embeddings: the
        penalty is the variance of the linear predictor, every direction shrunk alike).
        Default: both for survival, ``"standardised"`` for classification
        (:data:`~bulkrnabert_sv.training.fitting.DEFAULT_PENALTIES`; measured in
        ``docs/benchmarks.md``).
    inner_folds
        Probe: folds of the inner cross-validation (stratified by class, or by event) that
        choose ``l2`` (linear head) or the number of epochs (MLP head: every fold trains for
        ``epochs``; the epoch with the lowest mean validation loss is kept and the final head
        is trained on all labelled samples for that many epochs). Default 5, lowered to the
        size of the smallest class (or to the number of events or of censored samples).
        0 disables it: the linear head then needs a single ``l2``, the MLP head falls back to
        one validation split (``validation_fraction``). Not available for ``ia3``/``full``.
    n_seeds
        Average over seeds: the linear head repeats the inner cross-validation with this many
        fold assignments (the choice uses the mean over all); the MLP head trains this many
        heads (different initialisations, shuffles and inner folds) and averages them (class
        probabilities, or risk scores). Probe only.
    embedding_block
        The block (1-indexed; -1 = last) whose mean embedding feeds the head.
        ``embedding_layer=`` is its deprecated name (``layer`` means an AnnData layer).
    epochs, learning_rate, batch_size
        MLP training length, AdamW learning rate and samples per step. Defaults: probe 100 /
        1e-3 / 64, ia3 10 / 3e-3 / 8, full 10 / 1e-4 / 8. Refused for the linear head.
    weight_decay
        MLP: AdamW decoupled weight decay (default 1e-4), applied to weight matrices only (not
        to biases, LayerNorm parameters or IA3 vectors). Gradients are clipped to global
        norm 1.
    validation_fraction
        MLP trained on one split (``ia3``/``full``, or a probe with ``inner_folds=0``): the
        share of the labelled samples held out for validation (stratified by class, or by
        event indicator); default 0.2, 0 disables validation and early stopping.
    early_stopping
        With a validation split: stop after this many epochs without a lower validation loss
        and keep the best epoch's weights; None trains for all ``epochs`` (still keeping the
        best epoch's weights). Unused otherwise.
    class_weight
        Classification only: None (equal), ``"balanced"`` (``n / (n_classes * n_class)`` on
        the training samples) or a dict ``{class: weight}`` (missing classes weigh 1).
    survival_times
        Survival only: times (unit of ``obs_key``) at which to write each sample's survival
        probability (from Breslow's baseline hazard of the training samples) into
        ``obsm[f"{key}_survival"]``. Default: none written (see
        :meth:`FinetunedModel.survival_function`).
    random_state
        Seed of the head's initialisation, the folds, the split and the shuffling: the same
        seed gives the same model and predictions.
    layer, gene_key, mod
        Where the TPM values (``layers[layer]``), gene ids (``var[gene_key]``) and modality are.
    key_added
        Name of the prediction field; the other fields derive from it (see Returns). Default
        ``f"{obs_key}_bulkrnabert"`` (classification) or ``f"{obs_key}_bulkrnabert_risk"``
        (survival). Refused: the label columns (``obs_key``, ``event_key``) and the ``obs``
        columns scanpy writes (``leiden``, ``louvain``, ``dpt_pseudotime``, ``dpt_groups``,
        ``dpt_order``, ``dpt_order_indices``, ``n_genes``, ``n_counts``,
        ``n_genes_by_counts``, ``total_counts``, ``log1p_n_genes_by_counts``,
        ``log1p_total_counts``, ``doublet_score``, ``predicted_doublet``). Replacing the fields
        of an earlier run with the same key warns; runs with other keys are left intact.
    remat
        Rematerialise each block in the backward pass (``ia3``/``full``): much less memory for
        about a third more compute.
    inference_batch_size
        Samples per encoder forward pass when computing embeddings and predictions.
    progress
        Show progress bars.
    copy
        Write into a copy of ``data`` and return that copy (the model is then not returned:
        call ``tuned = tl.finetune(adata_copy, ...)`` on a copy you made to have both).

    Returns
    -------
    The :class:`FinetunedModel` (``predict``, ``predict_survival``, ``save``); with
    ``copy=True`` the annotated copy instead. Written into ``data`` (its modality ``mod`` for a
    MuData), with ``key`` = ``key_added`` or its default:

    ``obs[key]``
        Classification: the predicted class (categorical, categories = classes). Survival: the
        Cox risk score (log relative hazard; higher = shorter survival).
    ``obsm[f"{key}_proba"]``
        Classification: class probabilities, float32 (n_obs, n_classes), columns in
        ``uns[f"{key}_finetune"]["classes"]`` order.
    ``obsm[f"{key}_survival"]``
        Survival with ``survival_times``: survival probabilities, float32 (n_obs, n_times);
        the times are ``uns[f"{key}_finetune"]["survival_times"]``.
    ``uns[f"{key}_finetune"]``
        ``params`` (every setting above with the resolved defaults, the model's source and
        revision, ``head``, ``l2`` or ``hidden_sizes``, ``inner_folds``, ``n_train``,
        ``n_validation``, ``n_unlabelled``, ``best_epoch`` and ``epochs_run`` (MLP),
        ``reused_embeddings``, the gene ``coverage``), ``metrics`` (``train``, and
        ``validation`` for a split or ``inner_cv`` for inner folds (mean over the folds, at the
        chosen setting; slightly optimistic, since the setting was chosen on them: use
        :func:`~bulkrnabert_sv.tl.cross_validate` for an unbiased estimate): ``n`` and
        accuracy, balanced_accuracy, f1_macro, f1_weighted, or c_index), ``history`` (MLP, per
        epoch: ``loss``, and with validation ``val_loss`` and ``val_<metric>``; with inner
        folds their means), ``selection`` (inner cross-validation: the L2 grid and its
        scores, or the epochs), ``fields`` (the keys written) and ``classes``
        (classification).

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
        ``key_added`` that is a label column or one of scanpy's ``obs`` columns, MLP settings
        for the linear head).

    Warns
    -----
    UserWarning
        Prediction fields of an earlier run with the same key are replaced;
        ``obsm["X_bulkrnabert"]`` is not reused because X or the model changed since
        :func:`~bulkrnabert_sv.tl.embed`.
    """
    check_data(data, "tl.finetune")
    settings = resolve_settings(
        method=method,
        task=task,
        event_key=event_key,
        head=head,
        hidden_sizes=hidden_sizes,
        layer_norm=layer_norm,
        l2=l2,
        penalty=penalty,
        inner_folds=inner_folds,
        n_seeds=n_seeds,
        class_weight=class_weight,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        weight_decay=weight_decay,
        validation_fraction=validation_fraction,
        early_stopping=early_stopping,
        survival_times=survival_times,
        inference_batch_size=inference_batch_size,
        key_added=key_added,
        obs_key=obs_key,
    )
    targets = _training_targets(data, get_modality(data, mod), obs_key, event_key, settings)
    encoder = nnx.clone(_load_encoder(model))
    block = encoder.resolve_block(check_block_index(embedding_block))
    source = _Source(data, layer, gene_key, mod, inference_batch_size, progress)
    info: dict = {"reused_embeddings": False}
    if method == "probe":
        fit, tuned_encoder, embeddings = _finetune_probe(
            encoder, source, block, targets, settings, class_weight, random_state, info
        )
    else:
        fit, tuned_encoder, embeddings = _finetune_encoder(
            encoder, source, block, targets, settings, class_weight, random_state, remat, info
        )
    outputs = head_outputs(fit.head, embeddings)
    finetuned = _finetuned(
        tuned_encoder,
        fit,
        outputs[targets.rows],
        targets,
        settings,
        provenance={
            "obs_key": obs_key,
            "event_key": event_key,
            "model": encoder.source,
            "revision": encoder.revision,
            BLOCK_KEY: block,
        },
        run={
            "random_state": int(random_state),
            "layer": layer,
            "gene_key": gene_key,
            "remat": bool(remat) if method != "probe" else False,
        },
        info=info,
    )
    target_data = data.copy() if copy else data
    _write(
        get_modality(target_data, mod),
        finetuned,
        outputs,
        key_added,
        "tl.finetune",
        settings["survival_times"],
    )
    return target_data if copy else finetuned


# ------------------------------------------------------------------------------ finetune's steps
@dataclasses.dataclass(frozen=True)
class _Source:
    """Where ``tl.finetune`` reads the expression values, and how it runs the encoder on them."""

    data: object
    layer: str | None
    gene_key: str | None
    mod: str
    batch_size: int
    progress: bool

    def token_batches(self, encoder):
        """The data's tokens in ``encoder``'s gene order, in batches of ``batch_size`` rows."""
        from ..pp._tokens import token_batches

        return token_batches(
            self.data,
            encoder,
            layer=self.layer,
            gene_key=self.gene_key,
            mod=self.mod,
            batch_size=self.batch_size,
        )


def _training_targets(data, adata, obs_key: str, event_key: str | None, settings) -> Targets:
    """The labelled samples' targets, checked against the settings (folds, split, times)."""
    targets = labelled_targets(data, adata, obs_key, event_key, settings["task"])
    if targets.task != "survival" and settings["survival_times"] is not None:
        raise ValueError("survival_times is for survival models; drop it for classification.")
    check_inputs(targets, settings, obs_key)
    return targets


def _finetune_probe(
    encoder, source: _Source, block: int, targets, settings, class_weight, random_state, info
) -> tuple[ProbeFit, object, np.ndarray]:
    """``method="probe"``: a head on the frozen encoder's (stored or new) mean embeddings."""
    embeddings = _stored_or_embed(
        encoder,
        source.data,
        block,
        layer=source.layer,
        gene_key=source.gene_key,
        mod=source.mod,
        batch_size=source.batch_size,
        progress=source.progress,
        info=info,
        function="tl.finetune",
    )
    fit = fit_probe(
        embeddings[targets.rows],
        targets,
        settings,
        class_weight=class_weight,
        random_state=random_state,
        progress=source.progress,
    )
    return fit, encoder, embeddings


def _finetune_encoder(
    encoder, source: _Source, block: int, targets, settings, class_weight, random_state, remat, info
) -> tuple[ProbeFit, object, np.ndarray]:
    """``method="ia3"``/``"full"``: the encoder and an MLP head trained together on one split."""
    method, task = settings["method"], targets.task
    rng = np.random.default_rng(random_state)
    train, validation = stratified_split(targets.strata, settings["validation_fraction"], rng)
    if task == "classification":
        targets.set_class_weight(class_weight, train)
    head = _new_mlp_head(encoder, targets, settings, random_state)
    n_obs = get_modality(source.data, source.mod).n_obs
    full_targets = _expand(targets, n_obs)
    original_execution = _prepare_for_training(encoder, method, remat)
    batches = source.token_batches(encoder)
    info["coverage"] = float(batches.alignment.coverage)
    run = _EncoderRun(
        EncoderWithHead(encoder, head, block), method, original_execution, batches.collect(), source
    )
    result = _trainer(run.graphdef, task).fit(
        run.params,
        run.frozen,
        inputs=run.tokens,
        targets=full_targets,
        train_index=targets.rows[train],
        validation_index=targets.rows[validation],
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        patience=settings["early_stopping"],
        rng=rng,
        learning_rate=settings["learning_rate"],
        weight_decay=settings["weight_decay"],
        evaluate=_evaluator(task, full_targets),
        predict=run.validation_outputs,
        progress=source.progress,
    )
    tuned_encoder, tuned_head = run.modules(result.params)
    embeddings = run.embed(tuned_encoder, run.tokens, progress=source.progress)
    fit = ProbeFit(
        head=tuned_head,
        train=train,
        validation=validation,
        history=result.history,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
    )
    return fit, tuned_encoder, embeddings


def _new_mlp_head(encoder, targets: Targets, settings, random_state: int):
    """The MLP head trained with the encoder, initialised from ``random_state``."""
    from ..model import MLPHead

    n_outputs = len(targets.classes) if targets.task == "classification" else 1
    return MLPHead(
        encoder.config.embed_dim,
        settings["hidden_sizes"],
        n_outputs,
        layer_norm=settings["layer_norm"],
        rngs=nnx.Rngs(random_state),
    )


def _prepare_for_training(encoder, method: str, remat: bool):
    """Add IA3 vectors (``"ia3"``) and switch remat on; returns the execution to restore."""
    original_execution = encoder.execution
    if method == "ia3":
        encoder.enable_ia3()
    if remat:
        encoder.set_execution(remat=True)
    return original_execution


class _EncoderRun:
    """An encoder and head split into trained and frozen parts, and how to read them back."""

    def __init__(self, bundle, method: str, original_execution, tokens: np.ndarray, source):
        self.graphdef, self.params, self.frozen = nnx.split(
            bundle, _trainable(method, bundle.block), ...
        )
        self.block = bundle.block
        self.original_execution = original_execution
        self.tokens = tokens
        self.batch_size = source.batch_size

    def modules(self, params):
        """The trained encoder (its execution settings restored) and head for ``params``."""
        trained = nnx.merge(self.graphdef, params, self.frozen)
        trained.encoder.set_execution(self.original_execution)
        return trained.encoder, trained.head

    def embed(self, encoder, tokens: np.ndarray, *, progress: bool) -> np.ndarray:
        """Mean embeddings of ``tokens`` by ``encoder`` at the trained block."""
        return embed_token_array(
            encoder, tokens, block=self.block, batch_size=self.batch_size, progress=progress
        )

    def validation_outputs(self, params, index: np.ndarray) -> np.ndarray:
        """The head's outputs for ``tokens[index]``, computed as the final predictions are."""
        encoder, head = self.modules(params)
        return head_outputs(head, self.embed(encoder, self.tokens[index], progress=False))


def _finetuned(
    encoder,
    fit: ProbeFit,
    labelled_outputs: np.ndarray,
    targets: Targets,
    settings: Mapping,
    *,
    provenance: Mapping,
    run: Mapping,
    info: Mapping,
) -> FinetunedModel:
    """The :class:`FinetunedModel` of a fit: its ``params``, metrics and baseline hazard.

    ``provenance`` (labels, model, block) and ``run`` (seed, where the values are, remat) are
    recorded in ``params`` with the resolved settings, the sample counts and ``info`` (reuse of
    stored embeddings, gene coverage).
    """
    task, method = targets.task, settings["method"]
    train, validation = fit.train, fit.validation
    params_record = {
        **_settings_record({**settings, "task": task}),
        "task": task,
        "method": method,
        **provenance,
        "class_weight": targets.class_weights,
        **run,
        "n_train": int(train.size),
        "n_validation": int(validation.size),
        "n_unlabelled": int(targets.n_dropped),
        **fit.params_record(),
        **info,
    }
    metrics = {"train": _metrics(targets, labelled_outputs, train)}
    if fit.inner_cv is not None:
        metrics["inner_cv"] = fit.inner_cv
    else:
        metrics["validation"] = _metrics(targets, labelled_outputs, validation)
    return FinetunedModel(
        encoder,
        fit.head,
        task=task,
        method=method,
        classes=targets.classes,
        obs_key=provenance["obs_key"],
        event_key=provenance["event_key"],
        embedding_block=provenance[BLOCK_KEY],
        params=_drop_none(params_record),
        metrics=metrics,
        history=fit.history,
        selection=fit.selection,
        baseline_hazard=_baseline_hazard(labelled_outputs, targets, train),
    )


def _baseline_hazard(labelled_outputs: np.ndarray, targets: Targets, train) -> dict | None:
    """Survival: Breslow's baseline cumulative hazard of the training samples; else None."""
    if targets.task != "survival":
        return None
    times, hazard = breslow_baseline(
        labelled_outputs[train, 0],
        targets.arrays["time"][train],
        targets.arrays["event"][train],
    )
    return {"time": times, "cumulative_hazard": hazard}


# ------------------------------------------------------------------------------ the probe
@dataclasses.dataclass
class ProbeFit:
    """A fitted head and how it was chosen (positions index the labelled samples)."""

    head: object
    train: np.ndarray
    validation: np.ndarray
    history: dict = dataclasses.field(default_factory=dict)
    selection: dict = dataclasses.field(default_factory=dict)
    inner_cv: dict | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    l2: float | None = None
    penalty: str | None = None
    inner_folds: int = 0

    def params_record(self) -> dict:
        record = {"inner_folds": int(self.inner_folds)}
        if self.l2 is not None:
            record["l2"] = float(self.l2)
        if self.penalty is not None:
            record["penalty_chosen"] = self.penalty
        if self.best_epoch is not None:
            record["best_epoch"] = int(self.best_epoch)
            record["epochs_run"] = int(self.epochs_run)
        return record


def fit_probe(
    x: np.ndarray,
    targets: Targets,
    settings: Mapping,
    *,
    class_weight=None,
    random_state: int = 0,
    progress: bool = False,
) -> ProbeFit:
    """Fit the probe's head on the embeddings ``x`` of the labelled samples of ``targets``.

    The routine behind ``tl.finetune(method="probe")`` and ``tl.cross_validate``: the linear
    head (L2 chosen by inner folds) or the MLP head (epochs chosen by inner folds, or early
    stopping on one split), averaged over ``settings["n_seeds"]`` seeds. Sets the class
    weights of ``targets``.
    """
    x = np.asarray(x, dtype=np.float32)
    task = targets.task
    n_classes = len(targets.classes) if task == "classification" else 1
    n_seeds = settings["n_seeds"]
    inner = settings["inner_folds"]
    everything = np.arange(x.shape[0])

    def folds_of(seed: int):
        return stratified_folds(targets.strata, inner, (random_state, seed))

    if settings["head"] == "linear":
        from ..model import MLPHead

        if task == "classification":
            targets.set_class_weight(class_weight, everything)
        grid = settings["l2"]
        penalties = penalties_in_effect(settings, task)
        several = len(grid) * len(penalties) > 1
        folds = [folds_of(s) for s in range(n_seeds)] if several else []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_splits.*")
            linear = fit_linear_head(
                x,
                targets.arrays,
                task,
                n_classes=n_classes,
                l2=grid,
                folds=folds,
                penalties=penalties,
            )
        head = MLPHead(x.shape[1], [], n_classes, rngs=nnx.Rngs(random_state))
        head.output.kernel[...] = linear.kernel.astype(np.float32)
        head.output.bias[...] = linear.bias.astype(np.float32)
        inner_cv = None
        if folds:
            inner_cv = _fold_mean_metrics(targets, linear.out_of_fold, folds[0])
        return ProbeFit(
            head=head,
            train=everything,
            validation=np.zeros(0, dtype=np.int64),
            selection=linear.selection,
            inner_cv=inner_cv,
            l2=linear.l2,
            penalty=linear.penalty,
            inner_folds=len(folds[0]) if folds else 0,
        )

    from ..model import MLPHead

    def new_head(seed: int):
        return MLPHead(
            x.shape[1],
            settings["hidden_sizes"],
            n_classes,
            layer_norm=settings["layer_norm"],
            rngs=nnx.Rngs(random_state + seed),
        )

    template = new_head(0)
    graphdef = nnx.split(template, nnx.Param, ...)[0]
    trainer = _trainer(graphdef, task)
    evaluate = _evaluator(task, targets.arrays)
    common = dict(
        inputs=x,
        targets=targets.arrays,
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        weight_decay=settings["weight_decay"],
        evaluate=evaluate,
    )

    def train_head(seed, train, validation, epochs, patience, rng, show):
        module = new_head(seed)
        _, params, frozen_part = nnx.split(module, nnx.Param, ...)
        result = trainer.fit(
            params,
            frozen_part,
            train_index=train,
            validation_index=validation,
            epochs=epochs,
            patience=patience,
            rng=rng,
            progress=show,
            **common,
        )
        return nnx.merge(graphdef, result.params, frozen_part), result

    if inner:
        if task == "classification":
            targets.set_class_weight(class_weight, everything)
        curves, folds_used = [], 0
        from .._logging import progress_bar

        plan = [(s, f, fold) for s in range(n_seeds) for f, fold in enumerate(folds_of(s))]
        for seed, index, (train, validation) in progress_bar(
            plan, progress=progress, desc="inner folds", unit="fold"
        ):
            _, result = train_head(
                seed,
                train,
                validation,
                settings["epochs"],
                None,
                np.random.default_rng((random_state, seed, index)),
                False,
            )
            curves.append(result.history)
            folds_used = max(folds_used, index + 1)
        history = {
            name: [float(v) for v in np.mean([c[name] for c in curves], axis=0)]
            for name in curves[0]
        }
        best_epoch = int(np.argmin(history["val_loss"])) + 1
        heads = [
            train_head(
                seed,
                everything,
                np.zeros(0, dtype=np.int64),
                best_epoch,
                None,
                np.random.default_rng((random_state, seed)),
                False,
            )[0]
            for seed in range(n_seeds)
        ]
        inner_cv = {"n": int(x.shape[0])}
        for name, values in history.items():
            if name.startswith("val_") and name != "val_loss":
                inner_cv[name[4:]] = float(values[best_epoch - 1])
        selection = {
            "inner_folds": folds_used,
            "n_seeds": n_seeds,
            "epochs": settings["epochs"],
            "best_epoch": best_epoch,
            "cv_val_loss": history["val_loss"],
        }
        return ProbeFit(
            head=_combine(heads, task),
            train=everything,
            validation=np.zeros(0, dtype=np.int64),
            history=history,
            selection=selection,
            inner_cv=inner_cv,
            best_epoch=best_epoch,
            epochs_run=settings["epochs"],
            inner_folds=folds_used,
        )

    rng = np.random.default_rng(random_state)
    train, validation = stratified_split(targets.strata, settings["validation_fraction"], rng)
    if task == "classification":
        targets.set_class_weight(class_weight, train)
    heads, results = [], []
    for seed in range(n_seeds):
        module, result = train_head(
            seed,
            train,
            validation,
            settings["epochs"],
            settings["early_stopping"],
            rng if seed == 0 else np.random.default_rng((random_state, seed)),
            progress and n_seeds == 1,
        )
        heads.append(module)
        results.append(result)
    first = results[0]
    return ProbeFit(
        head=_combine(heads, task),
        train=train,
        validation=validation,
        history=first.history,
        best_epoch=first.best_epoch,
        epochs_run=first.epochs_run,
    )


def _combine(heads: list, task: str):
    if len(heads) == 1:
        return heads[0]
    return HeadEnsemble(heads, "probabilities" if task == "classification" else "mean")


def _fold_mean_metrics(targets: Targets, outputs: np.ndarray, folds) -> dict:
    """Metrics of out-of-fold outputs, averaged over the folds (NaN-free folds)."""
    per_fold = [_scores(targets.task, targets.arrays, outputs[v], v) for _, v in folds]
    names = per_fold[0].keys()
    record = {"n": int(sum(v.size for _, v in folds))}
    for name in names:
        values = np.array([m[name] for m in per_fold], dtype=np.float64)
        record[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return record


def predict(
    data,
    model: FinetunedModel | str,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    batch_size: int = 8,
    key_added: str | None = None,
    survival_times: Sequence[float] | None = None,
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
    survival_times
        Survival models: also write survival probabilities at these times (as
        :func:`finetune`).
    progress
        Show a progress bar.
    copy
        Write into a copy of ``data`` and return it.

    Returns
    -------
    None, or the annotated copy with ``copy=True``. Written, with ``key`` = ``key_added`` or
    its default (``f"{obs_key}_bulkrnabert"``, survival ``f"{obs_key}_bulkrnabert_risk"``):
    ``obs[key]`` (predicted class, or risk score), ``obsm[f"{key}_proba"]``
    (classification), ``obsm[f"{key}_survival"]`` (with ``survival_times``) and
    ``uns[f"{key}_finetune"]`` (the model's training ``params``, ``metrics``, ``history``,
    ``selection``, ``fields`` and ``classes``). A probe reuses ``obsm["X_bulkrnabert"]`` when
    ``tl.embed`` computed it with the model's encoder and block, and its fingerprints show that
    neither the expression values nor the encoder changed since.

    Raises
    ------
    TypeError
        ``data`` is not an AnnData or MuData (a DataFrame: wrap it in ``anndata.AnnData``), or
        ``model`` is an encoder (:class:`~bulkrnabert_sv.model.BulkRNABert`) rather than a
        fine-tuned model.
    ValueError
        ``key_added`` names the model's label columns or one of scanpy's ``obs`` columns;
        ``survival_times`` for a classifier.

    Warns
    -----
    UserWarning
        Prediction fields of an earlier run with the same key are replaced;
        ``obsm["X_bulkrnabert"]`` is not reused because X or the model changed since
        :func:`~bulkrnabert_sv.tl.embed`.
    """
    check_data(data, "tl.predict")
    model = _finetuned_model(model)
    batch_size = check_positive_int(batch_size, "batch_size")
    _check_key_added(key_added, model.obs_key, model.event_key)
    times = _check_times(survival_times)
    if times is not None:
        if model.task != "survival":
            raise ValueError("survival_times is for survival models; this is a classifier.")
        model.survival_function(np.zeros(1), times)  # no baseline hazard: say so before work
    if model.method == "probe":
        embeddings = _stored_or_embed(
            model.encoder,
            data,
            model.embedding_block,
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
    _write(get_modality(target_data, mod), model, outputs, key_added, "tl.predict", times)
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
def _check_times(times) -> np.ndarray | None:
    if times is None:
        return None
    values = np.asarray(times, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"survival_times must be finite times >= 0, got {times!r}.")
    return values


def resolve_settings(
    *,
    method,
    task,
    event_key,
    head,
    hidden_sizes,
    layer_norm,
    l2,
    inner_folds,
    n_seeds,
    class_weight,
    epochs,
    penalty=None,
    learning_rate,
    batch_size,
    weight_decay,
    validation_fraction,
    early_stopping,
    survival_times,
    inference_batch_size,
    key_added,
    obs_key,
) -> dict:
    """Check the arguments of :func:`finetune` and resolve their defaults (values only)."""
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
    if head is not None and head not in HEADS:
        raise ValueError(f"head must be one of {HEADS} or None, got {head!r}.")
    mlp_shape = hidden_sizes is not None or bool(layer_norm)
    if head is None:
        head = "linear" if method == "probe" and not mlp_shape else "mlp"
    settings: dict = {"head": head, "method": method, "task": task}
    if head == "linear":
        if method != "probe":
            raise ValueError(
                "head='linear' (fitted to convergence, L2 chosen by inner cross-validation) "
                f"needs fixed embeddings: method='probe'. For method={method!r} use head='mlp' "
                "(hidden_sizes=() gives a single linear layer trained with the encoder)."
            )
        if mlp_shape:
            raise ValueError(
                "hidden_sizes and layer_norm describe an MLP head; a linear head has neither. "
                "Pass head='mlp' to train an MLP."
            )
        given = {
            "epochs": epochs,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "validation_fraction": validation_fraction,
        }
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise ValueError(
                f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'} for training an MLP "
                "head; the linear head is fitted to convergence with its L2 strength chosen by "
                "inner cross-validation (set l2 and inner_folds instead), or pass head='mlp'."
            )
        grid = L2_GRID if l2 is None else tuple(np.atleast_1d(np.asarray(l2, dtype=np.float64)))
        if not grid or not all(np.isfinite(v) and v > 0 for v in grid):
            raise ValueError(f"l2 must be one value or several values > 0, got {l2!r}.")
        folds = DEFAULT_INNER_FOLDS if inner_folds is None else inner_folds
        folds = 0 if folds == 0 else check_int_at_least(folds, "inner_folds", 2)
        # None: the task's default (DEFAULT_PENALTIES), except that a fixed l2 is a strength on
        # the standardised scale.
        penalties = None
        if penalty is not None:
            penalties = list(check_penalties(penalty))
        elif len(grid) == 1:
            penalties = ["standardised"]
        several = {"l2": len(grid) > 1, "the penalty": len(penalties or ()) > 1}
        if folds == 0 and any(several.values()):
            what = " and ".join(name for name, many in several.items() if many)
            raise ValueError(
                f"inner_folds=0 leaves nothing to choose {what} with: pass a single "
                "l2=<value> and a single penalty, or inner_folds >= 2."
            )
        settings.update(
            l2=[float(v) for v in grid],
            penalty=penalties,
            inner_folds=folds if any(several.values()) else 0,
        )
    else:
        if penalty is not None:
            raise ValueError("penalty is the linear head's; the MLP head uses weight_decay.")
        if l2 is not None:
            raise ValueError(
                "l2 is the linear head's penalty; the MLP head uses weight_decay (AdamW)."
            )
        defaults = DEFAULTS[method]
        settings["epochs"] = check_int_at_least(
            defaults["epochs"] if epochs is None else epochs, "epochs", 1
        )
        settings["batch_size"] = check_int_at_least(
            defaults["batch_size"] if batch_size is None else batch_size, "batch_size", 1
        )
        rate = defaults["learning_rate"] if learning_rate is None else learning_rate
        if not (isinstance(rate, numbers.Real) and np.isfinite(rate) and rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {rate!r}.")
        settings["learning_rate"] = float(rate)
        decay = DEFAULT_WEIGHT_DECAY if weight_decay is None else weight_decay
        if not (isinstance(decay, numbers.Real) and np.isfinite(decay) and decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {decay!r}.")
        settings["weight_decay"] = float(decay)
        sizes = list(DEFAULT_HIDDEN_SIZES if hidden_sizes is None else hidden_sizes)
        if not all(isinstance(h, numbers.Integral) and h >= 1 for h in sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes!r}.")
        settings["hidden_sizes"] = [int(h) for h in sizes]
        settings["layer_norm"] = bool(layer_norm)
        if method == "probe":
            folds = DEFAULT_INNER_FOLDS if inner_folds is None else inner_folds
            folds = 0 if folds == 0 else check_int_at_least(folds, "inner_folds", 2)
            if folds and validation_fraction is not None:
                raise ValueError(
                    "validation_fraction is for one validation split; the probe's MLP chooses "
                    "its epochs by inner_folds. Pass inner_folds=0 to use a split instead."
                )
        else:
            if inner_folds not in (None, 0):
                raise ValueError(
                    f"inner_folds is for method='probe'; method={method!r} trains the encoder "
                    "and early-stops on one validation split (validation_fraction)."
                )
            folds = 0
        settings["inner_folds"] = folds
        fraction = (
            DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
        )
        if folds:
            fraction = 0.0
        if not (isinstance(fraction, numbers.Real) and 0 <= fraction < 1):
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {validation_fraction!r} "
                "(0 disables validation and early stopping)."
            )
        settings["validation_fraction"] = float(fraction)
        if early_stopping is not None:
            early_stopping = check_int_at_least(
                early_stopping, "early_stopping (a patience in epochs)", 1
            )
        settings["early_stopping"] = early_stopping
    settings["n_seeds"] = check_int_at_least(n_seeds, "n_seeds", 1)
    if settings["n_seeds"] > 1 and method != "probe":
        raise ValueError(
            f"n_seeds is for method='probe'; averaging over seeds would train the encoder "
            f"{settings['n_seeds']} times with method={method!r}."
        )
    settings["survival_times"] = _check_times(survival_times)
    if settings["survival_times"] is not None and (task == "classification" or class_weight):
        raise ValueError("survival_times is for survival models; drop it for classification.")
    check_int_at_least(inference_batch_size, "inference_batch_size", 1)
    _check_key_added(key_added, obs_key, event_key)
    return settings


def _settings_record(settings: Mapping) -> dict:
    """The resolved settings as recorded in ``params`` (JSON/h5ad friendly)."""
    record = {k: v for k, v in settings.items() if k not in ("task", "method", "survival_times")}
    if settings["head"] == "linear":
        record["l2_grid"] = record.pop("l2")
        record["penalty"] = list(penalties_in_effect(settings, settings["task"]))
    return record


def penalties_in_effect(settings: Mapping, task: str | None) -> tuple[str, ...]:
    """The linear head's penalty forms: the chosen ones, or the task's default (none while
    the task is unknown)."""
    if settings.get("penalty"):
        return tuple(settings["penalty"])
    return DEFAULT_PENALTIES[task] if task else ()


def labelled_targets(data, adata, obs_key: str, event_key: str | None, task) -> Targets:
    """The encoded targets of the labelled samples (classes, or durations and events)."""
    column = obs_column(data, adata, obs_key, "the labels to learn")
    task = task or infer_task(column, obs_key, event_key)
    if task == "survival":
        if event_key is None:
            raise ValueError(
                "task='survival' needs event_key=<obs column of event indicators> "
                f"(1 = event, 0 = censored); obs[{obs_key!r}] holds the durations."
            )
        events = obs_column(data, adata, event_key, "the event indicators")
        return survival_targets(column, events, obs_key, event_key)
    return classification_targets(column, obs_key)


def check_inputs(targets: Targets, settings: Mapping, obs_key: str) -> None:
    """Enough samples of every class (or of events and censored samples) for the folds/split."""
    if settings["inner_folds"]:
        check_splittable(targets, 1.0, obs_key, folds=True)
    else:
        check_splittable(targets, settings.get("validation_fraction", 0.0), obs_key)


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
            "(None: f'{obs_key}_bulkrnabert', or f'{obs_key}_bulkrnabert_risk' for survival)."
        )


@functools.lru_cache(maxsize=COMPILE_CACHE_SIZE)
def _trainer(graphdef, task: str) -> Trainer:
    """A trainer per model structure (``graphdef``) and task, compiled once and reused."""

    def apply(params, frozen, x):
        return nnx.merge(graphdef, params, frozen)(x)

    return Trainer(apply, LOSSES[task])


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
    encoder, data, block, *, layer, gene_key, mod, batch_size, progress, info, function
):
    """``obsm["X_bulkrnabert"]`` if still valid for ``encoder`` and the data, else new embeddings.

    Valid: :func:`stored_embeddings` accepts its record (source, revision, block, expression
    layer, gene key) and the fingerprints ``tl.embed`` stored match (the encoder's, and the
    tokens' of the data as it is now, hashed in one pass without embedding). Otherwise the embeddings are recomputed,
    with a warning saying why when there were stored ones.
    """
    from ..pp._tokens import token_batches

    adata = get_modality(data, mod)
    stored = stored_embeddings(adata, encoder, block, layer, gene_key)
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
            stacklevel=user_stacklevel(),
        )
    return embed_tokens(encoder, batches, block=block, batch_size=batch_size, progress=progress)


def _trainable(method: str, block: int):
    """Which variables of ``EncoderWithHead`` are trained (the rest stays frozen)."""
    from ..model import IA3Param, MaskEmbeddingParam

    def predicate(path, variable) -> bool:
        if not isinstance(variable, nnx.Param) or isinstance(variable, MaskEmbeddingParam):
            return False
        if path[0] == "head":
            return True
        # Encoder: the LM head and blocks above the embedding block get no gradient.
        if path[1] == "lm_head" or (path[1] == "layers" and int(path[2]) >= block):
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


def _evaluator(task: str, arrays: Mapping[str, np.ndarray]):
    def evaluate(outputs: np.ndarray, index: np.ndarray) -> dict[str, float]:
        return _scores(task, arrays, outputs, index)

    return evaluate


def _scores(task: str, arrays, outputs: np.ndarray, index: np.ndarray) -> dict[str, float]:
    """Metrics of ``outputs`` for the samples ``index`` of ``arrays`` (targets)."""
    outputs = np.asarray(outputs)
    if task == "classification":
        return classification_metrics(
            arrays["label"][index], outputs.argmax(axis=1), outputs.shape[1]
        )
    try:
        value = concordance_index(arrays["time"][index], outputs[:, 0], arrays["event"][index])
    except ValueError:
        value = float("nan")
    return {"c_index": value}


def _metrics(targets: Targets, outputs: np.ndarray, positions: np.ndarray) -> dict:
    """``n`` and the metrics of the labelled samples at ``positions``."""
    if positions.size == 0:
        return {"n": 0}
    return {
        "n": int(positions.size),
        **_scores(targets.task, targets.arrays, outputs[positions], positions),
    }


def _drop_none(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def prediction_fields(model: FinetunedModel, key_added: str | None) -> dict[str, str]:
    """Where a model's predictions go: ``obs``, ``obsm`` (probabilities, survival), ``uns``."""
    if key_added is None:
        key = prediction_key(model.obs_key, model.task)
    else:
        key = key_added
    fields = {"obs": key, "uns": finetune_uns_key(key)}
    if model.task == "classification":
        fields["obsm"] = f"{key}{PROBA_SUFFIX}"
    else:
        fields["obsm_survival"] = f"{key}{SURVIVAL_SUFFIX}"
    return fields


def _write(
    adata,
    model: FinetunedModel,
    outputs: np.ndarray,
    key_added: str | None,
    function: str,
    survival_times: np.ndarray | None = None,
) -> None:
    """Write predictions and the ``uns`` record: all of them, or none (values computed first).

    Warns (at the caller of ``function``) when fields of an earlier run with the same key are
    replaced; survival curves of such a run that this one does not write are removed.
    """
    frame = model.frame(outputs, adata.obs_names)
    names = prediction_fields(model, key_added)
    record = {
        "params": dict(model.params),
        "metrics": {k: dict(v) for k, v in model.metrics.items()},
        "history": {k: list(v) for k, v in model.history.items()},
    }
    if model.selection:
        record["selection"] = dict(model.selection)
    fields: dict[tuple[str, str], object] = {}
    if model.task == "classification":
        codes = np.asarray(outputs).argmax(axis=1)
        fields["obs", names["obs"]] = pd.Categorical.from_codes(
            codes, categories=list(model.classes)
        )
        fields["obsm", names["obsm"]] = frame.to_numpy(dtype=np.float32)
        record["classes"] = list(model.classes)
    else:
        risk = frame["risk"].to_numpy()
        fields["obs", names["obs"]] = risk
        if survival_times is not None:
            curves = model.survival_function(risk, survival_times)
            fields["obsm", names["obsm_survival"]] = curves.astype(np.float32)
            record["survival_times"] = [float(t) for t in survival_times]
    record["fields"] = {
        "obs": names["obs"],
        "obsm": [key for where, key in fields if where == "obsm"],
        "uns": names["uns"],
    }
    fields["uns", names["uns"]] = record
    stale = []
    if survival_times is None and "obsm_survival" in names:
        stale = [("obsm", names["obsm_survival"])] if names["obsm_survival"] in adata.obsm else []
    old = {
        (where, key): getattr(adata, where)[key]
        for where, key in [*fields, *stale]
        if key in getattr(adata, where)
    }
    warn_overwrite([f"{where}[{key!r}]" for where, key in old], function, stacklevel=3)
    try:
        for (where, key), value in fields.items():
            getattr(adata, where)[key] = value
        for where, key in stale:
            del getattr(adata, where)[key]
    except BaseException:
        for where, key in [*fields, *stale]:
            container = getattr(adata, where)
            if (where, key) in old:
                container[key] = old[where, key]
            elif key in container:
                del container[key]
        raise
