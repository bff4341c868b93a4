"""Evaluation metrics, computed by scikit-learn and scikit-survival, and cross-validation intervals.

Nothing here re-implements a metric: the functions choose the inputs (classes present, time
grids inside the follow-up) and turn the cases a metric is undefined for into NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

#: Metrics where lower is better (every other metric: higher is better).
LOWER_IS_BETTER = frozenset({"log_loss", "integrated_brier_score"})
#: Quantiles of the training event times that make the default evaluation time grid.
TIME_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def classification_metrics(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro and weighted F1 of integer class predictions.

    scikit-learn's ``accuracy_score``, ``balanced_accuracy_score`` (mean recall over the classes
    present in ``y_true``) and ``f1_score(average="macro" | "weighted", zero_division=0)``
    (over the classes present in ``y_true`` or ``y_pred``).
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same length, got {y_true.size} and {y_pred.size}."
        )
    if y_true.size == 0:
        raise ValueError("No samples to evaluate.")
    with warnings.catch_warnings():
        # balanced accuracy warns about classes predicted but absent from y_true
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
    }


def probability_metrics(y_true, proba) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1, AUROC and log loss of class probabilities.

    Parameters
    ----------
    y_true
        Integer class codes (n,).
    proba
        Probabilities (n, n_classes), rows summing to 1; the prediction is the argmax.

    Returns
    -------
    ``accuracy``, ``balanced_accuracy``, ``f1_macro`` (see :func:`classification_metrics`),
    ``auroc`` (the mean over the classes present in ``y_true`` of the one-vs-rest
    ``roc_auc_score``; for two classes the usual AUROC; NaN with a single class present) and
    ``log_loss`` (``sklearn.metrics.log_loss`` over all classes).
    """
    from sklearn.metrics import log_loss, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)  # float32 rounding
    n_classes = proba.shape[1]
    scores = classification_metrics(y_true, proba.argmax(axis=1), n_classes)
    present = np.unique(y_true)
    if present.size < 2:
        auroc = float("nan")
    elif n_classes == 2:
        auroc = float(roc_auc_score(y_true, proba[:, 1]))
    else:
        auroc = float(np.mean([roc_auc_score(y_true == c, proba[:, c]) for c in present]))
    scores.pop("f1_weighted")
    scores["auroc"] = auroc
    scores["log_loss"] = float(log_loss(y_true, proba, labels=np.arange(n_classes)))
    return scores


def _surv(time, event):
    from sksurv.util import Surv

    return Surv.from_arrays(
        np.asarray(event).reshape(-1).astype(bool), np.asarray(time, dtype=np.float64).reshape(-1)
    )


def evaluation_times(train_time, train_event, test_time, times=None) -> np.ndarray:
    """Times at which time-dependent metrics are computed for one train/test split.

    Default: the 10th to 80th percentiles (steps of 10) of the training event times. Either
    way, only times inside the test follow-up (``min <= t < max`` of the test times, as
    scikit-survival requires) and before the last training time are kept.
    """
    train_time = np.asarray(train_time, dtype=np.float64)
    test_time = np.asarray(test_time, dtype=np.float64)
    if times is None:
        event_times = train_time[np.asarray(train_event).astype(bool)]
        if event_times.size == 0:
            return np.zeros(0)
        times = np.quantile(event_times, TIME_QUANTILES)
    times = np.unique(np.asarray(times, dtype=np.float64))
    keep = (times >= test_time.min()) & (times < test_time.max()) & (times < train_time.max())
    return times[keep]


