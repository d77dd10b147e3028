"""IDX files (the MNIST layout): read, write, and load the four train/test files as a Dataset.

Header: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, then each dimension as a big-endian uint32. A file is
gunzipped when it starts with the gzip magic bytes, whatever its name.
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Mapping, Optional, Sequence

import numpy as np

from ddjax.data.dataset import Dataset, make_dataset, to_labels, to_nhwc, to_unit_float

IDX_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
             't10k-labels-idx1-ubyte')

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
      raise ValueError(f'file {path} is not a valid IDX file: corrupt gzip stream ({e}); '
                       'replace it (download it again).') from e
  return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Read an IDX file (raw or gzip-compressed) into a numpy array of its native shape and dtype.

  Raises ValueError("file X is not a valid IDX file: ...") when the header or size is wrong.
  """
  path = os.fspath(path)
  data = _read_maybe_gzip(path)

  def bad(why):
    return ValueError(f'file {path} is not a valid IDX file: {why}; replace it (download it '
                      'again).')

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


def find_idx_files(base: str) -> Optional[dict[str, str]]:
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


def load_idx_dir(files: Mapping[str, str], name: str, class_names: Sequence[str],
                 source: str) -> Dataset:
  """Build a Dataset from the four MNIST-layout files `{stem: path}` (see IDX_FILES)."""
  arrays = {stem: read_idx(p) for stem, p in files.items()}
  xs, ys = [], []
  for split in ('train', 't10k'):
    x = arrays[f'{split}-images-idx3-ubyte']
    y = arrays[f'{split}-labels-idx1-ubyte']
    where = files[f'{split}-images-idx3-ubyte']
    x = to_unit_float(to_nhwc(x, where), where)
    xs.append(x)
    ys.append(to_labels(y, x.shape[0], files[f'{split}-labels-idx1-ubyte']))
  return make_dataset(name, xs[0], ys[0], xs[1], ys[1], tuple(class_names), source)
