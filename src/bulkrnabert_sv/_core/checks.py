"""Checks that expression values are what the model expects: finite, non-negative TPM."""

from __future__ import annotations

import warnings

import numpy as np


class ExpressionValueError(ValueError):
    """Expression values the model cannot use (NaN, infinite, negative)."""


def check_tpm_rows(
    rows: np.ndarray, *, where: str = "X", first_row: int = 0, warn: bool = True
) -> None:
    """Raise on NaN/inf/negative values; warn when values look like counts or log-TPM.

    Parameters
    ----------
    rows
        Dense (n, n_genes) block of the input, before alignment.
    where
        Name of the matrix, for messages (``"X"`` or ``"layers['tpm']"``).
    first_row
        Index of the first row of the block in the full matrix, for messages.
    """
    finite = np.isfinite(rows)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise ExpressionValueError(
            f"{where} has NaN or infinite values (first at row {first_row + r}, column {c}). "
            "Fill them (e.g. with 0 for undetected genes) or drop those samples first."
        )
    if (rows < 0).any():
        r, c = np.argwhere(rows < 0)[0]
        raise ExpressionValueError(
            f"{where} has negative values (first at row {first_row + r}, column {c}: "
            f"{rows[r, c]:g}). BulkRNABert needs TPM (>= 0); scaled or centred data cannot be "
            "used. Pass the layer that holds TPM with layer=."
        )
    if not warn or rows.size == 0:
        return
    sums = rows.sum(axis=1)
    integer = np.all(rows == np.round(rows))
    if integer and np.median(sums) > 2e6:
        warnings.warn(
            f"{where} looks like raw counts (integers, median library size {np.median(sums):.3g}), "
            "but BulkRNABert expects TPM. Convert with bulkrnabert_sv.pp.counts_to_tpm(adata, "
            "gtf=...) and pass layer='tpm'.",
            stacklevel=4,
        )
    elif rows.max() < 30 and np.median(sums) < 2e5:
        warnings.warn(
            f"{where} looks log-transformed (max {rows.max():.3g}), but BulkRNABert expects TPM "
            "on the linear scale and applies log10(1 + TPM) itself. Pass untransformed TPM.",
            stacklevel=4,
        )
