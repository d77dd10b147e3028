"""A dataset ready to distil: loaded, preprocessed (fit on train), as host float32 arrays.

A streamed training set (data.streaming) stays a `ddjax.data.streaming.Rows` view: x_train and
targets_train convert each batch as it is read; y_train (labels) and the test split are in memory.
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from ddjax.data.preprocess import Preprocessor, apply_preprocessor, default_preprocessing, \
    fit_preprocessor
from ddjax.data.sampling import centered_one_hot
from ddjax.data.streaming import Rows, is_streamed


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """What every stage after loading works on.

  Attributes:
    dataset: the loaded `ddjax.data.Dataset` (name, class names, source).
    pre: the fitted preprocessor (standardize / ZCA), inverted for export.
    x_train: (N, H, W, C) float32 model-space images; y_train: (N,) integer labels;
    targets_train: (N, K) centred one-hot targets (the real batch's 'y').
    (x_train and targets_train are `Rows` views when the training set is streamed.)
    x_test: (M, H, W, C) float32; y_test: (M,) integer labels.
    num_classes: K.
    classes: None, or for data restricted to some classes of another (`restrict_classes`) the
      original class of each of its K classes (K,): its class k is the original classes[k].
  """
  dataset: object
  pre: Preprocessor
  x_train: np.ndarray
  y_train: np.ndarray
  targets_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  classes: tuple[int, ...] | None = None

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])

  @property
  def class_names(self):
    return self.dataset.class_names

  def subset(self, indices: np.ndarray) -> 'PreparedData':
    """The same data with only the training examples at `indices` (K,) int, in every view of the
    training rows: x_train, y_train, targets_train and the loaded `dataset`'s x_train / y_train
    (the raw pixels a method may read), row i of each being original row indices[i]. The test
    set and the preprocessor (fitted on the whole training set) are unchanged."""
    indices = np.asarray(indices)
    take = lambda a: a.subset(indices) if is_streamed(a) else a[indices]
    ds = self.dataset
    if dataclasses.is_dataclass(ds):
      ds = dataclasses.replace(ds, x_train=take(ds.x_train), y_train=take(ds.y_train))
    return dataclasses.replace(self, dataset=ds, x_train=take(self.x_train),
                               y_train=take(self.y_train), targets_train=take(self.targets_train))

  def restrict_classes(self, classes) -> 'PreparedData':
    """The same data with only the classes `classes` (k distinct original class indices, in the
    order given), relabelled 0..k-1: its class j is original class classes[j].

    Both splits keep only those classes' rows (in their original order); the labels become local
    (y_train, y_test in [0, k)), targets_train the centred one-hot of the local labels over k
    classes, num_classes k, and the loaded `dataset` (raw pixels, class names) follows. The
    preprocessor is unchanged (fitted on the whole training set), so model-space images of the
    restricted data are those of the whole data: a set distilled from it lives in the same model
    space, and `lift_labels` maps its labels back to the original classes. `classes` records the
    original class of each local one (composed when restricting restricted data), which
    `cache_identity` includes so cached artefacts of the whole data are never reused for it.

    A method run on it (`ddjax.run(cfg, data=...)`) distils a k-class set: what continual
    learning distils at each step from that step's classes alone.
    """
    classes = [int(c) for c in np.asarray(classes).reshape(-1)]
    k, total = len(classes), self.num_classes
    if k == 0 or len(set(classes)) != k or min(classes) < 0 or max(classes) >= total:
      raise ValueError(f'restrict_classes needs distinct class indices in [0, {total}), at '
                       f'least one; got {classes}')
    local = np.full(total, -1, np.int64)
    local[classes] = np.arange(k)
    y_train, y_test = np.asarray(self.y_train), np.asarray(self.y_test)
    rows = np.flatnonzero(local[y_train] >= 0)
    test_rows = np.flatnonzero(local[y_test] >= 0)
    new_y = local[y_train[rows]].astype(np.int32)
    new_y_test = local[y_test[test_rows]].astype(np.int32)
    take = lambda a: a.subset(rows) if is_streamed(a) else np.asarray(a)[rows]
    x_train = take(self.x_train)
    if is_streamed(self.targets_train):
      targets = Rows(new_y, lambda y: centered_one_hot(y, k))
    else:
      targets = centered_one_hot(new_y, k)
    ds = self.dataset
    if dataclasses.is_dataclass(ds):
      names = getattr(ds, 'class_names', None)
      ds = dataclasses.replace(
          ds, x_train=take(ds.x_train), y_train=new_y, x_test=np.asarray(ds.x_test)[test_rows],
          y_test=new_y_test, num_classes=k,
          class_names=tuple(names[c] for c in classes) if names is not None else names)
    original = (tuple(classes) if self.classes is None
                else tuple(self.classes[c] for c in classes))
    return dataclasses.replace(self, dataset=ds, x_train=x_train, y_train=new_y,
                               targets_train=targets, x_test=np.asarray(self.x_test)[test_rows],
                               y_test=new_y_test, num_classes=k, classes=original)


FINGERPRINT_ROWS = 16
GENERIC_SOURCES = ('npz', 'npy', 'image_folder', 'tfds')   # names that do not say the content


def cache_identity(data: PreparedData) -> dict:
  """What tells an artefact cached for this training set (an expert buffer, an observer, scores)
  from one made on another set of the same name and size.

  A named dataset (fashion_mnist, cifar10, ...) is identified by its name: {}. A generic source
  (GENERIC_SOURCES: the name says nothing about the content) adds
  {'data_crc32': CRC32 of the labels and the first and last FINGERPRINT_ROWS preprocessed
  training images}, so two different files of the same size never share a cache. Data restricted
  to some classes (`PreparedData.restrict_classes`) adds {'classes': the original classes}.
  Reads only those rows of a streamed set.
  """
  restricted = {} if data.classes is None else {'classes': [int(c) for c in data.classes]}
  if str(data.dataset.name) not in GENERIC_SOURCES:
    return restricted
  n = len(data.y_train)
  rows = np.unique(np.r_[np.arange(min(n, FINGERPRINT_ROWS)),
                         np.arange(max(0, n - FINGERPRINT_ROWS), n)])
  crc = zlib.crc32(np.ascontiguousarray(np.asarray(data.y_train, np.int64)).tobytes())
  crc = zlib.crc32(np.ascontiguousarray(np.asarray(data.x_train[rows], np.float32)).tobytes(),
                   crc)
  return {'data_crc32': int(crc), **restricted}


def prepare(dataset, preprocessing: str = 'auto', zca_reg: float = 0.1) -> PreparedData:
  """Fit the preprocessor on `dataset`'s training images and apply it to both splits.

  preprocessing: 'auto' (FRePo's choice for the dataset), 'none', 'standard', 'zca' (FRePo's) or
  'zca_mtt' (MTT's kornia whitening; `ddjax.data.preprocess`). zca_reg: the ZCA regulariser.
  """
  kind = default_preprocessing(dataset.name) if preprocessing == 'auto' else preprocessing
  pre = fit_preprocessor(dataset.x_train, kind=kind, zca_reg=zca_reg)
  as_model = lambda x: np.asarray(apply_preprocessor(pre, x), np.float32)
  k = dataset.num_classes
  if is_streamed(dataset.x_train):     # stays on disk: batches are converted as they are read
    x_train = dataset.x_train.map(as_model)
    targets = Rows(np.asarray(dataset.y_train), lambda y: centered_one_hot(y, k))
  else:
    x_train, targets = as_model(dataset.x_train), centered_one_hot(dataset.y_train, k)
  return PreparedData(dataset=dataset, pre=pre, x_train=x_train, y_train=dataset.y_train,
                      targets_train=targets, x_test=as_model(dataset.x_test),
                      y_test=dataset.y_test, num_classes=k)
