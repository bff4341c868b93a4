"""pl: the plotted data of each figure (curves, p-value, lines, matrix cells)."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from lifelines.datasets import load_gbsg2
from lifelines.statistics import logrank_test, multivariate_logrank_test
from matplotlib.figure import Figure

from bulkrnabert_sv import pl


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _curves(fig: Figure) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ax = fig.axes[0]
    return {
        line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
        for line in ax.get_lines()
        if line.get_drawstyle() == "steps-post"
    }


def _p_value(fig: Figure) -> float:
    (text,) = [t.get_text() for t in fig.axes[0].texts if "log-rank" in t.get_text()]
    return float(text.split("=")[1])


def test_kaplan_meier_by_hand():
    # durations 1..6; events at 1, 2, 4 (low) and 3, 5 (high; 6 censored)
    obs = pd.DataFrame(
        {
            "os_time": [1, 2, 3, 4, 5, 6, 2.5, 7],
            "os_event": [1, 1, 1, 1, 1, 0, 0, 0],
            "bulkrnabert_risk": [0.1, 0.2, 0.9, 0.3, 0.8, 0.7, 0.4, 0.6],
        },
        index=[f"s{i}" for i in range(8)],
    )
    adata = ad.AnnData(obs=obs)
    before = adata.obs.copy()
    fig = pl.kaplan_meier(adata)
    assert isinstance(fig, Figure)
    curves = _curves(fig)
    assert set(curves) == {"low risk (n=4)", "high risk (n=4)"}
    # low risk: times 1 (d), 2 (d), 2.5 (censored), 4 (d) → S = 3/4, 2/4, 2/4, 0
    x, y = curves["low risk (n=4)"]
    np.testing.assert_allclose(x, [0, 1, 2, 2.5, 4])
    np.testing.assert_allclose(y, [1, 0.75, 0.5, 0.5, 0])
    # high risk: 3 (d), 5 (d), 6 (c), 7 (c) → 3/4, 2/4
    x, y = curves["high risk (n=4)"]
    np.testing.assert_allclose(x, [0, 3, 5, 6, 7])
    np.testing.assert_allclose(y, [1, 0.75, 0.5, 0.5, 0.5])
    low = obs["bulkrnabert_risk"] < 0.5
    expected = logrank_test(
        obs["os_time"][low], obs["os_time"][~low], obs["os_event"][low], obs["os_event"][~low]
    ).p_value
    assert _p_value(fig) == pytest.approx(expected, rel=1e-2)
    censor_marks = [line for line in fig.axes[0].get_lines() if line.get_marker() == "+"]
    assert sorted(np.concatenate([m.get_xdata() for m in censor_marks])) == [2.5, 6, 7]
    pd.testing.assert_frame_equal(adata.obs, before)


def test_kaplan_meier_quantile_groups_on_real_survival_data():
    data = load_gbsg2()  # German Breast Cancer Study Group 2: 686 patients
    obs = pd.DataFrame(
        {
            "time": data["time"].to_numpy(float),
            "event": data["cens"].to_numpy(float),
            "risk": data["pnodes"].to_numpy(float),
        },
        index=[str(i) for i in range(len(data))],
    )
    adata = ad.AnnData(obs=obs)
    fig = pl.kaplan_meier(
        adata,
        duration_key="time",
        event_key="event",
        risk_key="risk",
        groups=(0.25, 0.75),
        show_ci=False,
    )
    curves = _curves(fig)
    # rank r (1..n, ties in order) falls in the group whose quantile range holds (r - 0.5) / n
    fraction = (obs["risk"].rank(method="first").to_numpy() - 0.5) / len(obs)
    top, bottom = fraction >= 0.75, fraction < 0.25
    n_top, n_bottom = int(top.sum()), int(bottom.sum())
    assert set(curves) == {
        f"low risk (n={n_bottom})",
        f"intermediate risk (n={len(obs) - n_top - n_bottom})",
        f"high risk (n={n_top})",
    }
    # Kaplan-Meier of the top quarter, computed here with the product-limit formula
    t, e = obs["time"].to_numpy()[top], obs["event"].to_numpy()[top]
    times = np.unique(t[e == 1])
    survival = np.cumprod([1 - ((t == s) & (e == 1)).sum() / (t >= s).sum() for s in times])
    x, y = curves[f"high risk (n={n_top})"]
    np.testing.assert_allclose(np.interp(times, x, y), survival, rtol=1e-12)
    groups = np.select([bottom, top], ["low", "high"], "mid")
    expected = multivariate_logrank_test(obs["time"], groups, obs["event"]).p_value
    assert _p_value(fig) == pytest.approx(expected, rel=1e-2)
    assert expected < 1e-6  # many positive nodes → worse survival
    assert y[-1] < curves[f"low risk (n={n_bottom})"][1][-1]


def test_kaplan_meier_uses_given_groups_and_skips_missing():
    obs = pd.DataFrame(
        {
            "os_time": [5, 8, 3, 9, np.nan, 4],
            "os_event": [1, 0, 1, 1, 1, 0],
            "group": pd.Categorical(["a", "b", "a", "b", "a", "a"]),
        },
        index=list("uvwxyz"),
    )
    ax = plt.subplots()[1]
    with pytest.warns(UserWarning, match="1 of 6 samples"):
        fig = pl.kaplan_meier(ad.AnnData(obs=obs), risk_key="group", ax=ax)
    assert fig is ax.figure
    assert set(_curves(fig)) == {"a (n=3)", "b (n=2)"}


def test_kaplan_meier_errors():
    obs = pd.DataFrame(
        {"os_time": [1.0, 2.0], "os_event": [1, 2], "r": [0.0, 1.0]}, index=["a", "b"]
    )
    with pytest.raises(ValueError, match="1 \\(event\\) / 0"):
        pl.kaplan_meier(ad.AnnData(obs=obs), risk_key="r")
    with pytest.raises(KeyError, match="bulkrnabert_risk"):
        pl.kaplan_meier(ad.AnnData(obs=obs))
    with pytest.raises(ValueError, match="increasing quantiles"):
        pl.kaplan_meier(ad.AnnData(obs=obs), risk_key="r", groups=(0.5, 0.2))


def test_risk_groups():
    risk = pd.Series([3.0, 1.0, np.nan, 2.0, 5.0, 4.0])
    groups = pl.risk_groups(risk, 2)
    assert list(groups.codes) == [1, 0, -1, 0, 1, 1]  # 5 values: (r - 0.5) / 5 >= 0.5 → high
    assert list(groups.categories) == ["low risk", "high risk"]
    fifths = pl.risk_groups(risk, 5, labels=list("abcde"))
    assert list(fifths[[1, 3, 0, 5, 4]]) == list("abcde")
    with pytest.raises(ValueError, match="2 labels for 3"):
        pl.risk_groups(risk, 3, labels=["x", "y"])


def test_training_history_from_finetune_uns():
    history = {
        "loss": [1.2, 0.8, 0.6],
        "val_loss": [1.3, 1.0, 0.9],
        "val_accuracy": [0.4, 0.6, 0.7],
    }
    adata = ad.AnnData(obs=pd.DataFrame(index=["a"]))
    adata.uns["bulkrnabert_finetune"] = {"history": history, "params": {"best_epoch": 3}}
    fig = pl.training_history(adata)
    assert len(fig.axes) == 2
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert set(lines) == {*history, "best epoch (3)"}
    assert list(lines["best epoch (3)"].get_xdata()) == [3, 3]
    del lines["best epoch (3)"]
    for name, values in history.items():
        np.testing.assert_array_equal(lines[name].get_ydata(), values)
        np.testing.assert_array_equal(lines[name].get_xdata(), [1, 2, 3])
    assert lines["val_accuracy"].axes is fig.axes[1]


def test_training_history_from_pretrain_frame():
    frame = pd.DataFrame(
        {
            "step": [10, 20, 30, 40],
            "loss": [4.1, 3.5, 3.2, 3.0],
            "masked_accuracy": [0.05, 0.1, 0.15, 0.2],
            "baseline_loss": [3.9] * 4,
            "learning_rate": [1e-4] * 4,
        }
    )
    fig = pl.training_history(frame, log_loss=True)
    loss_ax, metric_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and loss_ax.get_xlabel() == "step"
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(lines) == {"loss", "baseline_loss"}
    np.testing.assert_array_equal(lines["loss"].get_xdata(), frame["step"])
    np.testing.assert_array_equal(lines["loss"].get_ydata(), frame["loss"])
    (accuracy,) = metric_ax.get_lines()
    np.testing.assert_array_equal(accuracy.get_ydata(), frame["masked_accuracy"])
    fig = pl.training_history(frame, keys=["loss"])
    assert len(fig.axes) == 1
    with pytest.raises(KeyError, match=r"tl\.finetune"):
        pl.training_history(ad.AnnData(obs=pd.DataFrame(index=["a"])))


def test_confusion_matrix_cells():
    true = ["BRCA", "BRCA", "BRCA", "LUAD", "LUAD", "GBMLGG", "GBMLGG", "GBMLGG", None]
    pred = ["BRCA", "BRCA", "LUAD", "LUAD", "BRCA", "GBMLGG", "GBMLGG", "LUAD", "BRCA"]
    obs = pd.DataFrame(
        {
            "cohort": pd.Categorical(true, categories=["BRCA", "GBMLGG", "LUAD"]),
            "cohort_bulkrnabert": pd.Categorical(pred),
        },
        index=[str(i) for i in range(9)],
    )
    adata = ad.AnnData(obs=obs)
    fig = pl.confusion_matrix(adata, "cohort", normalize=None)
    ax = fig.axes[0]
    counts = np.array([[2, 0, 1], [0, 2, 1], [1, 0, 1]])
    np.testing.assert_array_equal(ax.images[0].get_array(), counts)
    assert [t.get_text() for t in ax.texts] == [str(v) for v in counts.ravel()]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["BRCA", "GBMLGG", "LUAD"]
    assert ax.get_title() == f"balanced accuracy {np.mean([2 / 3, 2 / 3, 1 / 2]):.3f} (n=8)"
    fig = pl.confusion_matrix(adata, "cohort", "cohort_bulkrnabert")
    np.testing.assert_allclose(
        ax_matrix := fig.axes[0].images[0].get_array(), counts / counts.sum(1, keepdims=True)
    )
    assert fig.axes[0].texts[0].get_text() == f"{ax_matrix[0, 0]:.2f}"
    with pytest.raises(KeyError, match="cohort_pred"):
        pl.confusion_matrix(adata, "cohort", "cohort_pred")
