"""``tl.pretrain``: masked expression modelling on AnnData/MuData, resumable, data parallel."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import nnx

from .. import _logging as logg
from .._anndata import get_modality
from .._files import PRETRAIN_FINAL_MODEL_DIR as FINAL_MODEL_DIR
from .._validation import check_int_at_least
from ..model import PRESETS, BulkRNABert, BulkRNABertConfig, CheckpointError, load_model
from ..model.loading import looks_like_repo_id
from ..pp._align import strip_ensembl_version
from ..pp._tokens import token_batches
from ..training import sharding as shard
from ..training.fitting import adamw_transform
from ..training.masking import check_mask_rate, marginal_log_probs, masked_sums, sample_mask
from ..training.pretrain_checkpoint import (
    Checkpointer,
    CorruptCheckpointWarning,
    PretrainCheckpointError,
    check_folder_path,
    fingerprint,
    key_name,
    prepare_folder,
)

__all__ = ["CorruptCheckpointWarning", "PretrainCheckpointError", "pretrain"]

HISTORY_COLUMNS = ("step", "loss", "masked_accuracy", "baseline_loss", "learning_rate")
_TOKENIZE_ROWS = 256


def pretrain(
    data,
    *,
    model: str | os.PathLike | BulkRNABert | BulkRNABertConfig | None = None,
    genes: Sequence[str] | None = None,
    mask_rate: float = 0.15,
    steps: int = 1000,
    batch_size: int = 8,
    gradient_accumulation: int = 1,
    learning_rate: float = 1e-4,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    stop_after: int | None = None,
    random_state: int = 0,
    progress: bool = True,
    callback: Callable[[dict], Any] | None = None,
    devices: Sequence[jax.Device] | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
) -> tuple[BulkRNABert, pd.DataFrame]:
    """Pretrain (or continue pretraining) BulkRNABert by masked expression modelling.

    Each step masks genes at random, replaces their expression embedding with a learned mask
    embedding and trains the model to predict their expression bins (cross-entropy on the masked
    positions only). The original pretraining code was not published; our masking choices are
    described in :doc:`/pretraining`. Data are split over all devices (``jax.sharding``, one
    ``"data"`` mesh axis, parameters replicated), across hosts after
    ``jax.distributed.initialize()``.

    Parameters
    ----------
    data
        AnnData or MuData (``mod`` picks the modality) with TPM in ``X`` or ``layers[layer]``,
        the same input as :func:`bulkrnabert_sv.tl.embed`. Backed and sparse data are read in
        row batches; only the tokens (one byte per gene and sample) are kept in memory.
    model
        What to train:

        * ``None`` or a preset name (``"tcga"``, ``"gtex_encode"``, ``"small"``, ``"tiny"``):
          a new model with random weights (seeded by ``random_state``) and that preset's
          architecture, whose vocabulary is the input's genes (see ``genes``);
        * a :class:`~bulkrnabert_sv.model.BulkRNABertConfig`: a new random model of that
          architecture (``n_genes`` follows the vocabulary);
        * a checkpoint source (``"compact"`` for the bundled compact model, a folder or a
          Hugging Face repo id, as for :func:`~bulkrnabert_sv.load_model`) or a loaded
          :class:`BulkRNABert`: continue from
          its weights; the data are aligned to ``model.genes`` as in ``tl.embed``. A model passed
          in is copied, never modified.
    genes
        Vocabulary of a *new* model, unversioned Ensembl ids in model order. Default: the input's
        gene ids (``var_names`` or ``var[gene_key]``, versions stripped, ``_PAR_Y`` rows dropped)
        in input order. Subset the input first to train on fewer genes: the cost of a step grows
        with the square of the number of genes. Not allowed when continuing a model.
    mask_rate
        Probability that a gene is masked, independently per gene and sample; in (0, 1).
    steps
        Total number of optimiser updates of the run (the learning rate schedule spans them).
    batch_size
        Samples per micro-batch, split over the devices (a multiple of their number; at most the
        number of samples).
    gradient_accumulation
        Micro-batches per update: an update sees ``batch_size * gradient_accumulation`` samples,
        and its loss is the mean over all their masked positions.
    learning_rate
        Peak learning rate of AdamW.
    warmup_steps
        Linear warm-up from 0 to ``learning_rate`` over this many updates, then a cosine decay to
        0 at ``steps`` (:func:`optax.warmup_cosine_decay_schedule`). Default ``steps // 10``
        (at most 1000).
    weight_decay
        Decoupled weight decay of AdamW, applied to matrices only (not to biases, LayerNorm
        parameters or the mask embedding).
    max_grad_norm
        Clip gradients to this global norm (``None``: no clipping).
    checkpoint_dir
        Folder for checkpoints (orbax): training state every ``checkpoint_every`` steps and at the
        end (the two latest are kept), the run's configuration in ``pretrain_config.json`` and
        the final model in ``<checkpoint_dir>/model`` (read it with ``load_model``). On several
        hosts it must be on a shared file system.
    checkpoint_every
        Steps between checkpoints: an interrupted run loses at most the steps since the last one
        (on ``KeyboardInterrupt`` the last completed step is saved too).
    resume
        Continue from the latest checkpoint in ``checkpoint_dir`` when there is one. The folder's
        configuration (model architecture, genes, data, settings) must match this call.
        With ``resume=False`` a folder that holds checkpoints is an error. A latest checkpoint
        that cannot be read (damaged files, a missing item) is set aside as
        ``<step>.corrupt`` and the run resumes from the one before, with a
        ``CorruptCheckpointWarning``.
    stop_after
        Run at most this many steps in this call, save a checkpoint and return (e.g. to fit a job
        time limit); call again with the same arguments to continue.
    random_state
        Seed of the initial weights of a new model, the batch order and the masks. Step ``k``
        uses random numbers derived from ``(random_state, k)`` only, so a resumed run is
        identical to an uninterrupted one.
    progress
        Show a progress bar (on the first process) with the loss and the baseline loss.
    callback
        Called with each new history row (a dict); an exception it raises stops training.
    devices
        Devices for data parallelism (default: all devices of all processes, ``jax.devices()``).
    layer, gene_key, mod
        Where the TPM values and gene ids are, as in :func:`bulkrnabert_sv.tl.embed`.

    Returns
    -------
    model
        The trained :class:`BulkRNABert`, with its mask embedding (saved by ``model.save`` and read
        back by ``load_model``; usable by ``tl.embed`` and ``tl.finetune``).
    history
        One row per step: ``step`` (updates done), ``loss`` (mean cross-entropy on the masked
        positions, before this step's update), ``masked_accuracy`` (fraction of masked positions
        whose most probable bin is right), ``baseline_loss`` (cross-entropy of each gene's
        marginal bin distribution on the same positions, estimated on the training data with
        add-one smoothing) and ``learning_rate``. ``history.attrs`` records ``n_devices``,
        ``n_processes``, ``n_obs``, ``n_genes``, ``resumed_from`` (step or None) and
        ``checkpoint_dir``.

    Raises
    ------
    ValueError
        Bad settings (mask rate outside (0, 1), batch larger than the data, ...).
    PretrainCheckpointError
        ``checkpoint_dir`` belongs to another run (the message lists what differs), is a file,
        or holds no readable checkpoint.
    """
    settings = _check_settings(
        mask_rate=mask_rate,
        steps=steps,
        batch_size=batch_size,
        gradient_accumulation=gradient_accumulation,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        checkpoint_every=checkpoint_every,
        stop_after=stop_after,
        random_state=random_state,
    )
    if checkpoint_dir is not None:
        check_folder_path(Path(checkpoint_dir))  # a file: refused before any work is done
    adata = get_modality(data, mod)
    net = _initial_model(model, adata, genes=genes, gene_key=gene_key, seed=random_state)
    tokens = _tokens(adata, net, layer=layer, gene_key=gene_key)
    mesh = _data_mesh(devices, batch_size, tokens.shape[0])
    saver = _Saver.open(checkpoint_dir, checkpoint_every, resume, net, tokens, settings)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    tx, train_step = _train_step(
        graphdef, settings["weight_decay"], settings["max_grad_norm"], mesh
    )
    state = shard.replicate(
        {"params": params, "opt_state": tx.init(params), "step": np.int32(0)}, mesh
    )
    state, history, resumed_from = saver.restore(state, resume)
    stepper = _Stepper.build(train_step, rest, tokens, net, settings, mesh)
    start = int(jax.device_get(state["step"]))
    end = steps if stop_after is None else min(steps, start + stop_after)
    began = logg.info(
        f"pretraining {net!r} on {tokens.shape[0]} samples: steps {start + 1} to {end} of {steps}"
        + ("" if resumed_from is None else f" (resumed from step {resumed_from})")
    )
    state = _train(stepper, state, history, range(start, end), saver, callback, progress, steps)
    done = int(jax.device_get(state["step"]))
    saver.finish(done, state, history)
    trained = nnx.merge(graphdef, shard.to_local(state["params"]), shard.to_local(stepper.rest))
    if saver.checkpointer is not None and done == steps:
        _save_final_model(trained, Path(checkpoint_dir) / FINAL_MODEL_DIR)
    frame = _history_frame(
        history,
        n_devices=shard.n_shards(mesh),
        n_processes=jax.process_count(),
        n_obs=tokens.shape[0],
        n_genes=net.config.n_genes,
        resumed_from=resumed_from,
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
    )
    _log_finished(history, done, steps, trained, saver.checkpointer is not None, began)
    return trained, frame


# ------------------------------------------------------------------------------ pretrain's steps
def _data_mesh(devices, batch_size: int, n_obs: int):
    """The devices' data mesh, once the micro-batch fits in the data and splits over them."""
    if batch_size > n_obs:
        raise ValueError(
            f"batch_size={batch_size} is larger than the data ({n_obs} samples); "
            f"pass batch_size <= {n_obs} (and use gradient_accumulation for larger updates)."
        )
    mesh = shard.data_mesh(devices)
    n_devices = shard.n_shards(mesh)
    if batch_size % n_devices:
        raise ValueError(
            f"batch_size={batch_size} cannot be split evenly over {n_devices} devices; pass a "
            f"multiple of {n_devices} or choose devices= explicitly."
        )
    return mesh


