"""Training targets from ``obs``: class labels or (duration, event) pairs, checked and encoded."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from pandas.api.types import (
    is_bool_dtype,
    is_numeric_dtype,
)

from .._logging import user_stacklevel

TASKS = ("classification", "survival")


@dataclasses.dataclass
class Targets:
    """Encoded targets of the labelled samples.

    Attributes
    ----------
    task
        ``"classification"`` or ``"survival"``.
    rows
        Positions (in ``obs``) of the labelled samples, sorted.
    arrays
        Per labelled sample: ``label`` (int32 class codes) and ``weight`` (float32, filled by
        :meth:`set_class_weight`), or ``time`` (float32 durations) and ``event`` (float32 0/1).
    strata
        What the validation split is stratified on (class codes, or event indicators).
    classes
        Class names in code order (classification), else None.
    n_dropped
        Samples without a label (dropped from training).
    """

    task: str
    rows: np.ndarray
    arrays: dict[str, np.ndarray]
    strata: np.ndarray
    classes: list | None = None
    n_dropped: int = 0
    #: The weight of each class by name, as set by set_class_weight (None: unweighted).
    class_weights: dict | None = None

    def subset(self, positions: np.ndarray) -> Targets:
        """The targets of some labelled samples (``positions`` index ``rows``); no weights."""
        positions = np.asarray(positions)
        arrays = {k: v[positions] for k, v in self.arrays.items() if k != "weight"}
        return Targets(
            task=self.task,
            rows=self.rows[positions],
            arrays=arrays,
            strata=self.strata[positions],
            classes=self.classes,
            n_dropped=0,
        )

    def stratum_names(self) -> dict[int, str]:
        if self.task == "classification":
            return {i: repr(c) for i, c in enumerate(self.classes)}
        return {0: "censored samples", 1: "events"}

    def set_class_weight(self, class_weight, train: np.ndarray) -> dict | None:
        """Fill ``arrays["weight"]``; ``train`` indexes the labelled samples used for training.

        Returns the weight of each class (or None for unweighted training).
        """
        labels = self.arrays["label"]
        n_classes = len(self.classes)
        if class_weight is None:
            per_class = np.ones(n_classes)
        elif isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ValueError(
                    f"class_weight must be None, 'balanced' or a dict {{class: weight}}, "
                    f"got {class_weight!r}."
                )
            counts = np.bincount(labels[train], minlength=n_classes).astype(np.float64)
            per_class = np.divide(
                train.size, n_classes * counts, out=np.zeros(n_classes), where=counts > 0
            )
        elif isinstance(class_weight, Mapping):
            unknown = [k for k in class_weight if k not in self.classes]
            if unknown:
                raise ValueError(
                    f"class_weight names classes that are not in the labels: {unknown}; "
                    f"the classes are {self.classes}."
                )
            per_class = np.array([float(class_weight.get(c, 1.0)) for c in self.classes])
            if not (np.isfinite(per_class).all() and (per_class >= 0).all()):
                raise ValueError("class_weight values must be finite and >= 0.")
        else:
            raise TypeError(
                "class_weight must be None, 'balanced' or a dict {class: weight}, "
                f"got {type(class_weight).__name__}."
            )
        self.arrays["weight"] = per_class[labels].astype(np.float32)
        self.class_weights = (
            None
            if class_weight is None
            else {str(c): float(w) for c, w in zip(self.classes, per_class)}
        )
        return self.class_weights


def obs_column(data, adata, key: str, what: str) -> pd.Series:
    """``adata.obs[key]``, or the MuData's global ``obs[key]`` aligned to ``adata``."""
    if key in adata.obs.columns:
        return adata.obs[key]
    global_obs = getattr(data, "obs", None)
    if data is not adata and global_obs is not None and key in global_obs.columns:
        return global_obs[key].reindex(adata.obs_names)
    raise KeyError(
        f"obs has no column {key!r} ({what}); available: {list(adata.obs.columns)}. "
        f"Add it (adata.obs[{key!r}] = ...) or pass the right column name."
    )


def infer_task(column: pd.Series, obs_key: str, event_key: str | None) -> str:
    """``"survival"`` with an ``event_key``, ``"classification"`` for categorical labels."""
    if event_key is not None:
        return "survival"
    if isinstance(column.dtype, pd.CategoricalDtype) or not is_numeric_dtype(column.dtype):
        return "classification"
    if is_bool_dtype(column.dtype):
        return "classification"
    raise ValueError(
        f"obs[{obs_key!r}] is numeric ({column.dtype}), so the task is ambiguous. For survival, "
        "pass event_key=<column of event indicators> (obs_key then holds durations); for "
        f"classification, pass task='classification' or make the column categorical "
        f"(adata.obs[{obs_key!r}] = adata.obs[{obs_key!r}].astype('category'))."
    )


