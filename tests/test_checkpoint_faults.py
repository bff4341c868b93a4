"""Damaged or mistaken checkpoint folders: NaN weights, bad gene lists, misleading messages,
hand-edited fine-tuned models. Each is refused at load with a message naming the problem."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from bulkrnabert_sv import load_finetuned
from bulkrnabert_sv.cli import EXIT_MODEL, main
from bulkrnabert_sv.model import (
    BulkRNABertConfig,
    CheckpointError,
    MLPHead,
    load_model,
    random_model,
)
from bulkrnabert_sv.tl import FinetunedModel
from checkpoint_layouts import random_haiku_params, write_haiku_folder, write_hf_folder

GENES = [f"ENSG{i:011d}" for i in range(1, 33)]
#: A tiny architecture in the upstream config's terms (for the Hugging Face and Haiku layouts).
TINY = BulkRNABertConfig.tiny(n_genes=len(GENES)).to_dict() | {"use_gene_embedding": True}


@pytest.fixture()
def own(tmp_path):
    """A tiny model saved by model.save, with its gene list."""
    folder = tmp_path / "own"
    random_model("tiny", genes=GENES, seed=1).save(folder)
    return folder


def _edit_safetensors(path, edit) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _message(source, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(source, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------- item 4: NaN, inf
def _poison_haiku(params: dict) -> dict:
    params = dict(params)
    fc1 = params["bulk_bert/self_attention_block_0/~/fc1/w"].copy()
    fc1[0, 0] = np.nan
    params["bulk_bert/self_attention_block_0/~/fc1/w"] = fc1
    bias = params["bulk_bert/~/simple_lm_head/~/lm_final_fc/b"].copy()
    bias[1:3] = [np.inf, -np.inf]
    params["bulk_bert/~/simple_lm_head/~/lm_final_fc/b"] = bias
    return params


def test_non_finite_weights_are_refused_in_our_format(own):
    def poison(tensors):
        tensors["layers.0.fc1.kernel"][0, :3] = np.nan
        tensors["gene_embedding.embedding"][5, 0] = np.inf

    _edit_safetensors(own / "model.safetensors", poison)
    message = _message(own)
    assert f"Cannot load {own}: 2 problem(s)" in message
    assert "model.safetensors: tensor 'layers.0.fc1.kernel' (16, 32) holds 3 NaN and 0 " in message
    assert "'gene_embedding.embedding' (32, 8) holds 0 NaN and 1 infinite values (of 256)" in (
        message
    )
    assert "NaN or infinite weights make every output NaN" in message


def test_non_finite_weights_are_refused_in_the_hugging_face_layout(tmp_path):
    folder = write_hf_folder(tmp_path / "hf", _poison_haiku(random_haiku_params(TINY)), TINY, GENES)
    message = _message(folder)
    assert "2 problem(s)" in message
    assert "'transformer_layers.0.fc1.weight' (32, 16) holds 1 NaN and 0 infinite" in message
    assert "'lm_head.bias' (64,) holds 0 NaN and 2 infinite values (of 64)" in message


def test_non_finite_weights_are_refused_in_the_haiku_params(tmp_path):
    folder = tmp_path / "hk"
    write_haiku_folder(folder, _poison_haiku(random_haiku_params(TINY)), TINY, GENES)
    message = _message(folder, allow_pickle=True)
    assert "jax_params/params.joblib: tensor 'bulk_bert/self_attention_block_0/~/fc1/w'" in message
    assert "'bulk_bert/~/simple_lm_head/~/lm_final_fc/b' (64,) holds 0 NaN and 2 infinite" in (
        message
    )


def test_finite_weights_still_load_and_embed_finitely(own):
    model = load_model(own)
    tokens = np.zeros((2, len(GENES)), np.int32)
    assert np.isfinite(np.asarray(model.mean_embedding(tokens))).all()


# ------------------------------------------------------------------------- item 9: genes.txt
def _write_genes(folder, lines) -> None:
    (folder / "genes.txt").write_text("\n".join(lines) + "\n")


def test_missing_genes_file_is_refused(own):
    (own / "genes.txt").unlink()
    message = _message(own)
    assert "genes.txt: missing, although bulkrnabert_sv.json says the model was saved" in message
    assert "model.safetensors" not in message.split("\n")[0]
    # A model saved without a gene list has no genes.txt, and that is fine.
    random_model("tiny", genes=None, n_genes=32).save(own.parent / "no_genes")
    assert load_model(own.parent / "no_genes").genes is None


def test_repeated_and_malformed_gene_ids_name_their_lines(own):
    lines = list(GENES)
    lines[4] = GENES[1]  # line 5 repeats line 2
    lines[2] = "TP53"  # a symbol
    lines[3] = GENES[3] + ".7"  # a versioned id
    _write_genes(own, lines)
    message = _message(own)
    assert (
        "genes.txt: 1 repeated gene id(s): line 5 repeats 'ENSG00000000002' (first at line 2)"
        in (message)
    )
    assert (
        "genes.txt: 2 entries are not an unversioned Ensembl gene id (like 'ENSG00000141510'): "
        "line 3 'TP53', line 4 'ENSG00000000004.7' (has a version suffix)"
    ) in message


def test_short_genes_file_is_blamed_on_itself(own):
    _write_genes(own, GENES[:-1])
    message = _message(own)
    # The folder heads the message, and the problem is genes.txt's, not model.safetensors'.
    assert message.startswith(f"Cannot load {own}: 1 problem(s)")
    assert (
        "genes.txt: the gene list has 31 genes but the model has n_genes=32 "
        "(in bulkrnabert_sv.json)"
    ) in message
    assert "model.safetensors" not in message


def test_blank_line_between_genes_is_refused(own):
    _write_genes(own, [*GENES[:10], "", *GENES[10:]])
    assert "genes.txt: blank line(s) between genes: line 11" in _message(own)


def test_gene_lists_of_other_sources_are_checked_too(tmp_path, own):
    bad = list(GENES)
    bad[2] = "TP53"
    folder = write_hf_folder(tmp_path / "hf", random_haiku_params(TINY), TINY, bad)
    message = _message(folder)
    assert "data/tcga_sample.csv: 1 entry is not an unversioned Ensembl gene id" in message
    assert "column 3 'TP53'" in message
    # genes= replaces a saved list, and is held to the same rules.
    message = _message(own, genes=[*GENES[:-1], GENES[0]])
    assert "genes= (the gene order passed in): 1 repeated gene id(s): genes[31] repeats" in message
    assert load_model(own, genes=GENES[::-1]).genes == tuple(GENES[::-1])


# ------------------------------------------------------------------------- item 10: messages
def test_missing_own_config_is_named(own):
    (own / "bulkrnabert_sv.json").unlink()
    message = _message(own)
    assert f"{own / 'bulkrnabert_sv.json'} is missing" in message
    assert "model.save" in message and "config.json" not in message


def test_own_config_without_config_entry(own):
    meta = json.loads((own / "bulkrnabert_sv.json").read_text())
    del meta["config"]
    (own / "bulkrnabert_sv.json").write_text(json.dumps(meta))
    message = _message(own)
    assert "bulkrnabert_sv.json has no 'config' entry" in message
    assert "restore it from the original save" in message


def _finetuned(tmp_path, n_classes: int = 3):
    encoder = random_model("tiny", genes=GENES, seed=2)
    head = MLPHead(encoder.config.embed_dim, [8], n_classes, rngs=nnx.Rngs(0))
    model = FinetunedModel(
        encoder,
        head,
        task="classification",
        method="probe",
        classes=[f"type_{i}" for i in range(n_classes)],
        obs_key="cancer_type",
        event_key=None,
        embedding_block=1,
    )
    return model.save(tmp_path / "finetuned")


def test_encoder_and_finetuned_folders_point_to_the_other_loader(own, tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_finetuned(own)
    assert "holds an encoder" in str(info.value)
    assert f"bulkrnabert_sv.load_model({str(own)!r})" in str(info.value)
    folder = _finetuned(tmp_path)
    message = _message(folder)
    assert f"load_finetuned({str(folder)!r})" in message
    assert str(folder / "backbone") in message
    assert load_model(folder / "backbone").genes == tuple(GENES)


def test_cli_on_a_finetuned_folder_points_to_its_backbone(tmp_path, capsys):
    folder = _finetuned(tmp_path)
    table = pd.DataFrame(np.ones((2, len(GENES))), columns=GENES)
    table.insert(0, "sample", ["a", "b"])
    table.to_csv(tmp_path / "in.csv", index=False)
    code = main(["embed", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"),
                 "--no-progress", "--model", str(folder)])  # fmt: skip
    assert code == EXIT_MODEL
    err = capsys.readouterr().err
    assert "load_finetuned" in err and str(folder / "backbone") in err


def test_pretrain_checkpoint_folder_points_to_its_model(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "pretrain_config.json").write_text("{}")
    (folder / "2").mkdir()
    message = _message(folder)
    assert "tl.pretrain checkpoint folder" in message and "has not finished" in message
    random_model("tiny", genes=GENES).save(folder / "model")
    message = _message(folder)
    assert f"the finished model is in {folder / 'model'}: pass that folder" in message


# ------------------------------------------------------------------------- item 12: finetuned.json
def _edit_meta(folder, edit) -> None:
    meta = json.loads((folder / "finetuned.json").read_text())
    edit(meta)
    (folder / "finetuned.json").write_text(json.dumps(meta))


def _finetuned_message(folder) -> str:
    with pytest.raises(CheckpointError) as info:
        load_finetuned(folder)
    return str(info.value)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda m: m.update(classes=["a", "b"]),
            "'classes' lists 2 classes but the head has n_outputs=3 (one output per class)",
        ),
        (lambda m: m.pop("head"), "'head' is missing; it must hold the head's settings"),
        (
            lambda m: m.update(task="regression"),
            "'task' is 'regression'; it must be one of ['classification', 'survival']",
        ),
        (
            lambda m: m.update(method="lora"),
            "'method' is 'lora'; it must be one of ['probe', 'ia3', 'full']",
        ),
        (lambda m: m.update(classes=["a", "b", "a"]), "'classes' repeats \"a\"; each class once"),
        (
            lambda m: m.update(task="survival", event_key="event"),
            "the head has n_outputs=3; a survival model outputs 1 risk score",
        ),
        (
            lambda m: m["head"].update(in_features=32),
            "'head.in_features' is 32, but the encoder in backbone/ has embed_dim=16",
        ),
        (
            lambda m: m.update(embedding_block=9),
            "'embedding_block' is 9, but the encoder in backbone/ has 2 layers",
        ),
        (
            lambda m: m["head"].update(activation="swish"),
            "'head' does not describe an MLPHead or an ensemble of them: Unknown activation 'swish'",
        ),
    ],
    ids=[
        "classes-vs-outputs",
        "no-head",
        "unknown-task",
        "unknown-method",
        "repeated-class",
        "survival-outputs",
        "in-features",
        "layer",
        "activation",
    ],
)
def test_hand_edited_finetuned_json_is_refused(tmp_path, edit, expected):
    folder = _finetuned(tmp_path)
    _edit_meta(folder, edit)
    message = _finetuned_message(folder)
    assert f"Cannot load {folder / 'finetuned.json'}" in message
    assert expected in message
    assert "Restore it from the original save" in message


def test_valid_finetuned_folder_still_loads(tmp_path):
    folder = _finetuned(tmp_path)
    model = load_finetuned(folder)
    assert model.classes == ["type_0", "type_1", "type_2"]
    frame = model.frame(model.outputs(np.zeros((2, 16), np.float32)), ["x", "y"])
    np.testing.assert_allclose(frame.sum(axis=1).to_numpy(), 1.0, rtol=1e-6)
    shutil.rmtree(folder / "backbone")
    assert "backbone" in _finetuned_message(folder)
