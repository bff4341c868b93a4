"""``embedding_layer`` renamed ``embedding_block``: the old keyword warns, old records still read.

``layer`` means an AnnData layer in this package; the transformer block whose mean embedding a
tool uses is ``embedding_block``. Each function that took ``embedding_layer=`` still accepts it
with a :class:`DeprecationWarning` at the caller's line, and records written under the old key
(``uns[...]["params"]``, ``finetuned.json``) are still read.
"""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import bulkrnabert_sv as bs
from bulkrnabert_sv._keys import BLOCK_KEY, OLD_BLOCK_KEY, recorded_block
from bulkrnabert_sv._validation import renamed_keywords
from bulkrnabert_sv.cli import main
from bulkrnabert_sv.datasets import simulate_cohort
from bulkrnabert_sv.model import random_model

GENES = [f"ENSG{i:011d}" for i in range(1, 121)]
PROBE = dict(method="probe", l2=1.0, inner_folds=0, progress=False)
DEPRECATED = r"embedding_layer=\.\.\.\) is deprecated; pass embedding_block="


@pytest.fixture(scope="module")
def encoder():
    model = random_model("tiny", genes=GENES, embed_dim=16, seed=1)
    model.source = "local/model"  # stored embeddings are only reused for a known source
    return model


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(40, GENES, n_types=2, seed=0)


@pytest.fixture(scope="module")
def tuned(encoder, cohort):
    return bs.tl.finetune(cohort.copy(), "cancer_type", model=encoder, embedding_block=1, **PROBE)


def _deprecated(function, *args, **kwargs):
    """``function(...)``, checking it warns once about the old keyword, at this file's line."""
    with pytest.warns(DeprecationWarning, match=DEPRECATED) as caught:
        result = function(*args, **kwargs)
    warned = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(warned) == 1 and warned[0].filename == __file__, [
        (w.filename, str(w.message)) for w in warned
    ]
    return result


def test_renamed_keywords_passes_the_value_on_and_refuses_both():
    @renamed_keywords("f", old="new")
    def f(*, new: int = 0) -> int:
        return new

    with pytest.warns(DeprecationWarning, match=r"f\(old=\.\.\.\) is deprecated; pass new="):
        assert f(old=3) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(new=4) == 4 and f() == 0
    with pytest.raises(TypeError, match="both new= and its deprecated name old="):
        f(old=1, new=2)


def test_recorded_block_reads_either_key():
    assert recorded_block({BLOCK_KEY: 2}) == 2
    assert recorded_block({OLD_BLOCK_KEY: 1}) == 1
    assert recorded_block({BLOCK_KEY: 2, OLD_BLOCK_KEY: 1}) == 2
    assert recorded_block({}, -1) == -1


def test_embed_old_keyword(encoder, cohort):
    new = bs.tl.embed(cohort, encoder, embedding_block=1, copy=True, progress=False)
    old = _deprecated(bs.tl.embed, cohort, encoder, embedding_layer=1, copy=True, progress=False)
    np.testing.assert_array_equal(old.obsm["X_bulkrnabert"], new.obsm["X_bulkrnabert"])
    params = old.uns["bulkrnabert"]["params"]
    assert params[BLOCK_KEY] == 1 and OLD_BLOCK_KEY not in params
    with pytest.raises(TypeError, match="both embedding_block= and"):
        bs.tl.embed(cohort, encoder, embedding_block=1, embedding_layer=1, copy=True)


def test_finetune_old_keyword_and_attribute(encoder, cohort, tuned):
    old = _deprecated(
        bs.tl.finetune, cohort.copy(), "cancer_type", model=encoder, embedding_layer=1, **PROBE
    )
    assert old.embedding_block == tuned.embedding_block == 1
    assert old.params[BLOCK_KEY] == 1 and OLD_BLOCK_KEY not in old.params
    np.testing.assert_array_equal(old.predict(cohort).to_numpy(), tuned.predict(cohort).to_numpy())
    assert "embedding_block=1" in repr(tuned)
    with pytest.warns(DeprecationWarning, match="embedding_layer is deprecated") as caught:
        assert tuned.embedding_layer == 1
    assert caught[0].filename == __file__


