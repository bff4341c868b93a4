"""Data parallelism with ``jax.sharding``: one mesh axis ``"data"``, batch split, state replicated.

Works the same on one device, on all local devices and on several hosts (after
``jax.distributed.initialize``): arrays are built from host data with
:func:`jax.make_array_from_callback`, so every process only places its own shards.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process, ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty; pass None to use every device JAX sees.")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, metrics)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Split dimension ``axis`` (the batch) over the mesh's devices."""
    return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def n_shards(mesh: Mesh) -> int:
    return int(mesh.devices.size)


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full (same values)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` on all devices of ``mesh`` (copies to host first)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda leaf: global_array(_host(leaf), sharding), tree)


def to_local(tree):
    """Replicated global arrays → ordinary arrays on this process's first device."""
    device = jax.local_devices()[0]

    def local(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        return jax.device_put(leaf, device)

    return jax.tree.map(local, tree)


def _host(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.asarray(jax.device_get(leaf))