class _Saver:
    """The run's checkpoints: periodic, on interruption and at the end (nothing without a folder).

    Parameters
    ----------
    checkpointer
        The folder's :class:`Checkpointer`, or None when the run keeps no checkpoints.
    every
        Steps between periodic checkpoints.
    folder
        The folder as the caller named it (for messages).
    """

    def __init__(self, checkpointer: Checkpointer | None, every: int, folder=None):
        self.checkpointer = checkpointer
        self.every = every
        self.folder = folder
        self.last_saved: int | None = None

    @classmethod
    def open(cls, folder, every: int, resume: bool, net, tokens, settings: dict) -> _Saver:
        """Prepare ``folder`` for this run (its configuration must match) and open it."""
        if folder is None:
            return cls(None, every)
        prepare_folder(Path(folder), _run_config(net, tokens, settings), resume=resume)
        return cls(Checkpointer(Path(folder)), every, folder)

    def restore(self, state, resume: bool) -> tuple[Any, list[dict], int | None]:
        """The newest readable checkpoint's state and history, and its step (or ``state``).

        A damaged latest checkpoint is set aside with a warning; checkpoints beyond the two
        kept, which a killed run can leave, are deleted.
        """
        if self.checkpointer is None or not resume:
            return state, [], None
        restored = self.checkpointer.restore_latest(state)
        if restored is None:
            return state, [], None
        step, state, meta = restored
        self.last_saved = step
        return state, [dict(zip(HISTORY_COLUMNS, row)) for row in meta["history"]], step

    def periodic(self, done: int, state, history: list[dict]) -> None:
        """Save every ``every`` steps."""
        if self.checkpointer is not None and done % self.every == 0:
            self.checkpointer.save(done, state, {"history": _rows(history)})
            self.last_saved = done
            logg.debug(f"saved the checkpoint of step {done} to {self.folder}")

    def interrupted(self, state, history: list[dict]) -> None:
        """Save the last completed step (one process only: saving is collective) and close."""
        if self.checkpointer is None:
            return
        done = int(jax.device_get(state["step"]))
        if done != self.last_saved and done > 0 and jax.process_count() == 1:
            history = [r for r in history if r["step"] <= done]
            self.checkpointer.save(done, state, {"history": _rows(history)})
        self.checkpointer.close()

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()

    def finish(self, done: int, state, history: list[dict]) -> None:
        """Save the last step unless it is saved already, and close."""
        if self.checkpointer is None:
            return
        if done != self.last_saved and done > 0:
            self.checkpointer.save(done, state, {"history": _rows(history)})
        self.checkpointer.close()


