"""The seed axis over devices and hosts: a one-axis mesh, padding, placement and gathering.

Seeds are independent, so a sweep shards its leading (seed) axis over every device of a
`Mesh` with one axis, "seeds", and XLA partitions the vmapped program along it without any
communication but the final gather. A seed count that the device count does not divide is
padded with copies of the last seed; `gather` drops them again.

Multi-host: call `initialize_distributed` before any other JAX call; `jax.devices()` then
lists every process's devices and the default mesh spans them all. Arrays are placed with
`jax.make_array_from_callback`, which each process calls on the same host data, so no process
needs the others' memory.
"""

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flatmin._checks import check_int

SEED_AXIS = "seeds"

PyTree = Any


def seed_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh named "seeds" over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must list at least one device")
    return Mesh(np.asarray(devices), (SEED_AXIS,))


def check_mesh(mesh: Mesh | None) -> Mesh:
    """`mesh`, or the default `seed_mesh()`; a mesh without a "seeds" axis is an error."""
    if mesh is None:
        return seed_mesh()
    if not isinstance(mesh, Mesh) or mesh.axis_names != (SEED_AXIS,):
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh with one axis, {SEED_AXIS!r}; got {mesh!r}"
        )
    return mesh


def padded_size(num_seeds: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh's device count that holds `num_seeds` seeds."""
    return math.ceil(num_seeds / mesh.size) * mesh.size


def pad_seeds(tree: PyTree, size: int) -> PyTree:
    """Every leaf's leading axis extended to `size` by repeating its last entry.

    Copies of a real seed, not zeros: the padding then computes what a real seed computes (no
    NaN from an all-zero network) and is simply dropped afterwards.
    """

    def pad(leaf):
        missing = size - leaf.shape[0]
        if missing == 0:
            return leaf
        xp = jnp if isinstance(leaf, jax.Array) else np
        return xp.concatenate([leaf, xp.repeat(leaf[-1:], missing, axis=0)])

    return jax.tree.map(pad, tree)


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's devices."""
    return NamedSharding(mesh, PartitionSpec(SEED_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def place(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Host or device arrays -> global arrays with `sharding` (every process passes the same
    values). Typed PRNG keys keep their key type."""

    def put(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(leaf)
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)), impl=impl)
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf  # already placed: no copy
        if jax.process_count() == 1:
            return jax.device_put(leaf, sharding)  # device to device where it can
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def gather(tree: PyTree, num_seeds: int | None = None) -> PyTree:
    """Global arrays -> NumPy on every process; with `num_seeds`, the padding dropped.

    Typed PRNG keys come back as keys (on the default device)."""

    def get(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(leaf)
            return jax.random.wrap_key_data(get(jax.random.key_data(leaf)), impl=impl)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        host = np.asarray(leaf)
        return host if num_seeds is None else host[:num_seeds]

    return jax.tree.map(get, tree)


def is_writer() -> bool:
    """Whether this process writes files: process 0 of a multi-host run, or the only one."""
    return jax.process_index() == 0


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Joins a multi-process run (`jax.distributed.initialize`); call before any JAX work.

    Args:
      coordinator: where process 0 serves the coordination service: "host:port", or
        "unix:/path/to/socket" (a Unix domain socket, for processes on one machine: a file
        path no other program can take, unlike a TCP port picked in advance).
      num_processes: how many processes, >= 1.
      process_id: this process's index, in [0, num_processes).

    On CPU the processes exchange data through gloo, which JAX needs told explicitly.
    """
    if not isinstance(coordinator, str) or not (
        coordinator.startswith("unix:") or re.fullmatch(r".+:\d+", coordinator)
    ):
        raise ValueError(
            f"coordinator must be a 'host:port' or 'unix:/path' string, got {coordinator!r}"
        )
    num_processes = check_int("num_processes", num_processes, minimum=1)
    process_id = check_int(
        "process_id",
        process_id,
        minimum=0,
        maximum=num_processes - 1,
        note=f"num_processes = {num_processes}",
    )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # jax binds process 0's service to "[::]:<port of coordinator>" unless told otherwise; a
    # Unix socket is served at its own address.
    bind = coordinator if coordinator.startswith("unix:") else None
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=bind,
    )
