"""Classification metrics in numpy (same definitions as scikit-learn's)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): rows are true classes, columns predicted classes."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same length, got {y_true.size} and {y_pred.size}."
        )
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def classification_metrics(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro and weighted F1 of integer class predictions.

    As scikit-learn's ``accuracy_score``, ``balanced_accuracy_score`` (mean recall over the
    classes present in ``y_true``) and ``f1_score(average="macro" | "weighted")`` (over the
    classes present in ``y_true`` or ``y_pred``; an F1 with no true or predicted sample is 0).
    """
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    total = cm.sum()
    if total == 0:
        raise ValueError("No samples to evaluate.")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    present = support > 0
    labels = present | (predicted > 0)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return {
        "accuracy": float(tp.sum() / total),
        "balanced_accuracy": float(np.mean(tp[present] / support[present])),
        "f1_macro": float(f1[labels].mean()),
        "f1_weighted": float(np.sum(f1 * support) / support.sum()),
    }
