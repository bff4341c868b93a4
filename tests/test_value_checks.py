"""Value checks over every batch, and the positive-integer / layer-index argument checks."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bulkrnabert_sv._validation import check_block_index, check_positive_int
from bulkrnabert_sv.pp import ExpressionValueError, ExpressionValueWarning, check_expression
from bulkrnabert_sv.pp._values import TpmRowReport, row_problems


def _tpm(n: int, genes: int = 40, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).lognormal(2.0, 2.0, (n, genes))
    return values / values.sum(axis=1, keepdims=True) * 8e5


def test_row_problems_classify_each_sample():
    tpm = _tpm(5)
    rows = np.vstack(
        [
            tpm[:2],
            np.log2(tpm[2:3] + 1),  # log
            np.round(tpm[3:4] * 30),  # counts: integers, 2.4e7 per sample
            tpm[4:5] * 7.5,  # FPKM-like: 6e6 per sample
            np.zeros((1, 40)),  # all zero: none of these
        ]
    )
    masks = row_problems(rows)
    assert {k: np.flatnonzero(v).tolist() for k, v in masks.items()} == {
        "counts": [3],
        "log": [2],
        "not_tpm": [4],
    }


def test_report_gathers_rows_over_batches_and_names_them():
    report = TpmRowReport("layers['tpm']")
    tpm = _tpm(12)
    report.add(tpm[:6], first_row=0)
    report.add(np.log2(tpm[6:] + 1), first_row=6)
    report.add_unexpressed(np.array([False, True, False, False, False, False]), first_row=6)
    np.testing.assert_array_equal(report.rows("log"), np.arange(6, 12))
    names = pd.Index([f"tumour_{i}" for i in range(12)])
    message = report.message(names)
    assert message.startswith("layers['tpm'], checked in full (12 samples): 6 sample(s) look")
    assert "'tumour_6', 'tumour_7', 'tumour_8', 'tumour_9', 'tumour_10' and 1 more" in message
    assert "1 sample(s) have no expressed model gene" in message and "'tumour_7')" in message
    assert "row 6, row 7" in report.message()  # without names: row numbers
    assert TpmRowReport().message() is None
    with pytest.raises(ExpressionValueError, match=r"row 9, column 2"):
        bad = tpm[6:].copy()
        bad[3, 2] = np.nan
        report.add(bad, first_row=6)


def test_check_expression_names_all_zero_samples():
    values = _tpm(6)
    values[[1, 4]] = 0.0
    adata = ad.AnnData(values, obs=pd.DataFrame(index=[f"s{i}" for i in range(6)]))
    with pytest.warns(
        ExpressionValueWarning, match=r"2 of 6 sample\(s\) have all values 0 \('s1', 's4'\)"
    ):
        result = check_expression(adata, batch_size=2)
    assert result["n_all_zero"] == 2 and result["looks_like"] == "tpm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_expression(ad.AnnData(_tpm(6)))["n_all_zero"] == 0
    # All zero: said so, not passed silently as TPM.
    with pytest.warns(ExpressionValueWarning, match="6 of 6 sample"):
        check_expression(ad.AnnData(np.zeros((6, 40))))


@pytest.mark.parametrize("batch_size", ["4", 4.0, True, None])
def test_check_expression_batch_size_type(batch_size):
    with pytest.raises(TypeError, match="batch_size must be a positive integer"):
        check_expression(ad.AnnData(_tpm(3)), batch_size=batch_size)


def test_positive_int_and_layer_index_helpers():
    assert check_positive_int(np.int32(3), "batch_size") == 3
    assert type(check_positive_int(np.int64(3), "n")) is int
    for bad in ("4", 4.0, True, None, [4]):
        with pytest.raises(
            TypeError, match=r"batch_size must be a positive integer, got .*batch_size=8"
        ):
            check_positive_int(bad, "batch_size")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got -2"):
        check_positive_int(-2, "batch_size")
    assert check_block_index(-1) == -1 and check_block_index(np.int16(2)) == 2
    for bad in (2.0, True, "2", None):
        with pytest.raises(TypeError, match=r"embedding_block must be an integer block index"):
            check_block_index(bad)
