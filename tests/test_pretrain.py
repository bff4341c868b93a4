"""tl.pretrain: masked loss below the marginal baseline on real samples, exact resume, interrupted
runs, two simulated devices against one, bad input; the masking helpers against numpy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import anndata as ad
import jax
import jax.numpy as jnp
import mudata as md
import numpy as np
import pandas as pd
import pytest
from flax import nnx

import bulkrnabert_sv.tl as tl
from bulkrnabert_sv import load_model
from bulkrnabert_sv.pp._tokens import all_tokens
from bulkrnabert_sv.tl import PretrainCheckpointError
from bulkrnabert_sv.training.masking import marginal_log_probs, masked_sums, sample_mask
from bulkrnabert_sv.training.pretrain_checkpoint import CONFIG_FILE, CorruptCheckpointWarning
from conftest import ROOT, shared_path

# Every test here shares one compiled step: keep them on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("pretrain_tiny")

N_GENES = 256
# One setting for every single-device run below, so that they share one compiled step.
SETTINGS = dict(
    model="tiny",
    batch_size=2,
    gradient_accumulation=2,
    learning_rate=1e-2,
    warmup_steps=2,
    progress=False,
)


@pytest.fixture(scope="module")
def tcga() -> ad.AnnData:
    """The 4 real TCGA samples with all 19,062 genes (TPM)."""
    frame = pd.read_csv(shared_path("data/tcga_gbmlgg_4_samples_tpm.csv"))
    identifiers = frame.pop("identifier")
    return ad.AnnData(
        frame.to_numpy(np.float64),
        obs=pd.DataFrame(index=identifiers.astype(str).to_numpy()),
        var=pd.DataFrame(index=frame.columns.astype(str)),
    )


@pytest.fixture(scope="module")
def genes(tcga) -> list[str]:
    """A vocabulary subset: the most variable genes (log TPM), in vocabulary order."""
    variance = np.log1p(tcga.X).var(axis=0)
    keep = np.sort(np.argsort(-variance, kind="stable")[:N_GENES])
    return list(tcga.var_names[keep])


def _params(model) -> dict[str, np.ndarray]:
    return {
        ".".join(map(str, path)): np.asarray(value[...])
        for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def _assert_same_params(a, b) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


@pytest.fixture(scope="module")
def six_steps(tcga, genes):
    """The reference: 6 uninterrupted steps."""
    return tl.pretrain(tcga, genes=genes, steps=6, **SETTINGS)


# ------------------------------------------------------------------------------------ learning
def test_masked_loss_falls_below_the_marginal_baseline(tcga, genes):
    before = tcga.copy()
    model, history = tl.pretrain(tcga, genes=genes, steps=120, **{**SETTINGS, "warmup_steps": 10})
    assert list(history.columns[:4]) == ["step", "loss", "masked_accuracy", "baseline_loss"]
    assert history["step"].tolist() == list(range(1, 121))
    assert np.isfinite(history[["loss", "masked_accuracy", "baseline_loss"]].to_numpy()).all()
    start, end = history.head(10), history.tail(20)
    # A random model starts far above the marginal baseline and ends clearly below it.
    assert start["loss"].mean() > start["baseline_loss"].mean() + 0.5
    assert end["loss"].mean() < end["baseline_loss"].mean() - 0.3
    assert end["masked_accuracy"].mean() > start["masked_accuracy"].mean()
    # With 4 samples and add-one smoothing over 64 bins the baseline is about log(68 / 2).
    assert 3.0 < history["baseline_loss"].mean() < np.log(68)
    assert history["learning_rate"].iloc[0] == 0.0
    assert history["learning_rate"].max() == pytest.approx(1e-2)
    # The vocabulary is the subset, in the order given; the input is untouched.
    assert model.genes == tuple(genes) and model.config.n_genes == N_GENES
    assert model.mask_embedding is not None
    np.testing.assert_array_equal(tcga.X, before.X)
    assert tcga.var_names.equals(before.var_names) and tcga.obs.equals(before.obs)
    # The trained model reconstructs masked genes better than the marginal baseline on its own.
    tokens, _ = all_tokens(tcga, model)
    tokens = np.minimum(tokens, model.config.n_expressions_bins - 1)
    mask = np.asarray(sample_mask(jax.random.key(123), tokens.shape, 0.15))
    logits = model(jnp.asarray(tokens), mask=jnp.asarray(mask))["logits"]
    log_baseline = marginal_log_probs(tokens, model.config.n_expressions_bins)
    sums = masked_sums(logits, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(log_baseline))
    assert float(sums["loss"]) < float(sums["baseline"])


def test_the_trained_model_saves_loads_and_embeds(six_steps, tmp_path, tcga):
    model, _ = six_steps
    model.save(tmp_path / "pretrained")
    loaded = load_model(tmp_path / "pretrained")
    _assert_same_params(model, loaded)
    assert loaded.mask_embedding is not None and loaded.genes == model.genes
    assert not loaded.has_ia3  # a mask embedding alone does not switch IA3 on
    tokens, alignment = all_tokens(tcga, loaded)
    assert alignment.n_matched == N_GENES
    embedding = np.asarray(loaded.mean_embedding(jnp.asarray(tokens)))
    assert embedding.shape == (4, loaded.config.embed_dim) and np.isfinite(embedding).all()
    np.testing.assert_array_equal(embedding, np.asarray(model.mean_embedding(jnp.asarray(tokens))))


# ------------------------------------------------------------------------------------ resume
def test_six_steps_equal_three_then_resume_three(tcga, genes, six_steps, tmp_path):
    reference, reference_history = six_steps
    folder = tmp_path / "run"
    _, first_history = tl.pretrain(
        tcga, genes=genes, steps=6, stop_after=3, checkpoint_dir=folder, **SETTINGS
    )
    assert first_history["step"].tolist() == [1, 2, 3]
    assert first_history.attrs["resumed_from"] is None
    assert not (folder / "model").exists()  # not finished yet
    model, history = tl.pretrain(tcga, genes=genes, steps=6, checkpoint_dir=folder, **SETTINGS)
    assert history.attrs["resumed_from"] == 3
    _assert_same_params(model, reference)
    pd.testing.assert_frame_equal(history, reference_history)
    # The finished model is in <checkpoint_dir>/model and loads back identically.
    assert model.source == str(folder / "model")
    _assert_same_params(load_model(folder / "model"), reference)
    # A finished run called again returns the same model without training.
    again, again_history = tl.pretrain(
        tcga, genes=genes, steps=6, checkpoint_dir=folder, **SETTINGS
    )
    assert again_history.attrs["resumed_from"] == 6
    _assert_same_params(again, reference)
    pd.testing.assert_frame_equal(again_history, reference_history)


@pytest.mark.parametrize(
    ("error", "last_checkpoint"),
    [(RuntimeError, 4), (KeyboardInterrupt, 5)],
    ids=["crash", "keyboard-interrupt"],
)
def test_an_interrupted_run_loses_at_most_the_steps_since_the_last_checkpoint(
    tcga, genes, six_steps, tmp_path, error, last_checkpoint
):
    reference, reference_history = six_steps
    folder = tmp_path / "run"

    def stop_at_step_5(row):
        if row["step"] == 5:
            raise error("stopped")

    with pytest.raises(error):
        tl.pretrain(
            tcga,
            genes=genes,
            steps=6,
            checkpoint_dir=folder,
            checkpoint_every=2,
            callback=stop_at_step_5,
            **SETTINGS,
        )
    steps = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    assert steps[-1] == last_checkpoint  # 4 = the last periodic one; 5 saved on Ctrl-C
    model, history = tl.pretrain(tcga, genes=genes, steps=6, checkpoint_dir=folder, **SETTINGS)
    assert history.attrs["resumed_from"] == last_checkpoint
    _assert_same_params(model, reference)
    pd.testing.assert_frame_equal(history, reference_history)


def _step_folders(folder) -> list[str]:
    return sorted((p.name for p in folder.iterdir() if p.is_dir()), key=lambda n: (len(n), n))


# Orbax's failed read of the damaged step leaves an asyncio callback behind (its own noise).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    tcga, genes, six_steps, tmp_path
):
    reference, reference_history = six_steps
    folder = tmp_path / "run"
    run = dict(genes=genes, steps=6, checkpoint_dir=folder, checkpoint_every=2, **SETTINGS)
    tl.pretrain(tcga, stop_after=4, **run)
    assert _step_folders(folder) == ["2", "4"]
    # Damage the arrays of step 4 (as a full disk or a bad copy would): TensorStore cannot read them.
    damaged = [
        p for p in (folder / "4" / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    assert damaged
    for path in damaged:
        path.write_bytes(b"\0" * 10)
    with pytest.warns(CorruptCheckpointWarning, match="Resuming from step 2") as caught:
        model, history = tl.pretrain(tcga, **run)
    message = str(caught[0].message)
    assert f"{folder.resolve() / '4'} cannot be read: ValueError" in message
    assert "set aside as 4.corrupt" in message
    assert history.attrs["resumed_from"] == 2
    _assert_same_params(model, reference)
    pd.testing.assert_frame_equal(history, reference_history)
    # The damaged step is kept aside for inspection; steps 4 and 6 were saved again.
    assert _step_folders(folder) == ["4", "6", "model", "4.corrupt"]


def test_a_checkpoint_with_a_missing_item_is_named(tcga, genes, tmp_path):
    folder = tmp_path / "run"
    run = dict(genes=genes, steps=6, checkpoint_dir=folder, checkpoint_every=2, **SETTINGS)
    tl.pretrain(tcga, stop_after=4, **run)
    shutil.rmtree(folder / "4" / "meta")
    with pytest.warns(CorruptCheckpointWarning) as caught:
        _, history = tl.pretrain(tcga, stop_after=1, **run)
    assert "the item 'meta' (the metrics history) is missing" in str(caught[0].message)
    assert history.attrs["resumed_from"] == 2 and history["step"].tolist() == [1, 2, 3]
    # With no readable checkpoint left, the error says why for each and how to start over.
    shutil.rmtree(folder / "3" / "state")
    shutil.rmtree(folder / "2")
    with pytest.raises(PretrainCheckpointError) as info:
        tl.pretrain(tcga, **run)
    assert f"No checkpoint in {folder.resolve()} can be read" in str(info.value)
    assert "the item 'state' (the training state) is missing" in str(info.value)
    assert "delete the numbered step folders" in str(info.value)


def test_what_a_killed_run_leaves_is_cleaned_up_on_resume(tcga, genes, tmp_path):
    """A run killed during a save leaves orbax's ``<step>.orbax-checkpoint-tmp`` folder; killed
    between a save's commit and the deletion of the oldest step, it leaves three committed steps.
    Orbax removes neither until a later save happens to, so a finished run kept them for good."""
    folder = tmp_path / "run"
    run = dict(genes=genes, steps=6, checkpoint_dir=folder, checkpoint_every=2, **SETTINGS)
    tl.pretrain(tcga, stop_after=2, **run)
    shutil.copytree(folder / "2", tmp_path / "step_2")
    tl.pretrain(tcga, **run)
    # What the kill would have left: step 2 not yet deleted, an unfinished save.
    shutil.copytree(tmp_path / "step_2", folder / "2")
    shutil.copytree(tmp_path / "step_2", folder / "8.orbax-checkpoint-tmp")
    assert _step_folders(folder) == ["2", "4", "6", "model", "8.orbax-checkpoint-tmp"]
    _, history = tl.pretrain(tcga, **run)
    assert history.attrs["resumed_from"] == 6
    assert _step_folders(folder) == ["4", "6", "model"]


def test_backed_data_train_like_data_in_memory(tcga, genes, six_steps, tmp_path, capsys):
    _, reference_history = six_steps
    tcga.write_h5ad(tmp_path / "tcga.h5ad")
    backed = ad.read_h5ad(tmp_path / "tcga.h5ad", backed="r")
    _, history = tl.pretrain(
        backed, genes=genes, steps=6, stop_after=2, **{**SETTINGS, "progress": True}
    )
    pd.testing.assert_frame_equal(history, reference_history.head(2))
    assert "pretrain" in capsys.readouterr().err  # the progress bar
    backed.file.close()


def test_continue_from_a_saved_model_on_mudata(six_steps, tmp_path, tcga):
    model, _ = six_steps
    model.save(tmp_path / "start")
    before = _params(model)
    mdata = md.MuData({"rna": tcga.copy()})
    continued, history = tl.pretrain(
        mdata, steps=2, **{**SETTINGS, "model": tmp_path / "start", "warmup_steps": 0}
    )
    assert continued.genes == model.genes and len(history) == 2
    changed = _params(continued)
    assert max(np.abs(changed[k] - before[k]).max() for k in before) > 1e-4
    # The model passed in is copied, never trained in place.
    given = load_model(tmp_path / "start")
    tl.pretrain(tcga, steps=1, **{**SETTINGS, "model": given, "warmup_steps": 0})
    _assert_same_params(given, model)
    assert given.source == str(tmp_path / "start")


# ------------------------------------------------------------------------------------ devices
_TWO_DEVICES = textwrap.dedent(
    """
    import json, sys
    import numpy as np, anndata as ad, jax
    from flax import nnx
    import bulkrnabert_sv.tl as tl

    assert len(jax.devices()) == 2, jax.devices()
    data = np.load(sys.argv[1])
    adata = ad.AnnData(data["X"])
    adata.var_names = data["var_names"]
    settings = json.loads(sys.argv[4])
    model, history = tl.pretrain(adata, genes=list(data["genes"]), **settings)
    np.savez(sys.argv[2], **{
        ".".join(map(str, path)): np.asarray(value[...])
        for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))
    })
    try:
        tl.pretrain(adata, genes=list(data["genes"]), **{**settings, "batch_size": 3})
        error = None
    except ValueError as exception:
        error = str(exception)
    history.to_json(sys.argv[3])
    with open(sys.argv[3] + ".json", "w") as handle:
        json.dump({"n_devices": history.attrs["n_devices"], "error": error}, handle)
    """
)


def test_two_simulated_devices_match_one(tcga, genes, tmp_path):
    """The same steps with the batch split over 2 simulated CPU devices, in a subprocess.

    Step 1 has learning rate 0 (warm-up), step 2 is a real update.
    """
    settings = {**SETTINGS, "steps": 6, "stop_after": 2}
    reference, reference_history = tl.pretrain(tcga, genes=genes, **settings)
    np.savez(
        tmp_path / "data.npz",
        X=tcga.X,
        var_names=np.asarray(tcga.var_names, dtype=str),
        genes=np.asarray(genes, dtype=str),
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    out, history_file = tmp_path / "params.npz", tmp_path / "history.json"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _TWO_DEVICES,
            tmp_path / "data.npz",
            out,
            history_file,
            json.dumps(settings),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "history.json.json").read_text())
    assert summary["n_devices"] == 2 and reference_history.attrs["n_devices"] == 1
    assert "batch_size=3" in summary["error"] and "multiple of 2" in summary["error"]
    history = pd.read_json(history_file)
    np.testing.assert_allclose(
        history[["loss", "masked_accuracy", "baseline_loss"]].to_numpy(),
        reference_history[["loss", "masked_accuracy", "baseline_loss"]].to_numpy(),
        rtol=0,
        atol=1e-6,
    )
    expected = _params(reference)
    initial = _params(tl._pretrain._initial_model("tiny", tcga, genes=genes, gene_key=None, seed=0))
    with np.load(out) as params:
        assert sorted(params.files) == sorted(expected)
        for name in expected:
            np.testing.assert_allclose(
                params[name], expected[name], rtol=0, atol=1e-6, err_msg=name
            )
    # The comparison is not vacuous: the update moved the parameters far beyond the tolerance.
    assert len(history) == 2 and history["learning_rate"].iloc[1] > 0
    assert max(np.abs(expected[k] - initial[k]).max() for k in expected) > 1e-3


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_mask_rate_outside_zero_one_is_refused(tcga, genes, rate):
    with pytest.raises(ValueError, match="mask_rate must be strictly between 0 and 1"):
        tl.pretrain(tcga, genes=genes, steps=2, mask_rate=rate, **SETTINGS)


def test_bad_settings_are_refused(tcga, genes):
    with pytest.raises(ValueError, match=r"batch_size=5 is larger than the data \(4 samples\)"):
        tl.pretrain(tcga, genes=genes, steps=3, **{**SETTINGS, "batch_size": 5})
    with pytest.raises(ValueError, match="warmup_steps=2 must be smaller than steps=2"):
        tl.pretrain(tcga, genes=genes, steps=2, **SETTINGS)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        tl.pretrain(tcga, genes=genes, steps=0, **SETTINGS)


def test_bad_model_arguments_are_refused(tcga, genes, six_steps):
    model, _ = six_steps
    with pytest.raises(ValueError, match="a model to continue from keeps its own"):
        tl.pretrain(tcga, genes=genes, steps=3, **{**SETTINGS, "model": model})
    with pytest.raises(TypeError, match="model must be None, a preset name"):
        tl.pretrain(tcga, steps=3, **{**SETTINGS, "model": 3})
    symbols = tcga[:, :3].copy()
    symbols.var_names = ["TP53", "EGFR", "ENSG00000141510"]
    with pytest.raises(ValueError, match=r"2 of the input's gene ids are not Ensembl ids"):
        tl.pretrain(symbols, steps=3, **SETTINGS)


def test_an_unknown_preset_name_lists_the_presets(tcga, genes):
    from bulkrnabert_sv.model import PRESETS

    with pytest.raises(ValueError) as info:
        tl.pretrain(tcga, steps=3, **{**SETTINGS, "model": "huge"})
    assert "tiny" in PRESETS and "tcga" in PRESETS
    assert f"model='huge' is not a preset name (one of {sorted(PRESETS)})" in str(info.value)


def test_checkpoint_dir_that_is_a_file_is_refused(tcga, genes, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for path, where in [
        (notes, "is a file"),
        (notes / "run", f"is inside {notes}, which is a file"),
    ]:
        with pytest.raises(PretrainCheckpointError) as info:
            tl.pretrain(tcga, genes=genes, steps=3, checkpoint_dir=path, **SETTINGS)
        assert f"checkpoint_dir {str(path)!r} {where}, not a folder" in str(info.value)
    assert notes.read_text() == "mine"


def test_checkpoint_folder_of_another_configuration_is_refused(tcga, genes, tmp_path):
    folder = tmp_path / "run"
    tl.pretrain(tcga, genes=genes, steps=6, stop_after=1, checkpoint_dir=folder, **SETTINGS)
    saved = json.loads((folder / CONFIG_FILE).read_text())
    assert saved["training"]["mask_rate"] == 0.15 and saved["genes"]["n"] == N_GENES
    with pytest.raises(PretrainCheckpointError) as info:
        tl.pretrain(tcga, genes=genes, steps=6, mask_rate=0.3, checkpoint_dir=folder, **SETTINGS)
    assert "training.mask_rate: 0.15 in the folder, 0.3 now" in str(info.value)
    with pytest.raises(PretrainCheckpointError, match=r"genes\.n: 256 in the folder, 128 now"):
        tl.pretrain(tcga, genes=genes[:128], steps=6, checkpoint_dir=folder, **SETTINGS)
    with pytest.raises(PretrainCheckpointError, match=r"data\.tokens_sha256"):
        tl.pretrain(tcga[::-1].copy(), genes=genes, steps=6, checkpoint_dir=folder, **SETTINGS)
    with pytest.raises(PretrainCheckpointError, match="resume=False"):
        tl.pretrain(tcga, genes=genes, steps=6, resume=False, checkpoint_dir=folder, **SETTINGS)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PretrainCheckpointError, match="not a pretraining checkpoint folder"):
        tl.pretrain(tcga, genes=genes, steps=6, checkpoint_dir=other, **SETTINGS)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------------------------------ helpers
def test_marginal_log_probs_and_masked_sums_against_numpy():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5, size=(6, 7))
    tokens[0, 0] = 5  # above the top bin: counted in the last one
    log_p = marginal_log_probs(tokens, n_bins=5)
    clipped = np.minimum(tokens, 4)
    for g in range(7):
        counts = np.array([(clipped[:, g] == b).sum() for b in range(5)])
        np.testing.assert_allclose(np.exp(log_p[g]), (counts + 1) / (6 + 5), rtol=1e-6)
    logits = rng.normal(size=(6, 7, 5)).astype(np.float32)
    mask = rng.random((6, 7)) < 0.4
    sums = masked_sums(jnp.asarray(logits), jnp.asarray(clipped), jnp.asarray(mask), log_p)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_softmax, clipped[..., None], -1)[..., 0]
    assert float(sums["count"]) == mask.sum()
    assert float(sums["loss"]) == pytest.approx(nll[mask].sum(), rel=1e-5)
    assert float(sums["correct"]) == (logits.argmax(-1) == clipped)[mask].sum()
    baseline = -log_p[np.arange(7)[None, :], clipped]
    assert float(sums["baseline"]) == pytest.approx(baseline[mask].sum(), rel=1e-5)


def test_sample_mask_rate_and_determinism():
    mask = np.asarray(sample_mask(jax.random.key(0), (64, 1000), 0.15))
    assert mask.dtype == bool and abs(mask.mean() - 0.15) < 0.01
    np.testing.assert_array_equal(
        mask, np.asarray(sample_mask(jax.random.key(0), (64, 1000), 0.15))
    )
    assert (mask != np.asarray(sample_mask(jax.random.key(1), (64, 1000), 0.15))).any()


def test_batches_cover_each_epoch_and_depend_only_on_seed_and_index():
    from bulkrnabert_sv.tl._pretrain import _BatchSampler

    sampler = _BatchSampler(n_obs=10, batch_size=3, seed=7)
    epoch = np.concatenate([sampler(j) for j in range(3)])
    assert len(set(epoch.tolist())) == 9  # 3 full batches, the 10th sample waits
    fresh = _BatchSampler(n_obs=10, batch_size=3, seed=7)
    np.testing.assert_array_equal(fresh(4), sampler(4))  # resuming mid-run: same batch
    np.testing.assert_array_equal(fresh(1), epoch[3:6])
    assert not np.array_equal(_BatchSampler(10, 3, seed=8)(0), sampler(0))
