"""`.npy` directories: the format that streams (memory-mapped), and `write_npy` to make one.

A directory holding x_train.npy, y_train.npy, x_test.npy, y_test.npy and optionally
class_names.json (a JSON list). Images uint8 0-255 (or float in [0, 1]), (N, H, W) or
(N, H, W, C); labels integers (N,). With `streaming` the training images are opened memory-mapped
(`np.load(mmap_mode='r')`) and read batch by batch; labels and the test split are read into
memory (labels: 4 bytes per example).

`write_npy(path, dataset)` writes any `Dataset`, an in-memory or a streamed one (an image folder,
a TFDS source), chunk by chunk into memory-mapped files, so a set larger than memory is converted
once and then streamed fast.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from ddjax.data.dataset import Dataset, make_dataset, to_labels, to_nhwc, to_unit_float
from ddjax.data.streaming import CHUNK_BYTES, Rows

NPY_FILES = ('x_train.npy', 'y_train.npy', 'x_test.npy', 'y_test.npy')


def find_npy(path: str) -> Optional[str]:
  """`path` if it is a directory holding the four .npy files, else None."""
  ok = os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in NPY_FILES)
  return path if ok else None


def _open(path: str, name: str, mmap: bool) -> np.ndarray:
  file = os.path.join(path, name)
  try:
    return np.load(file, mmap_mode='r' if mmap else None, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:   # a truncated or damaged file
    raise ValueError(f'file {file} is not a readable .npy array ({e}); write it again '
                     '(numpy.save or ddjax.data.write_npy).') from e


def read_class_names(path: str) -> tuple[str, ...]:
  """The JSON list of class names in `path`; ValueError naming the file when it is not one."""
  try:
    with open(path) as f:
      names = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'file {path} is not valid JSON ({e}); write it as a JSON list of class '
                     'names, e.g. ["cat", "dog"], or delete it (the labels then name '
                     'them).') from e
  if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
    raise ValueError(f'file {path} must hold a JSON list of class names, e.g. ["cat", "dog"], '
                     f'got {type(names).__name__}; fix or delete it.')
  return tuple(str(n) for n in names)


def _unit_rows(what: str):
  def fn(rows):
    return to_unit_float(to_nhwc(rows, what), what)
  return fn


def load_npy_dir(path: str | os.PathLike, name: str = 'npy', streaming: bool = False) -> Dataset:
  """Load an .npy directory; with `streaming`, x_train is a memory-mapped `Rows` view."""
  path = os.fspath(path)
  names_file = os.path.join(path, 'class_names.json')
  names = read_class_names(names_file) if os.path.isfile(names_file) else ()
  xs, ys = [], []
  for split in ('train', 'test'):
    what = os.path.join(path, f'x_{split}.npy')
    x = _open(path, f'x_{split}.npy', mmap=streaming and split == 'train')
    if x.ndim not in (3, 4):
      raise ValueError(f'{what}: images must be (N,H,W) or (N,H,W,C), got shape {x.shape}')
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
      raise ValueError(f'{what}: images must be uint8 (0-255) or float in [0, 1], got {x.dtype}')
    if x.shape[0] == 0:
      raise ValueError(f'{what} holds no images')
    if streaming and split == 'train':
      x = Rows(x, _unit_rows(what))
    else:
      x = to_unit_float(to_nhwc(np.asarray(x), what), what)
    xs.append(x)
    ys.append(to_labels(np.asarray(_open(path, f'y_{split}.npy', mmap=False)), x.shape[0],
                        os.path.join(path, f'y_{split}.npy')))
  return make_dataset(name, xs[0], ys[0], xs[1], ys[1], names, path)


def write_npy(path: str | os.PathLike, dataset: Dataset, dtype: str = 'uint8',
              chunk_bytes: int = CHUNK_BYTES) -> str:
  """Write `dataset` as an .npy directory at `path` (created), chunk by chunk; returns path.

  dtype: 'uint8' (round(255 x), lossless for 8-bit sources, a quarter of float32's size) or
  'float32'. Each array goes to a temporary name first and is renamed when complete.
  """
  if dtype not in ('uint8', 'float32'):
    raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  for split in ('train', 'test'):
    x = getattr(dataset, f'x_{split}')
    final = os.path.join(path, f'x_{split}.npy')
    tmp = final + '.tmp.npy'
    out = np.lib.format.open_memmap(tmp, mode='w+', dtype=dtype, shape=tuple(x.shape))
    row = int(np.prod(x.shape[1:], dtype=np.int64)) * 8
    step = max(1, chunk_bytes // max(row, 1))
    for start in range(0, len(x), step):
      chunk = np.asarray(x[start:start + step], np.float32)
      out[start:start + len(chunk)] = (np.round(chunk * 255) if dtype == 'uint8' else chunk)
    out.flush()
    del out
    os.replace(tmp, final)
    y = os.path.join(path, f'y_{split}.npy')
    np.save(y + '.tmp.npy', np.asarray(getattr(dataset, f'y_{split}'), np.int32))
    os.replace(y + '.tmp.npy', y)
  names = os.path.join(path, 'class_names.json')
  with open(names + '.tmp', 'w') as f:
    json.dump(list(dataset.class_names), f)
  os.replace(names + '.tmp', names)
  return path
