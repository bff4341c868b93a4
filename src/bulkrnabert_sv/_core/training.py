"""A small supervised training loop: stratified split, padded mini-batches, AdamW, early stopping.

The model is given as pure functions of pytrees so that one jitted step serves the MLP probe
(inputs are embeddings) and encoder fine-tuning (inputs are tokens):

* ``apply(params, frozen, inputs) -> outputs`` computes the model's outputs for a batch;
* ``loss(outputs, targets, mask) -> scalar`` is the training loss, where ``targets`` is a dict of
  per-sample arrays and ``mask`` marks the real samples of a padded batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax


def stratified_split(
    strata: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, validation)``: about ``fraction`` of each stratum goes to validation.

    Every stratum needs at least 2 members (one on each side); check before calling. With
    ``fraction == 0`` everything is training. Indices are returned sorted.
    """
    strata = np.asarray(strata)
    n = strata.shape[0]
    if fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    validation = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        n_val = int(np.clip(round(fraction * members.size), 1, members.size - 1))
        validation.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(validation))
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def padded_batches(
    indices: np.ndarray, batch_size: int, rng: np.random.Generator | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``indices`` (shuffled when ``rng`` is given) into batches of exactly ``batch_size``.

    The last batch is padded by repeating its first index; the mask is False on padding.
    """
    indices = np.asarray(indices)
    if rng is not None:
        indices = rng.permutation(indices)
    batches = []
    for start in range(0, indices.size, batch_size):
        chunk = indices[start : start + batch_size]
        mask = np.ones(batch_size, dtype=bool)
        if chunk.size < batch_size:
            mask[chunk.size :] = False
            chunk = np.concatenate([chunk, np.full(batch_size - chunk.size, chunk[0])])
        batches.append((chunk, mask))
    return batches


def decay_mask(params):
    """Weight decay on matrices only (not on biases, norms, IA3 vectors)."""
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def adamw(max_grad_norm: float | None = 1.0):
    """AdamW (decay on matrices only) after gradient clipping, as a factory of
    ``(learning_rate, weight_decay)`` whose values live in the optimiser state (so one compiled
    step serves every learning rate)."""

    @optax.inject_hyperparams
    def make(learning_rate, weight_decay):
        parts = [] if max_grad_norm is None else [optax.clip_by_global_norm(max_grad_norm)]
        parts.append(optax.adamw(learning_rate, weight_decay=weight_decay, mask=decay_mask))
        return optax.chain(*parts)

    return make


@dataclasses.dataclass
class FitResult:
    """Trained parameters (the best epoch's when validating) and the per-epoch history."""

    params: object
    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int


def _take(tree: Mapping[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in tree.items()}


class Trainer:
    """Jitted training step and batched prediction for ``apply``/``loss`` (see module doc).

    A trainer holds compiled functions only: keep one per model structure and reuse it for
    new parameters, data and hyperparameters without compiling again.
    """

    def __init__(self, apply: Callable, loss: Callable, max_grad_norm: float | None = 1.0):
        self.apply = apply
        self.loss = loss
        self.optimizer = adamw(max_grad_norm)
        # update() reads the learning rate and decay from the state; these values are unused.
        transform = self.optimizer(learning_rate=0.0, weight_decay=0.0)

        def objective(params, frozen, inputs, targets, mask):
            # Rebuild the frozen pytree inside the gradient's trace: NNX variables passed through
            # unchanged belong to the outer trace, and lifted transforms (remat) would refuse them.
            frozen = jax.tree_util.tree_map(lambda x: x, frozen)
            return loss(apply(params, frozen, inputs), targets, mask)

        def step(params, opt_state, frozen, inputs, targets, mask):
            value, grads = jax.value_and_grad(objective)(params, frozen, inputs, targets, mask)
            updates, opt_state = transform.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        self._step = jax.jit(step)
        self._apply = jax.jit(apply)
        self._loss = jax.jit(loss)

    def predict(self, params, frozen, inputs, indices: np.ndarray, batch_size: int) -> np.ndarray:
        """Outputs for ``inputs[indices]`` in padded batches, as a numpy array."""
        outputs = []
        for index, mask in padded_batches(indices, batch_size):
            out = self._apply(params, frozen, inputs[index])
            outputs.append(np.asarray(out)[mask])
        if not outputs:
            return np.zeros((0,), dtype=np.float32)
        return np.concatenate(outputs)

    def output_loss(self, outputs: np.ndarray, targets: Mapping[str, np.ndarray]) -> float:
        mask = np.ones(outputs.shape[0], dtype=bool)
        return float(self._loss(outputs, dict(targets), mask))

    def fit(
        self,
        params,
        frozen,
        *,
        inputs: np.ndarray,
        targets: Mapping[str, np.ndarray],
        train_index: np.ndarray,
        validation_index: np.ndarray,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        weight_decay: float,
        patience: int | None,
        rng: np.random.Generator,
        evaluate: Callable[[np.ndarray, np.ndarray], Mapping[str, float]] | None = None,
        predict: Callable[[object, np.ndarray], np.ndarray] | None = None,
        progress: bool = False,
    ) -> FitResult:
        """Train for ``epochs`` (fewer with early stopping on the validation loss).

        ``evaluate(outputs, index)`` returns extra validation metrics recorded as
        ``val_<name>``. ``predict(params, index)`` computes validation outputs (default: ``apply``
        in batches). With a validation set, the parameters of the epoch with the lowest
        validation loss are returned.
        """
        if predict is None:

            def predict(params, index):
                return self.predict(params, frozen, inputs, index, batch_size)

        from tqdm.auto import tqdm

        opt_state = self.optimizer(learning_rate=learning_rate, weight_decay=weight_decay).init(
            params
        )
        validating = validation_index.size > 0
        history: dict[str, list[float]] = {"loss": []}
        if validating:
            history["val_loss"] = []
        best = (np.inf, params, 0)
        since_best = 0
        epochs_run = 0
        bar = tqdm(range(1, epochs + 1), desc="fine-tuning", unit="epoch", disable=not progress)
        for epoch in bar:
            losses, weights = [], []
            for index, mask in padded_batches(train_index, batch_size, rng):
                params, opt_state, value = self._step(
                    params, opt_state, frozen, inputs[index], _take(targets, index), mask
                )
                losses.append(value)
                weights.append(mask.sum())
            epoch_loss = float(np.average(np.asarray(jax.device_get(losses)), weights=weights))
            if not np.isfinite(epoch_loss):
                raise FloatingPointError(
                    f"The training loss became {epoch_loss} in epoch {epoch}: training diverged. "
                    "Lower learning_rate (or check the inputs)."
                )
            history["loss"].append(epoch_loss)
            epochs_run = epoch
            postfix = {"loss": f"{epoch_loss:.4g}"}
            if validating:
                outputs = predict(params, validation_index)
                val_loss = self.output_loss(outputs, _take(targets, validation_index))
                history["val_loss"].append(val_loss)
                for name, value in (
                    evaluate(outputs, validation_index) if evaluate else {}
                ).items():
                    history.setdefault(f"val_{name}", []).append(float(value))
                postfix["val_loss"] = f"{val_loss:.4g}"
                if val_loss < best[0]:
                    best = (val_loss, params, epoch)
                    since_best = 0
                else:
                    since_best += 1
            bar.set_postfix(postfix)
            if validating and patience is not None and since_best >= patience:
                break
        bar.close()
        if validating:
            return FitResult(best[1], history, best[2], epochs_run)
        return FitResult(params, history, epochs_run, epochs_run)