def survival_metrics(
    train_time,
    train_event,
    test_time,
    test_event,
    risk,
    survival=None,
    times=None,
) -> dict[str, float]:
    """Discrimination and calibration of a survival model on a test set (scikit-survival).

    Parameters
    ----------
    train_time, train_event
        The training set's follow-up: it estimates the censoring distribution (inverse
        probability of censoring weights).
    test_time, test_event
        The test set's.
    risk
        Risk scores of the test samples (higher = earlier event).
    survival
        Optional survival probabilities of the test samples at ``times``, shape
        (n_test, n_times); needed for the Brier score.
    times
        Evaluation times (see :func:`evaluation_times`; pass its result).

    Returns
    -------
    ``c_harrell`` (``concordance_index_censored``), ``c_uno``
    (``concordance_index_ipcw``, truncated at the last evaluation time), ``auc``
    (``cumulative_dynamic_auc``: its mean AUC over ``times``) and ``integrated_brier_score``
    (``integrated_brier_score`` over ``times``; needs ``survival`` and at least two times).
    Undefined values (no admissible pair, too few times) are NaN.

    For the weighted metrics (Uno's C, AUC, Brier score), test follow-up beyond the last
    evaluation time is censored at a time between it and the training set's last time, where
    the censoring distribution estimated on the training set is still positive (beyond the
    training set's last time it is zero, and scikit-survival refuses such test samples). This
    changes nothing at the evaluation times: such samples stay at risk there, censored ones
    weigh nothing, and the weights of events before the cut are untouched.
    """
    from sksurv.metrics import (
        concordance_index_censored,
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )

    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    test_event_bool = np.asarray(test_event).reshape(-1).astype(bool)
    test_time = np.asarray(test_time, dtype=np.float64).reshape(-1)
    train = _surv(train_time, train_event)
    times = np.zeros(0) if times is None else np.asarray(times, dtype=np.float64)
    weighted_time = test_time.copy()
    weighted_event = test_event_bool.copy()
    if times.size:
        cut = 0.5 * (times.max() + min(np.max(train_time), test_time.max()))
        beyond = weighted_time > cut
        weighted_time[beyond], weighted_event[beyond] = cut, False
    test = _surv(weighted_time, weighted_event)
    result = dict.fromkeys(("c_harrell", "c_uno", "auc", "integrated_brier_score"), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result["c_harrell"] = float(
                concordance_index_censored(test_event_bool, test_time, risk)[0]
            )
        except (ValueError, ZeroDivisionError):
            pass
        if times.size:
            try:
                result["c_uno"] = float(
                    concordance_index_ipcw(train, test, risk, tau=float(times.max()))[0]
                )
            except (ValueError, ZeroDivisionError):
                pass
            try:
                result["auc"] = float(cumulative_dynamic_auc(train, test, risk, times)[1])
            except (ValueError, ZeroDivisionError):
                pass
        if survival is not None and times.size >= 2:
            curves = np.asarray(survival, dtype=np.float64)
            if np.isfinite(curves).all():
                try:
                    result["integrated_brier_score"] = float(
                        integrated_brier_score(train, test, curves, times)
                    )
                except (ValueError, ZeroDivisionError):
                    pass
    return result


def corrected_interval(
    values, test_to_train: float, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """Mean, sd and the corrected repeated-cross-validation t interval of per-fold values.

    Folds of a repeated k-fold share training samples, so their scores are correlated and the
    naive ``sd / sqrt(n_folds)`` is too small. The corrected resampled t interval (Nadeau &
    Bengio 2003; Bouckaert & Frank 2004) inflates the variance of the mean to
    ``(1 / n_folds + n_test / n_train) * sd^2`` and uses Student's t with ``n_folds - 1``
    degrees of freedom. NaN values (metric undefined in a fold) are left out.

    Parameters
    ----------
    values
        One value per fold (and repeat).
    test_to_train
        ``n_test / n_train`` of a fold (``1 / (k - 1)`` for k-fold).
    confidence
        Coverage of the interval.

    Returns
    -------
    ``(mean, sd, low, high)``; the interval is NaN with fewer than two values.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"),) * 4
    mean = float(values.mean())
    if values.size < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = float(values.std(ddof=1))
    half = stats.t.ppf(0.5 + confidence / 2, values.size - 1) * np.sqrt(
        (1 / values.size + test_to_train) * sd**2
    )
    return mean, sd, float(mean - half), float(mean + half)
