"""tl.gene_attention, tl.attribute, tl.perturb and their plots (issue 19).

The planted cohort: 64 genes, 3 classes, 3 marker genes per class that are expressed only in
their class (TPM 0 elsewhere, as melanocyte genes outside melanomas), at a different level per
class (about 30, 300 and 3000 TPM); the other genes share one profile with 5% noise. Markers
sit at different expression bins per class because a random encoder sees bins through one
shared expression embedding: with the same bins in every class, classes would differ only by
which genes hold them, which a random (untrained) network barely encodes. A tiny random-weight
encoder and a probe head trained by tl.finetune make the classifier to explain.
"""

from __future__ import annotations

import warnings

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import bulkrnabert_sv as bs
from bulkrnabert_sv.model import random_model
from bulkrnabert_sv.model.attention import attention_received, attention_weights
from bulkrnabert_sv.model.modeling import (
    attention_received_by_layer,
    encode_embeddings,
    input_embeddings,
)

N_GENES, N_CLASSES, PER_CLASS = 64, 3, 3
GENES = [f"ENSG{i:011d}" for i in range(1, N_GENES + 1)]
LEVELS = (30.0, 300.0, 3000.0)


def planted_cohort(n_obs: int = 120, *, noise: float = 0.05, seed: int = 0):
    """TPM with 3 classes; class c expresses its markers (genes 3c..3c+2) and no other class."""
    rng = np.random.default_rng(seed)
    profile = np.random.default_rng(1234).lognormal(0.0, 1.0, N_GENES)
    profile *= 1e6 / profile.sum()
    labels = np.arange(n_obs) % N_CLASSES
    tpm = profile * rng.lognormal(0.0, noise, (n_obs, N_GENES))
    markers = np.arange(N_CLASSES * PER_CLASS).reshape(N_CLASSES, PER_CLASS)
    tpm[:, markers.ravel()] = 0.0
    for c in range(N_CLASSES):
        rows = labels == c
        tpm[np.ix_(rows, markers[c])] = LEVELS[c] * rng.lognormal(
            0.0, noise, (rows.sum(), PER_CLASS)
        )
    tpm *= 1e6 / tpm.sum(axis=1, keepdims=True)
    obs = pd.DataFrame(
        {"group": pd.Categorical([f"class_{c}" for c in labels])},
        index=pd.Index([f"s{i}" for i in range(n_obs)]),
    )
    var = pd.DataFrame({"symbol": [f"G{i}" for i in range(N_GENES)]}, index=pd.Index(GENES))
    adata = ad.AnnData(tpm.astype(np.float32), obs=obs, var=var)
    programs = {f"class_{c}": [GENES[i] for i in markers[c]] for c in range(N_CLASSES)}
    return adata, programs


@pytest.fixture(scope="module")
def encoder():
    return random_model("tiny", genes=GENES, embed_dim=32, seed=0)


@pytest.fixture(scope="module")
def cohort():
    return planted_cohort()


@pytest.fixture(scope="module")
def tuned(encoder, cohort):
    adata, _ = cohort
    return bs.tl.finetune(adata.copy(), "group", model=encoder, progress=False)


@pytest.fixture(scope="module")
def explained(tuned, cohort):
    """Half of the cohort (every other sample) with integrated gradients of every class."""
    adata, _ = cohort
    sub = adata[::2].copy()
    bs.tl.attribute(sub, tuned, n_steps=16, batch_size=30, groupby="group", progress=False)
    return sub


def _auroc(names, planted, scores) -> float:
    return roc_auc_score(np.isin(np.asarray(names), planted), np.asarray(scores, dtype=float))


# ------------------------------------------------------------------------ attention received
def test_attention_received_equals_column_means_of_materialised_weights():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 203, 3, 8)), jnp.float32) * 2.0
    k = jnp.asarray(rng.standard_normal((2, 203, 3, 8)), jnp.float32) * 2.0
    reference = np.asarray(attention_weights(q, k)).mean(axis=2)  # (B, H, Lk)
    for block_q, block_k in [(64, 48), (203, 203), (17, 300)]:
        got = np.asarray(attention_received(q, k, block_q=block_q, block_k=block_k))
        assert got.shape == (2, 3, 203)
        np.testing.assert_allclose(got, reference, rtol=2e-5, atol=1e-8)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-5)
    # a different scale is honoured
    scaled = np.asarray(attention_received(q, k, scale=0.1, block_q=64, block_k=64))
    np.testing.assert_allclose(
        scaled, np.asarray(attention_weights(q, k, scale=0.1)).mean(axis=2), rtol=2e-5
    )


