"""Simulated bulk RNA-seq cohorts with a planted signal (for tests, benchmarks and tutorials).

Each cancer type up-regulates its own gene program; a latent risk factor up-regulates a risk
program and sets the hazard of an exponential survival model. The truth is kept in ``obs``
(``risk_factor``) and ``uns["simulation"]`` so that methods can be compared with an oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def simulate_cohort(
    n_obs: int,
    genes: Sequence[str],
    *,
    n_types: int = 3,
    program_size: int = 40,
    fold_change: float = 8.0,
    risk_program_size: int = 40,
    risk_effect: float = 1.0,
    hazard_coefficient: float = 2.0,
    baseline_days: float = 1000.0,
    censoring_days: float = 2000.0,
    noise: float = 0.3,
    seed: int = 0,
    profile_seed: int = 1234,
):
    """An AnnData of TPM with cancer types and survival planted in known gene programs.

    Parameters
    ----------
    n_obs
        Number of samples.
    genes
        Gene ids (``var_names``); needs ``n_types * program_size + risk_program_size`` of them.
    n_types, program_size, fold_change
        Cancer type ``k`` multiplies genes ``[k * program_size, (k + 1) * program_size)`` by
        ``fold_change``.
    risk_program_size, risk_effect
        The next ``risk_program_size`` genes are multiplied by ``exp(risk_effect * z)``, with
        ``z ~ N(0, 1)`` the sample's risk factor.
    hazard_coefficient, baseline_days, censoring_days
        Event times are exponential with rate ``exp(hazard_coefficient * z) / baseline_days``,
        censoring times exponential with mean ``censoring_days``; times are rounded up to whole
        days (so there are ties).
    noise
        Log-normal per-gene, per-sample noise (sigma).
    seed
        Seed of the samples; ``profile_seed`` seeds the shared baseline expression profile, so
        cohorts with different ``seed`` come from the same population.

    Returns
    -------
    AnnData with TPM in ``X`` (rows sum to 1e6) and ``obs`` columns ``cancer_type``
    (categorical ``type_0``, ...), ``risk_factor`` (z), ``time`` (days) and ``event`` (0/1);
    ``uns["simulation"]`` lists the programs and parameters.
    """
    import anndata as ad

    genes = [str(g) for g in genes]
    n_genes = len(genes)
    needed = n_types * program_size + risk_program_size
    if needed > n_genes:
        raise ValueError(f"The programs need {needed} genes, but only {n_genes} were given.")
    profile = np.random.default_rng(profile_seed).lognormal(2.0, 1.5, n_genes)
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_obs)
    z = rng.standard_normal(n_obs)
    tpm = profile * rng.lognormal(0.0, noise, (n_obs, n_genes))
    programs = {}
    for k in range(n_types):
        program = np.arange(k * program_size, (k + 1) * program_size)
        tpm[np.ix_(types == k, program)] *= fold_change
        programs[f"type_{k}"] = [genes[i] for i in program]
    risk_program = np.arange(n_types * program_size, needed)
    tpm[:, risk_program] *= np.exp(risk_effect * z)[:, None]
    tpm *= 1e6 / tpm.sum(axis=1, keepdims=True)
    event_time = rng.exponential(baseline_days * np.exp(-hazard_coefficient * z))
    censor_time = rng.exponential(censoring_days, n_obs)
    time = np.ceil(np.minimum(event_time, censor_time))
    event = (event_time <= censor_time).astype(np.int64)
    obs = pd.DataFrame(
        {
            "cancer_type": pd.Categorical([f"type_{k}" for k in types]),
            "risk_factor": z,
            "time": time,
            "event": event,
        },
        index=pd.Index([f"sample_{seed}_{i}" for i in range(n_obs)]),
    )
    adata = ad.AnnData(tpm.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["simulation"] = {
        "programs": programs,
        "risk_program": [genes[i] for i in risk_program],
        "fold_change": fold_change,
        "risk_effect": risk_effect,
        "hazard_coefficient": hazard_coefficient,
        "seed": seed,
    }
    return adata


def program_oracle(adata) -> np.ndarray:
    """The planted classifier: the type whose program has the highest mean log TPM."""
    programs = adata.uns["simulation"]["programs"]
    log_tpm = np.log1p(np.asarray(adata.X, dtype=np.float64))
    position = {g: i for i, g in enumerate(adata.var_names)}
    scores = np.stack(
        [log_tpm[:, [position[g] for g in programs[name]]].mean(axis=1) for name in programs],
        axis=1,
    )
    return np.asarray(list(programs))[scores.argmax(axis=1)]
