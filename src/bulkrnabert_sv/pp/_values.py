"""Checks that expression values are what the model expects (TPM: finite, non-negative)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _logging as logg

#: Sample names listed in a warning, per problem.
_NAMES_SHOWN = 5

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
    """Raise on NaN/inf/negative values; warn when values of this block look like counts or log.

    For one block on its own. Code that reads a matrix batch by batch checks every batch with
    :class:`TpmRowReport` instead, which warns once, naming the samples.

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
            warn_user(problem, ExpressionValueWarning)


def warn_user(message: str, category: type[Warning]) -> None:
    """Warn, attributing the warning to the user's line, however deep in the package."""
    logg.warn(message, category)


def require_tpm_rows(rows: np.ndarray, *, where: str = "X", first_row: int = 0) -> None:
    """Raise :class:`ExpressionValueError` on NaN, infinite or negative values (with the fix)."""
    check_tpm_rows(rows, where=where, first_row=first_row, warn=False)


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


# ------------------------------------------------------------------------------ every batch
def row_problems(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row boolean masks of what does not look like TPM in finite, non-negative ``rows``.

    The rules of :func:`diagnose`, for each sample on its own: ``"counts"`` (integer values,
    library size above 1.05e6), ``"log"`` (positive maximum below 50), ``"not_tpm"`` (other
    rows summing to more than 1.05e6). All-zero rows are in none of them.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] == 0:
        empty = np.zeros(len(rows), dtype=bool)
        return {"counts": empty, "log": empty, "not_tpm": empty}
    sums = rows.sum(axis=1)
    maxima = rows.max(axis=1)
    integer = (rows == np.round(rows)).all(axis=1)
    counts = integer & (sums > _TPM_ROW_SUM_MAX)
    log = ~counts & (maxima > 0) & (maxima < _LOG_MAX)
    not_tpm = ~counts & ~log & (sums > _TPM_ROW_SUM_MAX)
    return {"counts": counts, "log": log, "not_tpm": not_tpm}


class TpmRowReport:
    """Samples that do not look like TPM, gathered over every batch of a matrix.

    :meth:`add` each batch (it raises at NaN, infinite or negative values), then :meth:`warn`
    once: one :class:`ExpressionValueWarning` naming the samples of every problem found, or
    nothing when all samples look like TPM.

    Parameters
    ----------
    where
        Name of the matrix, for messages (``"X"`` or ``"layers['tpm']"``).
    """

    #: Problems in the order they are reported.
    KINDS = ("counts", "log", "not_tpm", "unexpressed")

    def __init__(self, where: str = "X"):
        self.where = where
        self.n_obs = 0
        self._rows: dict[str, list[np.ndarray]] = {kind: [] for kind in self.KINDS}

    def add(self, rows: np.ndarray, *, first_row: int) -> None:
        """Check one batch: raise on unusable values, remember samples that look wrong.

        Parameters
        ----------
        rows
            Dense (n, n_genes) block of the input, before alignment.
        first_row
            Index of its first row in the whole matrix.

        Raises
        ------
        ExpressionValueError
            NaN, infinite or negative values (the message gives the first position and the fix).
        """
        require_tpm_rows(rows, where=self.where, first_row=first_row)
        for kind, mask in row_problems(rows).items():
            self._remember(kind, mask, first_row)
        self.n_obs += len(rows)

    def add_unexpressed(self, mask: np.ndarray, *, first_row: int) -> None:
        """Remember the samples of a batch without any expressed gene where it matters.

        ``mask`` (n,) is e.g. "all tokens 0" after alignment to the model's genes, or "all
        values 0" for the input itself.
        """
        self._remember("unexpressed", mask, first_row)

    def _remember(self, kind: str, mask: np.ndarray, first_row: int) -> None:
        found = np.flatnonzero(mask)
        if found.size:
            self._rows[kind].append(found + first_row)

    def rows(self, kind: str) -> np.ndarray:
        """Row indices (in the whole matrix, ascending per batch) of the samples with ``kind``."""
        parts = self._rows[kind]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)

    def message(self, names: Sequence | None = None) -> str | None:
        """The warning text, or None when every sample looks fine.

        ``names`` are the sample names (``obs_names``) by row; without them, rows are numbered.
        """
        parts = []
        for kind in self.KINDS:
            rows = self.rows(kind)
            if rows.size:
                parts.append(_PROBLEMS[kind].format(n=rows.size, samples=sample_list(rows, names)))
        if not parts:
            return None
        return f"{self.where}, checked in full ({self.n_obs} samples): " + " ".join(parts)

    def warn(self, names: Sequence | None = None) -> None:
        """Emit the :class:`ExpressionValueWarning` of :meth:`message`, if any."""
        message = self.message(names)
        if message is not None:
            warn_user(message, ExpressionValueWarning)


#: One sentence per problem: what was seen, for which samples, and what to do.
_PROBLEMS = {
    "counts": (
        "{n} sample(s) look like raw counts (integer values, library size above 1e6: "
        "{samples}), but BulkRNABert expects TPM. Convert first with "
        "bulkrnabert_sv.pp.counts_to_tpm(adata, gtf='annotation.gtf') and pass layer='tpm'."
    ),
    "log": (
        "{n} sample(s) look log-transformed (largest value below 50: {samples}), but "
        "BulkRNABert expects TPM on the linear scale and applies log10(1 + TPM) itself. Pass "
        "untransformed TPM (e.g. 2**x - 1 for log2(TPM + 1) values)."
    ),
    "not_tpm": (
        "{n} sample(s) do not look like TPM (values sum to more than 1e6: {samples}); "
        "FPKM/RPKM or normalised counts give embeddings the model was not trained on. Use TPM "
        "(pp.counts_to_tpm converts raw counts)."
    ),
    "unexpressed": (
        "{n} sample(s) have no expressed model gene (TPM 0 on all of the model's genes: "
        "{samples}); they all get the same embedding, which says nothing about them. Check "
        "layer= and the gene ids (gene_key=), or drop these samples."
    ),
}


def sample_list(rows: np.ndarray, names: Sequence | None) -> str:
    """``'s1', 's4' and 3 more``: the first few samples by name (or row number)."""
    shown = rows[:_NAMES_SHOWN]
    if names is None:
        listed = ", ".join(f"row {int(r)}" for r in shown)
    else:
        listed = ", ".join(repr(str(names[int(r)])) for r in shown)
    if rows.size > _NAMES_SHOWN:
        listed += f" and {rows.size - _NAMES_SHOWN} more"
    return listed
