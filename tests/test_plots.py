"""pl: the plotted data of each figure (curves, p-value, lines, matrix cells, at-risk table),
scanpy's ax=/show=/save=, and tl.risk_groups."""

from __future__ import annotations

import logging

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from lifelines.datasets import load_gbsg2
from lifelines.statistics import logrank_test, multivariate_logrank_test
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bulkrnabert_sv import pl, tl


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def shows(monkeypatch) -> list:
    """Calls of plt.show (each one a render in a notebook)."""
    calls = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: calls.append(plt.get_fignums()))
    return calls


def _curves(ax: Axes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
        for line in ax.get_lines()
        if line.get_drawstyle() == "steps-post"
    }


def _p_value(ax: Axes) -> float:
    (text,) = [t.get_text() for t in ax.texts if "log-rank" in t.get_text()]
    return float(text.split("=")[1])


def _at_risk(ax: Axes) -> dict[str, dict[float, int]]:
    """The at-risk table: group -> {tick: number at risk}."""
    table: dict[str, dict[float, int]] = {}
    for text in ax.texts:
        gid = text.get_gid() or ""
        if gid.startswith("at_risk:"):
            table.setdefault(gid.split(":", 1)[1], {})[float(text.xy[0])] = int(text.get_text())
    return table


def _hand_obs() -> pd.DataFrame:
    # durations 1..6; events at 1, 2, 4 (low) and 3, 5 (high; 6 censored)
    return pd.DataFrame(
        {
            "os_time": [1, 2, 3, 4, 5, 6, 2.5, 7],
            "os_event": [1, 1, 1, 1, 1, 0, 0, 0],
            "bulkrnabert_risk": [0.1, 0.2, 0.9, 0.3, 0.8, 0.7, 0.4, 0.6],
        },
        index=[f"s{i}" for i in range(8)],
    )


def test_kaplan_meier_by_hand():
    obs = _hand_obs()
    adata = ad.AnnData(obs=obs)
    before = adata.obs.copy()
    ax = pl.kaplan_meier(adata, show=False)
    assert isinstance(ax, Axes)
    curves = _curves(ax)
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
    assert _p_value(ax) == pytest.approx(expected, rel=1e-2)
    censor_marks = [line for line in ax.get_lines() if line.get_marker() == "+"]
    assert sorted(np.concatenate([m.get_xdata() for m in censor_marks])) == [2.5, 6, 7]
    pd.testing.assert_frame_equal(adata.obs, before)
    assert set(adata.uns) == set()


def test_kaplan_meier_at_risk_table_legend_and_colors():
    obs = _hand_obs()
    adata = ad.AnnData(obs=obs)
    ax = pl.kaplan_meier(adata, show=False)
    ticks = list(ax.get_xticks())
    lo, hi = ax.get_xlim()
    assert lo == 0 and all(lo <= x <= hi for x in ticks) and len(ticks) >= 3
    table = _at_risk(ax)
    assert set(table) == {"low risk", "high risk"}
    low = obs["bulkrnabert_risk"] < 0.5
    for name, rows in (("low risk", low), ("high risk", ~low)):
        durations = obs["os_time"][rows].to_numpy()
        # at risk at time x: samples whose duration is at least x
        assert table[name] == {float(x): int((durations >= x).sum()) for x in ticks}
    assert table["low risk"][0.0] == 4 and table["high risk"][0.0] == 4
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "at_risk_label"]
    assert labels == ["low risk", "high risk"]
    # the legend is outside the curves, to the right of the axes
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    assert [t.get_text() for t in legend.get_texts()] == [
        "low risk (n=4)",
        "high risk (n=4)",
        "censored",
    ]
    # the table is below the axes and inside the figure
    rows = [t.get_window_extent() for t in ax.texts if (t.get_gid() or "").startswith("at_risk")]
    axes_box = ax.get_window_extent()
    assert all(b.y1 < axes_box.y0 for b in rows)
    assert all(b.y0 >= 0 and b.x0 >= 0 and b.x1 <= fig.bbox.x1 for b in rows)
    # scanpy's colours: uns["<groupby>_colors"], one per category in category order
    tl.risk_groups(adata)
    adata.uns["bulkrnabert_risk_group_colors"] = ["#00ff00", "#ff0000"]
    ax = pl.kaplan_meier(adata, "bulkrnabert_risk_group", show=False, at_risk=False)
    colors = {
        line.get_label(): matplotlib.colors.to_hex(line.get_color())
        for line in ax.get_lines()
        if line.get_drawstyle() == "steps-post"
    }
    assert colors == {"low risk (n=4)": "#00ff00", "high risk (n=4)": "#ff0000"}
    assert ax.get_legend().get_title().get_text() == "bulkrnabert_risk_group"
    assert not _at_risk(ax)
    # too few colours stored: matplotlib's cycle, as without any
    adata.uns["bulkrnabert_risk_group_colors"] = ["#00ff00"]
    ax = pl.kaplan_meier(adata, "bulkrnabert_risk_group", show=False)
    first = next(li for li in ax.get_lines() if li.get_drawstyle() == "steps-post")
    assert matplotlib.colors.to_hex(first.get_color()) == matplotlib.colors.to_hex("C0")


