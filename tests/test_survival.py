"""Cox partial likelihood, C-index, ridge Cox, Breslow curves and evaluation metrics, against
lifelines, scikit-survival and scikit-learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bulkrnabert_sv.training.fitting import fit_temperature
from bulkrnabert_sv.training.metrics import (
    classification_metrics,
    corrected_interval,
    evaluation_times,
    probability_metrics,
    survival_metrics,
)
from bulkrnabert_sv.training.survival import (
    breslow_baseline,
    concordance_index,
    cox_negative_log_likelihood,
    partial_log_likelihood,
    ridge_cox,
    survival_curves,
)


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


def _harrell_by_pairs(time, risk, event) -> float:
    """Harrell's C by its definition, pair by pair (ties in risk count one half)."""
    correct = pairs = 0.0
    for i in np.flatnonzero(event):
        for j in range(time.size):
            if time[j] > time[i] or (time[j] == time[i] and not event[j]):
                pairs += 1
                correct += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return correct / pairs


@pytest.mark.parametrize("seed", range(5))
def test_concordance_counts_pairs_with_ties_and_censoring(seed):
    rng = np.random.default_rng(seed)
    n = 120
    time = rng.integers(1, 30, n).astype(float)  # many tied times
    event = rng.integers(0, 2, n)
    risk = rng.integers(0, 12, n).astype(float)  # many tied scores
    if seed % 2:
        risk = risk - 0.3 * time + rng.normal(size=n)
    value = concordance_index(time, risk, event)
    assert value == pytest.approx(_harrell_by_pairs(time, risk, event), abs=1e-9)


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


# ------------------------------------------------------------------------------ ridge Cox
@pytest.mark.parametrize("l2", [1e-3, 0.1, 3.0])
def test_ridge_cox_matches_scikit_survival(rossi, l2):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = rossi
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    n = x.shape[0]
    reference = CoxPHSurvivalAnalysis(alpha=l2 * n, ties="breslow")
    reference.fit(x, Surv.from_arrays(event.astype(bool), time))
    beta = ridge_cox(x, time, event, l2)
    np.testing.assert_allclose(beta, reference.coef_, atol=1e-8)
    assert np.abs(beta).max() > 0.01
    # a warm start from another penalty reaches the same optimum
    np.testing.assert_allclose(ridge_cox(x, time, event, l2, beta=beta * 3 + 0.1), beta, atol=1e-8)


def test_partial_log_likelihood_equals_the_loss(rossi):
    x, time, event = rossi
    risk = x @ np.linspace(-0.3, 0.3, x.shape[1])
    expected = -float(cox_negative_log_likelihood(risk, time, event)) * event.sum()
    assert partial_log_likelihood(risk, time, event) == pytest.approx(expected, rel=1e-5)


def test_breslow_curves_match_scikit_survival(rossi):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = rossi
    fitted = CoxPHSurvivalAnalysis(ties="breslow").fit(
        x, Surv.from_arrays(event.astype(bool), time)
    )
    risk = fitted.predict(x)
    times_, hazard = breslow_baseline(risk, time, event)
    assert np.all(np.diff(times_) > 0) and np.all(np.diff(hazard) >= 0)
    grid = np.array([1.0, 10.0, 26.5, 52.0])
    curves = survival_curves(risk[:20], times_, hazard, grid)
    expected = np.stack([f(grid) for f in fitted.predict_survival_function(x[:20])])
    np.testing.assert_allclose(curves, expected, rtol=1e-10)
    # before the first time nothing has happened; after the last time nothing is known
    before_after = survival_curves(risk[:3], times_, hazard, [0.5, 60.0])
    np.testing.assert_array_equal(before_after[:, 0], 1.0)
    assert np.isnan(before_after[:, 1]).all()


