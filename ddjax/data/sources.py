"""The dataset registry, where each dataset's files are looked for, and `load_dataset`.

The readers of each file format live in `idx`, `cifar` and `npz`; every one returns a `Dataset` of
numpy arrays: images float32 (N, H, W, C) in [0, 1] and labels int32 (N,). Nothing is cached: each
`load_dataset` call reads the files again.

Where the files are looked for, for a registry name NAME:

  - an explicit `data_dir` (`--config.data.dir`): itself, then `data_dir/<subdir>` for each of the
    dataset's subdirectory names (`NAME` and common spellings, e.g. `fashion-mnist`). A `data_dir`
    that does not exist is an error (`DatasetNotFoundError` naming it), not a reason to look
    elsewhere; one that exists but lacks the files is followed by the search order below.
  - the search order: `$DDJAX_DATA` itself, then `$DDJAX_DATA/<subdir>`; then the Debian path, if
    the dataset has one (`/usr/share/datasets/fashion-mnist` for Fashion-MNIST, which
    `apt-get install dataset-fashion-mnist` fills).

The first match wins. If nothing matches, `DatasetNotFoundError` lists every path tried and how to
get the files.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

from ddjax.data.cifar import CIFAR10_CLASSES, find_cifar, load_cifar_dir, load_cifar_tar
from ddjax.data.dataset import Dataset
from ddjax.data.idx import IDX_FILES, find_idx_files, load_idx_dir
from ddjax.data.npz import find_npz, load_npz

ENV_VAR = 'DDJAX_DATA'

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
MNIST_CLASSES = tuple(str(i) for i in range(10))

DATASETS: dict[str, dict[str, Any]] = {
    'fashion_mnist': dict(
        format='idx',
        num_classes=10,
        image_shape=(28, 28, 1),
        files=IDX_FILES,
        subdirs=('fashion_mnist', 'fashion-mnist'),
        debian_path='/usr/share/datasets/fashion-mnist',
        class_names=FASHION_MNIST_CLASSES,
        preprocessing='standard',
        hint=('On Debian/Ubuntu run `apt-get install dataset-fashion-mnist`, which puts the IDX '
              'files in /usr/share/datasets/fashion-mnist/; or put the four IDX files (raw or .gz) '
              'in a directory and pass --config.data.dir=DIR or set DDJAX_DATA=DIR.'),
    ),
    'mnist': dict(
        format='idx',
        num_classes=10,
        image_shape=(28, 28, 1),
        files=IDX_FILES,
        subdirs=('mnist',),
        debian_path='/usr/share/datasets/mnist',
        class_names=MNIST_CLASSES,
        preprocessing='standard',
        hint=('Put the four MNIST IDX files (raw or .gz) in a directory and pass '
              '--config.data.dir=DIR or set DDJAX_DATA=DIR.'),
    ),
    'cifar10': dict(
        format='cifar10',
        num_classes=10,
        image_shape=(32, 32, 3),
        files=('cifar-10-python.tar.gz', 'cifar-10-batches-py/'),
        subdirs=('cifar10', 'cifar-10'),
        debian_path=None,
        class_names=CIFAR10_CLASSES,
        preprocessing='zca',
        hint=('Download cifar-10-python.tar.gz (the "python version") from '
              'https://www.cs.toronto.edu/~kriz/cifar.html and pass --config.data.dir=PATH (the '
              'tarball, its directory, or the extracted cifar-10-batches-py) or set DDJAX_DATA.'),
    ),
    'cifar100': dict(
        format='cifar100',
        num_classes=100,
        image_shape=(32, 32, 3),
        files=('cifar-100-python.tar.gz', 'cifar-100-python/'),
        subdirs=('cifar100', 'cifar-100'),
        debian_path=None,
        class_names=None,  # from the `meta` file
        preprocessing='zca',
        hint=('Download cifar-100-python.tar.gz (the "python version") from '
              'https://www.cs.toronto.edu/~kriz/cifar.html and pass --config.data.dir=PATH (the '
              'tarball, its directory, or the extracted cifar-100-python) or set DDJAX_DATA.'),
    ),
    'npz': dict(
        format='npz',
        num_classes=None,  # from the labels / class_names
        image_shape=None,
        files=('*.npz',),
        subdirs=('npz',),
        debian_path=None,
        class_names=None,
        preprocessing='standard',
        hint=('Pass --config.data.dir=FILE.npz (or a directory holding exactly one .npz) with '
              'arrays x_train, y_train, x_test, y_test (uint8 0-255 or float in [0, 1]; (N,H,W) or '
              '(N,H,W,C)) and optionally class_names.'),
    ),
}


class DatasetNotFoundError(FileNotFoundError):
  """No files for a dataset were found; the message lists the paths tried and how to get them."""


def _meta(name: str) -> dict[str, Any]:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; known datasets: {", ".join(sorted(DATASETS))}')
  return DATASETS[name]


def _system_dirs(meta: Mapping[str, Any], system_dirs: Optional[Sequence[str]]) -> list[str]:
  """The given system paths, or by default the dataset's Debian path if it has one."""
  if system_dirs is None:
    return [meta['debian_path']] if meta['debian_path'] else []
  return [os.fspath(d) for d in system_dirs]


