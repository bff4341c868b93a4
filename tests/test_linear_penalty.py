"""The linear head's penalty forms: standardised vs PCA-whitened ridge, chosen by inner CV."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import bulkrnabert_sv.tl as tl
from bulkrnabert_sv.training.fitting import (
    DEFAULT_PENALTIES,
    _feature_map,
    fit_linear_head,
    stratified_folds,
)
from bulkrnabert_sv.training.survival import concordance_index, ridge_cox


def _low_variance_cohort(n: int, seed: int):
    """24-dimensional embeddings whose risk lies in their smallest principal direction (sd 0.1,
    the largest 30); exponential times, part censored."""
    rng = np.random.default_rng(seed)
    p = 24
    basis = np.linalg.qr(rng.normal(size=(p, p)))[0]
    sd = np.geomspace(30.0, 0.1, p)
    x = (rng.normal(size=(n, p)) * sd) @ basis.T + 3.0
    direction = basis[:, -1] / sd[-1]
    risk = 0.5 * (x - 3.0) @ direction
    time = rng.exponential(np.exp(-risk)) * 100.0
    censor = rng.exponential(250.0, size=n)
    event = (time <= censor).astype(np.int64)
    return x, np.minimum(time, censor), event


def test_whitened_features_have_identity_covariance_and_weights_fold_back():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 5)) + 2.0
    mean, matrix = _feature_map(x, "whitened")
    z = (x - mean) @ matrix
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(5), atol=1e-8)
    mean, matrix = _feature_map(x, "standardised")
    np.testing.assert_allclose(((x - mean) @ matrix).std(axis=0), 1, atol=1e-12)
    with pytest.raises(ValueError, match="penalty must be one of"):
        _feature_map(x, "lasso")

    x, time, event = _low_variance_cohort(150, 1)
    arrays = {"time": time, "event": event}
    fit = fit_linear_head(x, arrays, "survival", n_classes=1, l2=0.01, penalties=("whitened",))
    mean, matrix = _feature_map(x, "whitened")
    beta = ridge_cox((x - mean) @ matrix, time, event, 0.01)
    # The returned raw-input weights give the same risk as the model fitted on the features.
    np.testing.assert_allclose(
        x @ fit.kernel[:, 0] + fit.bias[0], (x - mean) @ matrix @ beta, atol=1e-8
    )
    assert fit.penalty == "whitened" and fit.selection == {}


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_choice_of_penalty_finds_low_variance_risk(seed):
    """Risk in the smallest principal direction: the standardised ridge at the strength its
    inner CV picks ranks the held-out samples worse than the whitened one, and offering both
    picks the whitened form and ranks as well as it does."""
    x, time, event = _low_variance_cohort(400, seed)
    train, test = np.arange(200), np.arange(200, 400)
    arrays = {"time": time[train], "event": event[train]}
    folds = [stratified_folds(event[train], 5, (seed, 0))]
    c = {}
    fits = {}
    for name, penalties in {
        "standardised": ("standardised",),
        "whitened": ("whitened",),
        "both": ("standardised", "whitened"),
    }.items():
        fit = fit_linear_head(
            x[train],
            arrays,
            "survival",
            n_classes=1,
            l2=np.logspace(-4, 1.5, 12),
            folds=folds,
            penalties=penalties,
        )
        fits[name] = fit
        c[name] = concordance_index(time[test], x[test] @ fit.kernel[:, 0], event[test])
    both = fits["both"]
    assert both.penalty == "whitened" and both.selection["penalty"] == "whitened"
    assert len(both.selection["candidate_penalty"]) == 24  # 12 l2 x 2 forms
    assert len(both.selection["cv_partial_likelihood"]) == 24
    best = int(np.argmax(both.selection["cv_partial_likelihood"]))
    assert both.selection["candidate_penalty"][best] == "whitened"
    assert both.selection["candidate_l2"][best] == both.l2
    assert c["whitened"] > c["standardised"] + 0.05, c
    assert c["both"] == pytest.approx(c["whitened"], abs=0.02), c
    assert c["both"] > 0.58, c


def test_finetune_records_and_validates_penalty():
    x, time, event = _low_variance_cohort(120, 5)
    adata = ad.AnnData(
        np.zeros((120, 3), np.float32),
        obs=pd.DataFrame({"time": time, "event": event}, index=[f"s{i}" for i in range(120)]),
    )
    adata.obsm["features"] = x.astype(np.float32)
    assert DEFAULT_PENALTIES["survival"] == ("standardised", "whitened")
    assert DEFAULT_PENALTIES["classification"] == ("standardised",)
    with pytest.raises(ValueError, match="penalty must be one of"):
        tl.finetune(adata, "time", event_key="event", penalty="ridge", progress=False)
    with pytest.raises(ValueError, match="penalty is the linear head's"):
        tl.finetune(
            adata, "time", event_key="event", head="mlp", penalty="whitened", progress=False
        )
    with pytest.raises(ValueError, match="inner_folds=0 leaves nothing to choose"):
        tl.finetune(
            adata,
            "time",
            event_key="event",
            l2=0.1,
            inner_folds=0,
            penalty=["standardised", "whitened"],
            progress=False,
        )
    assert "time_bulkrnabert_risk" not in adata.obs
