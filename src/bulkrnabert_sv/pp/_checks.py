"""``pp.check_expression``: are these values TPM the model can use?"""

from __future__ import annotations

import warnings

import numpy as np

from .._core.checks import ExpressionValueError, ExpressionValueWarning, check_tpm_rows, diagnose
from .._core.data import get_matrix, get_modality, iter_row_batches

__all__ = ["ExpressionValueError", "ExpressionValueWarning", "check_expression"]


def check_expression(
    data, *, layer: str | None = None, mod: str = "rna", batch_size: int = 256
) -> dict[str, float | int | str | bool]:
    """Check that expression values are TPM, reading all samples one batch at a time.

    Parameters
    ----------
    data
        AnnData or MuData (``mod`` picks the modality). Not modified.
    layer
        The layer to check (default ``X``).

    Returns
    -------
    dict with ``looks_like`` (``"tpm"``, ``"counts"``, ``"log"`` or ``"not_tpm"``),
    ``n_obs``, ``integer`` (all values integers), ``median_row_sum`` and ``median_row_max``.

    Raises
    ------
    ExpressionValueError
        NaN, infinite or negative values. Other problems warn
        (:class:`~bulkrnabert_sv._core.checks.ExpressionValueWarning`) with the fix.
    """
    adata = get_modality(data, mod)
    matrix = get_matrix(adata, layer)
    where = "X" if layer is None else f"layers[{layer!r}]"
    sums, maxima, integer = [], [], True
    for start, _, rows in iter_row_batches(matrix, batch_size):
        check_tpm_rows(rows, where=where, first_row=start, warn=False)
        sums.append(rows.sum(axis=1))
        maxima.append(rows.max(axis=1) if rows.shape[1] else np.zeros(len(rows)))
        integer &= bool(np.all(rows == np.round(rows)))
    sums = np.concatenate(sums) if sums else np.zeros(0)
    maxima = np.concatenate(maxima) if maxima else np.zeros(0)
    median_sum = float(np.median(sums)) if sums.size else 0.0
    median_max = float(np.median(maxima)) if maxima.size else 0.0
    kind, message = ("tpm", None)
    if median_sum > 0:
        kind, message = diagnose(
            integer=integer, median_sum=median_sum, median_max=median_max, where=where
        )
    if message is not None:
        warnings.warn(message, ExpressionValueWarning, stacklevel=2)
    return {
        "looks_like": kind,
        "n_obs": int(matrix.shape[0]),
        "integer": integer,
        "median_row_sum": median_sum,
        "median_row_max": median_max,
    }