def test_finetuned_model_old_keyword(tuned):
    model = _deprecated(
        bs.tl.FinetunedModel,
        tuned.encoder,
        tuned.head,
        task=tuned.task,
        method=tuned.method,
        classes=tuned.classes,
        obs_key=tuned.obs_key,
        event_key=None,
        embedding_layer=1,
    )
    assert model.embedding_block == 1


def test_cross_validate_old_keyword(encoder, cohort):
    kw = dict(model=encoder, n_splits=2, n_repeats=1, baselines=False, l2=1.0, progress=False)
    new = bs.tl.cross_validate(cohort.copy(), "cancer_type", embedding_block=1, **kw)
    old = _deprecated(bs.tl.cross_validate, cohort.copy(), "cancer_type", embedding_layer=1, **kw)
    assert old.params[BLOCK_KEY] == new.params[BLOCK_KEY] == 1
    pd.testing.assert_frame_equal(old.folds, new.folds)


def test_perturb_old_keyword(encoder, cohort):
    data = cohort[:4].copy()
    new = bs.tl.perturb(data, encoder, [GENES[0]], embedding_block=1, copy=True, progress=False)
    old = _deprecated(
        bs.tl.perturb, data, encoder, [GENES[0]], embedding_layer=1, copy=True, progress=False
    )
    params = old.uns["bulkrnabert_perturb"]["params"]
    assert params[BLOCK_KEY] == 1 and OLD_BLOCK_KEY not in params
    np.testing.assert_array_equal(old.obsm["bulkrnabert_perturb"], new.obsm["bulkrnabert_perturb"])


def test_finetune_reuses_embeddings_recorded_under_the_old_key(encoder, cohort):
    data = cohort.copy()
    bs.tl.embed(data, encoder, embedding_block=1, progress=False)
    params = data.uns["bulkrnabert"]["params"]
    params[OLD_BLOCK_KEY] = params.pop(BLOCK_KEY)  # as written before the rename
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reused = bs.tl.finetune(data, "cancer_type", model=encoder, embedding_block=1, **PROBE)
    assert reused.params["reused_embeddings"] is True
    params[OLD_BLOCK_KEY] = 2  # another block: not reused
    other = bs.tl.finetune(
        data, "cancer_type", model=encoder, embedding_block=1, key_added="other", **PROBE
    )
    assert other.params["reused_embeddings"] is False


def test_finetuned_folder_written_before_the_rename_loads(tuned, cohort, tmp_path):
    folder = tuned.save(tmp_path / "tuned")
    meta_path = folder / "finetuned.json"
    meta = json.loads(meta_path.read_text())
    assert meta[BLOCK_KEY] == 1 and OLD_BLOCK_KEY not in meta and meta["format_version"] == 3
    meta[OLD_BLOCK_KEY] = meta.pop(BLOCK_KEY)
    meta["format_version"] = 1
    meta_path.write_text(json.dumps(meta))
    loaded = bs.load_finetuned(folder)
    assert loaded.embedding_block == 1
    np.testing.assert_array_equal(
        loaded.predict(cohort).to_numpy(), tuned.predict(cohort).to_numpy()
    )
    meta[OLD_BLOCK_KEY] = 9
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(bs.model.CheckpointError, match="'embedding_layer' is 9"):
        bs.load_finetuned(folder)


def test_cli_old_option(encoder, cohort, tmp_path, capsys):
    encoder.save(tmp_path / "model")
    data = cohort[:3].copy()
    data.write_h5ad(tmp_path / "in.h5ad")
    base = ["embed", str(tmp_path / "in.h5ad"), "--no-progress", "--model", str(tmp_path / "model")]
    assert main([*base, "-o", str(tmp_path / "new.h5ad"), "--embedding-block", "1"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "old.h5ad"), "--embedding-layer", "1"]) == 0
    assert "--embedding-layer is deprecated; pass --embedding-block" in capsys.readouterr().err
    new, old = (ad.read_h5ad(tmp_path / f"{n}.h5ad") for n in ("new", "old"))
    np.testing.assert_array_equal(old.obsm["X_bulkrnabert"], new.obsm["X_bulkrnabert"])
    assert old.uns["bulkrnabert"]["params"][BLOCK_KEY] == 1
    both = [*base, "-o", str(tmp_path / "both.h5ad"), "--embedding-block", "1"]
    assert main([*both, "--embedding-layer", "1"]) == 2
