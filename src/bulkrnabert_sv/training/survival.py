"""Survival analysis: the Cox partial likelihood (Breslow ties), Harrell's C-index (lifelines'),
a ridge Cox solver and Breslow's baseline hazard.

Conventions: ``durations`` are observed times (> 0), ``events`` are 1 where the event (death,
progression) was observed and 0 where the sample was censored, and ``risk`` is a log relative
hazard (higher = earlier event), as a Cox model's linear predictor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def cox_negative_log_likelihood(
    risk: jax.Array,
    durations: jax.Array,
    events: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Negative Cox log partial likelihood with Breslow's handling of ties, per event.

    .. math::

        -\\frac{1}{d} \\sum_{i: e_i = 1} \\Big( r_i - \\log \\sum_{j: t_j \\ge t_i} e^{r_j} \\Big)

    where ``d`` is the number of events. Tied event times share the same risk set (Breslow).
    Sorting makes it O(n log n); it is differentiable in ``risk`` and can be jitted.

    Parameters
    ----------
    risk
        Log relative hazards, shape (n,).
    durations
        Observed times, shape (n,).
    events
        1 (event observed) or 0 (censored), shape (n,).
    mask
        Optional boolean (n,): samples where it is False are ignored entirely (padding).

    Returns
    -------
    A scalar; 0 when there is no event.
    """
    risk = jnp.asarray(risk).reshape(-1)
    durations = jnp.asarray(durations).reshape(-1)
    events = jnp.asarray(events).reshape(-1).astype(risk.dtype)
    if mask is not None:
        mask = jnp.asarray(mask).reshape(-1).astype(bool)
        # Ignored samples sort last and leave every risk set; their own terms have no event.
        durations = jnp.where(mask, durations, -jnp.inf)
        events = jnp.where(mask, events, 0)
        risk = jnp.where(mask, risk, 0)
    n = risk.shape[0]
    order = jnp.argsort(-durations, stable=True)
    t = durations[order]
    r = risk[order]
    e = events[order]
    # Descending times: sample k's risk set is the first (number of t_j >= t_k) samples.
    log_cumulative = jax.lax.cumlogsumexp(r)
    ascending = t[::-1]
    at_risk = n - jnp.searchsorted(ascending, t, side="left")
    log_risk_set = log_cumulative[at_risk - 1]
    n_events = e.sum()
    return -jnp.sum(e * (r - log_risk_set)) / jnp.maximum(n_events, 1)


def concordance_index(durations, risk, events) -> float:
    """Harrell's concordance index of risk scores: ``lifelines.utils.concordance_index``.

    A pair (i, j) is admissible when i had an event and j left later (``t_j > t_i``), or j was
    censored at the same time (``t_j == t_i``, ``e_j = 0``). It is concordant when
    ``risk_i > risk_j``; tied risks count one half. lifelines scores survival times (higher =
    later), so it is given ``-risk``; this function adds the checks and messages.

    Parameters
    ----------
    durations, risk, events
        Arrays of shape (n,); ``events`` is 1 for an observed event, 0 for censoring.

    Returns
    -------
    The C-index in [0, 1] (0.5: random ranking, 1: perfect).

    Raises
    ------
    ValueError
        Arrays of different lengths, non-finite values, or no admissible pair (no event, or
        every event is the last exit).
    """
    from lifelines.utils import concordance_index as lifelines_concordance_index

    t = np.asarray(durations, dtype=np.float64).reshape(-1)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    e = np.asarray(events).reshape(-1).astype(bool)
    if not (t.shape == r.shape == e.shape):
        raise ValueError(
            f"durations, risk and events must have the same length, got {t.shape[0]}, "
            f"{r.shape[0]} and {e.shape[0]}."
        )
    if not (np.isfinite(t).all() and np.isfinite(r).all()):
        raise ValueError("durations and risk must be finite (no NaN or infinite values).")
    try:
        return float(lifelines_concordance_index(t, -r, e))
    except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset."
        raise ValueError(
            "No admissible pairs for the C-index: it needs at least one event followed by a "
            "later exit (event or censoring)."
        ) from None


# ------------------------------------------------------------------------------ ridge Cox model
class _RiskSets:
    """The time ordering of a survival data set, computed once for many coefficient vectors.

    Sorting by time turns the risk-set sums ``S0(t) = sum_{t_j >= t} w_j`` and
    ``S1(t) = sum_{t_j >= t} w_j x_j`` into reversed cumulative sums read at each event, and
    ``sum_i S2(t_i) / S0(t_i)`` into ``X^T diag(w * c) X`` with ``c_j`` the sum of ``1 / S0(t_i)``
    over the events at or before ``t_j``: O(n p^2) with BLAS, Breslow's ties.
    """

    def __init__(self, time: np.ndarray, event: np.ndarray):
        self.order = np.argsort(time, kind="stable")
        self.observed = np.asarray(event).astype(bool)
        first = np.searchsorted(time[self.order], time, side="left")  # first still at risk
        self.event_first = first[self.observed]
        event_time = time[self.observed]
        self.event_order = np.argsort(event_time, kind="stable")
        self.events_before = np.searchsorted(event_time[self.event_order], time, side="right")

    def _s0(self, w):
        return np.cumsum(w[self.order][::-1])[::-1][self.event_first]

    def loglik(self, risk: np.ndarray) -> float:
        shift = risk.max()
        s0 = self._s0(np.exp(risk - shift))
        return float(np.sum(risk[self.observed] - shift - np.log(s0)))

    def terms(self, x: np.ndarray, risk: np.ndarray):
        """Log partial likelihood, its gradient in beta and the information matrix."""
        shift = risk.max()
        w = np.exp(risk - shift)
        s0 = self._s0(w)
        s1 = np.cumsum((w[:, None] * x)[self.order][::-1], axis=0)[::-1][self.event_first]
        loglik = float(np.sum(risk[self.observed] - shift - np.log(s0)))
        mean_x = s1 / s0[:, None]
        gradient = x[self.observed].sum(axis=0) - mean_x.sum(axis=0)
        cumulative = np.concatenate([[0.0], np.cumsum(1.0 / s0[self.event_order])])
        c = cumulative[self.events_before]
        information = (x * (w * c)[:, None]).T @ x - mean_x.T @ mean_x
        return loglik, gradient, information


