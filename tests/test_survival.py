"""Cox partial likelihood (Breslow ties) and Harrell's C-index against lifelines/scikit-survival."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bulkrnabert_sv._core.metrics import classification_metrics
from bulkrnabert_sv._core.survival import concordance_index, cox_negative_log_likelihood


@pytest.fixture(scope="module")
def rossi():
    """A real recidivism table (432 people, 7 covariates, weekly times with many ties)."""
    from lifelines.datasets import load_rossi

    df = load_rossi()
    x = df.drop(columns=["week", "arrest"]).to_numpy(np.float64)
    return x, df["week"].to_numpy(np.float64), df["arrest"].to_numpy(np.int64)


@jax.jit
def _newton_step(beta, x, time, event):
    def loss(beta):
        return cox_negative_log_likelihood(x @ beta, time, event)

    return beta - jnp.linalg.solve(jax.hessian(loss)(beta), jax.grad(loss)(beta)), loss(beta)


def _fit_cox(x, time, event):
    """Newton's method on our loss (float32); returns coefficients and the log-likelihood."""
    x, time, event = (np.asarray(a, np.float32) for a in (x, time, event))
    beta = np.zeros(x.shape[1], np.float32)
    for _ in range(12):
        beta, _ = _newton_step(beta, x, time, event)
    _, loss = _newton_step(beta, x, time, event)
    return np.asarray(beta, np.float64), -float(loss) * event.sum()


def test_cox_loss_matches_scikit_survival_breslow_with_ties(rossi):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = rossi
    assert len(np.unique(time[event == 1])) < event.sum()  # tied event times
    reference = CoxPHSurvivalAnalysis(ties="breslow", alpha=0.0)
    reference.fit(x, Surv.from_arrays(event.astype(bool), time))
    beta, _ = _fit_cox(x, time, event)
    np.testing.assert_allclose(beta, reference.coef_, atol=1e-3)
    assert np.abs(beta).max() > 0.05


def test_cox_loss_matches_lifelines_without_ties(rossi):
    # lifelines uses Efron's ties, which equal Breslow's when no event times are tied.
    from lifelines import CoxPHFitter

    x, time, event = rossi
    time = time + np.random.default_rng(0).uniform(0, 0.5, time.size)
    assert len(np.unique(time)) == time.size
    df = __import__("pandas").DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])
    df["T"], df["E"] = time, event
    reference = CoxPHFitter().fit(df, "T", "E")
    beta, log_likelihood = _fit_cox(x, time, event)
    np.testing.assert_allclose(beta, reference.params_.to_numpy(), atol=1e-3)
    assert log_likelihood == pytest.approx(reference.log_likelihood_, abs=1e-2)


def test_cox_loss_by_hand_with_ties():
    risk = np.array([0.5, -1.0, 2.0, 0.0])
    time = np.array([2.0, 2.0, 3.0, 1.0])
    event = np.array([1, 1, 0, 1])
    e = np.exp(risk)
    # Breslow: both events at t=2 share the risk set {0, 1, 2}.
    expected = -(
        (risk[3] - np.log(e.sum()))
        + (risk[0] - np.log(e[:3].sum()))
        + (risk[1] - np.log(e[:3].sum()))
    )
    value = cox_negative_log_likelihood(risk, time, event)
    assert float(value) == pytest.approx(expected / 3, rel=1e-6)


def test_cox_loss_mask_equals_subset_and_no_event_is_zero():
    rng = np.random.default_rng(1)
    risk = rng.normal(size=12).astype(np.float32)
    time = rng.integers(1, 5, 12).astype(np.float32)
    event = rng.integers(0, 2, 12).astype(np.float32)
    mask = np.ones(12, bool)
    mask[[0, 5, 7]] = False
    loss = jax.jit(cox_negative_log_likelihood)
    masked = loss(risk, time, event, mask)
    subset = loss(risk[mask], time[mask], event[mask])
    assert float(masked) == pytest.approx(float(subset), rel=1e-6)
    grad = jax.jit(jax.grad(cox_negative_log_likelihood))(risk, time, event, mask)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0)
    assert np.any(np.asarray(grad)[mask] != 0)
    assert float(loss(risk, time, np.zeros(12, np.float32))) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_concordance_matches_lifelines_with_ties_and_censoring(seed):
    from lifelines.utils import concordance_index as lifelines_cindex

    rng = np.random.default_rng(seed)
    n = 400
    time = rng.integers(1, 30, n).astype(float)  # many tied times
    event = rng.integers(0, 2, n)
    risk = rng.integers(0, 12, n).astype(float)  # many tied scores
    if seed % 2:
        risk = risk - 0.3 * time + rng.normal(size=n)
    value = concordance_index(time, risk, event, chunk_size=64)
    assert value == pytest.approx(lifelines_cindex(time, -risk, event), abs=1e-9)


def test_concordance_extremes_and_errors():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 0, 1])
    assert concordance_index(time, -time, event) == 1.0
    assert concordance_index(time, time, event) == 0.0
    assert concordance_index(time, np.zeros(4), event) == 0.5
    with pytest.raises(ValueError, match="admissible"):
        concordance_index(time, time, np.zeros(4))
    with pytest.raises(ValueError, match="same length"):
        concordance_index(time, time[:3], event)


@pytest.mark.parametrize("seed", range(3))
def test_classification_metrics_match_sklearn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n_classes = 5
    y_true = rng.integers(0, 4, 200)  # class 4 never true
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    ours = classification_metrics(y_true, y_pred, n_classes)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    assert ours["f1_macro"] == pytest.approx(
        metrics.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12
    )
    assert ours["f1_weighted"] == pytest.approx(
        metrics.f1_score(y_true, y_pred, average="weighted", zero_division=0), abs=1e-12
    )
    with pytest.warns(UserWarning):  # sklearn warns about class 4 (predicted, never true)
        expected = metrics.balanced_accuracy_score(y_true, y_pred)
    assert ours["balanced_accuracy"] == pytest.approx(expected, abs=1e-12)
