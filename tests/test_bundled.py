"""What ships with the package and works offline: vocabulary, gene lengths, TCGA tumours, the
compact model; each checked against the shared source files it was derived from."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import bulkrnabert_sv as brb
from bulkrnabert_sv.model import random_model
from bulkrnabert_sv.model.vocabulary import compact_model_folder, published_genes
from conftest import SHARED, load_tool, shared_path


def test_the_published_vocabulary_ships(vocabulary):
    assert published_genes() == tuple(vocabulary)
    assert random_model("tcga", num_layers=1).genes == tuple(vocabulary)
    assert random_model("tiny").genes == tuple(vocabulary[:128])
    assert random_model("tiny", genes=None).genes is None
    with pytest.raises(ValueError, match="'published' or None"):
        random_model("tiny", genes="all")


def test_gene_lengths_are_the_grch38_annotation(vocabulary):
    lengths = brb.datasets.gene_lengths()
    assert lengths.index.is_unique and set(lengths.index) <= set(vocabulary)
    table = pd.read_csv(shared_path("data/annotation/grch38_genes.tsv.gz"), sep="\t")
    table = table.drop_duplicates("id").set_index("id")["eff_length"]
    expected = table.reindex(vocabulary).dropna().round().astype(np.int64)
    assert len(lengths) == len(expected) == 18_969
    pd.testing.assert_series_equal(lengths, expected, check_names=False)


def test_tcga_demo_holds_real_heldout_tumours(vocabulary):
    adata = brb.datasets.tcga_demo()
    assert adata.shape == (48, 19_062) and list(adata.var_names) == vocabulary
    counts = adata.obs["cohort"].value_counts().to_dict()
    assert counts == {"ACC": 12, "DLBC": 12, "UVM": 12, "GBM": 6, "LGG": 6}
    assert adata.obs_names.is_unique and adata.obs_names.str.startswith("TCGA-").all()
    assert set(adata.obs["os_event"].unique()) <= {0.0, 1.0}
    assert (adata.obs["os_time"].dropna() >= 0).all()
    # TPM from RSEM normalized counts sum to 1e6 over the genes with a length.
    rsem = adata.obs["source"].str.startswith("RTCGA").to_numpy()
    np.testing.assert_allclose(np.asarray(adata.X[rsem]).sum(axis=1), 1e6, rtol=1e-4)
    assert set(adata.obs["n_genes_matched"]) == {17_494, 17_310}
    assert "TCGA open access" in adata.uns["tcga_demo"]["data licence"]
    # never trained on: none of them is in the compact model's training split
    card = json.loads((compact_model_folder() / "card.json").read_text())
    assert card["data"]["heldout"] == counts


def test_tcga_demo_is_rebuilt_exactly_from_the_shared_files(vocabulary):
    """The recipe (tools/build_bundled_data.py) applied to ../shared gives the shipped values."""
    build = load_tool("build_bundled_data")
    lengths = brb.datasets.gene_lengths()
    shared = SHARED
    shared_path("data/tcga_rnaseqv2/tcga_acc_dlbc_uvm_rsem_normalized.tsv.gz")
    shipped = brb.datasets.tcga_demo()
    rebuilt = build.rnaseqv2_normalized(shared, list(vocabulary), lengths)
    by_gene = build.rnaseqv2_tpm_by_gene(shared, list(vocabulary))
    for part in (rebuilt, by_gene):
        common = shipped.obs_names.intersection(part.obs_names)
        assert len(common) >= 12
        np.testing.assert_allclose(
            np.asarray(shipped[common].X), np.asarray(part[common].X, dtype=np.float32), rtol=1e-6
        )
        pd.testing.assert_series_equal(
            shipped.obs.loc[common, "os_event"],
            part.obs.loc[common, "os_event"].astype(float),
            check_names=False,
        )


def test_compact_model_loads_offline_and_beats_the_marginal_baseline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = brb.load_model("compact")
    assert model.source == "compact"
    assert model.config.n_genes == len(model.genes) == 2_048
    assert set(model.genes) <= set(published_genes())
    card = json.loads((compact_model_folder() / "card.json").read_text())
    assert card["architecture"] == model.config.architecture()
    assert "BSD-3-Clause" in card["licence"]
    # The held-out masked loss, recomputed here, is the card's and below the marginal baseline.
    train = load_tool("train_compact_model")
    from bulkrnabert_sv.pp._tokens import token_batches
    from bulkrnabert_sv.training.masking import marginal_log_probs

    demo = brb.datasets.tcga_demo()
    tokens = np.concatenate([b for _, _, b in token_batches(demo, model, batch_size=48)])
    heldout = card["evaluation"]["heldout"]
    baseline = marginal_log_probs(tokens, model.config.n_expressions_bins)  # in-sample: stronger
    recomputed = train.heldout_masked_loss(model, tokens, baseline)
    assert recomputed["masked_loss"] == pytest.approx(heldout["masked_loss"], rel=1e-4)
    assert heldout["masked_loss"] < heldout["marginal_baseline_loss"]
    assert recomputed["masked_loss"] < recomputed["marginal_baseline_loss"]


def test_a_local_folder_named_compact_is_reached_by_its_path(tmp_path, monkeypatch):
    random_model("tiny", seed=3).save(tmp_path / "compact")
    monkeypatch.chdir(tmp_path)
    assert brb.load_model("compact").config.n_genes == 2_048  # the bundled model
    assert brb.load_model("./compact").config.n_genes == 128
