"""One compile cache (hashable head settings, ``functools.lru_cache``) and one AdamW builder."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bulkrnabert_sv.model import MLPHead
from bulkrnabert_sv.model.heads import HeadSettings
from bulkrnabert_sv.training.finetuned import HeadEnsemble, head_function, head_outputs
from bulkrnabert_sv.training.fitting import adamw, adamw_transform, decay_mask


def test_head_settings_are_a_hashable_mapping():
    head = MLPHead(8, [4, 3], 2, layer_norm=True, rngs=nnx.Rngs(0))
    settings = head.settings
    assert isinstance(settings, HeadSettings) and dict(settings)["hidden_sizes"] == (4, 3)
    assert settings.to_dict() == {
        "in_features": 8,
        "hidden_sizes": [4, 3],
        "n_outputs": 2,
        "layer_norm": True,
        "activation": "selu",
        "final_activation": "identity",
    }
    assert settings == settings.to_dict() and settings == HeadSettings(settings.to_dict())
    assert json.loads(json.dumps(settings.to_dict())) == settings.to_dict()
    with pytest.raises(TypeError):
        settings["n_outputs"] = 3  # read-only
    other = MLPHead(8, [4, 3], 2, layer_norm=True, rngs=nnx.Rngs(1))
    assert hash(nnx.graphdef(head)) == hash(nnx.graphdef(other))
    assert nnx.graphdef(head) == nnx.graphdef(other)
    assert nnx.graphdef(head) != nnx.graphdef(MLPHead(8, [4], 2, rngs=nnx.Rngs(0)))
    ensemble = HeadEnsemble([head, other], "probabilities")
    assert ensemble.settings["members"] == 2 and hash(nnx.graphdef(ensemble))


def test_heads_of_one_structure_share_one_compiled_function():
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    first = MLPHead(8, [6], 3, rngs=nnx.Rngs(0))
    second = MLPHead(8, [6], 3, rngs=nnx.Rngs(1))
    head_outputs(first, x)
    before = head_function.cache_info()
    out = head_outputs(second, x)
    after = head_function.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    np.testing.assert_allclose(out, np.asarray(second(jnp.asarray(x))), rtol=1e-6, atol=1e-6)


def _params():
    rng = np.random.default_rng(0)
    return {
        "attention": {"key": {"bias": jnp.asarray(rng.normal(size=4), jnp.float32)}},
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=3), jnp.float32),
        },
    }


def _run(tx, params, steps: int = 3, scale: float | None = None):
    """Parameters after ``steps`` updates by ``tx`` on fixed gradients (``-scale * u`` if given)."""
    state = tx.init(params)
    for step in range(steps):
        grads = jax.tree.map(lambda p, s=step: jnp.sin(p * (s + 1)) * 3.0, params)
        updates, state = tx.update(grads, state, params)
        if scale is not None:
            updates = jax.tree.map(lambda u: -scale * u, updates)
        params = optax.apply_updates(params, updates)
    return params


def test_the_trainers_adamw_is_optax_adamw_after_clipping():
    params = _params()
    ours = adamw(max_grad_norm=1.0)(learning_rate=0.01, weight_decay=0.1)
    reference = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(0.01, weight_decay=0.1, mask=decay_mask)
    )
    for a, b in zip(jax.tree.leaves(_run(ours, params)), jax.tree.leaves(_run(reference, params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pretrains_optimizer_freezes_key_biases_and_leaves_the_rate_to_the_step():
    from bulkrnabert_sv.tl._pretrain import _frozen_mask, _optimizer

    params = _params()
    ours = _optimizer(0.01, 1.0)
    reference = optax.chain(
        optax.masked(optax.set_to_zero(), _frozen_mask),
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(),
        optax.add_decayed_weights(0.01, mask=decay_mask),
    )
    # The same stages, so the optimiser state (saved in pretraining checkpoints) is the same.
    assert jax.tree.structure(ours.init(params)) == jax.tree.structure(reference.init(params))
    trained = _run(ours, params, scale=1e-2)
    expected = _run(reference, params, scale=1e-2)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    key_bias = params["attention"]["key"]["bias"]
    np.testing.assert_array_equal(trained["attention"]["key"]["bias"], key_bias)
    assert not np.array_equal(trained["dense"]["kernel"], params["dense"]["kernel"])
    no_clip = adamw_transform(0.0, max_grad_norm=None, learning_rate=0.1)
    assert len(no_clip.init(params)) == 3  # adam, decay, learning rate