def _json_scalar(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _warn_dropped(n_dropped: int, n_total: int, what: str) -> None:
    if n_dropped:
        warnings.warn(
            f"{n_dropped} of {n_total} samples have no {what} (NaN) and are left out of "
            "training; they still receive predictions.",
            stacklevel=user_stacklevel(),
        )


def classification_targets(column: pd.Series, obs_key: str) -> Targets:
    """Class codes of the labelled samples; classes in category order, else sorted."""
    missing = column.isna().to_numpy()
    n_total = missing.size
    if missing.all():
        raise ValueError(f"obs[{obs_key!r}] has no labels: every value is NaN.")
    values = column[~missing]
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(values.unique())
        classes = [c for c in column.cat.categories if c in present]
    else:
        unique = pd.unique(values.to_numpy())
        try:
            classes = sorted(unique)
        except TypeError:
            classes = sorted(unique, key=str)
    codes = pd.Categorical(values.to_numpy(), categories=classes).codes.astype(np.int32)
    classes = [_json_scalar(c) for c in classes]
    if len(set(map(str, classes))) != len(classes):
        raise ValueError(
            f"obs[{obs_key!r}] has classes whose names coincide as text ({classes}); make the "
            "labels distinct strings."
        )
    if len(classes) < 2:
        raise ValueError(
            f"obs[{obs_key!r}] has a single class ({classes[0]!r}): classification needs at "
            "least two. Check the column, or subset the data to samples of several classes."
        )
    _warn_dropped(int(missing.sum()), n_total, f"label in obs[{obs_key!r}]")
    return Targets(
        task="classification",
        rows=np.flatnonzero(~missing),
        arrays={"label": codes},
        strata=codes.copy(),
        classes=classes,
        n_dropped=int(missing.sum()),
    )


def survival_targets(
    durations: pd.Series, events: pd.Series, obs_key: str, event_key: str
) -> Targets:
    """Durations (> 0) and event indicators (0/1) of the samples that have both."""
    if not (is_numeric_dtype(durations.dtype) and not is_bool_dtype(durations.dtype)):
        raise TypeError(
            f"obs[{obs_key!r}] must hold numeric durations (e.g. days to death or last "
            f"follow-up), got dtype {durations.dtype}."
        )
    if isinstance(events.dtype, pd.CategoricalDtype):
        events = events.astype(object)
    event_values = pd.to_numeric(events, errors="coerce")
    not_numeric = events.notna() & event_values.isna()
    if not_numeric.any():
        example = events[not_numeric].iloc[0]
        raise ValueError(
            f"obs[{event_key!r}] must hold event indicators (1 or True = event observed, "
            f"0 or False = censored); found {example!r}. Recode it, e.g. "
            f"adata.obs[{event_key!r}] = (adata.obs[{event_key!r}] == 'Dead').astype(int)."
        )
    time = durations.to_numpy(dtype=np.float64, na_value=np.nan)
    event = event_values.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(time) | np.isnan(event)
    if missing.all():
        raise ValueError(
            f"No sample has both a duration (obs[{obs_key!r}]) and an event indicator "
            f"(obs[{event_key!r}])."
        )
    keep = ~missing
    names = durations.index[keep]
    time, event = time[keep], event[keep]
    bad = ~np.isfinite(time) | (time <= 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"obs[{obs_key!r}] has {int(bad.sum())} duration(s) that are zero, negative or "
            f"infinite (first: {names[first]!r} = {time[first]!r}). Durations must be > 0: "
            "drop those samples, or add a small offset if a duration of 0 means "
            "'same day'."
        )
    odd = ~np.isin(event, (0.0, 1.0))
    if odd.any():
        values = sorted(set(event[odd].tolist()))[:5]
        raise ValueError(
            f"obs[{event_key!r}] must be 0/1 (or False/True); found {values}. Recode it, "
            f"e.g. adata.obs[{event_key!r}] = (adata.obs[{event_key!r}] > 0).astype(int)."
        )
    if event.sum() == 0:
        raise ValueError(
            f"obs[{event_key!r}] has no event (all samples are censored): a Cox model cannot "
            "be fitted. Check the coding (1 = event observed)."
        )
    _warn_dropped(
        int(missing.sum()),
        missing.size,
        f"duration (obs[{obs_key!r}]) or event (obs[{event_key!r}])",
    )
    return Targets(
        task="survival",
        rows=np.flatnonzero(keep),
        arrays={"time": time.astype(np.float32), "event": event.astype(np.float32)},
        strata=event.astype(np.int32),
        n_dropped=int(missing.sum()),
    )


def check_splittable(
    targets: Targets, validation_fraction: float, obs_key: str, *, folds: bool = False
) -> None:
    """Every stratum needs 2 samples to be split between training and validation.

    ``folds=True``: the split is into inner cross-validation folds (the message then says how
    to do without them).
    """
    if validation_fraction <= 0 and not folds:
        return
    names = targets.stratum_names()
    counts = np.bincount(targets.strata, minlength=len(names))
    small = [(names[i], int(c)) for i, c in enumerate(counts) if c < 2]
    if not small:
        return
    listed = ", ".join(f"{name} ({count})" for name, count in small)
    if folds:
        fix = (
            "pass inner_folds=0 with a fixed l2=<value> (linear head) or a validation_fraction "
            "(MLP head)."
        )
        if targets.task == "classification":
            raise ValueError(
                f"Too few samples to form inner cross-validation folds from class(es) {listed} "
                f"of obs[{obs_key!r}] (each class needs at least 2). Drop or merge those "
                f"classes, or {fix}"
            )
        raise ValueError(
            f"Too few {listed} to stratify inner cross-validation folds on the event indicator "
            f"(at least 2 of each are needed). Add samples, or {fix}"
        )
    if targets.task == "classification":
        raise ValueError(
            f"Too few samples to split class(es) {listed} of obs[{obs_key!r}] between training "
            "and validation (each class needs at least 2). Drop or merge those classes, or "
            "pass validation_fraction=0 (no validation, no early stopping)."
        )
    raise ValueError(
        f"Too few {listed} to stratify the validation split on the event indicator (at least "
        "2 of each are needed). Pass validation_fraction=0 (no validation, no early stopping)."
    )