@dataclasses.dataclass(frozen=True, eq=False)
class _Stepper:
    """One update of the run, its batch, learning rate and masks given by the step number only."""

    train_step: Callable
    rest: Any
    tokens: np.ndarray
    sampler: _BatchSampler
    accumulation: int
    batch_sharding: Any
    log_baseline: Any
    learning_rates: np.ndarray
    mask_rate: np.float32
    seed: np.uint32

    @classmethod
    def build(cls, train_step, rest, tokens: np.ndarray, net, settings: dict, mesh) -> _Stepper:
        """The step's inputs: replicated frozen state and baseline, the schedule's values."""
        log_baseline = marginal_log_probs(tokens, net.config.n_expressions_bins)
        schedule = jax.jit(jax.vmap(_schedule(settings)))(np.arange(settings["steps"]))
        return cls(
            train_step=train_step,
            rest=shard.replicate(rest, mesh),
            tokens=tokens,
            sampler=_BatchSampler(
                tokens.shape[0], settings["batch_size"], settings["random_state"]
            ),
            accumulation=settings["gradient_accumulation"],
            batch_sharding=shard.batch_sharding(mesh, axis=1),
            log_baseline=shard.global_array(log_baseline, shard.replicated(mesh)),
            learning_rates=np.asarray(schedule).astype(np.float32),
            mask_rate=np.float32(settings["mask_rate"]),
            seed=np.uint32(settings["random_state"]),
        )

    def __call__(self, state, step: int) -> tuple[Any, dict]:
        """The state after update ``step + 1`` and its history row."""
        micro = [self.sampler(step * self.accumulation + a) for a in range(self.accumulation)]
        batch = shard.global_array(self.tokens[np.stack(micro)], self.batch_sharding)
        lr = self.learning_rates[step]
        state, metrics = self.train_step(
            state, self.rest, batch, self.log_baseline, lr, self.mask_rate, self.seed
        )
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        return state, {"step": step + 1, **metrics, "learning_rate": float(lr)}


