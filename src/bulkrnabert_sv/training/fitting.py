"""Supervised training: splits and folds, the gradient training loop, and the linear head.

The loop (:class:`Trainer`: padded mini-batches, AdamW, early stopping) takes the model as pure
functions of pytrees so that one jitted step serves the MLP probe (inputs are embeddings) and
encoder fine-tuning (inputs are tokens):

* ``apply(params, frozen, inputs) -> outputs`` computes the model's outputs for a batch;
* ``loss(outputs, targets, mask) -> scalar`` is the training loss, where ``targets`` is a dict of
  per-sample arrays and ``mask`` marks the real samples of a padded batch.

The linear head (:func:`fit_linear_head`) is fitted to convergence instead: ridge logistic
regression (scikit-learn) or a ridge Cox model, its L2 strength chosen on inner folds
(:func:`stratified_folds`), its probabilities calibrated by a temperature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

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


def adamw_transform(
    weight_decay,
    *,
    learning_rate=None,
    max_grad_norm: float | None = 1.0,
    frozen: Callable | None = None,
) -> optax.GradientTransformation:
    """The package's optimiser: AdamW with decoupled weight decay on matrices only.

    ``chain(set_to_zero on frozen, clip_by_global_norm, scale_by_adam, add_decayed_weights,
    scale_by_learning_rate)``, the stages of :func:`optax.adamw` with its defaults, after
    clipping; every tool trains with it (:class:`Trainer` through :func:`adamw`, and
    ``tl.pretrain``).

    Parameters
    ----------
    weight_decay
        Decoupled weight decay (a number, or an injected hyperparameter), applied to weight
        matrices only (:func:`decay_mask`: not to biases, norms, IA3 or mask vectors).
    learning_rate
        The learning rate (a number, schedule or injected hyperparameter). ``None``: no last
        stage; the updates are AdamW's direction and the caller applies ``-learning_rate``
        (``tl.pretrain``, whose compiled step takes the rate as an argument).
    max_grad_norm
        Clip gradients to this global norm first (``None``: no clipping).
    frozen
        A mask function of the parameters (True = frozen): those gradients are set to zero
        before anything else, so they move neither Adam's moments nor the parameters.
    """
    parts = [] if frozen is None else [optax.masked(optax.set_to_zero(), frozen)]
    if max_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(max_grad_norm))
    parts += [optax.scale_by_adam(), optax.add_decayed_weights(weight_decay, mask=decay_mask)]
    if learning_rate is not None:
        parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def adamw(max_grad_norm: float | None = 1.0):
    """:func:`adamw_transform` as a factory of ``(learning_rate, weight_decay)`` whose values
    live in the optimiser state (so one compiled step serves every learning rate)."""

    @optax.inject_hyperparams
    def make(learning_rate, weight_decay):
        return adamw_transform(
            weight_decay, learning_rate=learning_rate, max_grad_norm=max_grad_norm
        )

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

        from .._logging import progress_bar

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
        bar = progress_bar(
            range(1, epochs + 1), progress=progress, desc="fine-tuning", unit="epoch"
        )
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


# ------------------------------------------------------------------------------ folds
def stratified_folds(
    strata: np.ndarray, n_folds: int, seed: int | Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, validation)`` index pairs of a shuffled stratified k-fold (scikit-learn).

    ``n_folds`` is lowered to the size of the smallest stratum (at least 2 members each are
    needed; check before calling), so every fold holds out members of every stratum.
    """
    from sklearn.model_selection import StratifiedKFold

    strata = np.asarray(strata)
    smallest = int(np.bincount(np.unique(strata, return_inverse=True)[1]).min())
    n_folds = max(2, min(int(n_folds), smallest))
    seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [
        (np.sort(train), np.sort(validation))
        for train, validation in splitter.split(np.zeros(strata.size), strata)
    ]


# ------------------------------------------------------------------------------ linear head
#: The default grid of L2 strengths of the linear head, per sample on standardised embeddings
#: (``mean loss + l2 / 2 * ||w||^2``): from almost none to strong shrinkage.
L2_GRID = tuple(float(v) for v in np.logspace(-4, 1.5, 12))

#: How the linear head's L2 penalty measures the weights ``w`` of the raw embeddings ``x``:
#: ``"standardised"``: ``sum_j (w_j sd_j)^2``, ridge on embeddings scaled to sd 1 per dimension
#: (shrinks low-variance directions most); ``"whitened"``: ``w' Cov(x) w``, the variance of the
#: linear predictor, i.e. ridge on PCA-whitened embeddings (a g-prior: every direction shrunk
#: alike, so weak signal in low-variance directions is kept).
PENALTIES = ("standardised", "whitened")
#: The penalties the default linear head chooses from by inner cross-validation. For survival
#: both: on cohorts whose risk lies in low-variance directions of the embeddings the
#: standardised ridge ranks poorly at any strength the partial likelihood picks (see
#: ``docs/benchmarks.md``); for classification the standardised one.
DEFAULT_PENALTIES = {"classification": ("standardised",), "survival": PENALTIES}


