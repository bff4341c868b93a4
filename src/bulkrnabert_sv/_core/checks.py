"""Checks that expression values are what the model expects: finite, non-negative TPM."""

from __future__ import annotations

import warnings

import numpy as np

#: TPM values of one sample sum to 1e6 over all genes; allow rounding and float error.
_TPM_ROW_SUM_MAX = 1.05e6
#: Row maxima below this (for most samples) look like log-scale values, not TPM.
_LOG_MAX = 50.0


class ExpressionValueError(ValueError):
    """Expression values the model cannot use (NaN, infinite, negative)."""


class ExpressionValueWarning(UserWarning):
    """Expression values that do not look like TPM (raw counts, log scale, other units)."""


def require_finite_nonnegative(
    rows: np.ndarray,
    *,
    where: str,
    first_row: int,
    values: str,
    nonfinite_fix: str,
    negative_fix: str,
) -> None:
    """Raise :class:`ExpressionValueError` at the first NaN/inf, then the first negative entry.

    The message names the matrix (``where``), the position and value, and the caller's fix.
    """
    finite = np.isfinite(rows)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        raise ExpressionValueError(
            f"{where} has NaN or infinite {values} (first at row {first_row + r}, column {c}). "
            + nonfinite_fix
        )
    if (rows < 0).any():
        r, c = np.argwhere(rows < 0)[0]
        raise ExpressionValueError(
            f"{where} has negative values (first at row {first_row + r}, column {c}: "
            f"{rows[r, c]:g}). " + negative_fix
        )


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
    warn
        Run the heuristics that warn (:class:`ExpressionValueWarning`):

        - integer values with library sizes above 1e6: raw counts;
        - row maxima below 50 for most samples: log-transformed values;
        - other values with row sums above 1e6: not TPM (FPKM, CPM of a subset, normalised
          counts).

    Raises
    ------
    ExpressionValueError
        NaN, infinite or negative values (the message gives the first position and the fix).
    """
    require_finite_nonnegative(
        rows,
        where=where,
        first_row=first_row,
        values="values",
        nonfinite_fix="Fill them (e.g. with 0 for undetected genes) or drop those samples first.",
        negative_fix="BulkRNABert needs TPM (>= 0): scaled, centred or log(x + eps) values "
        "cannot be used. Pass the layer that holds TPM with layer=, or undo the transformation.",
    )
    if warn:
        problem = tpm_problem(rows, where=where)
        if problem is not None:
            warnings.warn(problem, ExpressionValueWarning, stacklevel=4)


def tpm_problem(rows: np.ndarray, *, where: str = "X") -> str | None:
    """A message if finite, non-negative ``rows`` do not look like TPM, else None."""
    if rows.size == 0 or not rows.any():
        return None
    _, message = diagnose(
        integer=bool(np.all(rows == np.round(rows))),
        median_sum=float(np.median(rows.sum(axis=1))),
        median_max=float(np.median(rows.max(axis=1))),
        where=where,
    )
    return message


def diagnose(
    *, integer: bool, median_sum: float, median_max: float, where: str = "X"
) -> tuple[str, str | None]:
    """``(kind, message)``: kind is ``"tpm"``, ``"counts"``, ``"log"`` or ``"not_tpm"``."""
    if integer and median_sum > _TPM_ROW_SUM_MAX:
        return "counts", (
            f"{where} looks like raw counts (integer values, median library size "
            f"{median_sum:.3g}), but BulkRNABert expects TPM. Convert first with "
            "bulkrnabert_sv.pp.counts_to_tpm(adata, gtf='annotation.gtf') and pass layer='tpm'."
        )
    if median_max < _LOG_MAX:
        return "log", (
            f"{where} looks log-transformed (median of the per-sample maxima "
            f"{median_max:.3g}), but BulkRNABert expects TPM on the linear scale "
            "and applies log10(1 + TPM) itself. Pass untransformed TPM (e.g. 2**x - 1 for "
            "log2(TPM + 1) values)."
        )
    if median_sum > _TPM_ROW_SUM_MAX:
        return "not_tpm", (
            f"{where} does not look like TPM: samples sum to more than 1e6 (median "
            f"{median_sum:.3g}); FPKM/RPKM or normalised counts give embeddings the model was "
            "not trained on. Use TPM (pp.counts_to_tpm converts raw counts)."
        )
    return "tpm", None