def _train(
    stepper: _Stepper,
    state,
    history: list[dict],
    steps: range,
    saver: _Saver,
    callback: Callable[[dict], Any] | None,
    progress: bool,
    total: int,
):
    """Run ``steps`` (appending to ``history``), saving as they go; the final state.

    On ``KeyboardInterrupt`` the last completed step is saved; on any exception the
    checkpoints are closed before it propagates.
    """
    bar = _progress_bar(progress, total, steps.start)
    try:
        for step in steps:
            state, row = stepper(state, step)
            history.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{row['loss']:.3f}",
                    baseline=f"{row['baseline_loss']:.3f}",
                    acc=f"{row['masked_accuracy']:.3f}",
                )
            saver.periodic(step + 1, state, history)
            if callback is not None:
                callback(dict(row))
    except KeyboardInterrupt:
        saver.interrupted(state, history)
        raise
    except BaseException:
        saver.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    return state


def _save_final_model(trained: BulkRNABert, target: Path) -> None:
    """Write the trained model (on the first process) and record it as the model's source."""
    if jax.process_index() == 0:
        trained.save(target)
    trained.source = str(target)


def _history_frame(history: list[dict], **attrs) -> pd.DataFrame:
    """The history as a DataFrame (one row per step), ``attrs`` describing the run."""
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    frame["step"] = frame["step"].astype(int)
    frame.attrs.update(attrs)
    return frame