# ------------------------------------------------------------------------------ metrics
def test_probability_metrics_match_scikit_learn():
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = probability_metrics(y, proba)
    assert scores["auroc"] == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert scores["log_loss"] == pytest.approx(log_loss(y, proba), abs=1e-12)
    assert 0.6 < scores["balanced_accuracy"] < 0.9
    binary = probability_metrics(
        y[y < 2], proba[y < 2][:, :2] / proba[y < 2][:, :2].sum(1)[:, None]
    )
    assert binary["auroc"] == pytest.approx(
        roc_auc_score(y[y < 2], proba[y < 2][:, 1] / proba[y < 2][:, :2].sum(1)), abs=1e-12
    )


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(20000, 4))
    p = np.exp(logits / 2.5)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_survival_metrics_match_scikit_survival(rossi):
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
    from sksurv.util import Surv

    x, time, event = rossi
    risk = x @ np.linspace(-0.3, 0.3, x.shape[1])
    train, test = np.arange(0, 432, 2), np.arange(1, 432, 2)
    grid = evaluation_times(time[train], event[train], time[test])
    assert grid.size >= 2 and grid.min() >= time[test].min() and grid.max() < time[test].max()
    scores = survival_metrics(time[train], event[train], time[test], event[test], risk[test],
                              None, grid)  # fmt: skip
    assert (
        scores["c_harrell"]
        == concordance_index_censored(event[test].astype(bool), time[test], risk[test])[0]
    )
    y_train = Surv.from_arrays(event[train].astype(bool), time[train])
    y_test = Surv.from_arrays(event[test].astype(bool), time[test])
    assert scores["c_uno"] == concordance_index_ipcw(y_train, y_test, risk[test], tau=grid.max())[0]
    assert 0.5 < scores["auc"] < 1 and np.isnan(scores["integrated_brier_score"])
    # a model that knows nothing: survival 0.5 everywhere gives a Brier score of about 0.25
    flat = np.full((test.size, grid.size), 0.5)
    scores = survival_metrics(time[train], event[train], time[test], event[test],
                              np.zeros(test.size), flat, grid)  # fmt: skip
    assert scores["integrated_brier_score"] == pytest.approx(0.25, abs=0.02)
    assert scores["c_harrell"] == 0.5


def test_corrected_interval_is_wider_than_the_naive_one():
    from scipy import stats

    values = np.array([0.61, 0.66, 0.58, 0.70, 0.64, 0.62, 0.67, 0.59, 0.65, 0.63])
    mean, sd, low, high = corrected_interval(values, 0.25, 0.95)
    assert mean == pytest.approx(values.mean()) and sd == pytest.approx(values.std(ddof=1))
    half = stats.t.ppf(0.975, 9) * np.sqrt((1 / 10 + 0.25) * sd**2)
    assert (low, high) == pytest.approx((mean - half, mean + half))
    naive = stats.t.ppf(0.975, 9) * sd / np.sqrt(10)
    assert high - low > 2 * naive * 1.8
    assert np.isnan(corrected_interval([0.5], 0.25)[2])
    assert corrected_interval([0.5, np.nan, 0.7], 0.25)[0] == pytest.approx(0.6)


def test_weighted_metrics_unchanged_by_the_follow_up_cut():
    """Where scikit-survival accepts the raw test data, the cut gives its values exactly."""
    from sksurv.metrics import cumulative_dynamic_auc, integrated_brier_score
    from sksurv.util import Surv

    rng = np.random.default_rng(3)
    n = 400
    z = rng.normal(size=n)
    event_time = rng.exponential(np.exp(-z))
    censor = rng.exponential(1.5, n)
    time, event = np.minimum(event_time, censor), (event_time <= censor).astype(int)
    train, test = np.arange(0, n, 2), np.arange(1, n, 2)
    keep = time[test] < time[train].max()  # raw test follow-up inside the training range
    test = test[keep]
    grid = evaluation_times(time[train], event[train], time[test])
    curves = np.exp(-np.outer(np.exp(z[test]), grid))
    scores = survival_metrics(time[train], event[train], time[test], event[test], z[test],
                              curves, grid)  # fmt: skip
    y_train = Surv.from_arrays(event[train].astype(bool), time[train])
    y_test = Surv.from_arrays(event[test].astype(bool), time[test])
    assert scores["auc"] == pytest.approx(cumulative_dynamic_auc(y_train, y_test, z[test], grid)[1])
    assert scores["integrated_brier_score"] == pytest.approx(
        integrated_brier_score(y_train, y_test, curves, grid)
    )
    assert scores["auc"] > 0.65
