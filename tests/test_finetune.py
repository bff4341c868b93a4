"""tl.finetune / tl.predict / load_finetuned on simulated cohorts with a planted signal.

A small random-weight encoder (200 genes, embed 64) is used: its mean embeddings carry the
planted programs, and IA3/full fine-tuning can sharpen them. Models are trained once per module.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from flax import nnx

import bulkrnabert_sv as bs
from bulkrnabert_sv._core.simulate import program_oracle, simulate_cohort
from bulkrnabert_sv._core.survival import concordance_index
from bulkrnabert_sv.model import random_model
from bulkrnabert_sv.model.checkpoints import flat_state

GENES = [f"ENSG{i:011d}" for i in range(1, 201)]
N_TYPES = 3
#: Method-specific settings that train in a few seconds on 2 CPU cores.
FAST = {
    "probe": dict(epochs=60),
    "ia3": dict(epochs=5, batch_size=16, learning_rate=1e-2),
    "full": dict(epochs=5, batch_size=16, learning_rate=1e-3, remat=False),
}


@pytest.fixture(scope="module")
def encoder():
    return random_model("tiny", genes=GENES, embed_dim=64, seed=0)


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(300, GENES, seed=0)


@pytest.fixture(scope="module")
def held_out():
    return simulate_cohort(200, GENES, seed=1)


@pytest.fixture(scope="module")
def trained(encoder, cohort):
    """Fine-tuned models and the annotated copies, trained on first use."""
    cache = {}

    def get(task: str, method: str):
        if (task, method) not in cache:
            kw = dict(method=method, model=encoder, progress=False, copy=True, **FAST[method])
            if task == "survival":
                kw["event_key"] = "event"
            key = "cancer_type" if task == "classification" else "time"
            cache[task, method] = bs.tl.finetune(cohort, key, **kw)
        return cache[task, method]

    return get


def _state(module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v[...]) for k, v in flat_state(module, nnx.Variable).items()}


# ------------------------------------------------------------------------------- quality
@pytest.mark.parametrize("method", ["probe", "ia3", "full"])
def test_classification_beats_chance_on_held_out(trained, held_out, method):
    _data, model = trained("classification", method)
    predicted = model.predict(held_out).idxmax(axis=1).to_numpy()
    accuracy = np.mean(predicted == held_out.obs["cancer_type"].to_numpy())
    oracle = np.mean(program_oracle(held_out) == held_out.obs["cancer_type"].to_numpy())
    assert oracle == 1.0
    assert accuracy > 1 / N_TYPES + 0.3, accuracy
    # The validation split was held out from training too.
    assert model.metrics["validation"]["accuracy"] > 1 / N_TYPES + 0.2
    assert model.metrics["validation"]["n"] == 60 and model.metrics["train"]["n"] == 240


@pytest.mark.parametrize("method", ["probe", "ia3"])
def test_survival_beats_chance_on_held_out(trained, held_out, method):
    _data, model = trained("survival", method)
    risk = model.predict(held_out)["risk"].to_numpy()
    obs = held_out.obs
    c_index = concordance_index(obs["time"], risk, obs["event"])
    oracle = concordance_index(obs["time"], obs["risk_factor"], obs["event"])
    assert oracle > 0.75
    assert c_index > 0.65, c_index
    assert np.isfinite(model.history["val_c_index"]).all()


# ------------------------------------------------------------------------------- fields
def test_classification_fields_written(trained, cohort):
    data, _model = trained("classification", "probe")
    classes = ["type_0", "type_1", "type_2"]
    predicted = data.obs["cancer_type_bulkrnabert"]
    assert list(predicted.cat.categories) == classes
    proba = data.obsm["cancer_type_bulkrnabert_proba"]
    assert proba.shape == (300, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(classes)[proba.argmax(axis=1)], predicted.to_numpy())
    record = data.uns["bulkrnabert_finetune"]
    assert record["classes"] == classes
    params = record["params"]
    assert params["method"] == "probe" and params["task"] == "classification"
    assert params["n_train"] == 240 and params["n_validation"] == 60
    assert params["embedding_layer"] == 2 and params["hidden_sizes"] == [256, 128]
    assert params["coverage"] == 1.0 and params["reused_embeddings"] is False
    history = record["history"]
    assert len(history["loss"]) == params["epochs_run"] == len(history["val_accuracy"])
    assert params["best_epoch"] == int(np.argmin(history["val_loss"])) + 1
    assert history["loss"][-1] < history["loss"][0]
    train_metrics = record["metrics"]["train"]
    labels = cohort.obs["cancer_type"].to_numpy()
    assert set(train_metrics) == {"n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"}
    # The written predictions agree with the recorded accuracy over all labelled samples.
    n_train, n_val = 240, 60
    overall = (
        train_metrics["accuracy"] * n_train + record["metrics"]["validation"]["accuracy"] * n_val
    ) / (n_train + n_val)
    assert overall == pytest.approx(np.mean(predicted.to_numpy() == labels))
    # Nothing else changed in the input.
    assert "cancer_type_bulkrnabert" not in cohort.obs and "bulkrnabert_finetune" not in cohort.uns


def test_survival_fields_written(trained):
    data, _model = trained("survival", "probe")
    risk = data.obs["bulkrnabert_risk"].to_numpy()
    assert risk.shape == (300,) and np.isfinite(risk).all() and risk.std() > 0
    record = data.uns["bulkrnabert_finetune"]
    assert "classes" not in record
    assert record["params"]["event_key"] == "event" and record["params"]["task"] == "survival"
    obs = data.obs
    expected = concordance_index(obs["time"], risk, obs["event"])
    n_train, n_val = record["metrics"]["train"]["n"], record["metrics"]["validation"]["n"]
    assert n_train + n_val == 300 and record["metrics"]["validation"]["c_index"] > 0.6
    assert 0.6 < expected < 1


def test_predict_writes_what_training_wrote(trained):
    data, model = trained("classification", "ia3")
    again = bs.tl.predict(data, model, progress=False, copy=True)
    for key in ("cancer_type_bulkrnabert",):
        pd.testing.assert_series_equal(again.obs[key], data.obs[key])
    np.testing.assert_array_equal(
        again.obsm["cancer_type_bulkrnabert_proba"], data.obsm["cancer_type_bulkrnabert_proba"]
    )
    assert again.uns["bulkrnabert_finetune"]["params"] == data.uns["bulkrnabert_finetune"]["params"]
    custom = bs.tl.predict(data, model, progress=False, copy=True, key_added="pred")
    assert "pred" in custom.obs and "pred_proba" in custom.obsm and "pred_finetune" in custom.uns


def test_h5ad_roundtrip_of_written_fields(trained, tmp_path):
    import anndata as ad

    data, _ = trained("survival", "ia3")
    data.write_h5ad(tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    np.testing.assert_array_equal(back.obs["bulkrnabert_risk"], data.obs["bulkrnabert_risk"])
    assert back.uns["bulkrnabert_finetune"]["params"]["method"] == "ia3"


# ------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize(("task", "method"), [("classification", "ia3"), ("survival", "probe")])
def test_save_load_predict_is_identical(trained, held_out, tmp_path, task, method):
    _, model = trained(task, method)
    model.save(tmp_path / "model")
    loaded = bs.load_finetuned(tmp_path / "model")
    assert loaded.task == task and loaded.method == method
    assert loaded.classes == model.classes and loaded.obs_key == model.obs_key
    assert loaded.encoder.config == model.encoder.config and loaded.genes == model.genes
    assert loaded.encoder.has_ia3 == (method == "ia3")
    before, after = _state(model.encoder), _state(loaded.encoder)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    if method == "ia3":  # the IA3 vectors were trained (no longer ones) and restored
        assert not np.all(after["layers.0.ia3_ffn"] == 1)
    for name, value in _state(model.head).items():
        np.testing.assert_array_equal(value, _state(loaded.head)[name])
    assert loaded.history == model.history and loaded.params == model.params
    pd.testing.assert_frame_equal(model.predict(held_out), loaded.predict(held_out))
    via_path = bs.tl.predict(held_out, tmp_path / "model", progress=False, copy=True)
    predicted = model.predict(held_out)
    if task == "classification":
        np.testing.assert_array_equal(
            via_path.obsm["cancer_type_bulkrnabert_proba"], predicted.to_numpy()
        )
    else:
        np.testing.assert_array_equal(via_path.obs["bulkrnabert_risk"], predicted["risk"])


def test_load_finetuned_errors(tmp_path, encoder):
    with pytest.raises(bs.CheckpointError, match="not a folder"):
        bs.load_finetuned(tmp_path / "missing")
    encoder.save(tmp_path / "encoder")
    with pytest.raises(bs.CheckpointError, match=r"has no finetuned\.json.*load_model"):
        bs.load_finetuned(tmp_path / "encoder")


# ------------------------------------------------------------------------------- determinism
def test_same_seed_same_result_other_seed_differs(encoder, cohort, trained):
    _, first = trained("classification", "probe")
    kw = dict(method="probe", model=encoder, progress=False, copy=True, **FAST["probe"])
    _data, again = bs.tl.finetune(cohort, "cancer_type", **kw)
    assert again.history == first.history and again.params == first.params
    for name, value in _state(first.head).items():
        np.testing.assert_array_equal(value, _state(again.head)[name])
    _, other = bs.tl.finetune(cohort, "cancer_type", random_state=1, **kw)
    assert other.history["loss"] != first.history["loss"]


def test_ia3_same_seed_same_result(encoder, cohort):
    kw = dict(method="ia3", model=encoder, progress=False, copy=True, **FAST["ia3"])
    kw["epochs"] = 1
    first = bs.tl.finetune(cohort, "cancer_type", **kw)
    second = bs.tl.finetune(cohort, "cancer_type", **kw)
    np.testing.assert_array_equal(
        first[0].obsm["cancer_type_bulkrnabert_proba"],
        second[0].obsm["cancer_type_bulkrnabert_proba"],
    )
    assert first[1].history == second[1].history


# ------------------------------------------------------------------------------- no mutation
@pytest.mark.parametrize("method", ["ia3", "full"])
def test_user_model_is_not_modified(trained, encoder, method):
    before = _state(encoder)
    trained("classification", method)
    assert not encoder.has_ia3 and not encoder.config.remat
    after = _state(encoder)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    _, model = trained("classification", method)
    changed = [n for n in before if not np.array_equal(before[n], _state(model.encoder)[n])]
    if method == "full":  # weights moved, except the LM head (no gradient reaches it)
        assert "layers.0.fc1.kernel" in changed and not any("lm_head" in n for n in changed)
    else:  # only new IA3 vectors: the backbone is frozen
        assert changed == []


# ------------------------------------------------------------------------------- options
@pytest.mark.filterwarnings("ignore:tl.* replaces the existing")
def test_probe_reuses_embeddings_of_the_same_model_and_layer(encoder, cohort):
    model = nnx.clone(encoder)
    model.source = "local/model"
    data = cohort.copy()
    bs.tl.embed(data, model, progress=False)  # records the fingerprints of model and tokens
    rng = np.random.default_rng(0)
    labels = data.obs["cancer_type"].cat.codes.to_numpy()
    stored = rng.normal(scale=0.1, size=(300, 64)).astype(np.float32)
    stored[np.arange(300), labels] += 3.0  # an embedding that makes the task trivial
    data.obsm["X_bulkrnabert"] = stored
    params = dict(data.uns["bulkrnabert"]["params"])
    kw = dict(method="probe", model=model, progress=False, epochs=60)
    fitted = bs.tl.finetune(data, "cancer_type", **kw)
    assert fitted.params["reused_embeddings"] is True
    assert fitted.metrics["validation"]["accuracy"] == 1.0
    written = data.obsm["cancer_type_bulkrnabert_proba"].copy()
    # tl.predict reuses them too; model.predict always recomputes from the expression.
    assert not np.allclose(written, fitted.predict(data).to_numpy())
    with pytest.warns(UserWarning, match="replaces the existing obs"):
        bs.tl.predict(data, fitted, progress=False)
    np.testing.assert_array_equal(data.obsm["cancer_type_bulkrnabert_proba"], written)
    for change in ({"embedding_layer": 1}, {"model": "other"}, {"layer": "tpm"}):
        data.uns["bulkrnabert"] = {"params": {**params, **change}}
        refit = bs.tl.finetune(data, "cancer_type", copy=True, **kw)[1]
        assert refit.params["reused_embeddings"] is False


def test_class_weight_balanced_and_early_stopping(encoder, cohort):
    data = cohort.copy()
    keep = np.concatenate([np.flatnonzero(data.obs["cancer_type"] != "type_2"), [0, 1, 2]])
    data = data[np.unique(keep)].copy()
    data.obs.loc[data.obs_names[:3], "cancer_type"] = "type_2"
    model = bs.tl.finetune(
        data,
        "cancer_type",
        model=encoder,
        progress=False,
        class_weight="balanced",
        epochs=300,
        early_stopping=2,
        learning_rate=1e-2,
    )
    weights = model.params["class_weight"]
    assert weights["type_2"] > 10 * weights["type_0"]
    assert model.params["epochs_run"] < 300
    assert model.params["best_epoch"] == model.params["epochs_run"] - 2
    with pytest.raises(ValueError, match="not in the labels"):
        bs.tl.finetune(data, "cancer_type", model=encoder, class_weight={"nope": 2.0})


def test_no_validation(encoder, cohort):
    model = bs.tl.finetune(
        cohort,
        "cancer_type",
        model=encoder,
        progress=False,
        copy=True,
        validation_fraction=0,
        epochs=3,
    )[1]
    assert set(model.history) == {"loss"} and model.metrics["validation"] == {"n": 0}
    assert model.params["n_train"] == 300 and model.params["best_epoch"] == 3


def test_model_from_a_folder(encoder, cohort, tmp_path):
    encoder.save(tmp_path / "encoder")
    model = bs.tl.finetune(
        cohort, "cancer_type", model=str(tmp_path / "encoder"), progress=False, copy=True, epochs=1
    )[1]
    assert model.params["model"] == str(tmp_path / "encoder")
    assert model.genes == encoder.genes


def test_mudata_input(encoder, cohort):
    mudata = pytest.importorskip("mudata")
    mdata = mudata.MuData({"rna": cohort.copy()})
    bs.tl.finetune(mdata, "cancer_type", model=encoder, progress=False, epochs=2)
    assert "cancer_type_bulkrnabert" in mdata.mod["rna"].obs


# ------------------------------------------------------------------------------- bad input
def _untouched(data, before_obs, before_uns):
    assert list(data.obs.columns) == before_obs and list(data.uns) == before_uns
    assert "cancer_type_bulkrnabert_proba" not in data.obsm


def test_nan_labels_are_dropped_with_a_count(encoder, cohort):
    data = cohort.copy()
    data.obs["cancer_type"] = data.obs["cancer_type"].astype(object)
    data.obs.iloc[[3, 7, 11], data.obs.columns.get_loc("cancer_type")] = np.nan
    with pytest.warns(UserWarning, match="3 of 300 samples have no label"):
        model = bs.tl.finetune(data, "cancer_type", model=encoder, progress=False, epochs=2)
    assert model.params["n_unlabelled"] == 3
    assert model.params["n_train"] + model.params["n_validation"] == 297
    assert data.obs["cancer_type_bulkrnabert"].notna().all()  # unlabelled samples predicted too


def _fail(data, match, error=ValueError, **kw):
    before_obs, before_uns = list(data.obs.columns), list(data.uns)
    with pytest.raises(error, match=match):
        bs.tl.finetune(data, progress=False, **kw)
    _untouched(data, before_obs, before_uns)


def test_classification_input_errors(encoder, cohort):
    data = cohort.copy()
    _fail(data, "no column 'nope'", KeyError, obs_key="nope", model=encoder)
    data.obs["one"] = "A"
    _fail(data, "single class", obs_key="one", model=encoder)
    data.obs["small"] = ["A"] * 150 + ["B"] * 149 + ["C"]
    _fail(data, r"class\(es\) 'C' \(1\)", obs_key="small", model=encoder)
    _fail(data, "task is ambiguous", obs_key="risk_factor", model=encoder)
    _fail(data, "method must be", obs_key="cancer_type", model=encoder, method="lora")
    _fail(data, "validation_fraction", obs_key="cancer_type", model=encoder, validation_fraction=1)
    _fail(data, "epochs", obs_key="cancer_type", model=encoder, epochs=0)
    _fail(
        data, "overwrite the labels", obs_key="cancer_type", model=encoder, key_added="cancer_type"
    )
    _fail(data, "event_key is for survival", obs_key="cancer_type", task="classification",
          event_key="event", model=encoder)  # fmt: skip
    data.obs["all_nan"] = np.nan
    _fail(data, "no labels", obs_key="all_nan", task="classification", model=encoder)
    no_genes = random_model("tiny", embed_dim=64, genes=None)
    _fail(data, "no gene list", obs_key="cancer_type", model=no_genes)


def test_survival_input_errors(encoder, cohort):
    data = cohort.copy()
    kw = dict(obs_key="time", event_key="event", model=encoder)
    _fail(data, "needs event_key", obs_key="time", task="survival", model=encoder)
    _fail(data, "no column 'dead'", KeyError, obs_key="time", event_key="dead", model=encoder)
    for bad in (0.0, -5.0):
        data.obs["t"] = data.obs["time"]
        data.obs.iloc[4, data.obs.columns.get_loc("t")] = bad
        _fail(data, "zero, negative or infinite", **{**kw, "obs_key": "t"})
    data.obs["e"] = data.obs["event"] * 2
    _fail(data, r"must be 0/1 .*found \[2\.0\]", **{**kw, "event_key": "e"})
    data.obs["e"] = np.where(data.obs["event"] == 1, "Dead", "Alive")
    _fail(data, "found 'Dead'|found 'Alive'", **{**kw, "event_key": "e"})
    data.obs["e"] = 0
    _fail(data, "no event", **{**kw, "event_key": "e"})
    data.obs["e"] = 0
    data.obs.iloc[0, data.obs.columns.get_loc("e")] = 1
    _fail(data, "Too few events", **{**kw, "event_key": "e"})
    _fail(data, "class_weight is for classification", class_weight="balanced", **kw)


def test_survival_accepts_bool_events_and_drops_missing(encoder, cohort):
    data = cohort.copy()
    data.obs["dead"] = data.obs["event"].astype(bool)
    data.obs["t"] = data.obs["time"].astype(float)
    data.obs.iloc[:2, data.obs.columns.get_loc("t")] = np.nan
    with pytest.warns(UserWarning, match="2 of 300 samples have no duration"):
        model = bs.tl.finetune(data, "t", event_key="dead", model=encoder, progress=False, epochs=2)
    assert model.params["n_unlabelled"] == 2 and model.task == "survival"
    assert np.isfinite(data.obs["bulkrnabert_risk"]).all()


def test_no_warning_on_clean_input(encoder, cohort):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bs.tl.finetune(cohort, "cancer_type", model=encoder, progress=False, copy=True, epochs=1)


def test_public_names(trained):
    _, model = trained("classification", "probe")
    assert isinstance(model, bs.tl.FinetunedModel)
    assert bs.load_finetuned is bs.tl.load_finetuned
    assert "classification" in repr(model) and "probe" in repr(model)