def _log_finished(history, done: int, steps: int, trained, saved: bool, began) -> None:
    """Log the last step's loss, baseline and accuracy (and where the model was saved)."""
    if not history:
        return
    last = history[-1]
    logg.info(
        f"    finished: step {done} of {steps}, loss {last['loss']:.4g} (baseline "
        f"{last['baseline_loss']:.4g}), masked accuracy {last['masked_accuracy']:.3f}"
        + (f"; model saved to {trained.source}" if done == steps and saved else ""),
        time=began,
    )


# ------------------------------------------------------------------------------------ settings
def _check_settings(**values) -> dict:
    def positive_int(name: str, minimum: int = 1) -> int:
        return check_int_at_least(values[name], name, minimum)

    out = {"mask_rate": check_mask_rate(values["mask_rate"])}
    for name in ("steps", "batch_size", "gradient_accumulation", "checkpoint_every"):
        out[name] = positive_int(name)
    out["random_state"] = positive_int("random_state", 0)
    if out["random_state"] >= 2**32:
        raise ValueError(f"random_state must be below 2**32, got {out['random_state']}.")
    if values["stop_after"] is not None:
        positive_int("stop_after")
    steps = out["steps"]
    warmup = values["warmup_steps"]
    if warmup is None:
        warmup = min(steps // 10, 1000)
    elif isinstance(warmup, bool) or not isinstance(warmup, int | np.integer) or warmup < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup!r}.")
    if warmup >= steps:
        raise ValueError(
            f"warmup_steps={warmup} must be smaller than steps={steps}: the learning rate "
            "warms up, then decays until the last step. Pass fewer warmup_steps."
        )
    out["warmup_steps"] = int(warmup)
    lr = values["learning_rate"]
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be a positive number, got {lr!r}.")
    out["learning_rate"] = float(lr)
    wd = values["weight_decay"]
    if not (isinstance(wd, int | float) and math.isfinite(wd) and wd >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {wd!r}.")
    out["weight_decay"] = float(wd)
    clip = values["max_grad_norm"]
    if clip is not None and not (isinstance(clip, int | float) and clip > 0):
        raise ValueError(f"max_grad_norm must be a positive number or None, got {clip!r}.")
    out["max_grad_norm"] = None if clip is None else float(clip)
    return out


def _run_config(net: BulkRNABert, tokens: np.ndarray, settings: dict) -> dict:
    """What must not change between a run and its resumption (stored in the checkpoint folder)."""
    cfg = net.config
    training = {k: v for k, v in settings.items() if k != "checkpoint_every"}
    return {
        "model": {
            **cfg.architecture(),
            "normalization_factor": cfg.normalization_factor,
            "ia3": net.has_ia3,
        },
        "genes": {
            "n": len(net.genes),
            "sha256": fingerprint(np.asarray("\n".join(net.genes).encode())),
        },
        "data": {"n_obs": int(tokens.shape[0]), "tokens_sha256": fingerprint(tokens)},
        "training": training,
    }


def _schedule(settings: dict):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=settings["learning_rate"],
        warmup_steps=settings["warmup_steps"],
        decay_steps=settings["steps"],
        end_value=0.0,
    )


def _is_key_bias(path) -> bool:
    return "attention.key.bias" in ".".join(key_name(entry) for entry in path)


def _frozen_mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_key_bias(path), params)


