"""``pp.check_expression``: are these values TPM the model can use?"""

from __future__ import annotations

import warnings

import numpy as np

from .._anndata import get_matrix, get_modality, iter_row_batches
from .._validation import check_positive_int
from ._values import (
    ExpressionValueError,
    ExpressionValueWarning,
    TpmRowReport,
    diagnose,
    require_tpm_rows,
    sample_list,
)

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
    mod
        For a MuData: the modality to check.
    batch_size
        Samples read into memory at a time.

    Returns
    -------
    dict with ``looks_like`` (``"tpm"``, ``"counts"``, ``"log"`` or ``"not_tpm"``),
    ``n_obs``, ``integer`` (all values integers), ``median_row_sum``, ``median_row_max`` and
    ``n_all_zero`` (samples whose values are all 0; they are named in a warning).

    Raises
    ------
    ExpressionValueError
        NaN, infinite or negative values. Other problems warn
        (:class:`~bulkrnabert_sv.pp.ExpressionValueWarning`) with the fix.
    TypeError
        ``batch_size`` is not an integer.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    adata = get_modality(data, mod)
    matrix = get_matrix(adata, layer)
    where = "X" if layer is None else f"layers[{layer!r}]"
    sums, maxima, integer = [], [], True
    zeros = TpmRowReport(where)  # only for the all-zero samples, named in the warning
    for start, _, rows in iter_row_batches(matrix, batch_size):
        require_tpm_rows(rows, where=where, first_row=start)
        zeros.add_unexpressed(~rows.any(axis=1), first_row=start)
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
    n_all_zero = int(zeros.rows("unexpressed").size)
    if n_all_zero:
        samples = sample_list(zeros.rows("unexpressed"), adata.obs_names)
        zero_message = (
            f"{where}: {n_all_zero} of {matrix.shape[0]} sample(s) have all values 0 ({samples}); "
            "BulkRNABert gives them all the same embedding, which says nothing about them. Check "
            "that this is the layer holding TPM, or drop these samples."
        )
        message = zero_message if message is None else f"{message} {zero_message}"
    if message is not None:
        warnings.warn(message, ExpressionValueWarning, stacklevel=2)
    return {
        "looks_like": kind,
        "n_obs": int(matrix.shape[0]),
        "integer": integer,
        "median_row_sum": median_sum,
        "median_row_max": median_max,
        "n_all_zero": n_all_zero,
    }
