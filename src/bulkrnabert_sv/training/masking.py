"""Masked expression modelling: which genes to mask, the loss, and the marginal baseline.

Our choices (the original pretraining code was not published):

* every gene of every sample is masked independently with probability ``mask_rate``
  (Bernoulli), so the number of masked genes varies around ``mask_rate * n_genes``;
* every masked position gets the learned mask embedding in place of its expression embedding
  (no 80/10/10 replacement as in BERT); the gene embedding is still added, so the model knows
  *which* gene it must predict;
* the loss is the cross-entropy over the expression bins, averaged over all masked positions of
  the (accumulated) batch; unmasked positions do not count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_mask_rate(mask_rate: float) -> float:
    try:
        rate = float(mask_rate)
    except (TypeError, ValueError):
        raise TypeError(f"mask_rate must be a number in (0, 1), got {mask_rate!r}.") from None
    if not 0.0 < rate < 1.0:
        raise ValueError(
            f"mask_rate must be strictly between 0 and 1, got {mask_rate!r}: it is the "
            "probability that a gene is masked (the usual choice is 0.15)."
        )
    return rate


def sample_mask(key: jax.Array, shape: tuple[int, ...], mask_rate: float) -> jax.Array:
    """Boolean mask: each position independently True with probability ``mask_rate``."""
    return jax.random.bernoulli(key, mask_rate, shape)


def marginal_log_probs(tokens: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-gene log bin frequencies with add-one (Laplace) smoothing, shape (n_genes, n_bins).

    ``log p[g, b] = log((count of bin b at gene g + 1) / (n_samples + n_bins))``.
    """
    tokens = np.minimum(np.asarray(tokens, dtype=np.int64), n_bins - 1)
    n_samples, n_genes = tokens.shape
    flat = tokens + n_bins * np.arange(n_genes)[None, :]
    counts = np.bincount(flat.ravel(), minlength=n_genes * n_bins).reshape(n_genes, n_bins)
    return np.log((counts + 1.0) / (n_samples + n_bins)).astype(np.float32)


def masked_sums(
    logits: jax.Array, labels: jax.Array, mask: jax.Array, log_baseline: jax.Array
) -> dict[str, jax.Array]:
    """Sums over masked positions: cross-entropy, correct predictions, baseline loss, count.

    Parameters
    ----------
    logits
        (B, L, n_bins) model outputs.
    labels
        (B, L) int token ids (already clipped to ``n_bins - 1``).
    mask
        (B, L) bool, the masked positions.
    log_baseline
        (L, n_bins) per-gene marginal log probabilities (:func:`marginal_log_probs`).
    """
    logits = logits.astype(jnp.float32)
    weight = mask.astype(jnp.float32)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    genes = jnp.arange(labels.shape[1])[None, :]
    baseline = -log_baseline[genes, labels]
    return {
        "loss": jnp.sum(nll * weight),
        "correct": jnp.sum(correct * weight),
        "baseline": jnp.sum(baseline * weight),
        "count": jnp.sum(weight),
    }
