"""Sample embeddings from token batches: few compiled shapes, little padding, data parallel.

Used by :func:`bulkrnabert_sv.tl.embed`, the fine-tuning probe and the demo.

Batch shapes: a full batch has ``min(batch_size, n_obs)`` rows, so a batch size above the
number of samples costs nothing; a shorter (last) batch of ``n`` rows is padded only up to the
next power of two (at most the full batch), which is less padding than ``n`` rows. A call
compiles at most two shapes (full and last), and over calls with one batch size the last
batches share at most ``log2(batch_size) + 1`` shapes. With several devices every shape is
rounded up to a multiple of their number.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from .._validation import check_block_index, check_positive_int
from .sharding import batch_sharding, data_mesh, global_array, replicate, replicated


@functools.partial(jax.jit, static_argnames=("graphdef", "block"))
def _mean_embedding(graphdef, state, tokens, *, block: int):
    # Compiled once per (model structure, block, batch shape, sharding); jax caches it.
    return nnx.merge(graphdef, state).mean_embedding(tokens, block=block)


class _Runner:
    """Holds a model split for ``_mean_embedding``, its params placed on the devices.

    ``batch_size`` here is the full batch shape: ``min(batch_size, n_obs)`` (when ``n_obs`` is
    known) rounded up to a multiple of the device count.
    """

    def __init__(
        self,
        model,
        *,
        block: int,
        batch_size: int,
        devices: Sequence | None,
        n_obs: int | None = None,
    ):
        self.block = model.resolve_block(check_block_index(block, "block"))
        self.n_genes = model.config.n_genes
        devices = list(jax.local_devices() if devices is None else devices)
        if not devices:
            raise ValueError("devices is empty; pass None to use this process's devices.")
        self.n_devices = len(devices)
        size = check_positive_int(batch_size, "batch_size")
        if n_obs is not None:  # never pad beyond the data
            size = min(size, max(int(n_obs), 1))
        self.batch_size = self._round_to_devices(size)
        self.graphdef, state = nnx.split(model)
        # Devices of other processes (after jax.distributed.initialize): every process runs the
        # same batches, places only its own shards and receives every batch's embeddings.
        self.multiprocess = any(d.process_index != jax.process_index() for d in devices)
        if self.n_devices > 1:
            mesh = data_mesh(devices)
            self.token_sharding = batch_sharding(mesh)
            if self.multiprocess:
                self.state = replicate(state, mesh)
            else:
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
        size = self.padded_size(n)
        if n < size:  # pad with zeros (not expressed); padded rows are sliced away
            tokens = np.concatenate([tokens, np.zeros((size - n, self.n_genes), np.int32)])
        if self.multiprocess:
            placed = global_array(tokens, self.token_sharding)
        else:
            placed = jax.device_put(tokens, self.token_sharding)
        return _mean_embedding(self.graphdef, self.state, placed, block=self.block), n

    def fetch(self, out: jax.Array, n: int) -> np.ndarray:
        """The first ``n`` rows of a dispatched batch on the host (gathered from all processes
        when the devices span several: a collective, so every process calls it in turn)."""
        if self.multiprocess:
            from jax.experimental import multihost_utils

            out = multihost_utils.process_allgather(out, tiled=True)
        return np.asarray(out[:n], dtype=np.float32)

    def padded_size(self, n: int) -> int:
        """Rows fed to the model for a batch of ``n`` rows.

        The full shape; for a shorter batch the next power of two, capped at the full shape;
        always a multiple of the device count.
        """
        if n >= self.batch_size:
            return self._round_to_devices(n)
        return min(self.batch_size, self._round_to_devices(1 << max(n - 1, 0).bit_length()))

    def _round_to_devices(self, n: int) -> int:
        return -(-max(n, 1) // self.n_devices) * self.n_devices


def embed_tokens(
    model,
    batches: Iterable[tuple[int, int, np.ndarray]],
    *,
    block: int = -1,
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
        :func:`bulkrnabert_sv.pp._tokens.token_batches`. Batches may come in any order.
    block
        Transformer block whose output is averaged over genes (1-indexed; -1 = last).
    progress
        Show a progress bar (samples).
    n_obs, batch_size
        Number of samples and batch size; default ``batches.n_obs`` / ``batches.batch_size``
        (else: the largest ``stop`` and the first batch's size). Batches are fed to the model
        with ``min(batch_size, n_obs)`` rows; a shorter one is padded to the next power of two
        at most.
    devices
        Devices to shard batches over (default ``jax.local_devices()``). With several, each batch
        is split along the sample axis (``jax.sharding``) and the parameters are replicated.
        They may belong to several processes (``jax.devices()`` after
        ``jax.distributed.initialize()``): every process then feeds the same batches and gets
        every sample's embedding.

    Returns
    -------
    float32 array (n_obs, embed_dim). Padding rows never change the result.
    """
    from .._logging import progress_bar

    check_block_index(block, "block")
    n_obs = getattr(batches, "n_obs", None) if n_obs is None else n_obs
    batch_size = getattr(batches, "batch_size", None) if batch_size is None else batch_size
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        return np.zeros((n_obs or 0, model.config.embed_dim), dtype=np.float32)
    runner = _Runner(
        model,
        block=block,
        batch_size=batch_size or max(len(first[2]), 1),
        devices=devices,
        n_obs=n_obs,
    )
    parts: dict[int, np.ndarray] = {}
    stops: dict[int, int] = {}
    with progress_bar(total=n_obs, progress=progress, desc=desc, unit="sample") as bar:
        pending = None
        for start, stop, tokens in _chain(first, iterator):
            out = runner.dispatch(tokens)  # runs while the previous result is fetched
            if pending is not None:
                bar.update(_collect(runner, pending, parts, stops))
            pending = (start, stop, out)
        bar.update(_collect(runner, pending, parts, stops))
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


def _collect(runner: _Runner, pending, parts: dict, stops: dict) -> int:
    start, stop, (out, n) = pending
    if stop - start != n:
        raise ValueError(f"Batch {start}:{stop} has {n} rows.")
    parts[start] = runner.fetch(out, n)
    stops[start] = stop
    return n


def embed_token_array(
    model,
    tokens: np.ndarray,
    *,
    block: int = -1,
    batch_size: int = 8,
    progress: bool = False,
    devices: Sequence | None = None,
) -> np.ndarray:
    """Mean embeddings (n, embed_dim) float32 of an in-memory token array (n, n_genes)."""
    tokens = np.asarray(tokens)
    batch_size = check_positive_int(batch_size, "batch_size")
    n = tokens.shape[0]
    batches = (
        (start, min(start + batch_size, n), tokens[start : start + batch_size])
        for start in range(0, n, batch_size)
    )
    return embed_tokens(
        model,
        batches,
        block=block,
        progress=progress,
        n_obs=n,
        batch_size=batch_size,
        devices=devices,
    )
