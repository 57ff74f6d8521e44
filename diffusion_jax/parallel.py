"""Data parallelism over every device of every process: the mesh, pmap, and moving pytrees.

One 1-D mesh with axis "batch" spans ALL global devices (`jax.devices()`), so a `lax.pmean`
inside a pmapped step averages over every host. (A mesh of `jax.local_devices()` would make
each host average only its own devices and silently train its own model.) Per-device functions
see `lax.axis_index("batch")`, the global device index; global example i of a batch lives on
device i // per_device, so fold_in(key, axis_index * per_device + j) is the same draw for the
same example whatever the layout.

Host data enter through `replicate` (the same pytree on every device) and `shard` (each process
contributes its [local_devices, per_device, ...] part of a global batch); `unreplicate` reads
one copy back and `gather` collects a sharded result on every process.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

AXIS = "batch"
PyTree = Any


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis "batch" over `devices` (default: all global devices)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def mean_over_devices(tree: PyTree) -> PyTree:
  """`lax.pmean` over the "batch" axis inside pmap; on a single device the tree itself (XLA:CPU
  would still copy every leaf through an all-reduce)."""
  if jax.lax.axis_size(AXIS) == 1:
    return tree
  return jax.lax.pmean(tree, AXIS)


def local_devices(mesh: Mesh) -> list[jax.Device]:
  """The mesh's devices that belong to this process, in mesh order."""
  return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def per_device(global_batch: int, mesh: Mesh) -> int:
  """Examples per device of a GLOBAL batch (the config validator checks divisibility)."""
  return global_batch // mesh.devices.size


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """Where this process' rows of a GLOBAL batch are: rows [offset, offset + local_size), split
  over its `local_devices` devices, `per_device` rows each (mesh order)."""
  global_size: int
  offset: int
  local_devices: int
  per_device: int

  @property
  def local_size(self) -> int:
    return self.local_devices * self.per_device


def batch_layout(global_batch: int, mesh: Mesh) -> BatchLayout:
  """This process' part of a global batch of `global_batch` rows over `mesh`."""
  mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
  if mine != list(range(mine[0], mine[0] + len(mine))):
    raise ValueError(f"this process' devices are not contiguous in the mesh ({mine}).")
  n = per_device(global_batch, mesh)
  return BatchLayout(global_size=global_batch, offset=mine[0] * n, local_devices=len(mine),
                     per_device=n)


def pmap(fn: Callable, mesh: Mesh, **kwargs) -> Callable:
  """`jax.pmap` of a per-device function over the mesh, with axis name "batch"."""
  return jax.pmap(fn, axis_name=AXIS, devices=list(mesh.devices.flat), **kwargs)


def _sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """The host pytree on every device of the mesh, stacked on a leading device axis.

  Built per shard (`jax.make_array_from_callback`), which also works when the mesh spans other
  processes; flax.jax_utils.replicate instead makes pmap compile the step twice.
  """
  num = mesh.devices.size

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback((num,) + x.shape, _sharding(mesh),
                                        lambda index: np.broadcast_to(x, (num,) + x.shape)[index])

  return jax.tree.map(put, tree)


def shard(batch: PyTree, mesh: Mesh) -> PyTree:
  """This process' part [local_devices, per_device, ...] of a global batch, on the mesh."""
  num = mesh.devices.size
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(_sharding(mesh), np.asarray(x),
                                                       (num,) + np.shape(x)[1:]), batch)


def unreplicate(tree: PyTree) -> PyTree:
  """This process' first copy of a replicated pytree, as numpy (no device computation)."""
  return jax.tree.map(lambda x: np.asarray(np.asarray(x.addressable_shards[0].data)[0]), tree)


def gather(tree: PyTree) -> PyTree:
  """Every device's part of a pmapped result [devices, ...], as numpy on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)