def test_streamed_summary_equals_materialised_maps_of_the_model():
    model = random_model("tiny", genes=None, n_genes=300, seed=3).enable_ia3()
    # non-trivial IA3 vectors: the keys' rescaling must be in the summary
    for block in model.layers:
        width = block.attention.ia3_key[...].shape[0]
        block.attention.ia3_key[...] = jnp.linspace(0.5, 1.5, width)
    tokens = np.random.default_rng(1).integers(0, 64, (3, 300)).astype(np.int32)
    maps = model(tokens, attention_layers=(1, 2), compute_logits=False)
    reference = np.stack(
        [np.asarray(maps[f"attention_map_layer_{k}"]).mean(axis=2) for k in (1, 2)], axis=1
    )
    for blocks in [(64, 48), (None, None)]:
        got = np.asarray(
            attention_received_by_layer(model, tokens, (1, 2), block_q=blocks[0], block_k=blocks[1])
        )
        assert got.shape == (3, 2, model.config.num_attention_heads, 300)
        np.testing.assert_allclose(got, reference, rtol=2e-5, atol=1e-8)
    only_second = np.asarray(attention_received_by_layer(model, tokens, (2,)))
    np.testing.assert_allclose(only_second[:, 0], reference[:, 1], rtol=2e-5, atol=1e-8)
    with pytest.raises(ValueError, match="out of range"):
        attention_received_by_layer(model, tokens, (3,))


def test_gene_attention_writes_fields_aligned_to_the_input(encoder, cohort):
    adata, _ = cohort
    # input genes in another order, one gene the model lacks, one model gene missing
    permutation = np.random.default_rng(2).permutation(N_GENES)
    order, missing = permutation[:-1], GENES[permutation[-1]]
    data = adata[:6, order].copy()
    extra = ad.AnnData(
        np.full((6, 1), 5.0, np.float32),
        obs=data.obs.copy(),
        var=pd.DataFrame({"symbol": ["X"]}, index=["ENSG99999999999"]),
    )
    data = ad.concat([data, extra], axis=1, merge="first")
    data.obs = adata.obs.iloc[:6].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coverage below the usual threshold
        result = bs.tl.gene_attention(
            data, encoder, heads="keep", groupby="group", batch_size=4, progress=False, copy=True
        )
    assert "bulkrnabert_attention" not in data.layers  # copy=True leaves the input alone
    values = result.layers["bulkrnabert_attention"]
    assert values.shape == (6, N_GENES) and values.dtype == np.float32
    assert np.isnan(values[:, -1]).all()  # not a model gene
    # the reference: materialised maps of the tokens the model saw
    from bulkrnabert_sv.pp._tokens import all_tokens

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokens, _ = all_tokens(data, encoder)
    maps = encoder(tokens, attention_layers=(1, 2), compute_logits=False)
    per_layer = np.stack(
        [np.asarray(maps[f"attention_map_layer_{k}"]).mean(axis=2) for k in (1, 2)], axis=1
    )  # (n, layers, heads, n_genes) in model order
    model_pos = [GENES.index(g) for g in data.var_names[:-1]]
    expected = per_layer.mean(axis=(1, 2))[:, model_pos]
    np.testing.assert_allclose(values[:, :-1], expected, rtol=2e-5, atol=1e-9)
    # rows sum to one over the model genes; the missing model gene takes its share
    assert missing not in data.var_names
    assert np.all(np.nansum(values, axis=1) < 1.0)
    np.testing.assert_allclose(
        np.nansum(values, axis=1) + per_layer.mean(axis=(1, 2))[:, GENES.index(missing)],
        1.0,
        atol=1e-5,
    )
    by_layer = result.obsm["bulkrnabert_attention_by_layer"]
    by_head = result.obsm["bulkrnabert_attention_by_head"]
    assert by_layer.shape == (6, 2, N_GENES) and by_head.shape == (6, 2, 2, N_GENES)
    np.testing.assert_allclose(by_head[..., :-1], per_layer[..., model_pos], rtol=2e-5, atol=1e-9)
    summary = result.varm["bulkrnabert_attention"]
    assert list(summary.columns) == ["all", "class_0", "class_1", "class_2"]
    np.testing.assert_allclose(summary["all"].to_numpy()[:-1], expected.mean(axis=0), rtol=1e-5)
    in_class = (data.obs["group"] == "class_1").to_numpy()
    np.testing.assert_allclose(
        summary["class_1"].to_numpy()[:-1], expected[in_class].mean(axis=0), rtol=1e-5
    )
    record = result.uns["bulkrnabert_attention"]
    assert record["params"]["layers"] == [1, 2]
    assert record["params"]["uniform"] == pytest.approx(1 / N_GENES)
    top = record["top_genes"]["all"]
    assert top.iloc[0] == summary["all"].idxmax()
    # one block only: no per-layer field; results do not depend on the batch size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = bs.tl.gene_attention(
            data, encoder, layers=-1, batch_size=1, progress=False, copy=True
        )
    assert "bulkrnabert_attention_by_layer" not in single.obsm
    np.testing.assert_allclose(
        single.layers["bulkrnabert_attention"][:, :-1],
        per_layer[:, 1].mean(axis=1)[:, model_pos],
        rtol=2e-5,
        atol=1e-9,
    )


