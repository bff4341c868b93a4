"""Parity with the original implementation's outputs (../shared/golden), through the real loaders."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bulkrnabert_sv.model import (
    BulkRNABertConfig,
    MLPHead,
    bin_log_expression,
    load_model,
)
from checkpoint_layouts import write_haiku_folder, write_hf_folder
from conftest import shared_path

ATOL = 1e-5
GENES = [f"ENSG{i:011d}" for i in range(64)]


@pytest.fixture(scope="module")
def golden(golden_dir):
    with np.load(golden_dir / "outputs.npz") as data:
        outputs = {k: data[k] for k in data.files}
    return {
        "outputs": outputs,
        "tokens": np.load(golden_dir / "tokens.npy"),
        "raw": np.load(golden_dir / "raw_expression.npy"),
        "log": np.load(golden_dir / "log_expression.npy"),
        "mean2": np.load(golden_dir / "mean_embedding_layer2.npy"),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory, golden_params, golden_config):
    root = tmp_path_factory.mktemp("golden_ckpt")
    hf = write_hf_folder(root / "hf", golden_params, golden_config, GENES)
    hk = write_haiku_folder(root / "hk", golden_params, golden_config, GENES)
    return hf, hk


@pytest.fixture(scope="module")
def hf_model(folders):
    return load_model(folders[0], attention_implementation="xla")


def test_both_loaders_give_identical_models(folders):
    hf = load_model(folders[0])
    hk = load_model(folders[1], allow_pickle=True)
    a, b = nnx.to_flat_state(nnx.state(hf, nnx.Param)), nnx.to_flat_state(nnx.state(hk, nnx.Param))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, va), (_, vb) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]), err_msg=str(path))
    assert hf.config == hk.config
    assert hf.genes == hk.genes == tuple(GENES)
    assert hf.config.normalization_factor == 3.0  # from tokenizer_config.json, not a default


def test_tokenizer_matches_golden(golden, hf_model):
    raw_before = golden["raw"].copy()
    tokens = hf_model.tokenize(golden["raw"])
    np.testing.assert_array_equal(golden["raw"], raw_before)  # caller's array untouched
    np.testing.assert_array_equal(tokens, golden["tokens"])
    np.testing.assert_allclose(np.log10(1 + golden["raw"]), golden["log"], rtol=0, atol=1e-12)


def test_tokenizer_edge_cases(golden_dir):
    with np.load(golden_dir / "tokenizer_edge_cases.npz") as data:
        log_expr, expected = data["log_expression"], data["tokens"]
        factor, bins = float(data["normalization_factor"]), data["bins"]
    n_bins = len(bins)
    raw = bin_log_expression(log_expr, normalization_factor=factor, n_bins=n_bins, clip=False)
    np.testing.assert_array_equal(raw, expected)
    clipped = bin_log_expression(log_expr, normalization_factor=factor, n_bins=n_bins)
    np.testing.assert_array_equal(clipped, np.minimum(expected, n_bins - 1))


@pytest.mark.parametrize("implementation", ["xla", "blockwise"])
def test_outputs_match_golden(golden, folders, implementation):
    model = load_model(
        folders[0],
        attention_implementation=implementation,
        attention_block_q=24,
        attention_block_k=20,
    )
    out = model(jnp.asarray(golden["tokens"]), embedding_layers=(1, 2), attention_layers=(1, 2))
    for key, expected in golden["outputs"].items():
        np.testing.assert_allclose(np.asarray(out[key]), expected, rtol=0, atol=ATOL, err_msg=key)
    # Without attention maps requested, every layer goes through the chosen implementation.
    out = model(jnp.asarray(golden["tokens"]), embedding_layers=(1, 2))
    for key in ("logits", "embeddings_1", "embeddings_2"):
        np.testing.assert_allclose(
            np.asarray(out[key]), golden["outputs"][key], rtol=0, atol=ATOL, err_msg=key
        )
    np.testing.assert_allclose(
        np.asarray(model.mean_embedding(golden["tokens"])), golden["mean2"], rtol=0, atol=ATOL
    )


def test_out_of_range_token_uses_last_row(golden_dir, hf_model):
    with np.load(golden_dir / "oob_token_case.npz") as data:
        tokens, expected = data["tokens"], data["logits"]
    assert tokens.max() == hf_model.config.n_expressions_bins
    logits = np.asarray(hf_model(jnp.asarray(tokens))["logits"])
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=ATOL)


def test_released_head_matches_golden(golden_dir, golden, hf_model):
    config = json.loads((golden_dir / "head_config.json").read_text())
    with np.load(golden_dir / "head_params.npz") as data:
        params = {k: data[k] for k in data.files}
    head = MLPHead.from_haiku_config(config, hf_model.config.embed_dim).load_haiku_params(params)
    logits = head(hf_model.mean_embedding(golden["tokens"]))
    np.testing.assert_allclose(
        np.asarray(logits), np.load(golden_dir / "head_logits.npy"), rtol=0, atol=ATOL
    )


def test_save_load_roundtrip_is_bit_identical(tmp_path, hf_model, golden):
    hf_model.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    assert again.config == hf_model.config and again.genes == hf_model.genes
    for (p, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(hf_model, nnx.Param)),
        nnx.to_flat_state(nnx.state(again, nnx.Param)),
    ):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))
    tokens = jnp.asarray(golden["tokens"])
    np.testing.assert_array_equal(
        np.asarray(again(tokens)["logits"]), np.asarray(hf_model(tokens)["logits"])
    )


def test_ia3_at_ones_changes_nothing_and_roundtrips(tmp_path, folders, golden):
    model = load_model(folders[0])
    tokens = jnp.asarray(golden["tokens"])
    before = np.asarray(model(tokens)["logits"])
    n = model.num_parameters()
    model.enable_ia3()
    assert model.has_ia3 and model.num_parameters() == n
    np.testing.assert_array_equal(np.asarray(model(tokens)["logits"]), before)
    block = model.layers[0]
    block.ia3_ffn.set_value(block.ia3_ffn[...] * 1.5)
    changed = np.asarray(model(tokens)["logits"])
    assert np.abs(changed - before).max() > 1e-3
    model.save(tmp_path / "ia3")
    again = load_model(tmp_path / "ia3")
    assert again.has_ia3
    np.testing.assert_array_equal(np.asarray(again(tokens)["logits"]), changed)


def test_parameter_count_of_golden_config(golden_config, hf_model):
    expected = BulkRNABertConfig.from_dict(golden_config).num_parameters
    assert hf_model.num_parameters() == expected == 19_560


def test_golden_files_present():
    # The golden fixture is required in CI; this names the files the parity tests read.
    for name in ["config.json", "params.npz", "outputs.npz", "tokens.npy", "head_params.npz"]:
        assert shared_path(f"golden/{name}").stat().st_size > 0
