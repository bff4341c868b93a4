"""The published binning of TPM values into expression tokens."""

from __future__ import annotations

import numpy as np


def expression_bins(n_bins: int) -> np.ndarray:
    """The bin edges: ``linspace(0, 1, n_bins)`` in float64."""
    return np.linspace(0.0, 1.0, n_bins, dtype=np.float64)


def bin_log_expression(
    log_expression, *, normalization_factor: float, n_bins: int, clip: bool = True
) -> np.ndarray:
    """Bin ``log10(1 + TPM)`` values: the core of :func:`tokenize`, without input checks.

    ``x = log_expression / normalization_factor``; ``token = digitize(x, linspace(0, 1, n_bins))``
    in float64 (left-closed bins); ``token = 0`` where ``x == 0``. With ``clip`` (the default),
    ``x >= 1`` (and NaN) give ``n_bins - 1`` instead of ``n_bins``, which has no embedding row.
    """
    x = np.asarray(log_expression, dtype=np.float64) / float(normalization_factor)
    tokens = np.digitize(x, expression_bins(n_bins), right=False)
    tokens[x == 0] = 0
    if clip:
        np.clip(tokens, 0, n_bins - 1, out=tokens)
    return tokens.astype(np.int32)


def tokenize(tpm, *, normalization_factor: float, n_bins: int) -> np.ndarray:
    """Bin TPM into token ids as BulkRNABert does.

    ``x = log10(1 + TPM) / normalization_factor``; ``token = digitize(x, linspace(0, 1, n_bins))``
    (left-closed bins, float64); ``token = 0`` where ``x == 0``. Values with ``x >= 1`` would get
    ``n_bins``, which has no embedding row: they are clipped to ``n_bins - 1`` (the row upstream's
    clamped lookup uses).

    Parameters
    ----------
    tpm
        Array-like of TPM values, samples × genes in model order. Not modified.
    normalization_factor
        The checkpoint's factor (``tokenizer_config.json``).
    n_bins
        Number of expression bins.

    Returns
    -------
    ``int32`` array of the input's shape with values in ``0..n_bins-1``.

    Raises
    ------
    ValueError
        NaN, infinite or negative values.
    """
    values = np.asarray(tpm, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("TPM values contain NaN or infinite entries; fill or drop them first.")
    if np.any(values < 0):
        raise ValueError("TPM values must be non-negative; negative entries were found.")
    return bin_log_expression(
        np.log10(1.0 + values), normalization_factor=normalization_factor, n_bins=n_bins
    )