def partial_log_likelihood(risk, durations, events) -> float:
    """The Cox log partial likelihood (Breslow ties) of fixed risk scores, summed over events.

    The same quantity as ``-cox_negative_log_likelihood(risk, durations, events) * n_events``,
    in float64 numpy.
    """
    time = np.asarray(durations, dtype=np.float64).reshape(-1)
    return _RiskSets(time, np.asarray(events).reshape(-1)).loglik(
        np.asarray(risk, dtype=np.float64).reshape(-1)
    )


def ridge_cox(
    x,
    durations,
    events,
    l2: float,
    *,
    beta: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> np.ndarray:
    """Coefficients of a Cox model with an L2 penalty, fitted by Newton's method.

    Minimises ``-loglik(beta) / n + l2 / 2 * ||beta||^2`` (Breslow ties), the objective of
    ``sksurv.linear_model.CoxPHSurvivalAnalysis(alpha=l2 * n)``, whose coefficients it
    reproduces (tests/test_survival.py); scikit-survival's loops over samples in Python, which is
    too slow for the inner cross-validation of wide embeddings. Steps are halved until the
    objective decreases.

    Parameters
    ----------
    x
        Covariates (n, p), typically standardised.
    durations, events
        Observed times (n,) and event indicators (1 = event, 0 = censored).
    l2
        Penalty per sample (> 0; 0 is allowed when the unpenalised fit exists).
    beta
        Starting coefficients (a warm start, e.g. the fit for a larger ``l2``); default zeros.
    max_iter, tol
        Newton iterations at most, and the largest coefficient change that counts as
        converged.

    Returns
    -------
    The coefficients (p,), float64.
    """
    x = np.asarray(x, dtype=np.float64)
    time = np.asarray(durations, dtype=np.float64).reshape(-1)
    event = np.asarray(events).reshape(-1)
    n, p = x.shape
    beta = np.zeros(p) if beta is None else np.array(beta, dtype=np.float64)

    sets = _RiskSets(time, event)

    def objective(loglik, b):
        return -loglik / n + 0.5 * l2 * float(b @ b)

    loglik, gradient, information = sets.terms(x, x @ beta)
    value = objective(loglik, beta)
    for _ in range(max_iter):
        grad = -gradient / n + l2 * beta
        hessian = information / n + l2 * np.eye(p)
        try:
            step = np.linalg.solve(hessian, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hessian, grad, rcond=None)[0]
        scale = 1.0
        for _ in range(30):
            candidate = beta - scale * step
            new_value = objective(sets.loglik(x @ candidate), candidate)
            if np.isfinite(new_value) and new_value <= value + 1e-12:
                break
            scale /= 2
        else:
            break
        change = float(np.max(np.abs(candidate - beta))) if p else 0.0
        beta, value = candidate, new_value
        if change < tol:
            break
        loglik, gradient, information = sets.terms(x, x @ beta)
    return beta


# ------------------------------------------------------------------------------ Breslow
def breslow_baseline(risk, durations, events) -> tuple[np.ndarray, np.ndarray]:
    """Breslow's estimate of the baseline cumulative hazard for fixed risk scores.

    Computed by ``sksurv.linear_model.coxph.BreslowEstimator``.

    Returns
    -------
    ``(times, cumulative_hazard)``: the distinct observed times (events and censorings,
    ascending) and ``H0`` at each of them; ``H0`` is 0 before the first time.
    """
    from sksurv.linear_model.coxph import BreslowEstimator

    estimator = BreslowEstimator().fit(
        np.asarray(risk, dtype=np.float64).reshape(-1),
        np.asarray(events).reshape(-1).astype(bool),
        np.asarray(durations, dtype=np.float64).reshape(-1),
    )
    step = estimator.cum_baseline_hazard_
    return np.asarray(step.x, dtype=np.float64), np.asarray(step.y, dtype=np.float64)


def survival_curves(risk, baseline_times, cumulative_hazard, times) -> np.ndarray:
    """``S(t | x) = exp(-H0(t) exp(risk))`` at ``times`` for each risk score.

    ``H0`` is the step function of :func:`breslow_baseline` (0 before its first time). Times
    after the last observed time of the data ``H0`` was estimated on are NaN: the estimate
    says nothing there.

    Returns
    -------
    Array (n_samples, n_times), float64.
    """
    risk = np.asarray(risk, dtype=np.float64).reshape(-1)
    baseline_times = np.asarray(baseline_times, dtype=np.float64)
    cumulative_hazard = np.asarray(cumulative_hazard, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    index = np.searchsorted(baseline_times, times, side="right") - 1
    hazard = np.where(index >= 0, cumulative_hazard[np.clip(index, 0, None)], 0.0)
    curves = np.exp(-np.outer(np.exp(risk), hazard))
    curves[:, times > baseline_times[-1]] = np.nan
    return curves
