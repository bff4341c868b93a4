"""Tokenizer parity at bin edges: log10 as the C library computes it (upstream), not NumPy's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bulkrnabert_sv.model import expression_bins, tokenize

#: (normalization_factor, n_bins): the TCGA and GTEx checkpoints, and the golden fixture's.
SETTINGS = [(5.547176906585117, 64), (5.873553674586928, 64), (3.0, 8)]


def reference_tokens(tpm: np.ndarray, factor: float, n_bins: int) -> np.ndarray:
    """Upstream's rule with the C library's log10, one Python float at a time."""
    x = np.array([math.log10(1.0 + float(v)) / factor for v in tpm.ravel()]).reshape(tpm.shape)
    tokens = np.digitize(x, expression_bins(n_bins), right=False)
    tokens[x == 0] = 0
    return np.clip(tokens, 0, n_bins - 1)


def _shift(y: float, n: int) -> float:
    """The float ``n`` ulp above (n > 0) or below (n < 0) the positive float ``y``."""
    return float((np.array(y).view(np.int64) + n).view(np.float64))


def first_at_or_above(edge: float, factor: float) -> float:
    """The smallest float ``y`` with ``math.log10(y) / factor >= edge``: the edge, in 1 + TPM."""
    nominal = 10.0 ** (edge * factor)
    lo, hi = _shift(nominal, -64), _shift(nominal, 64)
    while math.log10(lo) / factor >= edge:
        lo = _shift(lo, -64)
    while math.log10(hi) / factor < edge:
        hi = _shift(hi, 64)
    lo_i, hi_i = (int(np.array(v).view(np.int64)) for v in (lo, hi))
    while hi_i - lo_i > 1:  # bisect over the floats between them (monotonic as integers)
        mid = (lo_i + hi_i) // 2
        if math.log10(float(np.array(mid).view(np.float64))) / factor >= edge:
            hi_i = mid
        else:
            lo_i = mid
    return float(np.array(hi_i).view(np.float64))


def edge_tpm(factor: float, n_bins: int, ulps: int = 2) -> np.ndarray:
    """TPM exactly at every positive bin edge and 1..``ulps`` ulp (of 1 + TPM) around it.

    Also the naive placement ``10 ** (edge * factor) - 1`` (what a user would write). ``y - 1``
    is exact for these floats, so ``1 + TPM`` is the stepped value itself.
    """
    values = []
    for edge in expression_bins(n_bins)[1:]:
        at = first_at_or_above(float(edge), factor)
        values += [_shift(at, n) - 1.0 for n in range(-ulps, ulps + 1)]
        values.append(10.0 ** (edge * factor) - 1.0)
    return np.asarray(values)


@pytest.mark.parametrize(("factor", "n_bins"), SETTINGS)
def test_tokens_at_and_around_every_edge_match_the_c_library_log10(factor, n_bins):
    tpm = edge_tpm(factor, n_bins)
    assert tpm.size == 6 * (n_bins - 1)
    expected = reference_tokens(tpm, factor, n_bins)
    tokens = tokenize(tpm, normalization_factor=factor, n_bins=n_bins)
    assert tokens.dtype == np.int32
    mismatched = np.flatnonzero(tokens != expected)
    assert mismatched.size == 0, (
        f"{mismatched.size} of {tpm.size} edge values get another token, e.g. TPM "
        f"{tpm[mismatched[:3]].tolist()}: {tokens[mismatched[:3]]} != {expected[mismatched[:3]]}"
    )
    # The values straddle every edge: one ulp below an edge is the bin below it.
    per_edge = expected.reshape(n_bins - 1, -1)
    np.testing.assert_array_equal(per_edge[:, 1], np.arange(1, n_bins))
    np.testing.assert_array_equal(per_edge[:, 2], np.minimum(np.arange(2, n_bins + 1), n_bins - 1))


def test_nominal_edge_values_of_the_tcga_checkpoint():
    # The values placed exactly at the 64 edges: NumPy's log10 alone puts one in the wrong bin.
    factor, n_bins = SETTINGS[0]
    tpm = np.array([10.0 ** (edge * factor) - 1.0 for edge in expression_bins(n_bins)])
    np.testing.assert_array_equal(
        tokenize(tpm, normalization_factor=factor, n_bins=n_bins),
        reference_tokens(tpm, factor, n_bins),
    )


def test_random_tpm_matches_the_reference_everywhere():
    rng = np.random.default_rng(7)
    tpm = rng.lognormal(1.0, 2.5, (6, 3000))
    tpm[rng.random(tpm.shape) < 0.25] = 0.0
    tpm[0, :4] = [1e-16, 3e-16, 4e5, 1e300]  # 1 + x == 1, just above 1, past the last edge
    for factor, n_bins in SETTINGS:
        np.testing.assert_array_equal(
            tokenize(tpm, normalization_factor=factor, n_bins=n_bins),
            reference_tokens(tpm, factor, n_bins),
        )
    tokens = tokenize(tpm, normalization_factor=3.0, n_bins=8)
    assert tokens.shape == (6, 3000) and tokens[0, :4].tolist() == [0, 1, 7, 7]
    # A small normalisation factor puts most values past the last edge: all clipped.
    assert (tokenize(tpm, normalization_factor=1e-3, n_bins=8)[tpm > 0.01] == 7).all()


def test_shapes_and_input_untouched():
    tpm = np.array([[0.0, 1.0, 10.0], [100.0, 1e3, 1e6]], dtype=np.float32)
    before = tpm.copy()
    tokens = tokenize(tpm, normalization_factor=3.0, n_bins=8)
    np.testing.assert_array_equal(tpm, before)
    np.testing.assert_array_equal(tokens, reference_tokens(tpm, 3.0, 8))
    assert tokenize(np.float64(10.0), normalization_factor=3.0, n_bins=8).shape == ()
    assert tokenize(np.zeros((0, 5)), normalization_factor=3.0, n_bins=8).shape == (0, 5)