def _optimizer(weight_decay: float, max_grad_norm: float | None) -> optax.GradientTransformation:
    """The package's AdamW (:func:`~bulkrnabert_sv.training.fitting.adamw_transform`) without
    its last stage, the learning rate, which the step applies, and with the key biases frozen.

    Taking the learning rate as an argument of the step keeps the compiled step independent of
    the schedule's settings.

    Attention key biases are not trained: adding ``b`` to every key adds ``q·b`` to all of a
    query's logits, which the softmax ignores, so their gradient is zero up to rounding, and Adam
    would turn that rounding noise into steps of the full learning rate.
    """
    return adamw_transform(
        weight_decay, learning_rate=None, max_grad_norm=max_grad_norm, frozen=_frozen_mask
    )


# ------------------------------------------------------------------------------------ model, data
def _initial_model(model, adata, *, genes, gene_key, seed: int) -> BulkRNABert:
    """A new random model (preset, config) or a copy of the model to continue from."""
    if model is None:
        model = "tcga"
    if (isinstance(model, str) and model in PRESETS) or isinstance(model, BulkRNABertConfig):
        vocabulary = (
            _input_vocabulary(adata, gene_key) if genes is None else _checked_vocabulary(genes)
        )
        config = BulkRNABertConfig.from_preset(model) if isinstance(model, str) else model
        config = config.replace(n_genes=len(vocabulary))
        net = BulkRNABert(config, rngs=nnx.Rngs(seed), genes=vocabulary)
    elif isinstance(model, BulkRNABert | str | os.PathLike):
        if genes is not None:
            raise ValueError(
                "genes= sets the vocabulary of a new model; a model to continue from keeps its "
                "own (the data are aligned to model.genes). Drop genes=, or pass a preset name."
            )
        net = nnx.clone(model) if isinstance(model, BulkRNABert) else _load(model)
        if net.genes is None:
            raise ValueError(
                "The model has no gene list, so the data cannot be aligned to it. Load it from a "
                "checkpoint that has one, or pass genes= to load_model."
            )
    else:
        raise TypeError(
            "model must be None, a preset name, a BulkRNABertConfig, a checkpoint source or a "
            f"BulkRNABert, got {type(model).__name__}."
        )
    net.enable_mask_embedding(nnx.Rngs(seed))
    # Provenance is not part of the trained model (and keeps the compiled step reusable).
    net.source = None
    net.revision = None
    return net


def _load(source: str | os.PathLike) -> BulkRNABert:
    """``load_model(source)``; a name that is neither a folder nor a repo id lists the presets."""
    try:
        return load_model(source)
    except CheckpointError:
        text = str(source)
        if isinstance(source, str) and not Path(text).expanduser().exists():
            if not looks_like_repo_id(text):
                raise ValueError(
                    f"model={source!r} is not a preset name (one of {sorted(PRESETS)}), an "
                    "existing checkpoint folder or a Hugging Face repo id (like "
                    "'InstaDeepAI/BulkRNABert'). Pass one of those, or a BulkRNABertConfig."
                ) from None
        raise


def _input_vocabulary(adata, gene_key: str | None) -> tuple[str, ...]:
    if gene_key is None:
        names = adata.var_names.astype(str)
    elif gene_key in adata.var.columns:
        names = adata.var[gene_key].astype(str)
    else:
        raise KeyError(
            f"adata.var has no column {gene_key!r}; available: {list(adata.var.columns)}. "
            "Pass gene_key=None to use var_names."
        )
    names = [n for n in names if not n.endswith("_PAR_Y")]
    return _checked_vocabulary(names, what="the input's gene ids")


def _checked_vocabulary(names, what: str = "genes") -> tuple[str, ...]:
    names = [str(n) for n in names]
    ids = [strip_ensembl_version(n) for n in names]
    bad = [n for n, i in zip(names, ids) if i is None]
    if bad:
        raise ValueError(
            f"A new model's vocabulary is made of unversioned Ensembl gene ids, but {len(bad)} of "
            f"{what} are not Ensembl ids (e.g. {', '.join(bad[:3])}). Map them to Ensembl ids, "
            "pass gene_key= naming a var column of Ensembl ids, or pass genes=[...] explicitly."
        )
    vocabulary = tuple(dict.fromkeys(ids))  # first occurrence kept; duplicates are summed
    if not vocabulary:
        raise ValueError(f"There are no genes in {what}: a model needs at least one.")
    return vocabulary


