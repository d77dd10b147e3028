"""PAD's FIEX: expert training on difficulty-scheduled data (Li, Guo et al. 2024, Sec. 3.2).

Difficulty is EL2N, chi(x, y) = E ||softmax(f(w_t, x)) - onehot(y)||_2 over a few early-training
networks (higher = harder). The experts first train on the easiest data of every class, add
harder examples linearly until `add_end_epoch`, train on everything, then drop the easiest
examples of every class in two stages. The official code (`buffer/buffer_CL.py:55-71`,
`utils/utils_cl_scheduler.py:3-4`) at 0-based training epoch e (the epoch whose end gives snapshot
e + 1; `for e in range(train_epochs)`), with n the examples of a class sorted easy -> hard:

    e <= add_end:                  keep the easiest int(p * n),
                                   p = min(1, IR + (1 - IR) * e / add_end)
    add_end < e <= remove[0]:      keep all n
    remove[0] < e <= remove[1]:    drop the easiest int(ratio[0] * n)
    e > remove[1]:                 drop the easiest int(ratio[1] * n)

Here n is each class's own size, counted from the data. The official code hard-codes n = 5000
(CIFAR-10 only): on CIFAR-100 / Tiny (500 per class) its add phase keeps everything and its
removal phases keep nothing; on Fashion-MNIST it would ignore 1000 images per class (references
section 3.1, bug 1). `add_end = 0` means no add phase (p = 1 from epoch 0; the official formula
divides by zero).

The official scores are precomputed files with no published scoring code; ddjax computes EL2N
itself (`el2n_difficulty`): the mean over K networks, each trained a few epochs with
`ddjax.scoring.score_trials` (plain SGD, no augmentation), of the EL2N after its last epoch. K
and the epochs are ddjax's choice (`expert.fiex_score_models`, `expert.fiex_score_epochs`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np


def fiex_window(n: int, epoch: int, init_ratio: float = 0.75, add_end_epoch: int = 20,
                remove_epochs: Sequence[int] = (40, 60),
                remove_ratios: Sequence[float] = (0.1, 0.2)) -> tuple[int, int]:
  """(lo, hi): the positions [lo, hi) of a class of n examples, sorted easy -> hard, that
  0-based training epoch `epoch` trains on (the module docstring's rule)."""
  n, e = int(n), int(epoch)
  first, second = (int(r) for r in remove_epochs)
  if e <= add_end_epoch:
    p = 1.0 if add_end_epoch == 0 else min(1, init_ratio + (1 - init_ratio) * e / add_end_epoch)
    return 0, int(p * n)
  if e <= first:
    return 0, n
  ratio = remove_ratios[0] if e <= second else remove_ratios[1]
  return int(ratio * n), n


def fiex_counts(n_per_class: Sequence[int], epoch: int, **schedule) -> np.ndarray:
  """Examples of every class used at 0-based training epoch `epoch`: (C,) int64.

  schedule: init_ratio, add_end_epoch, remove_epochs, remove_ratios (see `fiex_window`)."""
  return np.asarray([hi - lo for lo, hi in (fiex_window(n, epoch, **schedule)
                                            for n in n_per_class)], np.int64)


def fiex_indices(order_per_class: Sequence[np.ndarray], epoch: int, **schedule) -> np.ndarray:
  """The training-set indices used at 0-based training epoch `epoch`, ascending (int64).

  order_per_class: one array per class of that class's indices sorted easy -> hard
  (`difficulty_order`). schedule: see `fiex_window`."""
  parts = []
  for order in order_per_class:
    lo, hi = fiex_window(len(order), epoch, **schedule)
    parts.append(np.asarray(order[lo:hi], np.int64))
  return np.sort(np.concatenate(parts)) if parts else np.zeros((0,), np.int64)


def schedule_of(expert_block) -> dict:
  """The schedule keywords of a config's expert block (`cfg.expert`)."""
  return {'init_ratio': float(expert_block.fiex_init_ratio),
          'add_end_epoch': int(expert_block.fiex_add_end_epoch),
          'remove_epochs': tuple(int(v) for v in expert_block.fiex_remove_epochs),
          'remove_ratios': tuple(float(v) for v in expert_block.fiex_remove_ratios)}


def difficulty_order(scores, labels, num_classes: int | None = None) -> list[np.ndarray]:
  """Per class, the indices of that class sorted by score ascending (easy -> hard; ties by index).

  scores (N,) floats, labels (N,) ints -> [indices of class c sorted] for c in 0..C-1."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.shape != labels.shape or scores.ndim != 1:
    raise ValueError(f'scores and labels must both be (N,), got {scores.shape}, {labels.shape}.')
  num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
  out = []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    out.append(idx[np.argsort(scores[idx], kind='stable')])
  return out


def el2n_difficulty(key: jax.Array, model, x, y, num_models: int, epochs: int,
                    batch_size: int = 256, learning_rate: float = 0.01, momentum: float = 0.0,
                    progress: Callable[[str], Any] | None = None) -> np.ndarray:
  """EL2N difficulty of every training example: (N,) float32, the mean over `num_models`
  networks (`model`, fresh each) trained `epochs` epochs with SGD (lr, momentum; no
  augmentation; `ddjax.scoring.score_trials`) of ||softmax(f(x)) - onehot(y)||_2 after the last
  epoch."""
  from ddjax.scoring.per_sample import score_trials
  out = score_trials(key, model, x, y, int(num_models), int(epochs), batch_size=batch_size,
                     learning_rate=learning_rate, optimizer='sgd',
                     momentum=float(momentum), progress=progress)
  return out['el2n'][:, -1].mean(axis=0).astype(np.float32)
