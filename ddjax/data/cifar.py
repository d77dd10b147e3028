"""CIFAR-10/100 in the "python version" layout: an extracted directory or the original tarball.

Batches are Python pickles of {data: (N, 3072) uint8 channel-major rows, labels | fine_labels}.
They are read with a restricted unpickler that only reconstructs numpy arrays, lists, dicts and
plain values, so a tampered file cannot run code. Tarball members are read in memory.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from typing import Callable, Optional, Sequence

import numpy as np

from ddjax.data.dataset import Dataset, make_dataset, to_labels, to_unit_float

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                   'truck')

_SAFE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'),  # protocol-5 pickles
    ('numpy._core.numeric', '_frombuffer'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('_codecs', 'encode'),
}


class _SafeUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the numpy-array globals CIFAR pickles need."""

  def find_class(self, module, name):
    if (module, name) not in _SAFE_GLOBALS:
      raise pickle.UnpicklingError(f'global {module}.{name} is not allowed in a CIFAR pickle')
    if module.startswith('numpy.core.') and hasattr(np, '_core'):  # numpy 2 moved numpy.core;
      module = 'numpy._core.' + module[len('numpy.core.'):]  # avoid the deprecation shim
    return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
  try:
    obj = _SafeUnpickler(io.BytesIO(data), encoding='bytes').load()
  except Exception as e:  # noqa: BLE001 -- any failure means a bad file
    raise ValueError(f'file {where} is not a valid CIFAR pickle: {e}') from e
  if not isinstance(obj, dict):
    raise ValueError(f'file {where} is not a valid CIFAR pickle: expected a dict, got {type(obj)}')
  # Python-2 pickles have bytes keys; normalize to str.
  return {(k.decode('latin1') if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_names(layout: str) -> tuple[list[str], list[str], str, str, str]:
  """(train files, test files, meta file, label key, names key) of a CIFAR layout."""
  if layout == 'cifar10':
    return ([f'data_batch_{i}' for i in range(1, 6)], ['test_batch'], 'batches.meta', 'labels',
            'label_names')
  return ['train'], ['test'], 'meta', 'fine_labels', 'fine_label_names'


def _default_class_names(layout: str) -> Optional[tuple[str, ...]]:
  """Names used when the meta file is missing (CIFAR-100 has none: its meta file is required)."""
  return CIFAR10_CLASSES if layout == 'cifar10' else None


def _cifar_images(d: dict, where: str) -> np.ndarray:
  """(N, 3072) uint8 channel-major rows -> (N, 32, 32, 3) uint8."""
  x = np.asarray(d.get('data'))
  if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
    raise ValueError(f'file {where}: expected data of shape (N, 3072) uint8, got '
                     f'{x.shape} {x.dtype}')
  return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _load_cifar(read: Callable[[str], bytes], layout: str, source: str,
                default_names: Optional[Sequence[str]]) -> Dataset:
  """Read a CIFAR layout through `read(basename) -> bytes` (a directory or a tarball)."""
  train_files, test_files, meta_file, label_key, names_key = _cifar_names(layout)
  splits = []
  for files in (train_files, test_files):
    xs, ys = [], []
    for fname in files:
      d = _unpickle(read(fname), f'{source}:{fname}')
      x = _cifar_images(d, f'{source}:{fname}')
      if label_key not in d:
        raise ValueError(f'file {source}:{fname} has no {label_key!r} entry')
      xs.append(x)
      ys.append(to_labels(np.asarray(d[label_key]), x.shape[0], f'{source}:{fname}'))
    splits.append((to_unit_float(np.concatenate(xs), source), np.concatenate(ys)))
  try:
    meta = _unpickle(read(meta_file), f'{source}:{meta_file}')
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
  except FileNotFoundError:
    if default_names is None:
      raise
    names = tuple(default_names)
  (x_train, y_train), (x_test, y_test) = splits
  return make_dataset(layout, x_train, y_train, x_test, y_test, names, source)


def _cifar_dir_complete(base: str, layout: str) -> bool:
  train_files, test_files, meta_file, _, _ = _cifar_names(layout)
  required = train_files + test_files + ([meta_file] if layout == 'cifar100' else [])
  return os.path.isdir(base) and all(os.path.isfile(os.path.join(base, f)) for f in required)


def find_cifar(path: str, layout: str, tar_name: str,
               dir_name: str) -> Optional[tuple[str, str]]:
  """('tar' | 'dir', location) if `path` is, or directly holds, a CIFAR tarball or complete
  extracted directory (`tar_name`, `dir_name`) of `layout`; else None."""
  if os.path.isfile(path) and tarfile.is_tarfile(path):
    return 'tar', path
  if _cifar_dir_complete(path, layout):
    return 'dir', path
  if _cifar_dir_complete(os.path.join(path, dir_name), layout):
    return 'dir', os.path.join(path, dir_name)
  tar_path = os.path.join(path, tar_name)
  if os.path.isfile(tar_path):
    return 'tar', tar_path
  return None


def load_cifar_dir(path: str, layout: str) -> Dataset:
  """Load an extracted cifar-10-batches-py / cifar-100-python directory.

  `layout` is 'cifar10' or 'cifar100'.
  """

  def read(fname):
    with open(os.path.join(path, fname), 'rb') as f:
      return f.read()

  return _load_cifar(read, layout, path, _default_class_names(layout))


def load_cifar_tar(path: str, layout: str) -> Dataset:
  """Load the original CIFAR tarball directly (members are read in memory, nothing is extracted)."""
  try:
    tar = tarfile.open(path, 'r:*')
  except (tarfile.TarError, OSError) as e:
    raise ValueError(f'file {path} is not a readable tar archive: {e}') from e
  damaged = (tarfile.TarError, EOFError, zlib.error, OSError)   # a truncated or corrupt archive

  def fail(e):
    return ValueError(f'file {path} is a damaged tar archive ({type(e).__name__}: {e}); '
                      'download it again.')

  with tar:
    try:
      members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
    except damaged as e:
      raise fail(e) from e

    def read(fname):
      if fname not in members:
        raise FileNotFoundError(f'{path} has no member {fname}')
      try:
        return tar.extractfile(members[fname]).read()
      except damaged as e:
        raise fail(e) from e

    return _load_cifar(read, layout, path, _default_class_names(layout))
