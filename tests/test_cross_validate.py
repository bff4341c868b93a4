"""tl.cross_validate on simulated cohorts with planted cancer types and hazards.

A tiny random-weight encoder (200 genes, embed 32) blurs the planted programs, while PCA of the
log TPM keeps them: the baselines must show that on the same folds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import bulkrnabert_sv as bs
from bulkrnabert_sv.datasets import simulate_cohort
from bulkrnabert_sv.model import random_model
from bulkrnabert_sv.training.metrics import corrected_interval

GENES = [f"ENSG{i:011d}" for i in range(1, 201)]
#: A small L2 grid and one baseline penalty keep each run to a few seconds.
QUICK = dict(l2=(1e-3, 1e-1, 10.0), baseline_alphas=(1.0,), pca_components=8, progress=False)
CLASSIFICATION = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "log_loss")
SURVIVAL = ("c_harrell", "c_uno", "auc", "integrated_brier_score")


@pytest.fixture(scope="module")
def encoder():
    return random_model("tiny", genes=GENES, embed_dim=32, seed=0)


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(100, GENES, seed=0, risk_program_size=66, censoring_days=1200)


@pytest.fixture(scope="module")
def classification(encoder, cohort):
    data = cohort.copy()
    result = bs.tl.cross_validate(data, "cancer_type", model=encoder, n_repeats=2, **QUICK)
    return data, result


@pytest.fixture(scope="module")
def survival(encoder, cohort):
    return bs.tl.cross_validate(
        cohort.copy(), "time", event_key="event", model=encoder, n_repeats=2, **QUICK
    )


def test_one_row_per_model_fold_and_metric(classification, cohort):
    data, result = classification
    models = ["bulkrnabert", "embedding_ridge_a1", "pca8_ridge_a1"]
    assert list(result.models) == models
    folds = result.folds
    assert len(folds) == len(models) * 2 * 5 * len(CLASSIFICATION)
    assert set(folds["metric"]) == set(CLASSIFICATION)
    # every model saw the same folds: the same test sizes per (repeat, fold)
    sizes = folds.groupby(["repeat", "fold"])["n_test"].nunique()
    assert (sizes == 1).all()
    per_repeat = folds[folds["model"] == "bulkrnabert"].drop_duplicates(["repeat", "fold"])
    assert (per_repeat.groupby("repeat")["n_test"].sum() == 100).all()
    assert (per_repeat["n_train"] + per_repeat["n_test"] == 100).all()
    # out-of-fold predictions: each sample once per repeat, probabilities per class
    predictions = result.predictions
    assert predictions.groupby("repeat").size().tolist() == [100, 100]
    assert set(predictions.index) == set(cohort.obs_names)
    np.testing.assert_allclose(
        predictions[["type_0", "type_1", "type_2"]].sum(axis=1), 1, atol=1e-5
    )
    # nothing was written into the data
    assert list(data.obs.columns) == list(cohort.obs.columns) and not data.obsm
    assert list(data.uns) == list(cohort.uns)


def test_summary_means_and_corrected_intervals(classification):
    _, result = classification
    summary = result.summary.set_index(["model", "metric"])
    for (model, metric), row in summary.iterrows():
        folds = result.folds
        values = folds[(folds["model"] == model) & (folds["metric"] == metric)]["value"]
        mean, sd, low, high = corrected_interval(values.to_numpy(), 0.25, 0.95)
        assert row["mean"] == pytest.approx(values.mean()) == pytest.approx(mean)
        assert (row["sd"], row["ci_low"], row["ci_high"]) == pytest.approx((sd, low, high))
        assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["n_folds"] == 10
        assert row["higher_is_better"] == (metric != "log_loss")
    assert result.params["test_to_train"] == pytest.approx(0.25)
    # The planted types live in a few genes: PCA of log TPM finds them, the blurred random
    # embeddings much less; the comparison shows it with an interval excluding 0.
    balanced = summary.xs("balanced_accuracy", level="metric")["mean"]
    assert balanced["pca8_ridge_a1"] > 0.9
    assert 1 / 3 + 0.1 < balanced["bulkrnabert"] < balanced["pca8_ridge_a1"] - 0.1
    compare = result.compare().set_index(["model", "metric"])
    row = compare.loc[("pca8_ridge_a1", "balanced_accuracy")]
    assert row["ci_high"] < 0 and row["n_folds"] == 10
    difference = result.folds.pivot_table(
        index=["repeat", "fold"], columns="model", values="value", aggfunc="first"
    )
    assert set(difference.columns) == set(result.models)
    assert result.best("balanced_accuracy", prefix="pca") == "pca8_ridge_a1"
    assert "5-fold x 2" in repr(result)


def test_the_reference_is_the_default_probe(classification, encoder, cohort):
    """Fold 0 of repeat 0 trained exactly what tl.finetune trains on those samples."""
    _, result = classification
    first = result.predictions[(result.predictions["repeat"] == 0)]
    test_names = first[first["fold"] == 0].index
    train = cohort[~cohort.obs_names.isin(test_names)].copy()
    tuned = bs.tl.finetune(train, "cancer_type", model=encoder, progress=False, l2=QUICK["l2"])
    proba = tuned.predict(cohort[test_names].copy())
    np.testing.assert_allclose(
        first.loc[test_names, ["type_0", "type_1", "type_2"]].to_numpy(),
        proba.to_numpy(),
        atol=1e-5,
    )


def test_survival_metrics_and_baselines(survival):
    result = survival
    assert set(result.folds["metric"]) == set(SURVIVAL)
    summary = result.summary.set_index(["model", "metric"])["mean"]
    for model in result.models:
        assert 0.55 < summary[model, "c_harrell"] < 1, model
        assert 0 < summary[model, "integrated_brier_score"] < 0.25, model
    # the hazard program is planted in a third of the genes: every model ranks well
    assert summary["bulkrnabert", "c_harrell"] > 0.65
    assert summary["bulkrnabert", "c_uno"] > 0.6 and summary["bulkrnabert", "auc"] > 0.6
    events = result.folds.drop_duplicates(["repeat", "fold"])
    assert events.groupby("repeat")["n_events"].sum().tolist() == [result.params["n_events"]] * 2
    assert list(result.predictions.columns) == ["repeat", "fold", "risk"]


def test_same_seed_same_folds_and_values(encoder, cohort, classification):
    _, first = classification
    again = bs.tl.cross_validate(cohort, "cancer_type", model=encoder, n_repeats=2, **QUICK)
    pd.testing.assert_frame_equal(again.folds, first.folds)
    other = bs.tl.cross_validate(
        cohort, "cancer_type", model=encoder, n_repeats=1, random_state=1, baselines=False, **{
            k: v for k, v in QUICK.items() if k not in ("baseline_alphas", "pca_components")
        }
    )  # fmt: skip
    assert list(other.models) == ["bulkrnabert"]
    assert not other.predictions.index.equals(first.predictions.index[:100])


def test_errors(encoder, cohort):
    data = cohort.copy()
    data.obs["small"] = ["A"] * 97 + ["B"] * 3
    with pytest.raises(ValueError, match=r"5-fold .* at least 5 .* 'B' \(3\)"):
        bs.tl.cross_validate(data, "small", model=encoder, progress=False)
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*'epoch'"):
        bs.tl.cross_validate(data, "cancer_type", model=encoder, epoch=3)
    with pytest.raises(ValueError, match="n_splits must be an integer >= 2"):
        bs.tl.cross_validate(data, "cancer_type", model=encoder, n_splits=1)
    with pytest.raises(ValueError, match="epochs is for training an MLP head"):
        bs.tl.cross_validate(data, "cancer_type", model=encoder, epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="baseline_alphas"):
            bs.tl.cross_validate(data, "cancer_type", model=encoder, baseline_alphas=(0,))
