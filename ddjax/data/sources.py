"""Dataset sources: IDX (MNIST layout), CIFAR-10/100 python pickles, and `.npz` files.

Every loader returns a `Dataset` of numpy arrays: images float32 (N, H, W, C) in [0, 1] and labels
int32 (N,). Nothing is cached: each `load_dataset` call reads the files again.

Where the files are looked for (first match wins), for a registry name NAME:

  1. `data_dir` itself, then `data_dir/<subdir>` for each of the dataset's subdirectory names
     (`NAME` and common spellings, e.g. `fashion-mnist`);
  2. `$DDJAX_DATA` itself, then `$DDJAX_DATA/<subdir>`;
  3. the Debian path, if the dataset has one (`/usr/share/datasets/fashion-mnist` for Fashion-MNIST,
     which `apt-get install dataset-fashion-mnist` fills).

If nothing matches, `DatasetNotFoundError` lists every path tried and how to get the files.

CIFAR files are Python pickles. They are read with a restricted unpickler that only reconstructs
numpy arrays, lists, dicts and plain values, so a tampered file cannot run code.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import tarfile
import zlib
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

ENV_VAR = 'DDJAX_DATA'

# ----------------------------------------------------------------------------------------------
# Registry

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
MNIST_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                   'truck')

IDX_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
             't10k-labels-idx1-ubyte')

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


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A labelled image dataset held in memory.

  Attributes:
    name: registry name ('fashion_mnist', 'cifar10', ...).
    x_train: float32 (N, H, W, C) in [0, 1].
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


# ----------------------------------------------------------------------------------------------
# IDX

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_GZIP_MAGIC = b'\x1f\x8b'


def _read_maybe_gzip(path: str) -> bytes:
  """The bytes of `path`, gunzipped if it starts with the gzip magic bytes (whatever its name)."""
  with open(path, 'rb') as f:
    raw = f.read()
  if raw[:2] == _GZIP_MAGIC:
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise ValueError(f'file {path} is not a valid IDX file: corrupt gzip stream ({e})') from e
  return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Read an IDX file (raw or gzip-compressed) into a numpy array of its native shape and dtype.

  Header: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D
  float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian uint32.
  Raises ValueError("file X is not a valid IDX file: ...") when the header or size is wrong.
  """
  path = os.fspath(path)
  data = _read_maybe_gzip(path)

  def bad(why):
    return ValueError(f'file {path} is not a valid IDX file: {why}')

  if len(data) < 4:
    raise bad(f'only {len(data)} bytes, shorter than the 4-byte magic number')
  if data[0] != 0 or data[1] != 0:
    raise bad(f'magic number starts with {data[0]:#04x} {data[1]:#04x}, expected 0x00 0x00')
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise bad(f'unknown dtype code {code:#04x}')
  if ndim < 1:
    raise bad('zero dimensions')
  header = 4 + 4 * ndim
  if len(data) < header:
    raise bad(f'truncated header ({len(data)} bytes, need {header} for {ndim} dimensions)')
  dims = tuple(int(d) for d in np.frombuffer(data, dtype='>u4', count=ndim, offset=4))
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  actual = len(data) - header
  if actual != expected:
    what = 'truncated' if actual < expected else 'trailing bytes'
    raise bad(f'{what}: shape {dims} needs {expected} data bytes, found {actual}')
  arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
  return arr.astype(dtype.newbyteorder('='))


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: Optional[bool] = None) -> None:
  """Write `array` as an IDX file; gzip-compressed if `compress` (default: path ends in '.gz')."""
  path = os.fspath(path)
  array = np.asarray(array)
  codes = {np.dtype(v).newbyteorder('='): k for k, v in _IDX_DTYPES.items()}
  dtype = array.dtype.newbyteorder('=')
  if dtype not in codes:
    raise ValueError(f'IDX cannot store dtype {array.dtype}')
  header = bytes([0, 0, codes[dtype], array.ndim]) + np.asarray(array.shape, '>u4').tobytes()
  data = header + array.astype(_IDX_DTYPES[codes[dtype]]).tobytes()
  if compress is None:
    compress = path.endswith('.gz')
  if compress:
    data = gzip.compress(data)
  with open(path, 'wb') as f:
    f.write(data)


