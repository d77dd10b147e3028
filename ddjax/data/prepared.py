"""A dataset ready to distil: loaded, preprocessed (fit on train), as host float32 arrays."""
from __future__ import annotations

import dataclasses

import numpy as np

from ddjax.data.preprocess import Preprocessor, apply_preprocessor, default_preprocessing, \
    fit_preprocessor
from ddjax.data.sampling import centered_one_hot


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """What every stage after loading works on.

  Attributes:
    dataset: the loaded `ddjax.data.Dataset` (name, class names, source).
    pre: the fitted preprocessor (standardize / ZCA), inverted for export.
    x_train: (N, H, W, C) float32 model-space images; y_train: (N,) integer labels;
    targets_train: (N, K) centred one-hot targets (the real batch's 'y').
    x_test: (M, H, W, C) float32; y_test: (M,) integer labels.
    num_classes: K.
  """
  dataset: object
  pre: Preprocessor
  x_train: np.ndarray
  y_train: np.ndarray
  targets_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])

  @property
  def class_names(self):
    return self.dataset.class_names

  def subset(self, indices: np.ndarray) -> 'PreparedData':
    """The same data with only the training examples at `indices` (the test set unchanged)."""
    return dataclasses.replace(self, x_train=self.x_train[indices], y_train=self.y_train[indices],
                               targets_train=self.targets_train[indices])


def prepare(dataset, preprocessing: str = 'auto', zca_reg: float = 0.1) -> PreparedData:
  """Fit the preprocessor on `dataset`'s training images and apply it to both splits.

  preprocessing: 'auto' (FRePo's choice for the dataset), 'none', 'standard' or 'zca'.
  """
  kind = default_preprocessing(dataset.name) if preprocessing == 'auto' else preprocessing
  pre = fit_preprocessor(dataset.x_train, kind=kind, zca_reg=zca_reg)
  as_model = lambda x: np.asarray(apply_preprocessor(pre, x), np.float32)
  return PreparedData(dataset=dataset, pre=pre, x_train=as_model(dataset.x_train),
                      y_train=dataset.y_train,
                      targets_train=centered_one_hot(dataset.y_train, dataset.num_classes),
                      x_test=as_model(dataset.x_test), y_test=dataset.y_test,
                      num_classes=dataset.num_classes)
