"""Which training examples each expert epoch uses: all of them, or PAD's FIEX schedule
(`ddjax.scoring.fiex`) when expert.fiex is on: examples ordered easiest first by EL2N scores
(computed once and cached in the buffer directory as scores_*.npz), an easy subset that grows to
the whole set and then loses its easiest examples. Every expert of a buffer trains on the same
subset in an epoch."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ddjax.data.prepared import cache_identity
from ddjax.distill.experts.step import fiex_key


def fiex_order(cfg, data, path: str, model, progress: Callable[[str], Any]) -> list[np.ndarray]:
  """FIEX's per-class difficulty order (`ddjax.scoring.fiex.difficulty_order`) of data's
  training set, from EL2N scores cached in `path` (`ddjax.scoring.cached_scores`)."""
  from ddjax import scoring
  from ddjax.scoring import fiex
  e = cfg.expert
  name = scoring.cache_name(kind='fiex_el2n', models=e.fiex_score_models,
                            epochs=e.fiex_score_epochs, **cache_identity(data))

  def compute():
    progress(f'FIEX: EL2N of {len(data.y_train)} examples from {e.fiex_score_models} networks '
             f'x {e.fiex_score_epochs} epochs')
    return {'el2n': fiex.el2n_difficulty(fiex_key(e.seed), model, data.x_train, data.y_train,
                                         e.fiex_score_models, e.fiex_score_epochs,
                                         int(e.batch_size), float(e.lr), float(e.momentum))}

  scores = scoring.cached_scores(path, name, compute)['el2n']
  return fiex.difficulty_order(scores, data.y_train, data.num_classes)


def epoch_subset(order: list[np.ndarray] | None, epoch: int, expert_block) -> np.ndarray | None:
  """The training indices of expert epoch `epoch` (0-based) under FIEX's schedule, or None (the
  whole set) without FIEX."""
  if order is None:
    return None
  from ddjax.scoring.fiex import fiex_indices, schedule_of
  return fiex_indices(order, epoch, **schedule_of(expert_block))
