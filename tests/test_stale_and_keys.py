"""Stale stored embeddings, wrong argument types and field keys of tl.embed/finetune/predict.

A tiny random-weight encoder (200 genes, embed 32) on a simulated cohort with planted types.
"""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pytest
from flax import nnx

import bulkrnabert_sv as bs
from bulkrnabert_sv.datasets import simulate_cohort
from bulkrnabert_sv.model import random_model

GENES = [f"ENSG{i:011d}" for i in range(1, 201)]
PROBE = dict(method="probe", head="mlp", progress=False, epochs=20)


@pytest.fixture(scope="module")
def encoder():
    model = random_model("tiny", genes=GENES, embed_dim=32, seed=0)
    model.source = "local/model"  # stored embeddings are only reused for a known source
    return model


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(90, GENES, seed=0)


@pytest.fixture(scope="module")
def tuned(encoder, cohort):
    return bs.tl.finetune(cohort.copy(), "cancer_type", model=encoder, **PROBE)


def _embedded(encoder, cohort, **kw):
    data = cohort.copy()
    bs.tl.embed(data, encoder, progress=False, **kw)
    return data


def _no_warnings(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return function(*args, **kwargs)


def _not_reused(function, *args, **kwargs):
    """``function(...)`` and its warnings about not reusing stored embeddings."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, [w for w in record if "does not reuse" in str(w.message)]


def _reuses(function, *args, **kwargs):
    """Call ``function`` and check that it gave no warning about stored embeddings."""
    result, stale = _not_reused(function, *args, **kwargs)
    assert not stale, [str(w.message) for w in stale]
    return result


def _unchanged(data, cohort):
    assert list(data.obs.columns) == list(cohort.obs.columns)
    assert not data.obsm and list(data.uns) == list(cohort.uns)


# ------------------------------------------------------------------------------ 5. stale obsm
#: Tests of stale embeddings call the tools several times on one object.
replacing = pytest.mark.filterwarnings("ignore:tl.* replaces the existing")


def test_embed_records_fingerprints_independent_of_batch_size(encoder, cohort, tmp_path):
    first = _embedded(encoder, cohort, batch_size=4).uns["bulkrnabert"]["params"]
    second = _embedded(encoder, cohort, batch_size=7).uns["bulkrnabert"]["params"]
    for name in ("model_sha256", "tokens_sha256"):
        assert re.fullmatch("[0-9a-f]{64}", first[name]), first[name]
        assert first[name] == second[name]
    other = random_model("tiny", genes=GENES, embed_dim=32, seed=1)
    changed = cohort.copy()
    changed.X[0, 0] = changed.X[0, 0] * 100 + 1000
    third = bs.tl.embed(changed, other, progress=False, copy=True).uns["bulkrnabert"]["params"]
    assert third["model_sha256"] != first["model_sha256"]
    assert third["tokens_sha256"] != first["tokens_sha256"]
    # They survive the h5ad round trip, and the reloaded embeddings are then reused.
    data = _embedded(encoder, cohort)
    data.write_h5ad(tmp_path / "embedded.h5ad")
    back = ad.read_h5ad(tmp_path / "embedded.h5ad")
    assert back.uns["bulkrnabert"]["params"]["tokens_sha256"] == first["tokens_sha256"]
    fitted = _no_warnings(bs.tl.finetune, back, "cancer_type", model=encoder, **PROBE)
    assert fitted.params["reused_embeddings"] is True


@replacing
def test_probe_recomputes_embeddings_after_x_changed(encoder, cohort):
    data = _embedded(encoder, cohort)
    stored = data.obsm["X_bulkrnabert"].copy()
    fitted = _no_warnings(bs.tl.finetune, data, "cancer_type", model=encoder, **PROBE)
    assert fitted.params["reused_embeddings"] is True
    # Correct X after embedding: the first 30 samples get the expression of the last 30.
    data.X[:30] = cohort.X[-30:]
    fresh = fitted.predict(data).to_numpy()
    stale = np.asarray(fitted.frame(fitted.outputs(stored), data.obs_names))
    assert np.abs(fresh - stale).max() > 0.05  # reusing obsm would give other probabilities
    _, record = _not_reused(bs.tl.predict, data, fitted, progress=False)
    np.testing.assert_allclose(data.obsm["cancer_type_bulkrnabert_proba"], fresh, atol=1e-6)
    np.testing.assert_array_equal(data.obsm["X_bulkrnabert"], stored)  # left as it was
    assert len(record) == 1 and record[0].filename == __file__  # points at the call above
    assert str(record[0].message) == (
        "tl.predict does not reuse obsm['X_bulkrnabert']: the expression values in X (or the "
        "genes or samples) differ from those tl.embed embedded: the data changed after "
        "tl.embed. The embeddings are recomputed; obsm['X_bulkrnabert'] itself is left as it "
        "is (run tl.embed again to update it)."
    )
    again, record = _not_reused(bs.tl.finetune, data, "cancer_type", model=encoder, **PROBE)
    assert again.params["reused_embeddings"] is False
    assert len(record) == 1 and record[0].filename == __file__
    assert str(record[0].message).startswith("tl.finetune does not reuse")
    # After tl.embed again, the new embeddings are reused without a warning.
    bs.tl.embed(data, encoder, progress=False)
    refit = _reuses(bs.tl.finetune, data, "cancer_type", model=encoder, **PROBE)
    assert refit.params["reused_embeddings"] is True


@replacing
def test_probe_recomputes_embeddings_after_the_layer_changed(encoder, cohort):
    data = cohort.copy()
    data.layers["tpm"] = data.X.copy()
    bs.tl.embed(data, encoder, layer="tpm", progress=False)
    fitted = _no_warnings(bs.tl.finetune, data, "cancer_type", model=encoder, layer="tpm", **PROBE)
    assert fitted.params["reused_embeddings"] is True
    data.layers["tpm"][:30] = cohort.X[-30:]
    _, record = _not_reused(bs.tl.predict, data, fitted, layer="tpm", progress=False)
    expected = fitted.predict(data, layer="tpm").to_numpy()
    np.testing.assert_allclose(data.obsm["cancer_type_bulkrnabert_proba"], expected, atol=1e-6)
    assert len(record) == 1 and "the expression values in layers['tpm']" in str(record[0].message)


def test_probe_recomputes_embeddings_of_a_changed_model_with_the_same_source(encoder, cohort):
    data = _embedded(encoder, cohort)
    changed = nnx.clone(encoder)
    changed.source = encoder.source
    kernel = changed.layers[0].fc1.kernel
    kernel[...] = kernel[...] * 1.5
    fitted, record = _not_reused(bs.tl.finetune, data, "cancer_type", model=changed, **PROBE)
    assert fitted.params["reused_embeddings"] is False
    # The head was trained on the changed model's embeddings, not on the stored ones.
    expected = fitted.predict(data).to_numpy()
    np.testing.assert_allclose(data.obsm["cancer_type_bulkrnabert_proba"], expected, atol=1e-6)
    assert len(record) == 1 and "model's weights or configuration differ" in str(record[0].message)


def test_a_saved_probe_reuses_the_embeddings_of_its_encoder(encoder, cohort, tuned, tmp_path):
    data = _embedded(encoder, cohort)
    tuned.save(tmp_path / "probe")
    loaded = bs.load_finetuned(tmp_path / "probe")
    _reuses(bs.tl.predict, data, loaded, progress=False)
    expected = loaded.frame(loaded.outputs(data.obsm["X_bulkrnabert"]), data.obs_names)
    np.testing.assert_array_equal(data.obsm["cancer_type_bulkrnabert_proba"], expected.to_numpy())


def test_embeddings_without_fingerprint_are_recomputed(encoder, cohort):
    data = _embedded(encoder, cohort)
    params = data.uns["bulkrnabert"]["params"]
    del params["tokens_sha256"], params["model_sha256"]  # as written by an older version
    with pytest.warns(UserWarning, match="has no fingerprint"):
        fitted = bs.tl.finetune(data, "cancer_type", model=encoder, **PROBE)
    assert fitted.params["reused_embeddings"] is False


# ------------------------------------------------------------------------------ 11. arg types
def test_predict_with_an_encoder_says_to_finetune(encoder, cohort):
    data = cohort.copy()
    with pytest.raises(TypeError, match=r"fine-tuned model.*tl\.finetune.*load_finetuned"):
        bs.tl.predict(data, encoder, progress=False)
    with pytest.raises(TypeError, match=r"FinetunedModel .* got int"):
        bs.tl.predict(data, 3, progress=False)
    _unchanged(data, cohort)


def test_a_fine_tuned_model_where_an_encoder_is_expected(tuned, cohort):
    data = cohort.copy()
    with pytest.raises(TypeError, match=r"tl\.embed\(adata, tuned\.encoder\)"):
        bs.tl.embed(data, tuned, progress=False)
    with pytest.raises(TypeError, match=r"model=tuned\.encoder"):
        bs.tl.finetune(data, "cancer_type", model=tuned, **PROBE)
    _unchanged(data, cohort)


def test_a_dataframe_says_to_wrap_it_in_anndata(encoder, tuned, cohort):
    frame = cohort.to_df()
    before = frame.copy()
    wrap = r"got a pandas DataFrame\. Wrap it first: adata = anndata\.AnnData\(df\)"
    with pytest.raises(TypeError, match=r"tl\.predict takes an AnnData .*" + wrap):
        bs.tl.predict(frame, tuned, progress=False)
    with pytest.raises(TypeError, match=r"tl\.embed takes an AnnData .*" + wrap):
        bs.tl.embed(frame, encoder, progress=False)
    with pytest.raises(TypeError, match=r"tl\.finetune takes an AnnData .*" + wrap):
        bs.tl.finetune(frame, "cancer_type", model=encoder, **PROBE)
    with pytest.raises(TypeError, match=r"got ndarray\. Build one with anndata\.AnnData"):
        bs.tl.predict(cohort.X, tuned, progress=False)
    assert frame.equals(before)
    # The advice works.
    wrapped = ad.AnnData(frame)
    bs.tl.predict(wrapped, tuned, progress=False)
    assert wrapped.obsm["cancer_type_bulkrnabert_proba"].shape == (90, 3)


# ------------------------------------------------------------------------------ 15. keys
@pytest.mark.parametrize(
    "key", ["X_pca", "X_umap", "X_tsne", "X_diffmap", "X_draw_graph_fr", "neighbors", "X_leiden"]
)
def test_embed_refuses_scanpy_keys(encoder, cohort, key):
    data = cohort.copy()
    data.obsm["X_pca"] = np.ones((90, 2))
    data.uns["pca"] = {"variance_ratio": [0.5, 0.2]}
    with pytest.raises(ValueError, match=r"is not allowed: .* belongs to scanpy"):
        bs.tl.embed(data, encoder, key_added=key, progress=False)
    np.testing.assert_array_equal(data.obsm["X_pca"], np.ones((90, 2)))
    assert data.uns["pca"] == {"variance_ratio": [0.5, 0.2]}
    assert list(data.uns) == [*cohort.uns, "pca"]
    assert list(data.obsm) == ["X_pca"]


def test_embed_refuses_the_finetune_record(encoder, cohort):
    with pytest.raises(ValueError, match=r"where tl\.finetune keeps its records"):
        bs.tl.embed(cohort.copy(), encoder, key_added="X_bulkrnabert_finetune", progress=False)


def test_embed_warns_when_replacing_an_earlier_run(encoder, cohort):
    data = _no_warnings(_embedded, encoder, cohort)
    with pytest.warns(UserWarning, match="") as record:
        bs.tl.embed(data, encoder, progress=False)
    messages = [str(w.message) for w in record if "replaces" in str(w.message)]
    assert messages == [
        "tl.embed replaces the existing obsm['X_bulkrnabert'] and uns['bulkrnabert'] (from an "
        "earlier run?). Pass key_added=<another name> to keep both."
    ]
    assert [w.filename for w in record if "replaces" in str(w.message)] == [__file__]
    _no_warnings(bs.tl.embed, data, encoder, key_added="X_second", progress=False)
    assert {"X_bulkrnabert", "X_second"} <= set(data.obsm)


def test_finetune_and_predict_warn_when_replacing_predictions(encoder, cohort):
    data = cohort.copy()
    fitted = _no_warnings(bs.tl.finetune, data, "cancer_type", model=encoder, **PROBE)
    first = data.obsm["cancer_type_bulkrnabert_proba"].copy()
    fields = (
        "obs['cancer_type_bulkrnabert'] and obsm['cancer_type_bulkrnabert_proba'] and "
        "uns['cancer_type_bulkrnabert_finetune']"
    )
    with pytest.warns(UserWarning, match=re.escape(f"tl.predict replaces the existing {fields}")):
        record_check = bs.tl.predict(data, fitted, progress=False)
    assert record_check is None
    np.testing.assert_allclose(data.obsm["cancer_type_bulkrnabert_proba"], first, atol=1e-6)
    with pytest.warns(UserWarning, match=re.escape(f"tl.finetune replaces the existing {fields}")):
        bs.tl.finetune(data, "cancer_type", model=encoder, **PROBE)
    survival = cohort.copy()
    survival.obs["time_bulkrnabert_risk"] = 1.0  # where a survival run on "time" writes
    with pytest.warns(
        UserWarning, match=r"replaces the existing obs\['time_bulkrnabert_risk'\]"
    ) as w:
        bs.tl.finetune(survival, "time", event_key="event", model=encoder, **PROBE)
    assert [x.filename for x in w if "replaces" in str(x.message)] == [__file__]
    # A new key keeps both.
    _no_warnings(bs.tl.predict, data, fitted, key_added="again", progress=False)
    assert "again" in data.obs and "cancer_type_bulkrnabert" in data.obs


def test_finetune_and_predict_refuse_scanpy_and_label_columns(encoder, tuned, cohort):
    data = cohort.copy()
    data.obs["leiden"] = "0"
    for key in ("leiden", "n_genes", "total_counts"):
        with pytest.raises(ValueError, match=rf"obs\['{key}'\] belongs to scanpy"):
            bs.tl.finetune(data, "cancer_type", model=encoder, key_added=key, **PROBE)
        with pytest.raises(ValueError, match=rf"obs\['{key}'\] belongs to scanpy"):
            bs.tl.predict(data, tuned, key_added=key, progress=False)
    with pytest.raises(ValueError, match="would overwrite the labels"):
        bs.tl.predict(data, tuned, key_added="cancer_type", progress=False)
    with pytest.raises(ValueError, match="non-empty string"):
        bs.tl.predict(data, tuned, key_added=3, progress=False)
    assert (data.obs["leiden"] == "0").all()
    assert list(data.obs.columns) == [*cohort.obs.columns, "leiden"]
    assert not data.obsm and list(data.uns) == list(cohort.uns)


def test_finetune_and_predict_check_argument_types(encoder, cohort, tuned):
    with pytest.raises(TypeError, match="embedding_block"):
        bs.tl.finetune(cohort.copy(), "cancer_type", model=encoder, embedding_block=True)
    with pytest.raises(TypeError, match="batch_size"):
        bs.tl.predict(cohort.copy(), tuned, batch_size="4", progress=False)
