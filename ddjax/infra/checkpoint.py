"""Orbax checkpoints of the run state, atomic and resumable.

Orbax writes each step into a temporary directory and renames it when complete (the
`commit_success` marker), so a kill during a save never leaves a broken *latest* checkpoint: the
manager only lists finished steps. A checkpoint that is present but unreadable (disk corruption, a
different config) is reported with what to do; older checkpoints are tried before giving up, and
when one of them restores, the unreadable newer ones are deleted (the run writes those steps
again) so that the next resume does not skip them again.
With several processes every process saves and restores together, as Orbax does for multi-host:
arrays over the global mesh are written once (their replicas by process 0), and a process's own
arrays (an observer's, trained identically on every process) as numpy arrays by process 0.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the expected state."""


def _global_or_host(tree: Any) -> Any:
  """With several processes, a process's own (host-local) jax arrays as numpy arrays, which
  Orbax writes once from process 0 and restores on every process; arrays over the global mesh
  unchanged. The tree itself with one process."""
  if jax.process_count() == 1:
    return tree
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_addressable else x, tree)


def _like(template: Any, restored: Any) -> Any:
  """Restored host-local arrays (numpy, see `_global_or_host`) back on their template's device."""
  if jax.process_count() == 1:
    return restored
  return jax.tree_util.tree_map(
      lambda t, x: jax.device_put(x, t.sharding) if isinstance(t, jax.Array)
      and t.is_fully_addressable else x, template, restored)


class Checkpointer:
  """Save/restore a pytree by step under `directory` (keeps the `keep` most recent)."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state: Any) -> None:
    if step in self._mngr.all_steps():
      return
    self._mngr.save(step, args=ocp.args.StandardSave(_global_or_host(state)), force=True)
    self._mngr.wait_until_finished()

  def restore_latest(self, template: Any) -> tuple[int, Any] | None:
    """(step, state) from the newest readable checkpoint, or None when there is none.

    template: a pytree with the expected structure, shapes and dtypes (e.g. the fresh state).
    Raises CheckpointError naming the directory and the fix when no checkpoint can be read.
    """
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _global_or_host(template))
    problems, damaged = [], []
    for step in steps:
      try:
        state = _like(template, self._mngr.restore(step, args=ocp.args.StandardRestore(abstract)))
      except Exception as e:  # noqa: BLE001 - any failure means "this checkpoint is unusable"
        problems.append(f'step {step}: {type(e).__name__}: {str(e)[:300]}')
        damaged.append(step)
        continue
      if damaged:   # an older one fits the template: the newer ones are damaged, not another
        for bad in damaged:     # config's; delete them so the run saves those steps again
          try:
            self._mngr.delete(bad)
          except Exception as e:  # noqa: BLE001 - then the warning repeats on the next resume
            problems.append(f'step {bad} could not be deleted ({e}): delete it by hand')
        log.warning('restored step %d after skipping unreadable checkpoints, now deleted: %s',
                    step, '; '.join(problems))
      return step, state
    raise CheckpointError(
        f'no checkpoint in {self.directory} could be restored ({"; ".join(problems)}). '
        'If the config changed since they were written, use a fresh --workdir; if they are '
        'corrupt, delete that directory to start over.')

  def close(self) -> None:
    self._mngr.close()