def _find_idx_files(base: str) -> Optional[dict[str, str]]:
  """The four MNIST-layout files in directory `base` (raw or .gz), or None if any is missing."""
  if not os.path.isdir(base):
    return None
  found = {}
  for stem in IDX_FILES:
    for candidate in (stem, stem + '.gz'):
      p = os.path.join(base, candidate)
      if os.path.isfile(p):
        found[stem] = p
        break
    else:
      return None
  return found


def _to_unit_float(x: np.ndarray, what: str) -> np.ndarray:
  """uint8 0-255 -> float32 /255; float in [0, 1] -> float32. Anything else is an error."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255.0)
  if np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
    if x.size and (np.nanmin(x) < 0.0 or np.nanmax(x) > 1.0 or not np.all(np.isfinite(x))):
      raise ValueError(f'{what}: float images must lie in [0, 1], found range '
                       f'[{np.nanmin(x)}, {np.nanmax(x)}]')
    return x
  raise ValueError(f'{what}: images must be uint8 (0-255) or float in [0, 1], got {x.dtype}')


def _to_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or y.shape[0] != n:
    raise ValueError(f'{what}: labels must have shape ({n},), got {y.shape}')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{what}: labels must be integers, got {y.dtype}')
  if n and y.min() < 0:
    raise ValueError(f'{what}: negative label {y.min()}')
  return y.astype(np.int32)


def _nhwc(x: np.ndarray, what: str) -> np.ndarray:
  if x.ndim == 3:
    return x[..., None]
  if x.ndim == 4:
    return x
  raise ValueError(f'{what}: images must be (N,H,W) or (N,H,W,C), got shape {x.shape}')


def load_idx_dir(files: Mapping[str, str], name: str, class_names: Sequence[str],
                 source: str) -> Dataset:
  """Build a Dataset from the four MNIST-layout files `{stem: path}` (see IDX_FILES)."""
  arrays = {stem: read_idx(p) for stem, p in files.items()}
  xs, ys = [], []
  for split in ('train', 't10k'):
    x = arrays[f'{split}-images-idx3-ubyte']
    y = arrays[f'{split}-labels-idx1-ubyte']
    where = files[f'{split}-images-idx3-ubyte']
    x = _to_unit_float(_nhwc(x, where), where)
    xs.append(x)
    ys.append(_to_labels(y, x.shape[0], files[f'{split}-labels-idx1-ubyte']))
  return _make_dataset(name, xs[0], ys[0], xs[1], ys[1], tuple(class_names), source)


def _make_dataset(name, x_train, y_train, x_test, y_test, class_names, source,
                  num_classes=None) -> Dataset:
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


# ----------------------------------------------------------------------------------------------
# CIFAR (python pickle layout)

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
      ys.append(_to_labels(np.asarray(d[label_key]), x.shape[0], f'{source}:{fname}'))
    splits.append((_to_unit_float(np.concatenate(xs), source), np.concatenate(ys)))
  try:
    meta = _unpickle(read(meta_file), f'{source}:{meta_file}')
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
  except FileNotFoundError:
    if default_names is None:
      raise
    names = tuple(default_names)
  (x_train, y_train), (x_test, y_test) = splits
  return _make_dataset(layout, x_train, y_train, x_test, y_test, names, source)


def _cifar_dir_complete(base: str, layout: str) -> bool:
  train_files, test_files, meta_file, _, _ = _cifar_names(layout)
  required = train_files + test_files + ([meta_file] if layout == 'cifar100' else [])
  return os.path.isdir(base) and all(os.path.isfile(os.path.join(base, f)) for f in required)


def load_cifar_dir(path: str, layout: str) -> Dataset:
  """Load an extracted cifar-10-batches-py / cifar-100-python directory.

  `layout` is 'cifar10' or 'cifar100'.
  """

  def read(fname):
    with open(os.path.join(path, fname), 'rb') as f:
      return f.read()

  return _load_cifar(read, layout, path, DATASETS[layout]['class_names'])


def load_cifar_tar(path: str, layout: str) -> Dataset:
  """Load the original CIFAR tarball directly (members are read in memory, nothing is extracted)."""
  try:
    tar = tarfile.open(path, 'r:*')
  except (tarfile.TarError, OSError) as e:
    raise ValueError(f'file {path} is not a readable tar archive: {e}') from e
  with tar:
    members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}

    def read(fname):
      if fname not in members:
        raise FileNotFoundError(f'{path} has no member {fname}')
      return tar.extractfile(members[fname]).read()

    return _load_cifar(read, layout, path, DATASETS[layout]['class_names'])


# ----------------------------------------------------------------------------------------------
# .npz

def load_npz(path: str | os.PathLike, name: str = 'npz') -> Dataset:
  """Load x_train, y_train, x_test, y_test (and optional class_names) from a .npz file."""
  path = os.fspath(path)
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in f.files]
    if missing:
      raise ValueError(f'file {path} lacks arrays {missing} (has {sorted(f.files)})')
    arrays = {k: f[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
    names = tuple(str(n) for n in f['class_names']) if 'class_names' in f.files else ()
  xs, ys = [], []
  for split in ('train', 'test'):
    x = _to_unit_float(_nhwc(arrays[f'x_{split}'], f'{path}:x_{split}'), f'{path}:x_{split}')
    xs.append(x)
    ys.append(_to_labels(arrays[f'y_{split}'], x.shape[0], f'{path}:y_{split}'))
  return _make_dataset(name, xs[0], ys[0], xs[1], ys[1], names, path)


# ----------------------------------------------------------------------------------------------
# Search

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
  if system_dirs is None:
    system_dirs = [meta['debian_path']] if meta['debian_path'] else []
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
  for d in system_dirs:
    out.append((os.fspath(d), 'system'))
  seen, unique = set(), []
  for p, origin in out:
    if p not in seen:
      seen.add(p)
      unique.append((p, origin))
  return unique


def _meta(name: str) -> dict[str, Any]:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; known datasets: {", ".join(sorted(DATASETS))}')
  return DATASETS[name]


def _probe(name: str, path: str) -> tuple[Optional[tuple], str]:
  """((loader kind, location), note) if `path` holds dataset `name`, else (None, why not)."""
  fmt = _meta(name)['format']
  if fmt == 'idx':
    files = _find_idx_files(path)
    return (('idx', files), '') if files else (None, '')
  if fmt in ('cifar10', 'cifar100'):
    tar_name, dir_name = _meta(name)['files']
    dir_name = dir_name.rstrip('/')
    if os.path.isfile(path) and tarfile.is_tarfile(path):
      return ('tar', path), ''
    if _cifar_dir_complete(path, fmt):
      return ('dir', path), ''
    if _cifar_dir_complete(os.path.join(path, dir_name), fmt):
      return ('dir', os.path.join(path, dir_name)), ''
    tar_path = os.path.join(path, tar_name)
    if os.path.isfile(tar_path):
      return ('tar', tar_path), ''
    return None, ''
  if fmt == 'npz':
    if os.path.isfile(path) and path.endswith('.npz'):
      return ('npz', path), ''
    if os.path.isdir(path):
      npzs = sorted(f for f in os.listdir(path) if f.endswith('.npz'))
      if len(npzs) == 1:
        return ('npz', os.path.join(path, npzs[0])), ''
      if len(npzs) > 1:
        return None, f'{len(npzs)} .npz files ({", ".join(npzs[:4])}...): pass the file itself'
    return None, ''
  raise ValueError(f'unknown format {fmt!r}')


def locate_dataset(name: str, data_dir: Optional[str | os.PathLike] = None,
                   env: Optional[Mapping[str, str]] = None,
                   system_dirs: Optional[Sequence[str]] = None) -> tuple[str, Any]:
  """Find dataset `name`: returns (kind, location); raises DatasetNotFoundError if absent.

  kind is 'idx' (location: {stem: path} of the four files), 'dir' or 'tar' (CIFAR: a directory or
  tarball path) or 'npz' (the file path). Arguments as in `candidate_paths`.
  """
  meta = _meta(name)
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
    data_dir: a directory (or, for CIFAR, a tarball; for 'npz', the .npz file) searched first.
    env: environment mapping used for $DDJAX_DATA (default: os.environ); for tests.
    system_dirs: system paths searched last (default: the Debian path of the dataset); for tests.

  Returns:
    A Dataset with float32 (N, H, W, C) images in [0, 1] and int32 labels.
  Raises:
    ValueError: unknown name, or a file found but malformed.
    DatasetNotFoundError: no candidate path holds the files; the message lists them all.
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
