"""Data-parallel layout: the real batch is split over all devices, everything else replicated.

What a run on several devices (or processes) equals. The step is one jitted program with global
semantics, so the devices compute the one-device step's values; only the order of the sums over
the batch changes (each device sums its rows, an all-reduce adds the partial sums). Measured on
FRePo (tests/test_sharding.py, and Fashion-MNIST at IPC 1 and 10 on 1 against 2 CPU devices):
the model pool is built from the synthetic set alone and is bit-identical; the loss agrees to
about 1e-6 relative; the image gradient to about 1e-3 of its largest entry at IPC 10 (3e-4
measured; 6e-6 at IPC 1): the KRR solve amplifies the reordering by the condition number of
K_SS, about 1e5 at IPC 10 against 3e2 at IPC 1. Adam and LAMB normalise each pixel's update, so
a pixel whose gradient is at float-noise level (|g| below about 1e-7: a handful of the 78400 at
IPC 10, none at IPC 1) takes a step of up to lr of either sign in either run: after 3 steps at
IPC 10 (lr 2e-2) the images differ by up to 0.037 on those pixels, while at IPC 1 every pixel
agrees to 1e-4. The runs are equal up to that: no random draw, batch statistic or key depends on
the device a row sits on.
"""
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
