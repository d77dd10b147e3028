"""`.npz` datasets: arrays x_train, y_train, x_test, y_test and optionally class_names.

Images uint8 0-255 or float in [0, 1], (N, H, W) or (N, H, W, C); labels integers.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from typing import Optional

import numpy as np

from ddjax.data.dataset import Dataset, make_dataset, to_labels, to_nhwc, to_unit_float


def find_npz(path: str) -> tuple[Optional[str], str]:
  """(the .npz file, '') if `path` is one or a directory holding exactly one; else (None, why)."""
  if os.path.isfile(path) and path.endswith('.npz'):
    return path, ''
  if os.path.isdir(path):
    npzs = sorted(f for f in os.listdir(path) if f.endswith('.npz'))
    if len(npzs) == 1:
      return os.path.join(path, npzs[0]), ''
    if len(npzs) > 1:
      return None, f'{len(npzs)} .npz files ({", ".join(npzs[:4])}...): pass the file itself'
  return None, ''


def load_npz(path: str | os.PathLike, name: str = 'npz') -> Dataset:
  """Load x_train, y_train, x_test, y_test (and optional class_names) from a .npz file."""
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in f.files]
      if missing:
        raise ValueError(f'file {path} lacks arrays {missing} (has {sorted(f.files)})')
      arrays = {k: f[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
      names = tuple(str(n) for n in f['class_names']) if 'class_names' in f.files else ()
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as e:
    if str(e).startswith(f'file {path}'):
      raise
    raise ValueError(f'file {path} is not a readable .npz archive ({e}); write it again '
                     '(numpy.savez).') from e
  xs, ys = [], []
  for split in ('train', 'test'):
    x = to_unit_float(to_nhwc(arrays[f'x_{split}'], f'{path}:x_{split}'), f'{path}:x_{split}')
    xs.append(x)
    ys.append(to_labels(arrays[f'y_{split}'], x.shape[0], f'{path}:y_{split}'))
  return make_dataset(name, xs[0], ys[0], xs[1], ys[1], names, path)
