"""Class-balanced sampling and synthetic-set initialization.

All randomness comes from a numpy Generator passed in (or seeded from an int), so the same seed
gives the same synthetic set. Sets are ordered class by class: rows [c*ipc, (c+1)*ipc) hold class c.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

SeedOrRng = Union[int, np.random.Generator]
INITS = ('real', 'noise')
LABEL_INITS = ('centered_one_hot', 'one_hot')


def _rng(seed_or_rng: SeedOrRng) -> np.random.Generator:
  if isinstance(seed_or_rng, np.random.Generator):
    return seed_or_rng
  return np.random.default_rng(int(seed_or_rng))


def check_ipc(y: np.ndarray, ipc: int, num_classes: int,
              class_names: Optional[Sequence[str]] = None, what: str = 'distill.ipc') -> None:
  """Raise ValueError unless 1 <= ipc <= the size of the smallest class among labels y (N,)."""
  if int(ipc) != ipc or ipc < 1:
    raise ValueError(f'{what}={ipc}, but it must be an integer >= 1 (images per class)')
  counts = np.bincount(np.asarray(y).astype(np.int64), minlength=num_classes)[:num_classes]
  c = int(np.argmin(counts))
  if ipc > counts[c]:
    name = class_names[c] if class_names is not None else str(c)
    raise ValueError(f"{what}={ipc} but class '{name}' has only {counts[c]} training images; "
                     f'choose ipc <= {counts[c]}')


def class_balanced_indices(rng: np.random.Generator, y: np.ndarray, per_class: int,
                           num_classes: int) -> np.ndarray:
  """`per_class` distinct indices of each class, ordered class by class.

  Args:
    rng: numpy Generator.
    y: (N,) integer labels.
    per_class: indices drawn per class, without replacement.
    num_classes: K.

  Returns:
    int64 (K * per_class,); entries [c*per_class, (c+1)*per_class) have label c (in random order).
  """
  y = np.asarray(y)
  check_ipc(y, per_class, num_classes, what='per_class')
  out = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(num_classes)]
  return np.concatenate(out).astype(np.int64)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """float32 (n, K) one-hot rows of integer labels (n,)."""
  return np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


def is_one_hot(y) -> bool:
  """Whether every row of y (n, K) is a one-hot vector (hard labels)."""
  y = np.asarray(y)
  return bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(-1) == 1))


def centered_one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """FRePo's label init: (one_hot - 1/K) / sqrt(K/10), float32 (n, K); rows sum to zero.

  For K = 10 this is one_hot - 1/K; the sqrt(K/10) keeps the target norm comparable across K.
  """
  k = num_classes
  return ((one_hot(labels, k) - 1.0 / k) / np.sqrt(k / 10.0)).astype(np.float32)


def _labels(classes: np.ndarray, num_classes: int, label_init: str) -> np.ndarray:
  if label_init == 'centered_one_hot':
    return centered_one_hot(classes, num_classes)
  if label_init == 'one_hot':
    return one_hot(classes, num_classes)
  raise ValueError(f'unknown label_init {label_init!r}; choose one of {LABEL_INITS}')


def initial_labels(classes: np.ndarray, num_classes: int, label_init: str) -> np.ndarray:
  """float32 (n, K): the labels a set of images of `classes` (n,) starts from under `label_init`
  ('one_hot' or 'centered_one_hot', `LABEL_INITS`)."""
  return _labels(np.asarray(classes), num_classes, label_init)


def lift_labels(y: np.ndarray, classes: np.ndarray, original: Sequence[int], num_classes: int,
                label_init: str = 'one_hot') -> np.ndarray:
  """Labels of a set made on data restricted to k classes (`PreparedData.restrict_classes`),
  mapped into the whole data's K classes.

  y: (n, k) the set's labels over the local classes; classes: (n,) each row's local class;
  original: (k,) the original class of each local class; label_init: the labels' initial form.
  With L_m(c) the initial label of class c over m classes and E the (k, K) matrix placing local
  column j at column original[j]:

      lifted = L_K(original[classes]) + (y - L_k(classes)) E        (n, K) float32

  so a set whose labels were never learned gets exactly the labels the method gives its images
  over K classes (one-hot: one-hot), and a learned change of the labels is kept on the step's
  own classes; the other classes keep their initial value. (For soft-label sets stored as a
  teacher's logits, the other classes' entries are the initial value, not a low logit.)
  """
  y = np.asarray(y, np.float32)
  classes = np.asarray(classes).astype(np.int64)
  original = np.asarray(original).astype(np.int64).reshape(-1)
  k = len(original)
  if y.ndim != 2 or y.shape[1] != k or classes.shape != (y.shape[0],):
    raise ValueError(f'lift_labels: labels {y.shape} must be (n, {k}) with classes (n,), got '
                     f'classes {classes.shape}')
  if k and (original.min() < 0 or original.max() >= num_classes):
    raise ValueError(f'lift_labels: original classes {original.tolist()} must lie in '
                     f'[0, {num_classes})')
  lifted = _labels(original[classes], num_classes, label_init)
  lifted[:, original] += y - _labels(classes, k, label_init)
  return lifted.astype(np.float32)


def real_subset(seed_or_rng: SeedOrRng, x: np.ndarray, y: np.ndarray, ipc: int, num_classes: int,
                label_init: str = 'centered_one_hot') -> tuple[dict[str, np.ndarray], np.ndarray]:
  """A class-balanced random subset of real images, and the indices chosen.

  Args:
    seed_or_rng: int seed or numpy Generator.
    x: (N, H, W, C) images (already preprocessed).
    y: (N,) integer labels.
    ipc: images per class.
    num_classes: K.
    label_init: 'centered_one_hot' or 'one_hot'.

  Returns:
    ({'x': float32 (K*ipc, H, W, C), 'y': float32 (K*ipc, K)}, int64 indices (K*ipc,) into x).
  """
  if label_init not in LABEL_INITS:
    raise ValueError(f'unknown label_init {label_init!r}; choose one of {LABEL_INITS}')
  idx = class_balanced_indices(_rng(seed_or_rng), y, ipc, num_classes)
  classes = np.repeat(np.arange(num_classes), ipc)
  x = x if hasattr(x, 'shape') else np.asarray(x)   # arrays and streamed Rows read only idx
  syn = {'x': np.asarray(x[idx], np.float32),
         'y': _labels(classes, num_classes, label_init)}
  return syn, idx


def init_synthetic(seed_or_rng: SeedOrRng, x: np.ndarray, y: np.ndarray, ipc: int,
                   num_classes: int, init: str = 'real',
                   label_init: str = 'centered_one_hot') -> dict[str, np.ndarray]:
  """Initial synthetic set {'x': float32 (K*ipc, H, W, C), 'y': float32 (K*ipc, K)}.

  Args:
    seed_or_rng: int seed or numpy Generator.
    x: (N, H, W, C) real images (already preprocessed); for init='noise' only its shape is used.
    y: (N,) integer labels.
    ipc: images per class.
    num_classes: K.
    init: 'real' (class-balanced real images, as `real_subset`) or 'noise' (standard normal).
    label_init: 'centered_one_hot' (FRePo) or 'one_hot'.
  """
  if init == 'real':
    return real_subset(seed_or_rng, x, y, ipc, num_classes, label_init)[0]
  if init == 'noise':  # needs no real images per class, only ipc >= 1
    if int(ipc) != ipc or ipc < 1:
      raise ValueError(f'distill.ipc={ipc}, but it must be an integer >= 1 (images per class)')
    shape = (num_classes * ipc,) + tuple(np.shape(x)[1:])
    classes = np.repeat(np.arange(num_classes), ipc)
    return {'x': _rng(seed_or_rng).standard_normal(shape, dtype=np.float32),
            'y': _labels(classes, num_classes, label_init)}
  raise ValueError(f'unknown init {init!r}; choose one of {INITS}')