def test_kaplan_meier_groupby_matches_cut_on_the_fly():
    adata = ad.AnnData(obs=_hand_obs())
    tl.risk_groups(adata, groups=(0.25, 0.75), key_added="groups3")
    by_column = _curves(pl.kaplan_meier(adata, "groups3", show=False))
    cut_here = _curves(pl.kaplan_meier(adata, groups=(0.25, 0.75), show=False))
    assert by_column.keys() == cut_here.keys()
    for name in by_column:
        np.testing.assert_array_equal(by_column[name][1], cut_here[name][1])
    with pytest.raises(TypeError, match="holds numbers"):
        pl.kaplan_meier(adata, "bulkrnabert_risk", show=False)
    with pytest.raises(ValueError, match="groupby"):
        pl.kaplan_meier(adata, "groups3", groups=3, show=False)


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
    ax = pl.kaplan_meier(
        adata,
        duration_key="time",
        event_key="event",
        risk_key="risk",
        groups=(0.25, 0.75),
        show_ci=False,
        show=False,
    )
    curves = _curves(ax)
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
    assert _p_value(ax) == pytest.approx(expected, rel=1e-2)
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
    with pytest.warns(UserWarning, match="1 of 6 samples") as record:
        out = pl.kaplan_meier(ad.AnnData(obs=obs), risk_key="group", ax=ax)
    assert record[0].filename == __file__  # the warning points at this line
    assert out is ax  # with ax=, not shown: the axes come back
    assert set(_curves(ax)) == {"a (n=3)", "b (n=2)"}
    assert set(_at_risk(ax)) == {"a", "b"}


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


def test_risk_groups_tool(capsys):
    risk = [3.0, 1.0, np.nan, 2.0, 5.0, 4.0]
    adata = ad.AnnData(obs=pd.DataFrame({"bulkrnabert_risk": risk}, index=list("abcdef")))
    assert not hasattr(pl, "risk_groups")  # a tool, not a plot
    assert tl.risk_groups(adata) is None
    groups = adata.obs["bulkrnabert_risk_group"]
    assert isinstance(groups.dtype, pd.CategoricalDtype)
    assert list(groups.cat.codes) == [1, 0, -1, 0, 1, 1]  # 5 values: (r - 0.5) / 5 >= 0.5 → high
    assert list(groups.cat.categories) == ["low risk", "high risk"]
    assert capsys.readouterr().err == ""  # silent at the default WARNING level
    copy = tl.risk_groups(adata, groups=5, labels=list("abcde"), key_added="fifths", copy=True)
    assert "fifths" not in adata.obs
    assert list(copy.obs["fifths"].iloc[[1, 3, 0, 5, 4]]) == list("abcde")
    tl.risk_groups(adata, groups=(0.25, 0.75), key_added="thirds")
    assert list(adata.obs["thirds"].cat.categories) == [
        "low risk",
        "intermediate risk",
        "high risk",
    ]
    with pytest.raises(ValueError, match="2 labels for 3"):
        tl.risk_groups(adata, groups=3, labels=["x", "y"])
    with pytest.raises(ValueError, match="increasing quantiles"):
        tl.risk_groups(adata, groups=(0.5, 0.2))
    with pytest.raises(ValueError, match="overwrite the risk scores"):
        tl.risk_groups(adata, key_added="bulkrnabert_risk")
    with pytest.raises(KeyError, match=r"tl\.predict"):
        tl.risk_groups(adata, "cox_risk")
    with pytest.raises(TypeError, match="groupby="):
        tl.risk_groups(adata, "thirds")


def test_risk_groups_logs_what_it_added(capsys):
    adata = ad.AnnData(obs=pd.DataFrame({"bulkrnabert_risk": [1.0, 2.0]}, index=["a", "b"]))
    logger = logging.getLogger("bulkrnabert_sv")
    logger.setLevel("INFO")
    try:
        tl.risk_groups(adata)
    finally:
        logger.setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "computing risk groups of obs['bulkrnabert_risk']" in err
    assert (
        "    finished: added\n    'bulkrnabert_risk_group', risk groups (low risk 1, high risk 1)"
        in err
    )
    assert "(adata.obs, categorical) (0:00:00)" in err


