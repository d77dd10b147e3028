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
