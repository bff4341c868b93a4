"""tl.embed: results, input kinds, batching, sharding, memory, scanpy conventions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import warnings

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import bulkrnabert_sv as bs
from bulkrnabert_sv.model import random_model
from bulkrnabert_sv.pp import ExpressionValueError, ExpressionValueWarning
from bulkrnabert_sv.pp._tokens import token_batches
from bulkrnabert_sv.training import inference
from bulkrnabert_sv.training.inference import _Runner, embed_token_array
from conftest import ROOT

N_VOCAB = 96
VOCAB = [f"ENSG{i:011d}" for i in range(1, N_VOCAB + 1)]
pytestmark = pytest.mark.filterwarnings("ignore::bulkrnabert_sv.pp.GeneCoverageWarning")


@pytest.fixture(scope="module")
def model():
    return random_model("tiny", genes=VOCAB, seed=3)


def simulated_tpm(n_obs: int, seed: int = 0, groups: int = 1, n_other: int = 30) -> ad.AnnData:
    """TPM over the vocabulary (shuffled, versioned, one gene missing) plus other genes."""
    rng = np.random.default_rng(seed)
    names = [f"{g}.{i % 7 + 1}" for i, g in enumerate(VOCAB[1:])]
    names += [f"ENSG{i:011d}.1" for i in range(90_000, 90_000 + n_other)]
    profiles = rng.lognormal(1.0, 2.0, (groups, len(names)))
    group = np.arange(n_obs) % groups
    values = profiles[group] * rng.lognormal(0.0, 0.3, (n_obs, len(names)))
    values[rng.random(values.shape) < 0.2] = 0.0
    values = values / values.sum(axis=1, keepdims=True) * 9e5
    order = rng.permutation(len(names))
    obs = pd.DataFrame(
        {"group": pd.Categorical([f"g{g}" for g in group])},
        index=[f"s{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame({"kind": "gene"}, index=np.asarray(names)[order])
    return ad.AnnData(values[:, order], obs=obs, var=var)


def reference_embeddings(model, adata: ad.AnnData, block: int = -1) -> np.ndarray:
    """Align with pandas (independently of the package) and call the model directly."""
    frame = pd.DataFrame(np.asarray(adata.X), columns=[v.split(".")[0] for v in adata.var_names])
    aligned = frame.T.groupby(level=0).sum().T.reindex(columns=VOCAB, fill_value=0.0)
    tokens = model.tokenize(aligned.to_numpy())
    return np.asarray(model.mean_embedding(tokens, block=block))


# ------------------------------------------------------------------------------ results
def test_embed_equals_a_direct_model_call(model):
    adata = simulated_tpm(9)
    with pytest.warns(bs.pp.GeneCoverageWarning):
        bs.tl.embed(adata, model, batch_size=4, progress=False)
    embeddings = adata.obsm["X_bulkrnabert"]
    assert embeddings.dtype == np.float32 and embeddings.shape == (9, 16)
    np.testing.assert_allclose(embeddings, reference_embeddings(model, adata), atol=2e-6)
    uns = adata.uns["bulkrnabert"]
    fingerprints = {k: uns["params"].pop(k) for k in ("model_sha256", "tokens_sha256")}
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in fingerprints.values())
    assert uns["params"] == {
        "model": "in-memory model",
        "revision": "",
        "layer": "X",
        "gene_key": "var_names",
        "embedding_block": 2,
        "pooling": "mean",
        "normalization_factor": model.config.normalization_factor,
        "n_genes": N_VOCAB,
        "embed_dim": 16,
        "num_layers": 2,
        "gene_coverage": pytest.approx((N_VOCAB - 1) / N_VOCAB),
        "package_version": bs.__version__,
    }
    assert uns["genes"]["n_matched"] == N_VOCAB - 1
    assert uns["genes"]["n_unmapped"] == 30 and uns["genes"]["n_missing"] == 1


def test_embedding_block_layer_and_key_added(model):
    adata = simulated_tpm(5)
    adata.layers["tpm"] = adata.X.copy()
    adata.X = np.zeros_like(adata.X)
    bs.tl.embed(adata, model, layer="tpm", embedding_block=1, key_added="X_first", progress=False)
    assert "X_bulkrnabert" not in adata.obsm and "bulkrnabert" not in adata.uns
    params = adata.uns["first"]["params"]
    assert params["embedding_block"] == 1 and params["layer"] == "tpm"
    tpm = ad.AnnData(adata.layers["tpm"], var=adata.var)
    np.testing.assert_allclose(
        adata.obsm["X_first"], reference_embeddings(model, tpm, block=1), atol=2e-6
    )
    bs.tl.embed(adata, model, layer="tpm", key_added="plain", progress=False)
    assert "plain" in adata.obsm and "plain" in adata.uns
    assert not np.allclose(adata.obsm["plain"], adata.obsm["X_first"])


def test_same_result_for_every_input_kind_and_batch_size(model, tmp_path):
    import dask.array as da

    adata = simulated_tpm(11)
    kwargs = dict(batch_size=4, progress=False, copy=True)
    expected = bs.tl.embed(adata, model, **kwargs).obsm["X_bulkrnabert"]

    inputs = {"sparse": ad.AnnData(sp.csr_matrix(adata.X), var=adata.var)}
    inputs["dask"] = ad.AnnData(da.from_array(np.asarray(adata.X), chunks=(3, -1)), var=adata.var)
    for name, matrix in {"dense": adata.X, "sparse": sp.csr_matrix(adata.X)}.items():
        ad.AnnData(matrix, var=adata.var).write_h5ad(tmp_path / f"{name}.h5ad")
        inputs[f"backed {name}"] = ad.read_h5ad(tmp_path / f"{name}.h5ad", backed="r")
    for name, data in inputs.items():
        bs.tl.embed(data, model, batch_size=4, progress=False)
        np.testing.assert_array_equal(data.obsm["X_bulkrnabert"], expected, err_msg=name)

    # Other batch sizes: the same up to float rounding (XLA may order sums differently).
    for batch_size in (3, 16):
        other = bs.tl.embed(adata, model, batch_size=batch_size, progress=False, copy=True)
        np.testing.assert_allclose(other.obsm["X_bulkrnabert"], expected, rtol=0, atol=1e-6)
    # The last partial batch (11 = 4 + 4 + 3) is padded: its rows equal full-batch results.
    tail = bs.tl.embed(adata[[9, 10, 0, 1]], model, **kwargs).obsm["X_bulkrnabert"]
    np.testing.assert_array_equal(tail[:2], expected[9:])


def test_views_and_mudata(model):
    adata = simulated_tpm(8)
    full = bs.tl.embed(adata, model, copy=True, progress=False).obsm["X_bulkrnabert"]
    view = adata[[1, 5, 6]]
    result = bs.tl.embed(view, model, copy=True, progress=False)
    assert not result.is_view
    np.testing.assert_allclose(result.obsm["X_bulkrnabert"], full[[1, 5, 6]], atol=1e-6)
    assert "X_bulkrnabert" not in adata.obsm

    mdata = md.MuData({"rna": adata.copy(), "other": ad.AnnData(np.ones((8, 2)))})
    bs.tl.embed(mdata, model, mod="rna", progress=False)
    np.testing.assert_array_equal(mdata.mod["rna"].obsm["X_bulkrnabert"], full)
    assert "bulkrnabert" in mdata.mod["rna"].uns
    assert "X_bulkrnabert" not in mdata.mod["other"].obsm
    copied = bs.tl.embed(mdata, model, mod="rna", progress=False, copy=True, key_added="X_c")
    assert "X_c" in copied.mod["rna"].obsm and "X_c" not in mdata.mod["rna"].obsm
    with pytest.raises(KeyError, match="no modality 'prot'"):
        bs.tl.embed(mdata, model, mod="prot", progress=False)


def test_model_from_a_folder_records_its_source(model, tmp_path):
    model.save(tmp_path / "saved")
    adata = simulated_tpm(3)
    bs.tl.embed(adata, str(tmp_path / "saved"), progress=False)
    assert adata.uns["bulkrnabert"]["params"]["model"] == str(tmp_path / "saved")
    direct = bs.tl.embed(adata, model, progress=False, copy=True).obsm["X_bulkrnabert"]
    np.testing.assert_array_equal(adata.obsm["X_bulkrnabert"], direct)
    with pytest.raises(bs.CheckpointError):
        bs.tl.embed(adata, str(tmp_path / "nowhere"), progress=False)


# ------------------------------------------------------------------------------ no side effects
def _snapshot(adata: ad.AnnData):
    return (
        np.array(adata.X, copy=True),
        adata.var.copy(),
        adata.obs.copy(),
        dict(adata.obsm),
        {k: v for k, v in adata.uns.items()},
        dict(adata.layers),
    )


def _assert_same(adata: ad.AnnData, snapshot) -> None:
    x, var, obs, obsm, uns, layers = snapshot
    np.testing.assert_array_equal(adata.X, x)
    pd.testing.assert_frame_equal(adata.var, var)
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert list(adata.obsm) == list(obsm)
    for key in obsm:
        np.testing.assert_array_equal(adata.obsm[key], obsm[key])
    assert list(adata.uns) == list(uns) and list(adata.layers) == list(layers)


def test_input_unchanged_and_copy_semantics(model):
    adata = simulated_tpm(6)
    before = _snapshot(adata)
    copy = bs.tl.embed(adata, model, copy=True, progress=False)
    _assert_same(adata, before)
    assert copy is not adata and copy.obsm["X_bulkrnabert"].shape == (6, 16)
    assert bs.tl.embed(adata, model, progress=False) is None
    np.testing.assert_array_equal(adata.X, before[0])
    pd.testing.assert_frame_equal(adata.var, before[1])
    pd.testing.assert_frame_equal(adata.obs, before[2])
    assert set(adata.obsm) == {"X_bulkrnabert"} and set(adata.uns) == {"bulkrnabert"}


def test_failed_calls_leave_the_object_as_it_was(model):
    adata = simulated_tpm(7)
    adata.obsm["X_bulkrnabert"] = np.full((7, 16), 5.0, dtype=np.float32)
    adata.uns["bulkrnabert"] = {"old": 1}
    adata.X[6, 3] = np.nan  # found only in the last batch
    adata.layers["counts"] = np.round(adata.X * 10)
    before = _snapshot(adata)
    with pytest.raises(ExpressionValueError, match="row 6"):
        bs.tl.embed(adata, model, batch_size=2, progress=False)
    _assert_same(adata, before)
    assert adata.uns["bulkrnabert"] == {"old": 1}
    with pytest.raises(KeyError, match="no 'tpm'"):
        bs.tl.embed(adata, model, layer="tpm", progress=False)
    with pytest.raises(ValueError, match="block 3 is out of range"):
        bs.tl.embed(adata, model, embedding_block=3, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        bs.tl.embed(adata, model, batch_size=0, progress=False)
    with pytest.raises(KeyError, match="gene_key"):
        bs.tl.embed(adata, model, gene_key="gene_ids", progress=False)
    _assert_same(adata, before)


def test_backed_input_reads_one_batch_at_a_time(model, tmp_path, monkeypatch):
    adata = simulated_tpm(120, seed=4, n_other=3000)
    path = tmp_path / "large.h5ad"
    adata.write_h5ad(path)
    expected = bs.tl.embed(adata, model, batch_size=4, progress=False, copy=True)
    backed = ad.read_h5ad(path, backed="r")

    rows_read = []
    original = h5py.Dataset.__getitem__

    def recording(self, selection):
        if self.name == "/X":
            rows = selection[0] if isinstance(selection, tuple) else selection
            if isinstance(rows, slice):
                rows_read.append(len(range(*rows.indices(self.shape[0]))))
            else:  # a view's rows: an index array
                rows_read.append(len(np.asarray(rows)))
        return original(self, selection)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    tracemalloc.start()
    try:
        bs.tl.embed(backed, model, batch_size=4, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    x_bytes = adata.X.nbytes  # 120 x 3095 float64 = 3 MB; one batch is 100 kB
    assert max(rows_read) == 4 and sum(rows_read) == 120
    assert peak < x_bytes / 4, f"peak {peak} B of Python/numpy memory for X of {x_bytes} B"
    np.testing.assert_array_equal(backed.obsm["X_bulkrnabert"], expected.obsm["X_bulkrnabert"])
    with pytest.raises(ValueError, match="copy=True is not possible for backed"):
        bs.tl.embed(backed, model, copy=True, progress=False)
    # A view of backed data is read batch by batch too, in the view's order.
    rows_read.clear()
    view = ad.read_h5ad(path, backed="r")[[50, 3, 7, 99, 12]]
    with pytest.raises(ValueError, match="Pass copy=True"):
        bs.tl.embed(view, model, progress=False)
    result = bs.tl.embed(view, model, batch_size=4, progress=False, copy=True)
    assert rows_read[:2] == [4, 1]  # then the copy reads the view's rows
    assert not result.isbacked and "X_bulkrnabert" not in view.obsm
    np.testing.assert_allclose(
        result.obsm["X_bulkrnabert"], expected.obsm["X_bulkrnabert"][[50, 3, 7, 99, 12]], atol=1e-6
    )


# ------------------------------------------------------------------------------ devices
def test_batches_are_sharded_over_several_devices():
    code = textwrap.dedent(
        """
        import json
        import jax
        import numpy as np
        from bulkrnabert_sv.training.inference import _Runner, embed_token_array
        from bulkrnabert_sv.model import random_model

        devices = jax.local_devices()
        model = random_model("tiny", genes=[f"ENSG{i:011d}" for i in range(48)], seed=1)
        tokens = np.random.default_rng(0).integers(0, 64, (7, 48)).astype(np.int32)
        multi = embed_token_array(model, tokens, batch_size=3)
        single = embed_token_array(model, tokens, batch_size=3, devices=devices[:1])
        runner = _Runner(model, block=-1, batch_size=3, devices=None)
        out, n = runner.dispatch(tokens[:3])
        print(json.dumps({
            "n_devices": len(devices),
            "padded": runner.batch_size,
            "out_devices": len(out.sharding.device_set),
            "max_diff": float(np.abs(multi - single).max()),
        }))
        """
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["n_devices"] == 2 and result["out_devices"] == 2
    assert result["padded"] == 4  # batch 3 padded to a multiple of 2 devices
    assert result["max_diff"] < 1e-6


def test_runner_shapes_full_and_partial_batches(model):
    runner = _Runner(model, block=-1, batch_size=16, devices=None)
    assert runner.batch_size == 16
    assert [runner.padded_size(n) for n in (1, 2, 3, 4, 5, 8, 9, 15, 16)] == [
        1,
        2,
        4,
        4,
        8,
        8,
        16,
        16,
        16,
    ]
    # Few compiled shapes whatever the length of the last batch.
    assert {runner.padded_size(n) for n in range(1, 17)} == {1, 2, 4, 8, 16}
    out, n = runner.dispatch(np.zeros((3, N_VOCAB), dtype=np.int32))
    assert out.shape == (4, 16) and n == 3
    # The full shape is capped at the number of samples.
    assert _Runner(model, block=-1, batch_size=10**6, devices=None, n_obs=4).batch_size == 4
    with pytest.raises(ValueError, match="tokens must have shape"):
        runner.dispatch(np.zeros((2, 3), dtype=np.int32))
    empty = embed_token_array(model, np.zeros((0, N_VOCAB), dtype=np.int32))
    assert empty.shape == (0, 16)


def _record_model_batches(monkeypatch, max_rows: int) -> list[tuple[int, ...]]:
    """Shapes of the token arrays fed to the compiled model; more than ``max_rows`` rows fail."""
    shapes: list[tuple[int, ...]] = []
    real = inference._mean_embedding

    def recording(graphdef, state, tokens, *, block):
        shapes.append(tuple(tokens.shape))
        # Fail before computing: an over-padded batch could take all the memory there is.
        assert tokens.shape[0] <= max_rows, f"batch of {tokens.shape[0]} rows for {max_rows}"
        return real(graphdef, state, tokens, block=block)

    monkeypatch.setattr(inference, "_mean_embedding", recording)
    return shapes


@pytest.mark.parametrize(
    ("n_obs", "batch_size", "fed"),
    [
        (4, 10**6, [4]),  # was one batch of 10**6 rows (190 GB with the full model)
        (1, 8, [1]),  # was 8 rows of compute for 1 sample
        (5, 8, [5]),
        (9, 4, [4, 4, 1]),
        (11, 4, [4, 4, 4]),  # last batch of 3: padded to 4 (a power of two)
        (13, 8, [8, 8]),  # 5 -> 8
        (19, 16, [16, 4]),  # 3 -> 4, not 16
    ],
)
def test_batches_are_not_padded_beyond_the_data(model, monkeypatch, n_obs, batch_size, fed):
    adata = simulated_tpm(n_obs, seed=n_obs)
    shapes = _record_model_batches(monkeypatch, max_rows=n_obs)
    bs.tl.embed(adata, model, batch_size=batch_size, progress=False)
    assert shapes == [(rows, N_VOCAB) for rows in fed]
    np.testing.assert_allclose(
        adata.obsm["X_bulkrnabert"], reference_embeddings(model, adata), rtol=0, atol=2e-6
    )


def test_token_arrays_are_not_padded_beyond_the_data(model, monkeypatch):
    tokens = np.random.default_rng(5).integers(0, 64, (3, N_VOCAB)).astype(np.int32)
    shapes = _record_model_batches(monkeypatch, max_rows=3)
    out = embed_token_array(model, tokens, batch_size=1000)
    assert shapes == [(3, N_VOCAB)]
    np.testing.assert_allclose(out, np.asarray(model.mean_embedding(tokens)), rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------ value checks
def _value_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, ExpressionValueWarning)]


def test_every_batch_is_checked_and_named_in_one_warning(model):
    tpm = simulated_tpm(16, seed=8)
    values = np.asarray(tpm.X).copy()
    values[8:] = np.log2(values[8:] + 1)  # the second batch of 8 is log-transformed
    adata = ad.AnnData(values, obs=tpm.obs, var=tpm.var)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        bs.tl.embed(adata, model, batch_size=8, progress=False)
    found = _value_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    assert "X, checked in full (16 samples): 8 sample(s) look log-transformed" in message
    assert "'s8', 's9', 's10', 's11', 's12' and 3 more" in message and "2**x - 1" in message
    assert "'s7'" not in message
    assert found[0].filename == __file__  # points at the caller's line
    assert "X_bulkrnabert" in adata.obsm  # a warning, not an error


def test_unexpressed_samples_and_several_problems_in_later_batches(model):
    adata = simulated_tpm(10, seed=9)
    values = np.asarray(adata.X).copy()
    in_vocabulary = np.array([v.split(".")[0] in set(VOCAB) for v in adata.var_names])
    assert 0 < in_vocabulary.sum() < len(in_vocabulary)
    values[3] = 0.0  # no value at all
    values[7, in_vocabulary] = 0.0  # expressed only in genes the model does not have
    values[9] = np.round(values[9] * 5)  # raw counts (integers, library size 4.5e6)
    adata.X = values
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        bs.tl.embed(adata, model, batch_size=3, progress=False)
    found = _value_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    counts = "1 sample(s) look like raw counts (integer values, library size above 1e6: 's9')"
    unexpressed = "2 sample(s) have no expressed model gene (TPM 0 on all of the model's genes: "
    assert counts in message and unexpressed + "'s3', 's7')" in message
    assert message.index("raw counts") < message.index("no expressed model gene")


def test_clean_tpm_gives_no_value_warning(model):
    adata = simulated_tpm(12, seed=10)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        bs.tl.embed(adata, model, batch_size=5, progress=False)
    assert not _value_warnings(record)


# ------------------------------------------------------------------------------ argument types
@pytest.mark.parametrize("batch_size", ["4", 4.0, True, None])
def test_batch_size_of_another_type_is_a_type_error(model, batch_size):
    adata = simulated_tpm(4)
    with pytest.raises(TypeError, match="batch_size must be"):
        bs.tl.embed(adata, model, batch_size=batch_size, progress=False)
    assert "X_bulkrnabert" not in adata.obsm


@pytest.mark.parametrize("embedding_block", [2.0, True, False, "1", None])
def test_embedding_block_of_another_type_is_a_type_error(model, embedding_block):
    adata = simulated_tpm(4)
    with pytest.raises(TypeError, match=r"embedding_block must be an integer block index"):
        bs.tl.embed(adata, model, embedding_block=embedding_block, progress=False)
    assert "X_bulkrnabert" not in adata.obsm
    # NumPy integers are integers.
    bs.tl.embed(adata, model, embedding_block=np.int64(1), progress=False)
    assert adata.uns["bulkrnabert"]["params"]["embedding_block"] == 1


def test_mean_embedding_layer_keyword_is_deprecated(model):
    tokens = np.ones((2, N_VOCAB), dtype=np.int32)
    expected = np.asarray(model.mean_embedding(tokens, block=1))
    with pytest.warns(DeprecationWarning, match=r"layer=.*deprecated.*block=") as caught:
        old = np.asarray(model.mean_embedding(tokens, layer=1))
    assert caught[0].filename == __file__
    np.testing.assert_array_equal(old, expected)
    assert not np.array_equal(expected, np.asarray(model.mean_embedding(tokens)))  # block -1


def test_internal_entry_points_check_types_too(model):
    tokens = np.zeros((2, N_VOCAB), dtype=np.int32)
    with pytest.raises(TypeError, match=r"batch_size must be a positive integer.*got '4'"):
        embed_token_array(model, tokens, batch_size="4")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        embed_token_array(model, tokens, batch_size=0)
    with pytest.raises(TypeError, match="block must be an integer block index"):
        embed_token_array(model, tokens, block=True)
    with pytest.raises(TypeError, match="batch_size must be a positive integer"):
        token_batches(simulated_tpm(2), model, batch_size=2.5)


# ------------------------------------------------------------------------------ scanpy
def test_neighbors_and_umap_on_the_result(model, tmp_path):
    import scanpy as sc

    adata = simulated_tpm(30, seed=2, groups=3)
    bs.tl.embed(adata, model, batch_size=8, progress=False)
    sc.pp.neighbors(adata, use_rep="X_bulkrnabert", n_neighbors=5)
    sc.tl.umap(adata, random_state=0)
    assert adata.uns["neighbors"]["params"]["use_rep"] == "X_bulkrnabert"
    assert adata.obsm["X_umap"].shape == (30, 2) and np.isfinite(adata.obsm["X_umap"]).all()
    # Everything written is storable.
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    assert back.uns["bulkrnabert"]["params"]["pooling"] == "mean"
    np.testing.assert_array_equal(back.obsm["X_bulkrnabert"], adata.obsm["X_bulkrnabert"])
