"""Survival analysis: the Cox partial likelihood (Breslow ties) and Harrell's C-index.

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


def concordance_index(durations, risk, events, *, chunk_size: int = 2048) -> float:
    """Harrell's concordance index of risk scores, with ties as in ``lifelines``.

    A pair (i, j) is admissible when i had an event and j left later (``t_j > t_i``), or j was
    censored at the same time (``t_j == t_i``, ``e_j = 0``). It is concordant when
    ``risk_i > risk_j``; tied risks count one half. Equals
    ``lifelines.utils.concordance_index(durations, -risk, events)``.

    Parameters
    ----------
    durations, risk, events
        Arrays of shape (n,); ``events`` is 1 for an observed event, 0 for censoring.
    chunk_size
        Events compared at once (memory ``chunk_size * n``).

    Returns
    -------
    The C-index in [0, 1] (0.5: random ranking, 1: perfect).

    Raises
    ------
    ValueError
        No admissible pair (no event, or every event is the last exit).
    """
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
    correct = tied = pairs = 0
    index = np.flatnonzero(e)
    for start in range(0, index.size, chunk_size):
        i = index[start : start + chunk_size]
        ti, ri = t[i, None], r[i, None]
        admissible = (t[None, :] > ti) | ((t[None, :] == ti) & ~e[None, :])
        pairs += int(admissible.sum())
        correct += int((admissible & (ri > r[None, :])).sum())
        tied += int((admissible & (ri == r[None, :])).sum())
    if pairs == 0:
        raise ValueError(
            "No admissible pairs for the C-index: it needs at least one event followed by a "
            "later exit (event or censoring)."
        )
    return (correct + 0.5 * tied) / pairs
