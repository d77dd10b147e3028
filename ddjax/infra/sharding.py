"""Data-parallel layout: the real batch is split over all devices, everything else replicated."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = 'batch'


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process) named 'batch'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f'distill.batch_size={batch_size} must be divisible by the number of devices '
                     f'({n}); choose a multiple of {n}.')


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Put a host batch on the devices, split along its first axis."""
  return jax.device_put(batch, batch_sharding(mesh))


def process_rows(mesh: Mesh, batch_size: int) -> np.ndarray:
  """The rows of a (batch_size, ...) batch split over `mesh` that this process's devices hold,
  sorted (int64): what this process loads. All rows with one process; batch_size / P of them
  with P processes of equal device counts (one contiguous block when the mesh lists devices
  process by process, as `jax.devices()` does)."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  spans = sorted({s[0].indices(batch_size)[:2] for s in index_map.values()})
  return np.concatenate([np.arange(a, b) for a, b in spans])


def global_batch(local: dict, mesh: Mesh, batch_size: int | None = None) -> dict:
  """The global batch, split over `mesh` along its first axis, from this process's rows
  (`process_rows`; shape (len(rows), ...) per entry) by `jax.make_array_from_process_local_data`.
  batch_size: the global batch (None: this process's rows times the process count); a full
  (batch_size, ...) batch is accepted too, each process keeping its own rows."""
  layout = batch_sharding(mesh)

  def one(a):
    a = np.asarray(a)
    shape = None if batch_size is None else (batch_size,) + a.shape[1:]
    return jax.make_array_from_process_local_data(layout, a, shape)
  return jax.tree_util.tree_map(one, local)