def check_penalties(penalty: str | Sequence[str]) -> tuple[str, ...]:
    """``penalty`` (one of :data:`PENALTIES`, or several) as a tuple without repeats."""
    penalties = (penalty,) if isinstance(penalty, str) else tuple(penalty)
    if not penalties or any(p not in PENALTIES for p in penalties):
        raise ValueError(f"penalty must be one of {PENALTIES} or a list of them, got {penalty!r}.")
    return tuple(dict.fromkeys(penalties))


@dataclasses.dataclass
class LinearFit:
    """A linear head on raw embeddings: ``outputs = x @ kernel + bias``.

    Attributes
    ----------
    kernel, bias
        Weights (p, n_outputs) and bias (n_outputs,), the feature map (standardisation or
        whitening) and, for classification, the temperature folded in.
    l2
        The L2 strength used.
    selection
        How ``l2`` (and the penalty) were chosen (empty for a single candidate): ``l2_grid``,
        ``score`` (the criterion), per candidate ``cv_balanced_accuracy``,
        ``cv_balanced_accuracy_smoothed`` and ``cv_log_loss`` (classification) or
        ``cv_partial_likelihood`` (survival, per event), ``inner_folds``, ``n_seeds``; for
        classification ``temperature``; with several penalties ``penalties``,
        ``candidate_penalty``, ``candidate_l2`` (the candidate of each list entry) and
        ``penalty`` (the one chosen).
    out_of_fold
        Outputs of the inner folds' models for their held-out samples at the chosen candidate
        (first seed, temperature applied), or None without inner cross-validation.
    penalty
        The penalty form used (:data:`PENALTIES`).
    """

    kernel: np.ndarray
    bias: np.ndarray
    l2: float
    selection: dict
    out_of_fold: np.ndarray | None = None
    penalty: str = "standardised"


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12 * max(1.0, float(np.abs(mean).max(initial=0.0))), scale, 1.0)
    return mean, scale


