"""The dataset registry, where each dataset's files are looked for, and `load_dataset`.

The readers of each format live in `idx`, `cifar`, `npz`, `npy`, `imagefolder` and
`tfds_source`; every one returns a `Dataset`: images float32 (N, H, W, C) in [0, 1] and labels int32
(N,). With `streaming` ('npy', 'image_folder', 'tfds'), the training images are a
`ddjax.data.streaming.Rows` view read batch by batch instead of an array. Nothing is cached: each
`load_dataset` call reads the files again. The options of the newer sources (image size,
channels, split names, TFDS name, streaming) come from the config's data block
(`source_options`).

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
from ddjax.data.dataset import Dataset, make_dataset, to_unit_float
from ddjax.data.idx import IDX_FILES, find_idx_files, load_idx_dir
from ddjax.data.imagefolder import is_image_folder, scan_image_folder
from ddjax.data.npy import NPY_FILES, find_npy, load_npy_dir
from ddjax.data.npz import find_npz, load_npz
from ddjax.data.streaming import Rows

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
    'npy': dict(
        format='npy',
        num_classes=None,
        image_shape=None,
        files=NPY_FILES,
        subdirs=('npy',),
        debian_path=None,
        class_names=None,  # from class_names.json, else the labels
        preprocessing='standard',
        streams=True,
        hint=('Pass --config.data.dir=DIR holding x_train.npy, y_train.npy, x_test.npy, y_test.npy '
              '(uint8 0-255 or float in [0, 1]) and optionally class_names.json; '
              'ddjax.data.write_npy(DIR, dataset) writes one from any loaded dataset.'),
    ),
    'image_folder': dict(
        format='image_folder',
        num_classes=None,  # one per class folder
        image_shape=None,  # data.image_size / data.channels
        files=('<train_split>/<class>/*.png|jpg|...',),
        subdirs=('image_folder',),
        debian_path=None,
        class_names=None,  # the class folder names, sorted
        preprocessing='standard',
        streams=True,
        hint=('Pass --config.data.dir=ROOT with ROOT/train/<class>/*.png|jpg and '
              'ROOT/test/<class>/... (torchvision ImageFolder layout; data.train_split / '
              'data.test_split name the two folders, e.g. val for ImageNette), or class folders '
              'directly under ROOT with data.test_fraction > 0.'),
    ),
    'tfds': dict(
        format='tfds',
        num_classes=None,
        image_shape=None,
        files=(),
        subdirs=(),
        debian_path=None,
        class_names=None,  # the label feature's names
        preprocessing='standard',
        streams=True,
        hint=('Set data.tfds_name (e.g. mnist) and prepare the dataset in the array_record format '
              'with `tfds build NAME --file_format=array_record`; data.dir is its data_dir.'),
    ),
}

# The config's data keys the sources read, with their defaults (ddjax.config's data block).
SOURCE_OPTIONS = dict(image_size=0, channels=0, train_split='train', test_split='test',
                      test_fraction=0.0, tfds_name='', streaming=False)


def source_options(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
  """The keyword options of `load_dataset` from a config's data block (defaults if absent)."""
  return {k: data_cfg.get(k, v) for k, v in SOURCE_OPTIONS.items()}


def streams(name: str) -> bool:
  """Whether dataset `name` can keep its training images on disk (data.streaming)."""
  return bool(_meta(name).get('streams', False))


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


