"""Loading checkpoints: full-size Hugging Face layout, the hub code path offline, bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from bulkrnabert_sv.model import (
    BulkRNABertConfig,
    CheckpointError,
    export_hf_folder,
    load_model,
    random_model,
)
from checkpoint_layouts import (
    random_haiku_params,
    write_haiku_folder,
    write_hf_folder,
    write_hub_cache,
)
from conftest import shared_path


def _full_config() -> dict:
    path = shared_path("data/upstream_configs/config_bulk_rna_bert_tcga.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def full_hf_folder(tmp_path_factory, vocabulary):
    folder = tmp_path_factory.mktemp("full") / "BulkRNABert"
    return write_hf_folder(folder, random_haiku_params(_full_config()), _full_config(), vocabulary)


def test_full_size_hf_checkpoint_loads(full_hf_folder, vocabulary):
    tensors = load_file(str(full_hf_folder / "model.safetensors"))
    assert len(tensors) == 70
    model = load_model(full_hf_folder)
    assert model.num_parameters() == 6_005_104 == BulkRNABertConfig.tcga().num_parameters
    assert sum(v.size for v in tensors.values()) == 6_005_104
    assert model.genes == tuple(vocabulary) and len(model.genes) == 19_062
    assert model.config.normalization_factor == pytest.approx(5.547176906585117, abs=0)
    # A tensor lands where it should, transposed from PyTorch's (out, in).
    w_q = tensors["transformer_layers.2.mha.w_q.weight"]
    np.testing.assert_array_equal(np.asarray(model.layers[2].attention.query.kernel[...]), w_q.T)


def test_hub_repo_id_offline_through_the_cache(tmp_path, full_hf_folder, monkeypatch):
    cache = tmp_path / "hub"
    write_hub_cache(cache, "InstaDeepAI/BulkRNABert", full_hf_folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("InstaDeepAI/BulkRNABert", cache_dir=cache)
    reference = load_model(full_hf_folder)
    np.testing.assert_array_equal(
        np.asarray(model.gene_embedding.embedding[...]),
        np.asarray(reference.gene_embedding.embedding[...]),
    )
    assert model.source == "InstaDeepAI/BulkRNABert"
    assert model.revision == "0123456789abcdef0123456789abcdef01234567"
    # The environment variable is the default source.
    monkeypatch.delenv("BULKRNABERT_MODEL", raising=False)
    monkeypatch.setenv("BULKRNABERT_SV_MODEL", str(full_hf_folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model().source == str(full_hf_folder)


def test_former_model_variable_is_read_with_a_deprecation_warning(monkeypatch):
    monkeypatch.delenv("BULKRNABERT_SV_MODEL", raising=False)
    monkeypatch.setenv("BULKRNABERT_MODEL", "compact")
    pattern = r"\$BULKRNABERT_MODEL is deprecated.*\$BULKRNABERT_SV_MODEL"
    with pytest.warns(DeprecationWarning, match=pattern) as caught:
        model = load_model()
    assert model.source == "compact"
    assert caught[0].filename == __file__  # attributed to the caller's line
    # The new name wins, silently.
    monkeypatch.setenv("BULKRNABERT_SV_MODEL", "compact")
    monkeypatch.setenv("BULKRNABERT_MODEL", "InstaDeepAI/BulkRNABert")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model().source == "compact"


def test_hub_offline_without_cache_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"HF_HUB_OFFLINE.*\n.*local folder"):
        load_model("InstaDeepAI/BulkRNABert", cache_dir=tmp_path / "empty")


# ---------------------------------------------------------------------------------- bad input
SMALL = BulkRNABertConfig.small().to_dict() | {"use_gene_embedding": True}
GENES = [f"ENSG{i:011d}" for i in range(64)]


@pytest.fixture()
def small_hf(tmp_path):
    return write_hf_folder(tmp_path / "ckpt", random_haiku_params(SMALL), SMALL, GENES)


def _rewrite(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_all_mismatches_reported_together(small_hf):
    def edit(t):
        del t["lm_head.bias"]  # missing
        t["transformer_layers.0.fc1.weight"] = np.zeros((3, 3), np.float32)  # misshapen
        t["transformer_layers.7.fc1.bias"] = np.zeros(64, np.float32)  # unexpected layer
        t["pooler.dense.weight"] = np.zeros(2, np.float32)  # unknown name

    _rewrite(small_hf, edit)
    (small_hf / "data" / "tcga_sample.csv").write_text(",".join(GENES[:60]) + ",identifier\n")
    with pytest.raises(CheckpointError) as info:
        load_model(small_hf)
    message = str(info.value)
    assert "5 problem(s)" in message
    assert "model.safetensors" in message
    for fragment in [
        "missing tensor for 'lm_head.bias'",
        "'transformer_layers.0.fc1.weight' has shape (3, 3)",
        "'transformer_layers.7.fc1.bias'",
        "'pooler.dense.weight'",
        "60 genes but the model has n_genes=64",
    ]:
        assert fragment in message


def test_config_disagreeing_with_tensors(small_hf):
    config = json.loads((small_hf / "config.json").read_text())
    config["embed_dim"] = 48
    (small_hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"expression_embedding_layer\.weight' has shape"):
        load_model(small_hf)


def test_truncated_safetensors(small_hf):
    path = small_hf / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable.*download it"):
        load_model(small_hf)


def test_missing_tokenizer_config(small_hf):
    (small_hf / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json is missing"):
        load_model(small_hf)


def test_joblib_needs_allow_pickle(tmp_path):
    folder = write_haiku_folder(tmp_path / "hk", random_haiku_params(SMALL), SMALL, GENES)
    with pytest.raises(
        CheckpointError, match=r"params\.joblib is a joblib pickle.*allow_pickle=True"
    ):
        load_model(folder)
    assert load_model(folder, allow_pickle=True).num_parameters() == 19_560


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="holds no BulkRNABert checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="neither an existing folder"):
        load_model("no/such/path/here")


def test_export_hf_folder_roundtrip(tmp_path):
    model = random_model("small", genes=GENES, seed=3)
    export_hf_folder(model, tmp_path / "exported")
    again = load_model(tmp_path / "exported")
    for (p, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(model, nnx.Param)),
        nnx.to_flat_state(nnx.state(again, nnx.Param)),
    ):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        BulkRNABertConfig(num_layers=0)
    with pytest.raises(ValueError, match="Unknown preset"):
        BulkRNABertConfig.from_preset("huge")