def test_training_history_from_finetune_uns():
    history = {
        "loss": [1.2, 0.8, 0.6],
        "val_loss": [1.3, 1.0, 0.9],
        "val_accuracy": [0.4, 0.6, 0.7],
    }
    adata = ad.AnnData(obs=pd.DataFrame(index=["a"]))
    adata.uns["bulkrnabert_finetune"] = {"history": history, "params": {"best_epoch": 3}}
    axes = pl.training_history(adata, show=False)
    assert isinstance(axes, list) and len(axes) == 2
    lines = {line.get_label(): line for ax in axes for line in ax.get_lines()}
    assert set(lines) == {*history, "best epoch (3)"}
    assert list(lines["best epoch (3)"].get_xdata()) == [3, 3]
    del lines["best epoch (3)"]
    for name, values in history.items():
        np.testing.assert_array_equal(lines[name].get_ydata(), values)
        np.testing.assert_array_equal(lines[name].get_xdata(), [1, 2, 3])
    assert lines["val_accuracy"].axes is axes[1]


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
    loss_ax, metric_ax = pl.training_history(frame, log_loss=True, show=False)
    assert loss_ax.get_yscale() == "log" and loss_ax.get_xlabel() == "step"
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(lines) == {"loss", "baseline_loss"}
    np.testing.assert_array_equal(lines["loss"].get_xdata(), frame["step"])
    np.testing.assert_array_equal(lines["loss"].get_ydata(), frame["loss"])
    (accuracy,) = metric_ax.get_lines()
    np.testing.assert_array_equal(accuracy.get_ydata(), frame["masked_accuracy"])
    ax = plt.subplots()[1]
    assert pl.training_history(frame, keys=["loss"], ax=ax) is ax
    assert {line.get_label() for line in ax.get_lines()} == {"loss"}
    with pytest.raises(ValueError, match="2 panel"):
        pl.training_history(frame, ax=ax)
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
    ax = pl.confusion_matrix(adata, "cohort", normalize=None, show=False)
    counts = np.array([[2, 0, 1], [0, 2, 1], [1, 0, 1]])
    np.testing.assert_array_equal(ax.images[0].get_array(), counts)
    assert [t.get_text() for t in ax.texts] == [str(v) for v in counts.ravel()]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["BRCA", "GBMLGG", "LUAD"]
    assert ax.get_title() == f"balanced accuracy {np.mean([2 / 3, 2 / 3, 1 / 2]):.3f} (n=8)"
    ax = pl.confusion_matrix(adata, "cohort", "cohort_bulkrnabert", show=False)
    np.testing.assert_allclose(
        ax_matrix := ax.images[0].get_array(), counts / counts.sum(1, keepdims=True)
    )
    assert ax.texts[0].get_text() == f"{ax_matrix[0, 0]:.2f}"
    with pytest.raises(KeyError, match="cohort_pred"):
        pl.confusion_matrix(adata, "cohort", "cohort_pred")


def _plots(adata):
    """Each plot, called bare as on the last line of a notebook cell."""
    frame = pd.DataFrame({"step": [1, 2], "loss": [2.0, 1.0], "masked_accuracy": [0.1, 0.2]})
    return {
        "kaplan_meier": lambda **kw: pl.kaplan_meier(adata, **kw),
        "training_history": lambda **kw: pl.training_history(frame, **kw),
        "confusion_matrix": lambda **kw: pl.confusion_matrix(adata, "cohort", **kw),
    }


def _plot_data():
    obs = _hand_obs()
    obs["cohort"] = pd.Categorical(["a", "b"] * 4)
    obs["cohort_bulkrnabert"] = pd.Categorical(["a", "a", "b", "b"] * 2)
    return ad.AnnData(obs=obs)


@pytest.mark.parametrize("name", ["kaplan_meier", "training_history", "confusion_matrix"])
def test_bare_call_renders_once_and_returns_nothing(name, shows):
    plot = _plots(_plot_data())[name]
    assert plot() is None  # nothing for Jupyter to render a second time
    assert len(shows) == 1 and len(shows[0]) == 1  # one plt.show, one figure
    plt.close("all")
    out = plot(show=False)
    assert len(shows) == 1  # not shown
    assert not isinstance(out, Figure)
    assert all(isinstance(a, Axes) for a in (out if isinstance(out, list) else [out]))
    assert plot(ax=plt.subplots(1, 2 if name == "training_history" else 1)[1]) is not None
    assert len(shows) == 1  # with ax=, the figure is the caller's: not shown
    assert plot(show=True, ax=plt.subplots(1, 2 if name == "training_history" else 1)[1]) is None
    assert len(shows) == 2


def test_save_as_scanpy(tmp_path, monkeypatch, shows):
    monkeypatch.chdir(tmp_path)
    adata = _plot_data()
    ax = pl.kaplan_meier(adata, show=False, save=True)
    assert isinstance(ax, Axes)
    assert (tmp_path / "figures" / "kaplan_meier.pdf").stat().st_size > 0
    assert not plt.fignum_exists(ax.figure.number)  # saved figures it made are closed
    pl.confusion_matrix(adata, "cohort", save="_test.png")
    assert (tmp_path / "figures" / "confusion_matrix_test.png").read_bytes()[:4] == b"\x89PNG"
    assert len(shows) == 1
    target = tmp_path / "out" / "history.svg"
    _plots(adata)["training_history"](show=False, save=target)
    assert target.read_text().lstrip().startswith("<?xml")
    with pytest.raises(TypeError, match="save must be"):
        pl.kaplan_meier(adata, show=False, save=3)
