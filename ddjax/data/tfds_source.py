"""TFDS datasets through TFDS's random-access data sources (`tfds.data_source`, array_record).

Needs `tensorflow-datasets` (`pip install 'ddjax[tfds]'`), not TensorFlow: reading a prepared
dataset works without it. Preparing one (`tfds build NAME --file_format=array_record`, or
`download_and_prepare`) encodes images with TensorFlow, so that step needs TensorFlow once, on
any machine; the prepared directory can then be copied. ddjax never downloads: a dataset that is
not prepared under `data.dir` (default: TFDS's own, `$TFDS_DATA_DIR` or ~/tensorflow_datasets)
is an error saying how to prepare it.

The image and label features are the dataset's supervised keys (else 'image' and 'label'); the
label must be a ClassLabel, whose names become the class names. Images are uint8 and are brought
to `image_size` / `channels` as image folders are (`ddjax.data.imagefolder.to_array`) when they
differ; 0 keeps the dataset's own. Without `streaming`, both splits are read into memory; with
it, the training split stays a `Rows` view over the data source and only the labels are read
(one pass over the split, which decodes every example once).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from ddjax.data.dataset import Dataset, make_dataset, to_labels, to_unit_float
from ddjax.data.imagefolder import to_array
from ddjax.data.streaming import Rows

INSTALL = "pip install 'ddjax[tfds]' (tensorflow-datasets; TensorFlow is not needed to read)"


def import_tfds():
  """The tensorflow_datasets module; ImportError saying how to install it."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"data.name='tfds' needs tensorflow-datasets: {INSTALL}.") from e
  return tfds


class TFDSRows:
  """A row source over a TFDS data source: `rows[idx]` -> uint8 (b, H, W, C) images."""

  def __init__(self, source, image_key: str, size: tuple[int, int], channels: int):
    self.source, self.image_key = source, image_key
    self.size, self.channels = tuple(size), int(channels)
    self.shape = (len(source),) + self.size + (self.channels,)
    self.dtype = np.dtype(np.uint8)

  def convert(self, image) -> np.ndarray:
    """One example's image -> uint8 (H, W, C) of this source's size and channels."""
    a = np.asarray(image)
    a = a[..., None] if a.ndim == 2 else a
    if a.shape == self.shape[1:] and a.dtype == np.uint8:
      return a
    if a.dtype != np.uint8:
      raise ValueError(f'TFDS image feature {self.image_key!r} is {a.dtype}, not uint8 images')
    img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a[..., :3])
    return to_array(img, self.size, self.channels)

  def __getitem__(self, idx) -> np.ndarray:
    idx = np.atleast_1d(np.asarray(idx, np.int64))
    rows = [self.convert(self.source[int(i)][self.image_key]) for i in idx]
    return np.stack(rows) if rows else np.zeros((0,) + self.shape[1:], np.uint8)


def _not_found(tfds_name: str, data_dir: Optional[str], why: Exception):
  from ddjax.data.sources import DatasetNotFoundError
  where = data_dir or "TFDS's data directory ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  return DatasetNotFoundError(
      f'TFDS dataset {tfds_name!r} could not be opened in {where}: {why}\nHow to get it: prepare '
      f'it in the array_record format once, `tfds build {tfds_name} --file_format=array_record'
      + (f' --data_dir={data_dir}' if data_dir else '') + '` (preparing needs TensorFlow; '
      'reading it here needs only tensorflow-datasets), then pass that directory as data.dir.')


def load_tfds(tfds_name: str, data_dir: Optional[str] = None, *, train_split: str = 'train',
              test_split: str = 'test', image_size: int = 0, channels: int = 0,
              streaming: bool = False, name: str = 'tfds') -> Dataset:
  """The TFDS dataset `tfds_name` (e.g. 'mnist', 'cifar10', 'imagenette/160px') as a Dataset."""
  if not tfds_name:
    raise ValueError("data.name='tfds' needs data.tfds_name, the TFDS dataset name "
                     "(e.g. --config.data.tfds_name=mnist).")
  tfds = import_tfds()
  try:
    info = tfds.builder(tfds_name, data_dir=data_dir).info
  except Exception as e:  # unknown name, unreadable metadata: say what TFDS said
    raise _not_found(tfds_name, data_dir, e) from e
  image_key, label_key = info.supervised_keys or ('image', 'label')
  features = info.features
  if image_key not in features or label_key not in features:
    raise ValueError(f'TFDS dataset {tfds_name!r} has features {sorted(features.keys())}; ddjax '
                     f'needs an image {image_key!r} and a class label {label_key!r}.')
  if not hasattr(features[label_key], 'names'):
    raise ValueError(f'TFDS dataset {tfds_name!r}: feature {label_key!r} is not a ClassLabel')
  class_names = tuple(str(n) for n in features[label_key].names)
  sources = {}
  for split in (train_split, test_split):
    try:
      sources[split] = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # not prepared, prepared as tfrecord, unknown split
      raise _not_found(tfds_name, data_dir, e) from e
    if len(sources[split]) == 0:
      raise ValueError(f'TFDS dataset {tfds_name!r}: split {split!r} is empty')
  first = np.asarray(sources[train_split][0][image_key])
  first = first[..., None] if first.ndim == 2 else first
  size = (image_size, image_size) if image_size else tuple(first.shape[:2])
  channels = channels or (1 if first.shape[-1] == 1 else 3)
  xs, ys = [], []
  for split in (train_split, test_split):
    rows = TFDSRows(sources[split], image_key, size, channels)
    what = f'tfds:{tfds_name}[{split}]'
    if streaming and split == train_split:
      labels = [sources[split][i][label_key] for i in range(len(rows.source))]
      xs.append(Rows(rows, lambda r, w=what: to_unit_float(r, w)))
    else:
      images, labels = [], []
      for i in range(len(rows.source)):
        example = sources[split][i]
        images.append(rows.convert(example[image_key]))
        labels.append(example[label_key])
      xs.append(to_unit_float(np.stack(images), what))
    ys.append(to_labels(np.asarray(labels).reshape(-1), len(labels), what))
  return make_dataset(name, xs[0], ys[0], xs[1], ys[1], class_names,
                      f'tfds:{tfds_name}' + (f' in {data_dir}' if data_dir else ''),
                      num_classes=len(class_names))
