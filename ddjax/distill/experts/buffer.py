"""The buffer directory of expert trajectories: its files, reading them one row at a time, and
writing them during training.

  record.json         what determines the trajectories (`ddjax.distill.experts.record`),
                      written first
  epoch_<e:04d>.npy   float32 (E, P): every expert's flat parameters after e epochs (snapshot 0 =
                      initialisation); flat order = `jax.flatten_util.ravel_pytree(params)`
  index.json          finished epochs, per-epoch mean train loss and seconds, and once the
                      record's epochs are done every expert's final test accuracy
  carry.npz           the training state after the last finished epoch (parameters, batch
                      statistics, optimizer state, history), so a killed job resumes there
  scores_*.npz        FIEX's EL2N scores (with expert.fiex), computed once

Each file is written atomically (`ddjax.infra.files`), in the order epoch file, carry, index: the
index is the buffer's progress marker, so a killed job loses at most the epoch in progress and
ends equal to an uninterrupted one, and a reader never sees an epoch the index does not list. A run
reads only the rows it samples (`ExpertBuffer.snapshot`: a memory-mapped read of one row); a
truncated or damaged file is reported naming it (`DamagedBuffer`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.distill.experts.record import ExpertMismatch, model_of, read_record
from ddjax.infra import artifacts, files

PyTree = Any
INDEX = 'index.json'
CARRY = 'carry.npz'
RETRAIN = 'delete the buffer directory {path} to train it again'


class DamagedBuffer(artifacts.RecordError):
  """A file of an expert buffer is truncated, damaged or not this buffer's."""


def epoch_path(path: str, epoch: int) -> str:
  return os.path.join(path, f'epoch_{int(epoch):04d}.npy')


def read_index(path: str) -> dict | None:
  """The buffer's index.json, None when absent (DamagedBuffer naming a damaged one)."""
  try:
    return artifacts.read_json(os.path.join(path, INDEX), RETRAIN.format(path=path))
  except artifacts.RecordError as e:
    raise DamagedBuffer(str(e)) from None


# -- reading ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class ExpertBuffer:
  """A buffer of expert trajectories on disk (read one row at a time).

  num_experts: the experts a run uses (the first ones; `stored_experts` may be more);
  num_epochs: finished epochs (snapshots 0..num_epochs exist); dim: P, parameters per snapshot;
  template: the experts' params pytree (zeros), `unravel(flat (P,))` -> params (jittable)."""
  path: str
  record: dict
  index: dict
  model: Any
  template: PyTree
  num_experts: int
  trained_now: bool = False
  _unravel: Callable | None = None
  _maps: dict = dataclasses.field(default_factory=dict)

  @property
  def num_epochs(self) -> int:
    return int(self.index['finished_epochs'])

  @property
  def stored_experts(self) -> int:
    return int(self.record['expert']['num_experts'])

  @property
  def dim(self) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(self.template)))

  def unravel(self, flat) -> PyTree:
    return self._unravel(flat)

  def _rows(self, epoch: int) -> np.ndarray:
    """Epoch file `epoch`, memory-mapped; DamagedBuffer naming it when it is truncated, damaged
    or not (stored_experts, dim) float32."""
    if epoch not in self._maps:
      path = epoch_path(self.path, epoch)
      fix = RETRAIN.format(path=self.path)
      try:
        rows = np.load(path, mmap_mode='r', allow_pickle=False)
      except (OSError, ValueError, EOFError) as e:
        raise DamagedBuffer(f'expert snapshot {path} is unreadable, truncated or damaged '
                            f'({type(e).__name__}: {e}); {fix}.') from None
      want = (self.stored_experts, self.dim)
      if rows.dtype != np.float32 or rows.shape != want:
        raise DamagedBuffer(f'expert snapshot {path} holds {rows.dtype} {rows.shape}, not this '
                            f'buffer\'s float32 {want}; {fix}.')
      self._maps[epoch] = rows
    return self._maps[epoch]

  def snapshot(self, expert: int, epoch: int) -> np.ndarray:
    """Expert `expert`'s flat parameters after `epoch` epochs, float32 (P,) (one row read).
    DamagedBuffer naming the file when the row holds NaN or inf (trained experts never do)."""
    expert, epoch = int(expert), int(epoch)
    if not 0 <= expert < self.num_experts:
      raise IndexError(f'expert {expert} outside 0..{self.num_experts - 1} of {self.path}.')
    if not 0 <= epoch <= self.num_epochs:
      raise IndexError(f'epoch {epoch} outside 0..{self.num_epochs} of {self.path}.')
    row = np.array(self._rows(epoch)[expert], dtype=np.float32)
    if not np.all(np.isfinite(row)):
      raise DamagedBuffer(
          f'expert snapshot {epoch_path(self.path, epoch)} holds NaN or inf in expert {expert}\'s '
          'row: the file is damaged, or that expert diverged in training (then lower expert.lr); '
          f'{RETRAIN.format(path=self.path)}.')
    return row

  def snapshots(self, expert: int, epochs) -> np.ndarray:
    """(len(epochs), P) float32: expert's snapshots at `epochs`."""
    return np.stack([self.snapshot(expert, e) for e in epochs])

  def trajectory(self, expert: int) -> np.ndarray:
    """(num_epochs + 1, P): every snapshot of one expert (reads num_epochs + 1 rows)."""
    return self.snapshots(expert, range(self.num_epochs + 1))

  def reference(self) -> dict:
    """What results.json keeps about the buffer."""
    acc = self.index.get('final_test_acc')
    return {'path': self.path, 'record': self.record, 'num_experts': self.num_experts,
            'num_epochs': self.num_epochs, 'trained_now': self.trained_now,
            'final_test_acc_mean': float(np.mean(acc[:self.num_experts])) if acc else None}