def test_gene_attention_refuses_bad_arguments(encoder, cohort, tuned):
    adata, _ = cohort
    data = adata[:2].copy()
    with pytest.raises(ValueError, match="heads"):
        bs.tl.gene_attention(data, encoder, heads="max", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        bs.tl.gene_attention(data, encoder, layers=[5], progress=False)
    with pytest.raises(TypeError, match=r"tuned\.encoder"):
        bs.tl.gene_attention(data, tuned, progress=False)
    with pytest.raises(KeyError, match="nope"):
        bs.tl.gene_attention(data, encoder, groupby="nope", progress=False)
    assert not data.layers  # nothing written by a refused call


# ------------------------------------------------------------------------ forward pieces
def test_encoder_from_input_embeddings_matches_the_model(encoder):
    tokens = np.random.default_rng(0).integers(0, 64, (2, N_GENES)).astype(np.int32)
    reference = np.asarray(encoder(tokens, compute_logits=False)["last_hidden_state"])
    x = input_embeddings(encoder, tokens)
    np.testing.assert_allclose(np.asarray(encode_embeddings(encoder, x)), reference, atol=1e-6)

    def total(x, remat):
        return encode_embeddings(encoder, x, remat=remat).sum()

    plain = jax.grad(lambda x: total(x, False))(x)
    rematerialised = jax.grad(lambda x: total(x, True))(x)
    np.testing.assert_allclose(np.asarray(rematerialised), np.asarray(plain), atol=1e-5)


# ------------------------------------------------------------------------ attributions
def test_integrated_gradients_are_complete(explained, tuned):
    record = explained.uns["bulkrnabert_attribution"]
    delta = explained.obs["bulkrnabert_attribution_delta"].to_numpy()
    error = explained.obs["bulkrnabert_attribution_error"].to_numpy()
    # the attributions of a sample sum to its output minus the all-zero output
    values = explained.layers["bulkrnabert_attribution"]
    np.testing.assert_allclose(values.sum(axis=1) - delta, error, atol=1e-3)
    assert np.abs(delta).min() > 0.1  # the outputs do move
    assert record["max_relative_error"] < 1e-3
    # uns holds the worst over every class's attributions, obs those of the predicted class
    assert np.abs(error).max() <= record["max_abs_error"] + 1e-7
    # output explained per sample: the predicted class; layers = that class of _by_class
    by_class = explained.obsm["bulkrnabert_attribution_by_class"]
    assert by_class.shape == (explained.n_obs, N_CLASSES, N_GENES)
    predicted = tuned.predict(explained).to_numpy().argmax(axis=1)
    target = explained.obs["bulkrnabert_attribution_target"]
    assert list(target.cat.categories) == tuned.classes
    np.testing.assert_array_equal(target.cat.codes.to_numpy(), predicted)
    np.testing.assert_array_equal(by_class[np.arange(explained.n_obs), predicted], values)


def test_quadrature_error_shrinks_with_more_steps(tuned, cohort):
    adata, _ = cohort
    sub = adata[:6].copy()
    errors = {}
    for n in (2, 16):
        key = f"ig_{n}"
        bs.tl.attribute(
            sub, tuned, n_steps=n, target="class_0", batch_size=6, key_added=key, progress=False
        )
        errors[n] = sub.uns[key]["max_abs_error"]
    assert errors[16] < 0.1 * errors[2]
    assert errors[16] < 1e-3 * np.abs(sub.obs["ig_16_delta"]).max()


def test_unexpressed_genes_get_zero_and_target_class_matches(explained, tuned, cohort):
    adata, _ = cohort
    sub = adata[::2].copy()
    values = explained.layers["bulkrnabert_attribution"]
    zero = np.asarray(sub.X) == 0  # markers of other classes: token 0, at the baseline
    assert zero.sum() == 2 * PER_CLASS * sub.n_obs
    assert (values[zero] == 0).all()
    bs.tl.attribute(sub, tuned, target="class_2", n_steps=16, batch_size=30, progress=False)
    by_class = explained.obsm["bulkrnabert_attribution_by_class"][:, 2]
    np.testing.assert_allclose(sub.layers["bulkrnabert_attribution"], by_class, atol=1e-5)
    assert (sub.obs["bulkrnabert_attribution_target"] == "class_2").all()
    assert "bulkrnabert_attribution_by_class" not in sub.obsm


def test_gradient_x_input_equals_the_directional_derivative(tuned, encoder, cohort):
    adata, _ = cohort
    sub = adata[:3].copy()
    bs.tl.attribute(
        sub, tuned, method="gradient_x_input", target="class_1", batch_size=3, progress=False
    )
    from bulkrnabert_sv.pp._tokens import all_tokens

    tokens, _ = all_tokens(sub, encoder)
    table = tuned.encoder.expression_embedding.embedding[...]
    x = input_embeddings(tuned.encoder, tokens)
    d = jnp.take(table, tokens, axis=0) - table[0]

    def logit(x):
        hidden = encode_embeddings(tuned.encoder, x, num_layers=tuned.embedding_block)
        return tuned.head(hidden.mean(axis=1))[:, 1]

    for j in (0, 4, 20, 50):
        step = jnp.zeros((1, N_GENES, 1)).at[0, j, 0].set(1e-2) * d
        numeric = (logit(x + step) - logit(x - step)) / 2e-2
        np.testing.assert_allclose(
            sub.layers["bulkrnabert_attribution"][:, j], np.asarray(numeric), rtol=2e-3, atol=2e-5
        )


def test_planted_genes_rank_first_in_attributions(explained, cohort):
    _, programs = cohort
    ranking = explained.varm["bulkrnabert_attribution"]
    aurocs = {c: _auroc(GENES, genes, ranking[c]) for c, genes in programs.items()}
    assert min(aurocs.values()) >= 0.9, aurocs
    top = explained.uns["bulkrnabert_attribution"]["top_genes"]
    for c, genes in programs.items():  # most of each class's markers in its top 5
        assert len(set(top[c].iloc[:5]) & set(genes)) >= 2, (c, list(top[c].iloc[:5]))
    contrast = explained.varm["bulkrnabert_attribution_contrast"]
    in_class = (explained.obs["group"] == "class_0").to_numpy()
    values = explained.obsm["bulkrnabert_attribution_by_class"][:, 0]
    np.testing.assert_allclose(
        contrast["class_0"], values[in_class].mean(0) - values[~in_class].mean(0), atol=1e-5
    )


def test_attribution_batch_size_does_not_change_results(tuned, cohort):
    adata, _ = cohort
    one = adata[:5].copy()
    many = adata[:5].copy()
    bs.tl.attribute(one, tuned, n_steps=4, target="class_0", batch_size=1, progress=False)
    bs.tl.attribute(many, tuned, n_steps=4, target="class_0", batch_size=4, progress=False)
    np.testing.assert_allclose(
        one.layers["bulkrnabert_attribution"],
        many.layers["bulkrnabert_attribution"],
        atol=1e-5,
    )


def test_attribution_of_a_survival_model(encoder, cohort):
    adata, _ = cohort
    data = adata.copy()
    # risk carried by class 2's markers: shorter times in class 2
    rng = np.random.default_rng(0)
    hazard = np.where(data.obs["group"] == "class_2", 4.0, 1.0)
    data.obs["time"] = np.ceil(rng.exponential(1000 / hazard))
    data.obs["event"] = (rng.random(data.n_obs) < 0.7).astype(int)
    survival = bs.tl.finetune(data, "time", event_key="event", model=encoder, progress=False)
    sub = data[::3].copy()
    bs.tl.attribute(sub, survival, n_steps=16, batch_size=40, progress=False)
    record = sub.uns["bulkrnabert_attribution"]
    assert record["params"]["target"] == "risk"
    delta = sub.obs["bulkrnabert_attribution_delta"].to_numpy()
    assert record["max_abs_error"] < 1e-3 * np.abs(delta).max()
    assert (sub.obs["bulkrnabert_attribution_target"] == "risk").all()
    assert list(sub.varm["bulkrnabert_attribution"].columns) == ["all", "low risk", "high risk"]
    risk = survival.predict(sub)["risk"].to_numpy()
    np.testing.assert_allclose(
        sub.obs["bulkrnabert_attribution_delta"].to_numpy(),
        risk - float(survival.outputs(np.asarray(_all_zero_embedding(survival)))[0, 0]),
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="risk"):
        bs.tl.attribute(sub, survival, target="class_0", progress=False)


def _all_zero_embedding(tuned):
    tokens = np.zeros((1, tuned.encoder.config.n_genes), np.int32)
    return tuned.encoder.mean_embedding(tokens, block=tuned.embedding_block)


def test_attribute_refuses_bad_arguments(tuned, encoder, cohort):
    adata, _ = cohort
    data = adata[:2].copy()
    with pytest.raises(TypeError, match="encoder alone"):
        bs.tl.attribute(data, encoder, progress=False)
    with pytest.raises(ValueError, match="not a class"):
        bs.tl.attribute(data, tuned, target="class_9", progress=False)
    with pytest.raises(ValueError, match="method"):
        bs.tl.attribute(data, tuned, method="saliency", progress=False)
    with pytest.raises(TypeError, match="n_steps"):
        bs.tl.attribute(data, tuned, n_steps=2.5, progress=False)
    data.obs["other"] = pd.Categorical(["a", "b"])
    with pytest.raises(ValueError, match="not classes"):
        bs.tl.attribute(data, tuned, groupby="other", progress=False)
    assert not data.layers


# ------------------------------------------------------------------------ perturbation
def test_deleting_planted_genes_moves_the_prediction_most(tuned, cohort):
    adata, programs = cohort
    sub = adata[::2].copy()
    bs.tl.perturb(sub, tuned, GENES, batch_size=60, progress=False)
    shifts = sub.obsm["bulkrnabert_perturb"]
    margins = sub.obsm["bulkrnabert_perturb_output"]
    assert list(shifts.columns) == GENES and shifts.index.equals(sub.obs_names)
    groups = sub.obs["group"].to_numpy()
    for c, genes in programs.items():
        # deleting a class's marker lowers that class's margin in its samples the most
        assert _auroc(GENES, genes, -margins[groups == c].mean(axis=0)) >= 0.9, c
        # markers are 0 outside their class: deleting them changes nothing there
        others = groups != c
        assert (shifts.loc[others, genes] == 0).all().all()
        assert (margins.loc[others, genes] == 0).all().all()
    summary = sub.uns["bulkrnabert_perturb"]["summary"]
    for c, genes in programs.items():
        assert (summary.loc[genes, "n_changed"] == (groups == c).sum()).all()
    assert (summary.loc[GENES[PER_CLASS * N_CLASSES :], "n_changed"] == sub.n_obs).all()
    np.testing.assert_allclose(summary["mean_shift"], shifts.mean(axis=0).to_numpy())
    assert (shifts.to_numpy() >= 0).all() and shifts.to_numpy().max() > 1e-4


def test_perturbed_embedding_equals_embedding_of_edited_data(encoder, cohort):
    adata, programs = cohort
    sub = adata[:4].copy()
    sets = {"class_0": programs["class_0"], "one": ["G10"]}
    bs.tl.perturb(sub, encoder, sets, gene_symbols="symbol", batch_size=4, progress=False)
    edited = sub.copy()
    edited.X[:, :PER_CLASS] = 0.0
    edited.X[:, 10] = 0.0  # G10
    from bulkrnabert_sv.pp._tokens import all_tokens
    from bulkrnabert_sv.tl._perturb import cosine_shift
    from bulkrnabert_sv.training.inference import embed_token_array

    original = embed_token_array(encoder, all_tokens(sub, encoder)[0])
    edited_only_set = sub.copy()
    edited_only_set.X[:, :PER_CLASS] = 0.0
    moved = embed_token_array(encoder, all_tokens(edited_only_set, encoder)[0])
    np.testing.assert_allclose(
        sub.obsm["bulkrnabert_perturb"]["class_0"], cosine_shift(original, moved), atol=1e-7
    )
    summary = sub.uns["bulkrnabert_perturb"]["summary"]
    assert summary.loc["class_0", "n_genes"] == PER_CLASS
    assert summary.loc["one", "genes"] == GENES[10]
    assert "bulkrnabert_perturb_output" not in sub.obsm  # an encoder alone: no output
    # overexpression to a given bin; unchanged samples (already there) stay at 0
    bs.tl.perturb(
        sub,
        encoder,
        "G10",
        gene_symbols="symbol",
        mode="overexpress",
        token=63,
        key_added="up",
        progress=False,
    )
    assert sub.uns["up"]["params"]["token"] == 63
    assert (sub.obsm["up"]["G10"] > 0).all()


def test_perturb_refuses_unknown_genes(encoder, cohort):
    adata, _ = cohort
    data = adata[:2].copy()
    with pytest.raises(KeyError, match="NOPE"):
        bs.tl.perturb(data, encoder, ["NOPE"], progress=False)
    extra = ad.AnnData(
        np.ones((2, 1), np.float32),
        obs=data.obs.copy(),
        var=pd.DataFrame(index=["ENSG99999999999"]),
    )
    wider = ad.concat([data, extra], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="vocabulary"):
            bs.tl.perturb(wider, encoder, ["ENSG99999999999"], progress=False)
    with pytest.raises(ValueError, match="mode"):
        bs.tl.perturb(data, encoder, GENES[:1], mode="knockdown", progress=False)
    with pytest.raises(ValueError, match="token"):
        bs.tl.perturb(data, encoder, GENES[:1], mode="overexpress", token=64, progress=False)
    assert not data.obsm


# ------------------------------------------------------------------------ plots
def test_top_genes_plot_draws_the_ranking(explained):
    import matplotlib

    matplotlib.use("Agg")
    axes = bs.pl.top_genes(explained, n_genes=4, gene_symbols="symbol", show=False)
    assert len(axes) == N_CLASSES
    ranking = explained.varm["bulkrnabert_attribution"]
    for panel, c in zip(axes, ["class_0", "class_1", "class_2"]):
        assert panel.get_title() == c
        widths = [bar.get_width() for bar in panel.patches]
        expected = ranking[c].sort_values(ascending=False).to_numpy()[:4]
        # bars drawn top to bottom = highest first
        order = np.argsort([-bar.get_y() for bar in panel.patches])
        np.testing.assert_allclose(np.asarray(widths)[order], expected, rtol=1e-6)
        ticks = sorted(
            zip(panel.get_yticks(), (t.get_text() for t in panel.get_yticklabels())),
            reverse=True,
        )
        labels = [text for _, text in ticks]  # top to bottom
        top = ranking[c].sort_values(ascending=False, kind="stable").index[:4]
        assert labels == list(explained.var.loc[top, "symbol"])
    one = bs.pl.top_genes(explained, groups=["class_1"], rank_by="contrast", show=False)
    assert one.get_xlabel() == "attribution contrast"
    import matplotlib.pyplot as plt

    plt.close("all")


def test_attribution_heatmap_shows_samples_by_genes(explained, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    genes = GENES[:5]
    ax = bs.pl.attribution_heatmap(explained, genes=genes, groupby="group", show=False)
    image = ax.get_images()[0].get_array()
    order = np.argsort(explained.obs["group"].cat.codes.to_numpy(), kind="stable")
    expected = explained.layers["bulkrnabert_attribution"][order][:, :5]
    np.testing.assert_allclose(np.asarray(image), expected, rtol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["class_0", "class_1", "class_2"]
    lo, hi = ax.get_images()[0].get_clim()
    assert lo == -hi == -np.abs(expected).max()
    path = tmp_path / "heat.png"
    bs.pl.attribution_heatmap(explained, n_genes=2, save=path, show=False)
    assert path.stat().st_size > 0
    plt.close("all")
