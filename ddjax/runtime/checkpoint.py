"""Orbax checkpoints of the run state, atomic and resumable.

Orbax writes each step into a temporary directory and renames it when complete (the
`commit_success` marker), so a kill during a save never leaves a broken *latest* checkpoint: the
manager only lists finished steps. A checkpoint that is present but unreadable (disk corruption, a
different config) is reported with what to do; older checkpoints are tried before giving up.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the expected state."""


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
    self._mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    self._mngr.wait_until_finished()

  def restore_latest(self, template: Any) -> tuple[int, Any] | None:
    """(step, state) from the newest readable checkpoint, or None when there is none.

    template: a pytree with the expected structure, shapes and dtypes (e.g. the fresh state).
    Raises CheckpointError naming the directory and the fix when no checkpoint can be read.
    """
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    problems = []
    for step in steps:
      try:
        state = self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        if problems:
          log.warning('restored step %d after skipping unreadable checkpoints: %s', step,
                      '; '.join(problems))
        return step, state
      except Exception as e:  # noqa: BLE001 - any failure means "this checkpoint is unusable"
        problems.append(f'step {step}: {type(e).__name__}: {str(e)[:300]}')
    raise CheckpointError(
        f'no checkpoint in {self.directory} could be restored ({"; ".join(problems)}). '
        'If the config changed since they were written, use a fresh --workdir; if they are '
        'corrupt, delete that directory to start over.')

  def close(self) -> None:
    self._mngr.close()
