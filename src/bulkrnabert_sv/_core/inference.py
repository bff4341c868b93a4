"""Sample embeddings from token batches: one compiled function, padded batches, data parallel.

Used by :func:`bulkrnabert_sv.tl.embed`, the fine-tuning probe and the demo.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from .sharding import batch_sharding, data_mesh, replicated


@functools.partial(jax.jit, static_argnames=("graphdef", "layer"))
def _mean_embedding(graphdef, state, tokens, *, layer: int):
    # Compiled once per (model structure, layer, batch shape, sharding); jax caches it.
    return nnx.merge(graphdef, state).mean_embedding(tokens, layer=layer)


class _Runner:
    """Holds a model split for ``_mean_embedding``, its params placed on the devices."""

    def __init__(self, model, *, layer: int, batch_size: int, devices: Sequence | None):
        self.layer = model._resolve_layer(layer)
        self.n_genes = model.config.n_genes
        devices = list(jax.local_devices() if devices is None else devices)
        self.n_devices = len(devices)
        # Pad every batch to one shape, a multiple of the device count: one compilation.
        self.batch_size = -(-max(batch_size, 1) // self.n_devices) * self.n_devices
        self.graphdef, state = nnx.split(model)
        if self.n_devices > 1:
            mesh = data_mesh(devices)
            self.token_sharding = batch_sharding(mesh)
            self.state = jax.device_put(state, replicated(mesh))
        else:
            self.token_sharding = devices[0]
            self.state = jax.device_put(state, devices[0])

    def dispatch(self, tokens: np.ndarray) -> tuple[jax.Array, int]:
        """Start computing the embeddings of ``tokens`` (asynchronously); returns (out, n)."""
        tokens = np.asarray(tokens, dtype=np.int32)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_genes:
            raise ValueError(
                f"tokens must have shape (batch, {self.n_genes}), got {tuple(tokens.shape)}"
            )
        n = tokens.shape[0]
        size = max(self.batch_size, -(-n // self.n_devices) * self.n_devices)
        if n < size:  # pad with zeros (not expressed); padded rows are sliced away
            tokens = np.concatenate([tokens, np.zeros((size - n, self.n_genes), np.int32)])
        placed = jax.device_put(tokens, self.token_sharding)
        return _mean_embedding(self.graphdef, self.state, placed, layer=self.layer), n


def embed_tokens(
    model,
    batches: Iterable[tuple[int, int, np.ndarray]],
    *,
    layer: int = -1,
    progress: bool = True,
    n_obs: int | None = None,
    batch_size: int | None = None,
    devices: Sequence | None = None,
    desc: str = "BulkRNABert embeddings",
) -> np.ndarray:
    """Mean embeddings of token batches.

    Parameters
    ----------
    model
        A :class:`~bulkrnabert_sv.model.BulkRNABert`.
    batches
        Iterable of ``(start, stop, tokens)`` with int32 tokens (stop - start, n_genes), e.g.
        :func:`bulkrnabert_sv._core.tokens.token_batches`. Batches may come in any order.
    layer
        Transformer block whose output is averaged over genes (1-indexed; -1 = last).
    progress
        Show a progress bar (samples).
    n_obs, batch_size
        Number of samples and batch size; default ``batches.n_obs`` / ``batches.batch_size``
        (else: the largest ``stop`` and the first batch's size).
    devices
        Devices to shard batches over (default ``jax.local_devices()``). With several, each batch
        is split along the sample axis (``jax.sharding``) and the parameters are replicated.

    Returns
    -------
    float32 array (n_obs, embed_dim). Every batch is padded to the same size so that one compiled
    function serves all of them; padding rows never change the result.
    """
    from tqdm.auto import tqdm

    n_obs = getattr(batches, "n_obs", None) if n_obs is None else n_obs
    batch_size = getattr(batches, "batch_size", None) if batch_size is None else batch_size
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return np.zeros((n_obs or 0, model.config.embed_dim), dtype=np.float32)
    runner = _Runner(model, layer=layer, batch_size=batch_size or len(first[2]), devices=devices)
    parts: dict[int, np.ndarray] = {}
    stops: dict[int, int] = {}
    with tqdm(total=n_obs, disable=not progress, desc=desc, unit="sample") as bar:
        pending = None
        for start, stop, tokens in _chain(first, iterator):
            out = runner.dispatch(tokens)  # runs while the previous result is fetched
            if pending is not None:
                bar.update(_collect(pending, parts, stops))
            pending = (start, stop, out)
        bar.update(_collect(pending, parts, stops))
    n_obs = max(stops.values()) if n_obs is None else n_obs
    result = np.empty((n_obs, model.config.embed_dim), dtype=np.float32)
    filled = np.zeros(n_obs, dtype=bool)
    for start, part in parts.items():
        result[start : stops[start]] = part
        filled[start : stops[start]] = True
    if not filled.all():
        raise ValueError(f"The batches covered {int(filled.sum())} of {n_obs} samples.")
    return result


def _chain(first, rest):
    yield first
    yield from rest


def _collect(pending, parts: dict, stops: dict) -> int:
    start, stop, (out, n) = pending
    if stop - start != n:
        raise ValueError(f"Batch {start}:{stop} has {n} rows.")
    parts[start] = np.asarray(out[:n], dtype=np.float32)
    stops[start] = stop
    return n


def embed_token_array(
    model,
    tokens: np.ndarray,
    *,
    layer: int = -1,
    batch_size: int = 8,
    progress: bool = False,
    devices: Sequence | None = None,
) -> np.ndarray:
    """Mean embeddings (n, embed_dim) float32 of an in-memory token array (n, n_genes)."""
    tokens = np.asarray(tokens)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = tokens.shape[0]
    batches = (
        (start, min(start + batch_size, n), tokens[start : start + batch_size])
        for start in range(0, n, batch_size)
    )
    return embed_tokens(
        model,
        batches,
        layer=layer,
        progress=progress,
        n_obs=n,
        batch_size=batch_size,
        devices=devices,
    )