def _probe(name: str, path: str,
           options: Optional[Mapping[str, Any]] = None) -> tuple[Optional[tuple], str]:
  """((loader kind, location), note) if `path` holds dataset `name`, else (None, why not)."""
  meta = _meta(name)
  fmt = meta['format']
  options = {**SOURCE_OPTIONS, **(options or {})}
  if fmt == 'npy':
    found = find_npy(path)
    return (('npy', found) if found else None), ''
  if fmt == 'image_folder':
    found = is_image_folder(path, options['train_split'], options['test_fraction'])
    return (('image_folder', path) if found else None), ''
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
                   system_dirs: Optional[Sequence[str]] = None,
                   options: Optional[Mapping[str, Any]] = None) -> tuple[str, Any]:
  """Find dataset `name`: returns (kind, location); raises DatasetNotFoundError if absent.

  kind is 'idx' (location: {stem: path} of the four files), 'dir' or 'tar' (CIFAR: a directory or
  tarball path), 'npz' (the file path), 'npy' or 'image_folder' (the directory). Arguments as in
  `candidate_paths` (options: `source_options`); a non-empty `data_dir` that does not exist
  raises at once.
  """
  meta = _meta(name)
  if data_dir:
    _check_data_dir(name, data_dir, system_dirs)
  candidates = candidate_paths(name, data_dir, env, system_dirs)
  tried = []
  for path, origin in candidates:
    found, note = _probe(name, path, options)
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
                 system_dirs: Optional[Sequence[str]] = None, image_size: int = 0,
                 channels: int = 0, train_split: str = 'train', test_split: str = 'test',
                 test_fraction: float = 0.0, tfds_name: str = '',
                 streaming: bool = False) -> Dataset:
  """Load dataset `name` (a DATASETS key) from the first place it is found.

  Args:
    name: 'fashion_mnist', 'mnist', 'cifar10', 'cifar100', 'npz', 'npy', 'image_folder' or 'tfds'.
    data_dir: a directory (or, for CIFAR, a tarball; for 'npz', the .npz file; for 'tfds', TFDS's
      data_dir) searched first; if given, it must exist.
    env: environment mapping used for $DDJAX_DATA (default: os.environ); for tests.
    system_dirs: system paths searched last (default: the Debian path of the dataset); for tests.
    image_size, channels: image folders and TFDS: the square size and channels (1 or 3) images are
      brought to; 0 keeps the first training image's (ddjax.data.imagefolder).
    train_split, test_split: image folders: the two split folders; TFDS: the two splits.
    test_fraction: image folders only: > 0 splits class folders directly under the root.
    tfds_name: 'tfds' only: the TFDS dataset name.
    streaming: 'npy', 'image_folder', 'tfds': x_train is a `Rows` view read batch by batch.

  Returns:
    A Dataset with float32 (N, H, W, C) images in [0, 1] (x_train a `Rows` view when streaming)
    and int32 labels.
  Raises:
    ValueError: unknown name, a file found but malformed, or streaming asked of a format that
      cannot stream.
    DatasetNotFoundError: `data_dir` given but missing (the message names it), or no candidate path
      holds the files (the message lists them all).
  """
  meta = _meta(name)
  if streaming and not meta.get('streams', False):
    able = ', '.join(sorted(k for k, m in DATASETS.items() if m.get('streams')))
    raise ValueError(f'data.streaming=True reads {able}; {name!r} is read into memory. Convert it '
                     'once with ddjax.data.write_npy(DIR, ddjax.data.load_dataset(...)) and use '
                     "data.name='npy', data.dir=DIR.")
  if meta['format'] == 'tfds':
    from ddjax.data.tfds_source import load_tfds   # imports tensorflow_datasets only when used
    if data_dir:
      _check_data_dir(name, data_dir, system_dirs)
    return load_tfds(tfds_name, os.fspath(data_dir) if data_dir else None,
                     train_split=train_split, test_split=test_split, image_size=image_size,
                     channels=channels, streaming=streaming, name=name)
  options = dict(image_size=image_size, channels=channels, train_split=train_split,
                 test_split=test_split, test_fraction=test_fraction)
  kind, where = locate_dataset(name, data_dir, env, system_dirs, options)
  if kind == 'npy':
    return load_npy_dir(where, name=name, streaming=streaming)
  if kind == 'image_folder':
    return _load_image_folder(name, where, streaming, options)
  if kind == 'idx':
    return load_idx_dir(where, name, meta['class_names'],
                        os.path.dirname(where[IDX_FILES[0]]))
  if kind == 'dir':
    return dataclasses.replace(load_cifar_dir(where, meta['format']), name=name)
  if kind == 'tar':
    return dataclasses.replace(load_cifar_tar(where, meta['format']), name=name)
  return load_npz(where, name=name)


def _load_image_folder(name: str, root: str, streaming: bool,
                       options: Mapping[str, Any]) -> Dataset:
  """An image folder as a Dataset: decoded into memory, or the training split streamed."""
  train, y_train, test, y_test, classes = scan_image_folder(root, **options)
  unit = lambda what: (lambda r: to_unit_float(r, what))
  x_test = to_unit_float(Rows(test)[:], root)
  x_train = Rows(train, unit(root))
  if not streaming:
    x_train = x_train[:]
  return make_dataset(name, x_train, y_train, x_test, y_test, tuple(classes), root,
                      num_classes=len(classes))
