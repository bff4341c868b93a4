"""``tl.cross_validate``: repeated stratified k-fold evaluation of fine-tuning, with baselines.

Every model sees the same folds: the BulkRNABert model as :func:`~bulkrnabert_sv.tl.finetune`
would train it, linear models on the same (frozen) embeddings, and linear models on principal
components of log TPM. Per fold and metric one row; per model and metric the mean, the sd and a
confidence interval corrected for the overlap of the folds' training sets; paired differences
to the BulkRNABert model on the same folds.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from .._anndata import get_modality
from .._keys import BLOCK_KEY
from .._validation import renamed_keywords
from ..training.finetuned import head_outputs
from ..training.fitting import stratified_folds
from ..training.metrics import (
    LOWER_IS_BETTER,
    corrected_interval,
    evaluation_times,
    probability_metrics,
    survival_metrics,
)
from ..training.survival import breslow_baseline, survival_curves
from ..training.targets import Targets
from ._embed import check_data
from ._finetune import (
    _load_encoder,
    _stored_or_embed,
    check_inputs,
    fit_probe,
    labelled_targets,
    penalties_in_effect,
    resolve_settings,
)

__all__ = ["CrossValidationResult", "cross_validate"]

REFERENCE = "bulkrnabert"
SURVIVAL_METRICS = ("c_harrell", "c_uno", "auc", "integrated_brier_score")
#: Fixed penalties of the linear baselines, on scikit-learn's and scikit-survival's scale: the
#: penalty is ``alpha / 2 * ||w||^2`` added to the summed loss (``LogisticRegression(C=1 /
#: alpha)``, ``CoxPHSurvivalAnalysis(alpha=alpha)``), on standardised features.
BASELINE_ALPHAS = (0.1, 1.0, 10.0, 100.0)
#: Settings of tl.finetune that cross_validate passes through.
FINETUNE_SETTINGS = (
    "head",
    "hidden_sizes",
    "layer_norm",
    "l2",
    "penalty",
    "inner_folds",
    "n_seeds",
    "epochs",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "validation_fraction",
    "early_stopping",
    "class_weight",
    "remat",
)


@dataclasses.dataclass
class CrossValidationResult:
    """Per-fold metrics of every model, their summaries and paired comparisons.

    Attributes
    ----------
    folds
        One row per model, repeat, fold and metric: ``model``, ``repeat``, ``fold``,
        ``metric``, ``value``, ``n_train``, ``n_test``, ``n_events`` (survival: events in the
        test fold).
    summary
        One row per model and metric: ``model``, ``metric``, ``mean``, ``sd`` (over folds),
        ``ci_low``, ``ci_high`` (corrected repeated cross-validation t interval, see
        :func:`~bulkrnabert_sv.training.metrics.corrected_interval`), ``n_folds`` (folds where the
        metric is defined), ``higher_is_better``.
    models
        Model name → description.
    predictions
        Out-of-fold predictions of the BulkRNABert model, one row per sample and repeat:
        ``repeat``, ``fold`` and the class probabilities (one column per class) or ``risk``;
        indexed by ``obs_names``.
    params
        The settings of the run.
    """

    folds: pd.DataFrame
    summary: pd.DataFrame
    models: dict
    predictions: pd.DataFrame
    params: dict

    def compare(self, reference: str = REFERENCE, confidence: float | None = None):
        """Paired differences ``reference - model`` on the same folds, with corrected intervals.

        Returns
        -------
        One row per other model and metric: ``model``, ``metric``, ``mean_difference``,
        ``sd``, ``ci_low``, ``ci_high``, ``n_folds`` and ``higher_is_better`` (for a metric
        where lower is better, a negative difference favours ``reference``).
        """
        confidence = self.params["confidence"] if confidence is None else confidence
        keys = ["repeat", "fold", "metric"]
        table = self.folds.pivot_table(index=keys, columns="model", values="value", dropna=False)
        if reference not in table.columns:
            raise KeyError(f"No model {reference!r}; the models are {list(self.models)}.")
        ratio = self.params["test_to_train"]
        rows = []
        for model in self.models:
            if model == reference:
                continue
            for metric, block in table.groupby(level="metric", sort=False):
                difference = (block[reference] - block[model]).to_numpy()
                mean, sd, low, high = corrected_interval(difference, ratio, confidence)
                rows.append(
                    {
                        "model": model,
                        "metric": metric,
                        "mean_difference": mean,
                        "sd": sd,
                        "ci_low": low,
                        "ci_high": high,
                        "n_folds": int(np.isfinite(difference).sum()),
                        "higher_is_better": metric not in LOWER_IS_BETTER,
                    }
                )
        return pd.DataFrame(rows)

    def best(self, metric: str, prefix: str = "") -> str:
        """The model (among those whose name starts with ``prefix``) with the best mean."""
        rows = self.summary[
            (self.summary["metric"] == metric) & self.summary["model"].str.startswith(prefix)
        ]
        if rows.empty:
            raise KeyError(f"No model starting with {prefix!r} has metric {metric!r}.")
        order = rows["mean"].idxmin() if metric in LOWER_IS_BETTER else rows["mean"].idxmax()
        return str(rows.loc[order, "model"])

    def __repr__(self) -> str:
        p = self.params
        head = (
            f"CrossValidationResult({p['task']}, {p['n_splits']}-fold x {p['n_repeats']}, "
            f"{p['n_samples']} samples, {len(self.models)} models)"
        )
        table = self.summary.pivot(index="model", columns="metric", values="mean")
        return f"{head}\n{table.round(3).to_string()}"


@renamed_keywords("tl.cross_validate", embedding_layer="embedding_block")
def cross_validate(
    data,
    obs_key: str,
    *,
    task: Literal["classification", "survival"] | None = None,
    event_key: str | None = None,
    model=None,
    method: Literal["probe", "ia3", "full"] = "probe",
    n_splits: int = 5,
    n_repeats: int = 5,
    baselines: bool = True,
    baseline_alphas: Sequence[float] = BASELINE_ALPHAS,
    pca_components: int = 32,
    times: Sequence[float] | None = None,
    confidence: float = 0.95,
    random_state: int = 0,
    embedding_block: int = -1,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    inference_batch_size: int = 8,
    progress: bool = True,
    **finetune_settings,
) -> CrossValidationResult:
    """Repeated stratified k-fold cross-validation of fine-tuning, against linear baselines.

    Each repeat splits the labelled samples into ``n_splits`` folds, stratified by class (or by
    event indicator for survival); each fold is held out once while every model is trained on
    the others. Models:

    ``bulkrnabert``
        :func:`~bulkrnabert_sv.tl.finetune` with ``method`` and ``finetune_settings`` (by
        default the probe's linear head, its L2 chosen by inner folds of the training part
        only: a nested cross-validation). The probe embeds every sample once (the encoder is
        frozen and unsupervised); ``ia3``/``full`` fine-tune the encoder once per fold.
    ``embedding_ridge_a<alpha>``
        With ``baselines``: ridge logistic regression (scikit-learn) or ridge Cox
        (scikit-survival ``CoxPHSurvivalAnalysis``) on the standardised embeddings of the same
        frozen encoder, one per fixed ``alpha`` of ``baseline_alphas``.
    ``pca<k>_ridge_a<alpha>``
        With ``baselines``: the same linear models on the first ``pca_components`` principal
        components (fitted on the training part) of ``log1p`` of the expression values
        (``X`` or ``layers[layer]``, all genes), standardised.

    The best baseline's score is chosen with hindsight over the fixed alphas, so it is an
    optimistic yardstick.

    Parameters
    ----------
    data
        AnnData (or MuData, modality ``mod``) with TPM.
    obs_key, task, event_key
        As for :func:`~bulkrnabert_sv.tl.finetune`.
    model
        The encoder (as for ``finetune``).
    method
        ``"probe"``, ``"ia3"`` or ``"full"``.
    n_splits, n_repeats
        k and the number of repeats (different fold assignments). Every class (or the events
        and the censored samples) needs at least ``n_splits`` samples.
    baselines
        Also evaluate the linear baselines.
    baseline_alphas
        Their fixed penalties (see above).
    pca_components
        Principal components of the PCA baselines (at most the training samples - 1).
    times
        Survival: evaluation times of the time-dependent AUC and the integrated Brier score
        (default per fold: the 10th to 80th percentiles of the training event times); times
        outside a test fold's follow-up are dropped for that fold.
    confidence
        Coverage of the intervals.
    random_state
        Seed of the folds (repeat ``r`` uses seed ``(random_state, r)``) and of the models.
    embedding_block, layer, gene_key, mod, inference_batch_size, progress
        As for ``finetune`` (``embedding_layer=`` is the deprecated name of
        ``embedding_block``).
    **finetune_settings
        Settings of ``finetune`` for the BulkRNABert model: ``head``, ``hidden_sizes``,
        ``layer_norm``, ``l2``, ``penalty``, ``inner_folds``, ``n_seeds``, ``epochs``,
        ``learning_rate``, ``weight_decay``, ``batch_size``, ``validation_fraction``,
        ``early_stopping``, ``class_weight``, ``remat``.

    Returns
    -------
    A :class:`CrossValidationResult` (``folds``, ``summary``, ``compare()``,
    ``predictions``). Nothing is written into ``data``.

    Raises
    ------
    TypeError
        An unknown keyword argument, or ``data``/``model`` of the wrong kind.
    ValueError
        A class (or the events, or the censored samples) with fewer than ``n_splits`` samples,
        or a bad setting.

    Notes
    -----
    Classification: ``accuracy``, ``balanced_accuracy``, ``f1_macro``, ``auroc`` (one-vs-rest,
    macro) and ``log_loss``, from scikit-learn. Survival: ``c_harrell``, ``c_uno``, ``auc``
    (mean cumulative/dynamic AUC over ``times``) and ``integrated_brier_score``, from
    scikit-survival; survival curves come from Breslow's baseline hazard of each model's
    training risk scores.
    """
    check_data(data, "tl.cross_validate")
    unknown = sorted(set(finetune_settings) - set(FINETUNE_SETTINGS))
    if unknown:
        raise TypeError(
            f"cross_validate got unexpected keyword argument(s) {unknown}; the settings it "
            f"passes to tl.finetune are {list(FINETUNE_SETTINGS)}."
        )
    for name, value, minimum in (("n_splits", n_splits, 2), ("n_repeats", n_repeats, 1)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    alphas = [float(a) for a in baseline_alphas]
    if baselines and (not alphas or not all(np.isfinite(a) and a > 0 for a in alphas)):
        raise ValueError(f"baseline_alphas must be values > 0, got {baseline_alphas!r}.")
    remat = finetune_settings.pop("remat", True)
    class_weight = finetune_settings.get("class_weight")
    args = {name: finetune_settings.get(name) for name in FINETUNE_SETTINGS if name != "remat"}
    args["layer_norm"] = bool(args["layer_norm"])
    args["n_seeds"] = 1 if args["n_seeds"] is None else args["n_seeds"]
    args["early_stopping"] = finetune_settings.get("early_stopping", 10)
    settings = resolve_settings(
        method=method,
        task=task,
        event_key=event_key,
        survival_times=None,
        inference_batch_size=inference_batch_size,
        key_added=None,
        obs_key=obs_key,
        **args,
    )
    adata = get_modality(data, mod)
    targets = labelled_targets(data, adata, obs_key, event_key, settings["task"])
    task = targets.task
    _check_folds(targets, n_splits, obs_key)
    check_inputs(targets, settings, obs_key)

    encoder = _load_encoder(model)
    block = encoder.resolve_block(embedding_block)
    embeddings = _stored_or_embed(
        encoder,
        data,
        block,
        layer=layer,
        gene_key=gene_key,
        mod=mod,
        batch_size=inference_batch_size,
        progress=progress,
        info={},
        function="tl.cross_validate",
    )[targets.rows].astype(np.float64)
    log_expression = _log_expression(adata, layer, targets.rows) if baselines else None
    models = {REFERENCE: _describe(settings, method, task)}
    if baselines:
        linear = "ridge logistic regression" if task == "classification" else "ridge Cox"
        for alpha in alphas:
            models[f"embedding_ridge_a{alpha:g}"] = (
                f"{linear} (alpha={alpha:g}) on the standardised embeddings"
            )
        for alpha in alphas:
            models[f"pca{pca_components}_ridge_a{alpha:g}"] = (
                f"{linear} (alpha={alpha:g}) on {pca_components} principal components of "
                "log1p expression (all genes)"
            )

    from .._logging import progress_bar

    plan = [
        (r, f, fold)
        for r in range(n_repeats)
        for f, fold in enumerate(stratified_folds(targets.strata, n_splits, (random_state, r)))
    ]
    rows, predictions = [], []
    fit_kw = dict(
        data=data,
        obs_key=obs_key,
        event_key=event_key,
        encoder=encoder,
        method=method,
        settings=settings,
        finetune_settings=finetune_settings,
        remat=remat,
        class_weight=class_weight,
        random_state=random_state,
        block=block,
        layer=layer,
        gene_key=gene_key,
        mod=mod,
        inference_batch_size=inference_batch_size,
    )
    for repeat, index, (train, test) in progress_bar(
        plan, progress=progress, desc="cross-validation", unit="fold"
    ):
        outputs = {
            REFERENCE: _bulkrnabert_fold(targets, embeddings, train, test, **fit_kw),
        }
        if baselines:
            for alpha in alphas:
                outputs[f"embedding_ridge_a{alpha:g}"] = _linear_baseline(
                    task, embeddings[train], embeddings[test], targets, train, alpha
                )
            components = _pca(log_expression, train, test, pca_components, random_state)
            for alpha in alphas:
                outputs[f"pca{pca_components}_ridge_a{alpha:g}"] = _linear_baseline(
                    task, components[0], components[1], targets, train, alpha
                )
        fold_rows = _evaluate(task, targets, train, test, outputs, times)
        for model_name, values in fold_rows.items():
            for metric, value in values.items():
                rows.append(
                    {
                        "model": model_name,
                        "repeat": repeat,
                        "fold": index,
                        "metric": metric,
                        "value": value,
                        "n_train": int(train.size),
                        "n_test": int(test.size),
                        "n_events": int(targets.arrays["event"][test].sum())
                        if task == "survival"
                        else 0,
                    }
                )
        predictions.append(
            _prediction_frame(adata, targets, test, outputs[REFERENCE], repeat, index)
        )

    folds_frame = pd.DataFrame(rows)
    ratio = float(np.mean([t.size / (targets.rows.size - t.size) for _, _, (_, t) in plan]))
    summary = _summarise(folds_frame, ratio, confidence, list(models))
    params = {
        "task": task,
        "method": method,
        "obs_key": obs_key,
        "event_key": event_key,
        "n_splits": int(n_splits),
        "n_repeats": int(n_repeats),
        "n_samples": int(targets.rows.size),
        "n_events": int(targets.arrays["event"].sum()) if task == "survival" else None,
        "classes": targets.classes,
        "baselines": bool(baselines),
        "baseline_alphas": alphas,
        "pca_components": int(pca_components),
        "times": None if times is None else [float(t) for t in times],
        "confidence": float(confidence),
        "test_to_train": ratio,
        "random_state": int(random_state),
        "model": encoder.source,
        BLOCK_KEY: block,
        "settings": {k: v for k, v in settings.items() if v is not None},
    }
    return CrossValidationResult(
        folds=folds_frame,
        summary=summary,
        models=models,
        predictions=pd.concat(predictions),
        params=params,
    )


# ------------------------------------------------------------------------------ helpers
def _check_folds(targets: Targets, n_splits: int, obs_key: str) -> None:
    names = targets.stratum_names()
    counts = np.bincount(targets.strata, minlength=len(names))
    small = [(names[i], int(c)) for i, c in enumerate(counts) if c < n_splits]
    if small:
        listed = ", ".join(f"{name} ({count})" for name, count in small)
        raise ValueError(
            f"{n_splits}-fold cross-validation stratified on obs[{obs_key!r}] needs at least "
            f"{n_splits} samples of each stratum; too few: {listed}. Lower n_splits, or drop or "
            "merge small classes."
        )


def _describe(settings, method: str, task: str) -> str:
    if settings["head"] == "linear":
        kind = "ridge logistic regression" if task == "classification" else "ridge Cox"
        penalties = penalties_in_effect(settings, task)
        how = (
            f"L2 ({' or '.join(penalties)}) chosen by inner {settings['inner_folds']}-fold CV"
            if settings["inner_folds"]
            else f"l2={settings['l2'][0]:g}, {penalties[0]}"
        )
        head = f"linear head ({kind}, {how})"
    else:
        head = f"MLP head {tuple(settings['hidden_sizes'])}"
        if settings["layer_norm"]:
            head += " + LayerNorm"
        head += (
            f", epochs by inner {settings['inner_folds']}-fold CV"
            if settings["inner_folds"]
            else f", early stopping on a {settings['validation_fraction']:g} split"
        )
    if settings["n_seeds"] > 1:
        head += f", {settings['n_seeds']} seeds averaged"
    return f"BulkRNABert {method}: {head}"


def _log_expression(adata, layer, rows) -> np.ndarray:
    import scipy.sparse as sp

    values = adata.X if layer is None else adata.layers[layer]
    values = values[rows]
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    values = np.log1p(np.clip(values.astype(np.float32), 0, None))
    return values[:, values.std(axis=0) > 0]


def _pca(values, train, test, n_components, seed):
    from sklearn.decomposition import PCA

    k = int(min(n_components, train.size - 1, values.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit(values[train])
    return (
        pca.transform(values[train]).astype(np.float64),
        pca.transform(values[test]).astype(np.float64),
    )


def _bulkrnabert_fold(
    targets: Targets,
    embeddings,
    train,
    test,
    *,
    data,
    obs_key,
    event_key,
    encoder,
    method,
    settings,
    finetune_settings,
    remat,
    class_weight,
    random_state,
    block,
    layer,
    gene_key,
    mod,
    inference_batch_size,
) -> dict:
    """Test-fold outputs of the BulkRNABert model trained on the training fold."""
    if method == "probe":
        part = targets.subset(train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fit = fit_probe(
                embeddings[train],
                part,
                settings,
                class_weight=class_weight,
                random_state=random_state,
                progress=False,
            )
        train_out = head_outputs(fit.head, embeddings[train])
        test_out = head_outputs(fit.head, embeddings[test])
        if targets.task == "classification":
            return {"proba": _softmax(test_out)}
        times, hazard = breslow_baseline(
            train_out[fit.train, 0],
            part.arrays["time"][fit.train],
            part.arrays["event"][fit.train],
        )
        return {"risk": test_out[:, 0], "baseline": (times, hazard)}
    from ._finetune import finetune

    adata = get_modality(data, mod)
    subset = adata[targets.rows[train]].copy()
    tests = adata[targets.rows[test]].copy()
    kw = {k: v for k, v in finetune_settings.items() if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tuned = finetune(
            subset,
            obs_key,
            task=targets.task,
            event_key=event_key,
            method=method,
            model=encoder,
            embedding_block=block,
            random_state=random_state,
            layer=layer,
            gene_key=gene_key,
            remat=remat,
            inference_batch_size=inference_batch_size,
            progress=False,
            **kw,
        )
        predicted = tuned.predict(
            tests, layer=layer, gene_key=gene_key, batch_size=inference_batch_size
        )
    if targets.task == "classification":
        return {"proba": predicted.to_numpy(dtype=np.float64)}
    hazard = tuned.baseline_hazard
    return {
        "risk": predicted["risk"].to_numpy(dtype=np.float64),
        "baseline": (np.asarray(hazard["time"]), np.asarray(hazard["cumulative_hazard"])),
    }


def _softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _linear_baseline(task, x_train, x_test, targets: Targets, train, alpha) -> dict:
    """A scikit-learn / scikit-survival linear model on standardised features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    a, b = scaler.transform(x_train), scaler.transform(x_test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        if task == "classification":
            from sklearn.linear_model import LogisticRegression

            labels = targets.arrays["label"][train]
            est = LogisticRegression(C=1.0 / alpha, max_iter=5000).fit(a, labels)
            proba = np.zeros((b.shape[0], len(targets.classes)))
            proba[:, est.classes_] = est.predict_proba(b)
            return {"proba": proba}
        from sksurv.linear_model import CoxPHSurvivalAnalysis
        from sksurv.util import Surv

        y = Surv.from_arrays(
            targets.arrays["event"][train].astype(bool),
            targets.arrays["time"][train].astype(np.float64),
        )
        try:
            est = CoxPHSurvivalAnalysis(alpha=alpha, ties="breslow").fit(a, y)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            return {"failed": True}
        risk = est.predict(b)
        if not np.isfinite(risk).all():
            return {"failed": True}
        step = est.cum_baseline_hazard_
        return {"risk": risk, "baseline": (np.asarray(step.x), np.asarray(step.y))}


def _evaluate(task, targets: Targets, train, test, outputs: dict, times):
    """Metrics of every model's test outputs; the survival time grid is shared by the models."""
    rows = {}
    if task == "classification":
        labels = targets.arrays["label"][test]
        for name, out in outputs.items():
            rows[name] = probability_metrics(labels, out["proba"])
        return rows
    time, event = targets.arrays["time"], targets.arrays["event"]
    grid = evaluation_times(time[train], event[train], time[test], times)
    for name, out in outputs.items():
        if out.get("failed"):
            rows[name] = dict.fromkeys(SURVIVAL_METRICS, float("nan"))
            continue
        curves = survival_curves(out["risk"], *out["baseline"], grid) if grid.size else None
        rows[name] = survival_metrics(
            time[train], event[train], time[test], event[test], out["risk"], curves, grid
        )
    return rows


def _prediction_frame(adata, targets: Targets, test, out, repeat, fold) -> pd.DataFrame:
    index = adata.obs_names[targets.rows[test]]
    if "proba" in out:
        frame = pd.DataFrame(out["proba"], index=index, columns=[str(c) for c in targets.classes])
    else:
        frame = pd.DataFrame({"risk": out["risk"]}, index=index)
    frame.insert(0, "fold", fold)
    frame.insert(0, "repeat", repeat)
    return frame


def _summarise(folds: pd.DataFrame, ratio: float, confidence: float, order) -> pd.DataFrame:
    rows = []
    for (model, metric), block in folds.groupby(["model", "metric"], sort=False):
        mean, sd, low, high = corrected_interval(block["value"].to_numpy(), ratio, confidence)
        rows.append(
            {
                "model": model,
                "metric": metric,
                "mean": mean,
                "sd": sd,
                "ci_low": low,
                "ci_high": high,
                "n_folds": int(np.isfinite(block["value"].to_numpy(dtype=float)).sum()),
                "higher_is_better": metric not in LOWER_IS_BETTER,
            }
        )
    frame = pd.DataFrame(rows)
    frame["model"] = pd.Categorical(frame["model"], categories=order, ordered=True)
    frame = frame.sort_values(["model"], kind="stable").reset_index(drop=True)
    frame["model"] = frame["model"].astype(str)
    return frame
