"""Execution settings apart from the architecture: ``ExecutionConfig`` held by the model."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bulkrnabert_sv as bs
from bulkrnabert_sv.model import BulkRNABertConfig, ExecutionConfig, random_model
from bulkrnabert_sv.model.config import EXECUTION_FIELDS
from bulkrnabert_sv.tl._embed import model_fingerprint

GENES = [f"ENSG{i:011d}" for i in range(1, 41)]
#: model_sha256 of random_model("tiny", genes=GENES, seed=7), computed before execution settings
#: moved into ExecutionConfig: the fingerprint of the same weights must not change.
FINGERPRINT = "57e2c393359ad83d8544c4047c6d00046282375c423f86ca5c7346793a90fc0a"


@pytest.fixture(scope="module")
def model():
    return random_model("tiny", genes=GENES, seed=7)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 64, (2, len(GENES)), dtype=np.int32)


def test_the_config_carries_the_initial_execution():
    config = BulkRNABertConfig.tiny(attention_implementation="xla", remat=True)
    assert config.execution == ExecutionConfig(attention_implementation="xla", remat=True)
    assert config.with_execution(ExecutionConfig()) == BulkRNABertConfig.tiny()
    assert tuple(f.name for f in dataclasses.fields(ExecutionConfig)) == EXECUTION_FIELDS
    net = bs.model.BulkRNABert(config, rngs=nnx.Rngs(0))
    assert net.execution == config.execution
    assert net.layers[0].attention.execution.attention_implementation == "xla"
    with pytest.raises(ValueError, match="Invalid ExecutionConfig: compute_dtype must be"):
        ExecutionConfig(compute_dtype="int8")
    with pytest.raises(ValueError, match="Invalid BulkRNABertConfig: attention_implementation"):
        BulkRNABertConfig.tiny(attention_implementation="nope")


def test_fingerprint_of_the_same_weights_is_unchanged(model):
    assert model_fingerprint(model) == FINGERPRINT
    other = model.with_execution(attention_implementation="xla", remat=True, attention_block_q=8)
    assert model_fingerprint(other) == FINGERPRINT
    built = random_model("tiny", genes=GENES, seed=7, remat=True, attention_implementation="xla")
    assert model_fingerprint(built) == FINGERPRINT


def test_with_execution_shares_the_parameters_and_leaves_the_model(model, tokens):
    other = model.with_execution(attention_implementation="xla", remat=True)
    assert other is not model and model.execution == ExecutionConfig()
    assert other.execution == ExecutionConfig(attention_implementation="xla", remat=True)
    assert other.config.remat and other.config.attention_implementation == "xla"
    assert not model.config.remat and model.config.attention_implementation == "auto"
    assert other.config.architecture() == model.config.architecture()
    assert other.genes == model.genes
    for mine, theirs in zip(
        jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(other, nnx.Param))
    ):
        assert mine is theirs  # the same arrays, no copy
    expected = np.asarray(model(tokens)["logits"])
    np.testing.assert_allclose(np.asarray(other(tokens)["logits"]), expected, atol=2e-5)


def test_set_execution_switches_remat_and_dtype_in_place(model, tokens):
    net = nnx.clone(model)
    assert net.set_execution(remat=True) is net and net.execution.remat and net.config.remat

    def loss(m):
        return jnp.sum(m(tokens)["logits"] ** 2)

    grads = nnx.grad(loss)(net)
    reference = nnx.grad(loss)(model)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    net.set_execution(compute_dtype="bfloat16")
    assert net.execution.remat and net.config.compute_dtype == "bfloat16"
    assert all(linear.dtype == jnp.bfloat16 for linear in net.layers[0].linears())
    half = np.asarray(net(tokens)["logits"])
    full = np.asarray(model(tokens)["logits"])
    assert not np.array_equal(half, full)
    np.testing.assert_allclose(half, full, atol=0.5)
    net.set_execution(ExecutionConfig())
    assert net.config == model.config
    np.testing.assert_array_equal(np.asarray(net(tokens)["logits"]), full)


def test_saved_config_keeps_its_fields_and_the_execution(model, tmp_path):
    net = model.with_execution(remat=True)
    net.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "bulkrnabert_sv.json").read_text())["config"]
    assert set(saved) == {f.name for f in dataclasses.fields(BulkRNABertConfig)}
    loaded = bs.load_model(tmp_path / "m")
    assert loaded.execution == ExecutionConfig(remat=True)
    assert model_fingerprint(loaded) == FINGERPRINT
    assert bs.load_model(tmp_path / "m", remat=False).execution == ExecutionConfig()