def _feature_map(x: np.ndarray, penalty: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, matrix)`` with ``(x - mean) @ matrix`` the features the ridge is fitted on.

    ``"standardised"``: a diagonal of ``1 / sd``. ``"whitened"``: the principal axes of the
    centred ``x`` divided by their sd (axes with a variance below 1e-10 of the largest are
    dropped, so the features have identity covariance on the samples of ``x``).
    """
    if penalty == "standardised":
        mean, scale = _standardise(x)
        return mean, np.diag(1.0 / scale)
    if penalty != "whitened":
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}.")
    mean = x.mean(axis=0)
    _, singular, axes = np.linalg.svd(x - mean, full_matrices=False)
    variance = singular**2 / max(x.shape[0], 1)
    keep = variance > 1e-10 * max(float(variance.max(initial=0.0)), 1e-300)
    return mean, axes[keep].T / np.sqrt(variance[keep])


class _Logistic:
    """Multinomial (or binary) ridge logistic regression (scikit-learn, lbfgs), warm-started."""

    def __init__(self, n_classes: int, tol: float):
        self.n_classes = n_classes
        self.tol = tol
        self.estimator = None

    def fit(self, xs, labels, weights, l2):
        from sklearn.linear_model import LogisticRegression

        c = 1.0 / (l2 * xs.shape[0])
        if self.estimator is None:
            self.estimator = LogisticRegression(C=c, max_iter=5000, tol=self.tol, warm_start=True)
        self.estimator.set_params(C=c)
        self.estimator.fit(xs, labels, sample_weight=weights)
        est = self.estimator
        kernel = np.zeros((xs.shape[1], self.n_classes))
        bias = np.full(self.n_classes, -30.0)  # classes absent from this training set
        present = est.classes_.astype(np.int64)
        if present.size == 2:
            kernel[:, present[1]] = est.coef_[0]
            bias[present[0]], bias[present[1]] = 0.0, est.intercept_[0]
        else:
            kernel[:, present] = est.coef_.T
            bias[present] = est.intercept_
        return kernel, bias


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _fit_path(task, xs, arrays, grid, n_classes, *, tol=1e-6):
    """(kernel, bias) on the features ``xs`` for each l2 of ``grid`` (descending, warm starts)."""
    from .survival import ridge_cox

    fits = []
    if task == "classification":
        model = _Logistic(n_classes, tol)
        for l2 in grid:
            fits.append(model.fit(xs, arrays["label"], arrays.get("weight"), l2))
    else:
        beta = None
        for l2 in grid:
            beta = ridge_cox(xs, arrays["time"], arrays["event"], l2, beta=beta)
            fits.append((beta[:, None].copy(), np.zeros(1)))
    return fits


def fit_temperature(logits: np.ndarray, labels: np.ndarray, weights=None) -> float:
    """The temperature ``T`` minimising the log loss of ``softmax(logits / T)`` (Guo et al. 2017).

    Searched on ``log T`` in [-5, 5] by ``scipy.optimize.minimize_scalar`` (bounded).
    """
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss

    labels = np.asarray(labels)
    classes = np.arange(logits.shape[1])

    def loss(log_t):
        return log_loss(
            labels, _softmax(logits / np.exp(log_t)), labels=classes, sample_weight=weights
        )

    best = minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))


def fit_linear_head(
    x: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    task: str,
    *,
    n_classes: int,
    l2: float | Sequence[float],
    folds: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] = (),
    penalties: Sequence[str] = ("standardised",),
) -> LinearFit:
    """Fit the linear probe head: ridge logistic regression or a ridge Cox model.

    The embeddings are standardised (mean 0, sd 1 per dimension, on the samples fitted) or
    PCA-whitened (``penalties``, see :data:`PENALTIES`), the model is fitted with the penalty
    ``l2 / 2 * ||w||^2`` added to the mean loss per sample
    (scikit-learn's ``LogisticRegression(C=1 / (l2 * n))``, sample weights = class weights; or
    :func:`~bulkrnabert_sv.training.survival.ridge_cox`), and the feature map is folded into
    the returned weights.

    With several candidates (``l2`` values times ``penalties``), the models of every fold of
    ``folds`` (one list of folds per seed) predict their held-out samples, and the best
    candidate is chosen:

    * classification: the highest balanced accuracy of the pooled out-of-fold predictions
      (mean over seeds), averaged with its two neighbours on the ``l2`` grid (the ends
      repeated; :func:`_smooth_along_grid`), ties going to the lowest held-out log loss. One
      balanced accuracy per grid value jumps with a few samples on small cohorts; the average
      over neighbours picks a strength that is good across its neighbourhood instead of a lucky
      one. The log loss itself is not the criterion: on small cohorts it favours shrinkage that
      costs accuracy. The class probabilities are then calibrated by one temperature fitted to
      the out-of-fold logits (:func:`fit_temperature`), which leaves the predicted classes
      unchanged;
    * survival: the highest cross-validated partial likelihood (Verweij & van Houwelingen
      1993: the log partial likelihood of the fold's model on all samples minus that on its
      training samples, per held-out event), mean over folds and seeds.

    The final model is fitted on all samples with the chosen ``l2`` and penalty.

    Parameters
    ----------
    x
        Embeddings (n, p).
    arrays
        Targets of the ``n`` samples: ``label`` (and ``weight``), or ``time`` and ``event``.
    task
        ``"classification"`` or ``"survival"``.
    n_classes
        Number of classes (outputs) for classification.
    l2
        One value, or a grid to choose from (needs ``folds``).
    folds
        Inner folds as ``(train, validation)`` index pairs into ``x``, one list per seed.
    penalties
        Forms of the penalty to choose from (:data:`PENALTIES`).
    """
    from threadpoolctl import threadpool_limits

    penalties = check_penalties(penalties)
    # Small dense problems: one BLAS thread is faster, and it does not spin against other work.
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_linear_head(
            x, arrays, task, n_classes=n_classes, l2=l2, folds=folds, penalties=penalties
        )


def _fit_linear_head(x, arrays, task, *, n_classes, l2, folds, penalties) -> LinearFit:
    x = np.asarray(x, dtype=np.float64)
    grid = sorted({float(v) for v in np.atleast_1d(l2)}, reverse=True)
    candidates = [(penalty, value) for penalty in penalties for value in grid]
    selection: dict = {}
    out_of_fold = None
    temperature = 1.0
    if len(candidates) > 1:
        if not folds:
            raise ValueError("Choosing l2 from several values needs inner folds.")
        scores, oof = _grid_scores(x, arrays, task, grid, penalties, folds, n_classes)
        selection = {
            "l2_grid": grid,
            "inner_folds": len(folds[0]),
            "n_seeds": len(folds),
        }
        if len(penalties) > 1:
            # Per candidate (the cv_* lists run over them): its penalty and its l2.
            selection.update(
                penalties=list(penalties),
                candidate_penalty=[p for p, _ in candidates],
                candidate_l2=[v for _, v in candidates],
            )
        if task == "classification":
            from sklearn.metrics import balanced_accuracy_score

            labels = arrays["label"]
            balanced = np.array(
                [
                    np.mean([balanced_accuracy_score(labels, o[g].argmax(axis=1)) for o in oof])
                    for g in range(len(candidates))
                ]
            )
            log_loss = scores.mean(axis=0)
            smoothed = _smooth_along_grid(balanced, len(grid))
            ties = np.flatnonzero(smoothed >= smoothed.max() - 1e-12)
            best = int(ties[np.argmin(log_loss[ties])])
            weight = arrays.get("weight")
            temperature = fit_temperature(oof[0][best], labels, weight)
            selection.update(
                score="balanced_accuracy",
                cv_balanced_accuracy=[float(v) for v in balanced],
                cv_balanced_accuracy_smoothed=[float(v) for v in smoothed],
                cv_log_loss=[float(v) for v in log_loss],
                temperature=temperature,
            )
        else:
            mean = scores.mean(axis=0)
            best = int(np.argmax(mean))
            selection.update(
                score="cv_partial_likelihood",
                cv_partial_likelihood=[float(v) for v in mean],
            )
        penalty, chosen = candidates[best]
        if len(penalties) > 1:
            selection["penalty"] = penalty
        out_of_fold = oof[0][best] / temperature
    else:
        penalty, chosen = candidates[0]
    mean, matrix = _feature_map(x, penalty)
    (kernel, bias) = _fit_path(task, (x - mean) @ matrix, arrays, [chosen], n_classes)[0]
    kernel, bias = _fold_scaling(kernel / temperature, bias / temperature, mean, matrix)
    return LinearFit(kernel, bias, chosen, selection, out_of_fold, penalty)


def _smooth_along_grid(values: np.ndarray, grid_size: int) -> np.ndarray:
    """The mean of each value and its two neighbours along the ``l2`` grid, per penalty block
    of ``grid_size`` candidates (the ends repeated)."""
    blocks = np.asarray(values, dtype=np.float64).reshape(-1, grid_size)
    padded = np.concatenate([blocks[:, :1], blocks, blocks[:, -1:]], axis=1)
    return ((padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3.0).reshape(-1)


def _fold_scaling(kernel, bias, mean, matrix):
    """Weights of the raw inputs from weights of the features ``(x - mean) @ matrix``."""
    raw = matrix @ kernel
    return raw, bias - mean @ raw


def _grid_scores(x, arrays, task, grid, penalties, folds, n_classes):
    """Held-out scores per (seed, fold) and candidate, and out-of-fold outputs per seed.

    Candidates: every ``l2`` of ``grid`` for each penalty of ``penalties``, in that order.
    Scores: weighted mean log loss (classification), or the cross-validated partial
    likelihood per held-out event (survival). Outputs: (n_seeds, n_candidates, n, n_outputs).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import log_loss

    from .survival import partial_log_likelihood

    n = x.shape[0]
    n_outputs = n_classes if task == "classification" else 1
    rows = []
    oof = np.zeros((len(folds), len(grid) * len(penalties), n, n_outputs))
    for seed_index, seed_folds in enumerate(folds):
        for train, validation in seed_folds:
            part = {k: v[train] for k, v in arrays.items()}
            fits = []
            for penalty in penalties:
                mean, matrix = _feature_map(x[train], penalty)
                xs = (x - mean) @ matrix
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    path = _fit_path(task, xs[train], part, grid, n_classes, tol=1e-4)
                fits.extend((xs, kernel, bias) for kernel, bias in path)
            row = []
            for g, (xs, kernel, bias) in enumerate(fits):
                outputs = xs @ kernel + bias
                oof[seed_index, g, validation] = outputs[validation]
                if task == "classification":
                    weight = arrays.get("weight")
                    row.append(
                        log_loss(
                            arrays["label"][validation],
                            _softmax(outputs[validation]),
                            labels=np.arange(n_classes),
                            sample_weight=None if weight is None else weight[validation],
                        )
                    )
                else:
                    time, event = arrays["time"], arrays["event"]
                    whole = partial_log_likelihood(outputs[:, 0], time, event)
                    inner = partial_log_likelihood(outputs[train, 0], time[train], event[train])
                    row.append((whole - inner) / max(float(event[validation].sum()), 1.0))
            rows.append(row)
    return np.asarray(rows), oof
