"""The in-memory `Dataset` every loader returns, and the checks that turn raw arrays into one.

Images are float32 (N, H, W, C) in [0, 1]: uint8 0-255 is divided by 255, floats must already lie
in [0, 1], (N, H, W) gains a channel axis. Labels are int32 (N,), non-negative.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A labelled image dataset held in memory.

  Attributes:
    name: registry name ('fashion_mnist', 'cifar10', ...).
    x_train: float32 (N, H, W, C) in [0, 1]; a `ddjax.data.streaming.Rows` view of them when
      the source streams (data.streaming), read row by row when indexed.
    y_train: int32 (N,) in [0, num_classes).
    x_test: float32 (M, H, W, C) in [0, 1].
    y_test: int32 (M,).
    num_classes: number of classes K.
    class_names: K names.
    source: the path the arrays were read from.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  source: str

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C)."""
    return tuple(self.x_train.shape[1:])

  def __repr__(self) -> str:
    return (f'Dataset(name={self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, '
            f'num_classes={self.num_classes}, source={self.source!r})')


def to_unit_float(x: np.ndarray, what: str) -> np.ndarray:
  """uint8 0-255 -> float32 /255; float in [0, 1] -> float32. Anything else is an error."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255.0)
  if np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
    bad = x.size - int(np.isfinite(x).sum())
    if bad:
      raise ValueError(f'{what}: {bad} pixel values are NaN or infinite; replace them with '
                       'values in [0, 1] or drop those images.')
    if x.size and (x.min() < 0.0 or x.max() > 1.0):
      raise ValueError(f'{what}: float images must lie in [0, 1], found range '
                       f'[{x.min()}, {x.max()}]')
    return x
  raise ValueError(f'{what}: images must be uint8 (0-255) or float in [0, 1], got {x.dtype}')


def to_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
  """(n,) non-negative integer labels -> int32; `what` names the file in errors."""
  y = np.asarray(y)
  if y.ndim != 1 or y.shape[0] != n:
    raise ValueError(f'{what}: labels must have shape ({n},), got {y.shape}')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{what}: labels must be integers, got {y.dtype}')
  if n and y.min() < 0:
    raise ValueError(f'{what}: negative label {y.min()}')
  return y.astype(np.int32)


def to_nhwc(x: np.ndarray, what: str) -> np.ndarray:
  """(N, H, W) -> (N, H, W, 1); (N, H, W, C) unchanged."""
  if x.ndim == 3:
    return x[..., None]
  if x.ndim == 4:
    return x
  raise ValueError(f'{what}: images must be (N,H,W) or (N,H,W,C), got shape {x.shape}')


def make_dataset(name, x_train, y_train, x_test, y_test, class_names, source,
                 num_classes=None) -> Dataset:
  """A Dataset of converted arrays; K = max(len(class_names), largest label + 1)."""
  if x_train.shape[1:] != x_test.shape[1:]:
    raise ValueError(f'{source}: train images {x_train.shape[1:]} and test images '
                     f'{x_test.shape[1:]} differ in shape')
  if num_classes is None:
    num_classes = len(class_names) if class_names else 0
  top = max(int(y_train.max(initial=-1)), int(y_test.max(initial=-1))) + 1
  if class_names and top > num_classes:
    raise ValueError(f'{source}: label {top - 1} out of range for {num_classes} classes')
  num_classes = max(num_classes, top)
  if not class_names:
    class_names = tuple(str(i) for i in range(num_classes))
  return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                 num_classes=int(num_classes), class_names=tuple(class_names), source=source)
