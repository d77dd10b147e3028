"""Class-incremental continual learning with a distilled memory: the class orders and the
figures of the protocol (pure numpy).

The protocol (GDumb-style: Prabhu et al. 2020, a memory and a network trained from scratch on
it at every step), as DM's CL_DM.py (VICO-UoE/DatasetCondensation) runs it for distilled sets:
the K classes arrive in `steps` groups in a class order; at step t a set is made from that step's
classes alone and added to the memory; a network trained from scratch on the whole memory (every
set so far) is tested on the test images of every class seen so far (logits over all K classes,
argmax). CL_DM.py's setting: CIFAR-100, ConvNet, 20 images per class, 5- and 10-step learning,
5 class orders (numpy seeds 0-4), 3 networks per step trained 1000 epochs with DSA augmentation
for every method. FRePo (arXiv 2206.00719) evaluates its sets in a class-incremental setting too;
its text could not be retrieved here, so neither its exact setting nor its published figures are
quoted (none are invented).

Figures of a run, accuracies a[o, t] of order o after step t (fractions):
  final accuracy    mean_o a[o, T-1]                the whole memory, every class
  average accuracy  mean_o mean_t a[o, t]           average incremental accuracy (over steps)
"""
from __future__ import annotations

import numpy as np


def class_orders(num_classes: int, steps: int, orders: int, seed: int = 0,
                 min_classes_per_step: int = 1) -> list[list[list[int]]]:
  """`orders` class orders of `num_classes` classes, each split into `steps` consecutive groups:
  result[o][t] is the list of classes arriving at step t of order o.

  Every order is a seeded permutation (order 0 too, as DM's CL_DM.py): order o is
  np.random.RandomState(1000 * seed + o).permutation(num_classes), so for seed 0 the orders are
  CL_DM.py's (its np.random.seed(o); permutation) and other seeds give other orders. The groups
  are consecutive runs of the permutation, of sizes differing by at most one (the first
  num_classes mod steps groups one larger) when steps does not divide the classes; each class
  is in exactly one step.

  ValueError when orders < 1, steps < 1, or a step would get fewer than
  `min_classes_per_step` classes (steps > num_classes // min_classes_per_step)."""
  num_classes, steps, orders = int(num_classes), int(steps), int(orders)
  if num_classes < 1:
    raise ValueError(f'continual learning needs classes; got num_classes={num_classes}')
  if orders < 1:
    raise ValueError(f'continual orders={orders}: give at least 1 class order')
  least = max(1, int(min_classes_per_step))
  most = num_classes // least
  if steps < 1 or steps > most:
    raise ValueError(f'continual steps={steps} cannot split {num_classes} classes into steps of '
                     f'at least {least} class{"es" if least > 1 else ""}; choose steps in '
                     f'[1, {most}] (e.g. a divisor of {num_classes}: '
                     f'{", ".join(str(d) for d in range(1, most + 1) if num_classes % d == 0)})')
  out = []
  for o in range(orders):
    perm = np.random.RandomState(1000 * int(seed) + o).permutation(num_classes)
    out.append([[int(c) for c in g] for g in np.array_split(perm, steps)])
  return out


def seen_classes(groups: list[list[int]], step: int) -> list[int]:
  """The classes of steps 0..step of one order (`class_orders(...)[o]`), in arrival order."""
  return [c for g in groups[:step + 1] for c in g]


def seen_mask(labels: np.ndarray, classes) -> np.ndarray:
  """bool (N,): which integer labels (N,) are among `classes`."""
  return np.isin(np.asarray(labels), np.asarray(list(classes)))


def curve_figures(acc: np.ndarray) -> dict:
  """Figures of accuracies acc (orders, steps, networks), fractions: per step the mean over
  orders and networks and the std (ddof 0) over them, the per-order means, the final and the
  average accuracy (module docstring; each order's value the mean over its networks)."""
  acc = np.asarray(acc, np.float64)
  if acc.ndim != 3 or 0 in acc.shape:
    raise ValueError(f'curve_figures needs accuracies (orders, steps, networks); got {acc.shape}')
  per_order = acc.mean(-1)                               # (orders, steps)
  flat = acc.transpose(1, 0, 2).reshape(acc.shape[1], -1)
  return {'mean': flat.mean(-1).tolist(), 'std': flat.std(-1).tolist(),
          'per_order': per_order.tolist(), 'final': float(per_order[:, -1].mean()),
          'average': float(per_order.mean())}