def open_buffer(path: str, num_experts: int | None = None,
                trained_now: bool = False) -> ExpertBuffer:
  """The buffer in `path` (record.json and index.json must exist), using its first
  `num_experts` experts (default all)."""
  from jax.flatten_util import ravel_pytree

  from ddjax.models import init_model
  record, index = read_record(path), read_index(path)
  if record is None or index is None:
    raise ExpertMismatch(f'{path} holds no expert buffer ({artifacts.RECORD} and {INDEX} are '
                         'needed).')
  model = model_of(record)
  shapes = jax.eval_shape(lambda k: init_model(model, k, [1] + list(record['image_shape'])),
                          jax.random.PRNGKey(0))['params']
  template = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  stored = int(record['expert']['num_experts'])
  e = stored if num_experts is None else int(num_experts)
  if e > stored:
    raise ExpertMismatch(f'{path} holds {stored} experts, {e} asked.')
  return ExpertBuffer(path, record, index, model, template, e, trained_now,
                      ravel_pytree(template)[1])


# -- writing ---------------------------------------------------------------------------------------
def save_carry(path: str, carry: PyTree, epoch: int, history: dict) -> None:
  """The training state after `epoch` epochs and the per-epoch history, to carry.npz."""
  leaves = jax.tree_util.tree_leaves(carry)
  arrays = {f'leaf_{i:04d}': np.asarray(a) for i, a in enumerate(leaves)}
  arrays.update({f'history_{k}': np.asarray(v, np.float64) for k, v in history.items()})
  files.write_atomic(os.path.join(path, CARRY),
                     lambda f: np.savez(f, epoch=np.int64(epoch), **arrays))


def load_carry(path: str, treedef) -> tuple[PyTree, int, dict] | None:
  """(carry, epoch, history) from carry.npz, None when absent; DamagedBuffer naming it when it
  is unreadable or holds another structure."""
  p = os.path.join(path, CARRY)
  try:
    arrays = artifacts.read_npz(p, 'the expert training state', RETRAIN.format(path=path))
  except artifacts.RecordError as e:
    raise DamagedBuffer(str(e)) from None
  if arrays is None:
    return None
  leaves = [arrays[k] for k in sorted(k for k in arrays if k.startswith('leaf_'))]
  history = {k[len('history_'):]: arrays[k].tolist() for k in arrays if k.startswith('history_')}
  if len(leaves) != treedef.num_leaves or 'epoch' not in arrays:
    raise DamagedBuffer(f'{p} does not hold this buffer\'s training state; '
                        f'{RETRAIN.format(path=path)}.')
  return jax.tree_util.tree_unflatten(treedef, leaves), int(arrays['epoch']), history


def write_index(path: str, epoch: int, num_experts: int, history: dict,
                final_test_acc=None) -> dict:
  """index.json: `epoch` finished epochs (the buffer's progress marker, written last)."""
  index = {'finished_epochs': int(epoch), 'num_experts': int(num_experts),
           'train_loss': [float(v) for v in history.get('train_loss', [])],
           'seconds': [float(v) for v in history.get('seconds', [])]}
  if 'fiex_size' in history:
    index['fiex_size'] = [int(v) for v in history['fiex_size']]
  if final_test_acc is not None:
    index['final_test_acc'] = [float(a) for a in final_test_acc]
  files.write_json(os.path.join(path, INDEX), index)
  return index


def write_snapshot(path: str, epoch: int, flat: np.ndarray) -> None:
  """Every expert's flat parameters after `epoch` epochs, (E, P) float32."""
  files.write_atomic(epoch_path(path, epoch),
                     lambda f: np.save(f, np.ascontiguousarray(flat, np.float32)))
