"""TensorBoard summaries of a run (log.tensorboard), beside metrics.jsonl, through tensorboardX.

<workdir>/tensorboard gets, from process 0 only:
  distill/<metric>   every metric of metrics.jsonl at each log point (log.every), same values;
  distill/images     the labelled grid of the distilled set (as distilled.png) every
                     log.image_every steps and at the last step;
  results/<key>      every number of results.json (eval/..., krr_eval/..., distill/...) once the
                     run has been evaluated, at the last step.

tensorboardX needs only numpy and protobuf (`pip install 'ddjax[tensorboard]'`), no TensorFlow.
A resumed run starts its writer with purge_step = the resumed step + 1, so TensorBoard hides what
the interrupted run had logged after its last checkpoint.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import ml_collections
import numpy as np

SUBDIR = 'tensorboard'
INSTALL = "pip install 'ddjax[tensorboard]' (tensorboardX; no TensorFlow needed)"


def _summary_writer_class():
  try:
    from tensorboardX import SummaryWriter
  except ImportError as e:
    raise ImportError(f'log.tensorboard=True needs tensorboardX: {INSTALL}, or set '
                      'log.tensorboard=False.') from e
  return SummaryWriter


def flatten_numbers(tree: Mapping[str, Any], prefix: str = '') -> dict[str, float]:
  """{'a/b': float} for every int / float leaf of a nested dict (no booleans, strings, lists)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten_numbers(v, f'{prefix}{k}/'))
    elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
      out[f'{prefix}{k}'] = float(v)
  return out


class Summaries:
  """The run's TensorBoard writer; opened on first use (`begin` gives the resumed step).

  Args:
    logdir: the event files' directory.
    image_every: the distilled grid every this many steps (0: only at the last step).
  """

  def __init__(self, logdir: str, image_every: int = 0):
    self.logdir, self.image_every = logdir, int(image_every)
    self._writer_class = _summary_writer_class()     # fails at once if tensorboardX is missing
    self._writer = None

  def begin(self, start: int) -> None:
    """Open the writer for a run that resumes after step `start` (0: a fresh run)."""
    if self._writer is None:
      self._writer = self._writer_class(self.logdir, purge_step=start + 1 if start else None,
                                        flush_secs=30)

  @property
  def writer(self):
    self.begin(0)
    return self._writer

  def scalars(self, step: int, metrics: Mapping[str, float], prefix: str = 'distill/') -> None:
    """One scalar per metric, tagged prefix + name, at `step`."""
    for k, v in metrics.items():
      self.writer.add_scalar(prefix + k, float(v), step)

  def wants_image(self, step: int, last: bool) -> bool:
    return last or (self.image_every > 0 and step % self.image_every == 0)

  def image(self, step: int, image: np.ndarray, tag: str = 'distill/images') -> None:
    """An (H, W, 3) uint8 image at `step`."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'image must be (H, W, 3) uint8, got {image.shape} {image.dtype}')
    self.writer.add_image(tag, image, step, dataformats='HWC')

  def results(self, step: int, results: Mapping[str, Any]) -> None:
    """Every number of the results dict as results/<path> at `step`."""
    self.scalars(step, flatten_numbers(results), prefix='results/')

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def from_config(cfg: ml_collections.ConfigDict, workdir: str) -> Optional[Summaries]:
  """Summaries in <workdir>/tensorboard when log.tensorboard is on, on process 0; else None."""
  if not cfg.log.tensorboard or jax.process_index() != 0:
    return None
  return Summaries(os.path.join(workdir, SUBDIR), cfg.log.image_every)