def candidate_paths(name: str, data_dir: Optional[str | os.PathLike] = None,
                    env: Optional[Mapping[str, str]] = None,
                    system_dirs: Optional[Sequence[str]] = None) -> list[tuple[str, str]]:
  """The (path, origin) pairs searched for dataset `name`, in order.

  Args:
    name: a DATASETS key.
    data_dir: the user's path (`--config.data.dir`), searched first: itself, then its subdirs.
    env: environment mapping for $DDJAX_DATA (default: os.environ).
    system_dirs: system-wide paths searched last (default: the registry's Debian path, if any).
  """
  meta = _meta(name)
  env = os.environ if env is None else env
  out = []

  def add(base, origin):
    base = os.path.expanduser(os.fspath(base))
    out.append((base, origin))
    for sub in meta['subdirs']:
      out.append((os.path.join(base, sub), origin))

  if data_dir:
    add(data_dir, 'data_dir')
  if env.get(ENV_VAR):
    add(env[ENV_VAR], '$' + ENV_VAR)
  for d in _system_dirs(meta, system_dirs):
    out.append((d, 'system'))
  seen, unique = set(), []
  for p, origin in out:
    if p not in seen:
      seen.add(p)
      unique.append((p, origin))
  return unique


def _probe(name: str, path: str) -> tuple[Optional[tuple], str]:
  """((loader kind, location), note) if `path` holds dataset `name`, else (None, why not)."""
  meta = _meta(name)
  fmt = meta['format']
  if fmt == 'idx':
    files = find_idx_files(path)
    return (('idx', files), '') if files else (None, '')
  if fmt in ('cifar10', 'cifar100'):
    tar_name, dir_name = meta['files']
    return find_cifar(path, fmt, tar_name, dir_name.rstrip('/')), ''
  if fmt == 'npz':
    found, note = find_npz(path)
    return (('npz', found) if found else None), note
  raise ValueError(f'unknown format {fmt!r}')


def _check_data_dir(name: str, data_dir: str | os.PathLike,
                    system_dirs: Optional[Sequence[str]]) -> None:
  """Raise DatasetNotFoundError if the explicit `data_dir` does not exist."""
  path = os.path.expanduser(os.fspath(data_dir))
  if os.path.exists(path):
    return
  meta = _meta(name)
  order = ', then '.join(['$' + ENV_VAR] + _system_dirs(meta, system_dirs))
  raise DatasetNotFoundError(
      f'dataset {name!r}: data.dir {path} does not exist. Fix data.dir (--config.data.dir), or '
      f'leave it empty to use the search order {order}.\nHow to get it: {meta["hint"]}')


def locate_dataset(name: str, data_dir: Optional[str | os.PathLike] = None,
                   env: Optional[Mapping[str, str]] = None,
                   system_dirs: Optional[Sequence[str]] = None) -> tuple[str, Any]:
  """Find dataset `name`: returns (kind, location); raises DatasetNotFoundError if absent.

  kind is 'idx' (location: {stem: path} of the four files), 'dir' or 'tar' (CIFAR: a directory or
  tarball path) or 'npz' (the file path). Arguments as in `candidate_paths`; a non-empty
  `data_dir` that does not exist raises at once.
  """
  meta = _meta(name)
  if data_dir:
    _check_data_dir(name, data_dir, system_dirs)
  candidates = candidate_paths(name, data_dir, env, system_dirs)
  tried = []
  for path, origin in candidates:
    found, note = _probe(name, path)
    if found is not None:
      return found
    tried.append(f'  {path}  ({origin}{"; " + note if note else ""})')
  files = ', '.join(f + ('[.gz]' if meta['format'] == 'idx' else '') for f in meta['files'])
  unset = []
  if not data_dir:
    unset.append('data_dir not given')
  if not (os.environ if env is None else env).get(ENV_VAR):
    unset.append(f'${ENV_VAR} not set')
  lines = [f'dataset {name!r} not found. Looked for {files} in:'] + (tried or ['  (nowhere)'])
  if unset:
    lines.append(f'  ({"; ".join(unset)})')
  lines.append('How to get it: ' + meta['hint'])
  raise DatasetNotFoundError('\n'.join(lines))


def load_dataset(name: str, data_dir: Optional[str | os.PathLike] = None, *,
                 env: Optional[Mapping[str, str]] = None,
                 system_dirs: Optional[Sequence[str]] = None) -> Dataset:
  """Load dataset `name` (a DATASETS key) from the first place it is found.

  Args:
    name: 'fashion_mnist', 'mnist', 'cifar10', 'cifar100' or 'npz'.
    data_dir: a directory (or, for CIFAR, a tarball; for 'npz', the .npz file) searched first; if
      given, it must exist.
    env: environment mapping used for $DDJAX_DATA (default: os.environ); for tests.
    system_dirs: system paths searched last (default: the Debian path of the dataset); for tests.

  Returns:
    A Dataset with float32 (N, H, W, C) images in [0, 1] and int32 labels.
  Raises:
    ValueError: unknown name, or a file found but malformed.
    DatasetNotFoundError: `data_dir` given but missing (the message names it), or no candidate path
      holds the files (the message lists them all).
  """
  meta = _meta(name)
  kind, where = locate_dataset(name, data_dir, env, system_dirs)
  if kind == 'idx':
    return load_idx_dir(where, name, meta['class_names'],
                        os.path.dirname(where[IDX_FILES[0]]))
  if kind == 'dir':
    return dataclasses.replace(load_cifar_dir(where, meta['format']), name=name)
  if kind == 'tar':
    return dataclasses.replace(load_cifar_tar(where, meta['format']), name=name)
  return load_npz(where, name=name)
