"""The published binning of TPM values into expression tokens."""

from __future__ import annotations

import math

import numpy as np

#: Distance to a bin edge, in bin widths, within which ``log10`` is recomputed with the C
#: library (:func:`math.log10`). NumPy's vectorised ``log10`` can differ from it by one ulp
#: (about 1e-14 bin widths here), which moves a value lying on an edge into the neighbouring
#: bin; 1e-11 bin widths is hundreds of ulp, and so few values lie that close to an edge that
#: recomputing them costs nothing measurable.
_EDGE_TOLERANCE = 1e-11


def expression_bins(n_bins: int) -> np.ndarray:
    """The bin edges: ``linspace(0, 1, n_bins)`` in float64."""
    return np.linspace(0.0, 1.0, n_bins, dtype=np.float64)


def _digitize(x: np.ndarray, n_bins: int, clip: bool) -> np.ndarray:
    """Tokens of normalised log values ``x`` (float64): the published binning rule."""
    tokens = np.digitize(x, expression_bins(n_bins), right=False)
    tokens[x == 0] = 0
    if clip:
        np.clip(tokens, 0, n_bins - 1, out=tokens)
    return tokens.astype(np.int32)


def bin_log_expression(
    log_expression, *, normalization_factor: float, n_bins: int, clip: bool = True
) -> np.ndarray:
    """Bin ``log10(1 + TPM)`` values: the core of :func:`tokenize`, without input checks.

    ``x = log_expression / normalization_factor``; ``token = digitize(x, linspace(0, 1, n_bins))``
    in float64 (left-closed bins); ``token = 0`` where ``x == 0``. With ``clip`` (the default),
    ``x >= 1`` (and NaN) give ``n_bins - 1`` instead of ``n_bins``, which has no embedding row.
    The log values are used as given: :func:`tokenize` computes them from TPM exactly as
    upstream does.
    """
    x = np.asarray(log_expression, dtype=np.float64) / float(normalization_factor)
    return _digitize(x, n_bins, clip)


def _tokenize_tpm(values: np.ndarray, *, normalization_factor: float, n_bins: int) -> np.ndarray:
    """Tokens of finite, non-negative float64 TPM, with ``log10`` as upstream computes it.

    Upstream computes ``log10`` with the C library's function, which :func:`math.log10` calls;
    NumPy's vectorised ``log10`` differs from it by one ulp on some inputs, which moves a value
    lying on a bin edge into the neighbouring bin. Only values within ``_EDGE_TOLERANCE`` bin
    widths of an edge can change token that way: those few are recomputed with
    :func:`math.log10` and binned with :func:`numpy.digitize`. Every other value is at least
    1e-11 bin widths from both of its edges, far more than the rounding of ``x * (n_bins - 1)``
    (and of ``linspace``'s edges, a few ulp), so ``floor(x * (n_bins - 1)) + 1`` is exactly its
    ``digitize`` token (and much faster than ``digitize``).
    """
    factor = float(normalization_factor)
    shifted = 1.0 + values.reshape(-1)  # flat: one code path for every shape, 0-d included
    x = np.log10(shifted)
    x /= factor
    # Position in bin widths; edges lie at integers. Capped half-way between integers past the
    # last edge (n_bins - 1): the int cast stays defined, the token stays n_bins (clipped to
    # n_bins - 1 below, as digitize's n_bins would be) and those values are not "near an edge".
    scaled = np.multiply(x, n_bins - 1)
    np.minimum(scaled, n_bins - 0.5, out=scaled)
    whole = np.floor(scaled)
    tokens = whole.astype(np.int32)
    tokens += 1
    scaled -= whole  # fractional part, in [0, 1)
    near = (scaled <= _EDGE_TOLERANCE) | (scaled >= 1.0 - _EDGE_TOLERANCE)
    # log10(1) is exactly 0 in every library: the (many) zero TPM values need no recomputing.
    near &= shifted != 1.0
    index = np.flatnonzero(near)
    if index.size:
        exact = np.array([math.log10(v) / factor for v in shifted[index].tolist()])
        x[index] = exact
        tokens[index] = np.digitize(exact, expression_bins(n_bins), right=False)
    tokens[x == 0] = 0
    np.clip(tokens, 0, n_bins - 1, out=tokens)
    return tokens.reshape(values.shape)


def tokenize(tpm, *, normalization_factor: float, n_bins: int) -> np.ndarray:
    """Bin TPM into token ids as BulkRNABert does.

    ``x = log10(1 + TPM) / normalization_factor``; ``token = digitize(x, linspace(0, 1, n_bins))``
    (left-closed bins, float64); ``token = 0`` where ``x == 0``. Values with ``x >= 1`` would get
    ``n_bins``, which has no embedding row: they are clipped to ``n_bins - 1`` (the row upstream's
    clamped lookup uses). ``log10`` is the C library's (:func:`math.log10`), as upstream's, also
    for values that lie exactly on a bin edge.

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
    return _tokenize_tpm(values, normalization_factor=normalization_factor, n_bins=n_bins)