def _tokens(adata, net: BulkRNABert, *, layer, gene_key) -> np.ndarray:
    """All samples' tokens in model order, streamed in row batches, as uint8 (uint16)."""
    n_bins = net.config.n_expressions_bins
    dtype = np.uint8 if n_bins <= 256 else np.uint16
    batches = token_batches(adata, net, layer=layer, gene_key=gene_key, batch_size=_TOKENIZE_ROWS)
    tokens = np.empty((batches.n_obs, net.config.n_genes), dtype=dtype)
    for start, stop, block in batches:
        tokens[start:stop] = np.minimum(block, n_bins - 1)
    if batches.n_obs == 0:
        raise ValueError("The data have no samples (n_obs == 0).")
    return tokens


class _BatchSampler:
    """Micro-batch ``j``'s sample indices: epochs of seeded permutations, last partial batch dropped.

    A pure function of ``(random_state, j)``, so a resumed run draws the same batches.
    """

    def __init__(self, n_obs: int, batch_size: int, seed: int):
        self.n_obs, self.batch_size, self.seed = n_obs, batch_size, seed
        self.per_epoch = n_obs // batch_size
        self._epoch, self._order = -1, None

    def __call__(self, j: int) -> np.ndarray:
        epoch, position = divmod(j, self.per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._order = epoch, rng.permutation(self.n_obs)
        return self._order[position * self.batch_size : (position + 1) * self.batch_size]


# ------------------------------------------------------------------------------------ the step
@functools.lru_cache(maxsize=8)
def _train_step(graphdef, weight_decay: float, max_grad_norm: float | None, mesh):
    """The jitted update (cached: calls with the same model structure and mesh compile once).

    ``state`` holds ``params``, ``opt_state`` and ``step``; ``tokens`` is (micro-batches, batch,
    genes), split over the devices along the batch. Gradients of the summed masked loss are
    accumulated over the micro-batches and divided by the total number of masked positions.
    """
    tx = _optimizer(weight_decay, max_grad_norm)
    replicated = shard.replicated(mesh)
    batch = shard.batch_sharding(mesh, axis=1)

    def step_fn(state, rest, tokens, log_baseline, learning_rate, mask_rate, seed):
        params, step = state["params"], state["step"]
        step_key = jax.random.fold_in(jax.random.key(seed), step)

        def micro(carry, xs):
            grads, sums = carry
            toks, index = xs
            toks = toks.astype(jnp.int32)
            mask = sample_mask(jax.random.fold_in(step_key, index), toks.shape, mask_rate)

            def loss_fn(p):
                net = nnx.merge(graphdef, p, rest)
                logits = net(toks, mask=mask)["logits"]
                out = masked_sums(logits, toks, mask, log_baseline)
                return out["loss"], out

            (_, out), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, out)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        zero_sums = dict.fromkeys(("loss", "correct", "baseline", "count"), jnp.float32(0))
        (grads, sums), _ = jax.lax.scan(
            micro, (zeros, zero_sums), (tokens, jnp.arange(tokens.shape[0]))
        )
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        updates = jax.tree.map(lambda u: -learning_rate * u, updates)
        params = optax.apply_updates(params, updates)
        metrics = {
            "loss": sums["loss"] / count,
            "masked_accuracy": sums["correct"] / count,
            "baseline_loss": sums["baseline"] / count,
        }
        return {"params": params, "opt_state": opt_state, "step": step + 1}, metrics

    return tx, jax.jit(
        step_fn,
        in_shardings=(replicated, replicated, batch, replicated, None, None, None),
        out_shardings=(replicated, replicated),
    )


def _rows(history: list[dict]) -> list[list]:
    return [[row[c] for c in HISTORY_COLUMNS] for row in history]


def _progress_bar(progress: bool, total: int, initial: int):
    if not progress or jax.process_index() != 0:
        return None
    return logg.progress_bar(total=total, initial=initial, desc="pretrain", unit="step")
