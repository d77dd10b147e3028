"""Training sets larger than host memory: `Rows`, an array view that reads only the rows indexed.

A streaming source (a memory-mapped `.npy` file, a TFDS random-access data source, an image
folder's files) is wrapped in `Rows`; `x[idx]` reads and converts just those rows, so the run
loop's sampler (`ddjax.runtime.loop.make_sampler`) gathers one batch at a time and the set itself
never sits in memory. Preprocessing composes lazily (`rows.map(fn)`), a subset composes its index
(`rows.subset(idx)`), and per-channel statistics come from one streaming pass
(`channel_moments`).

What needs the whole training set in memory cannot take a `Rows`: `np.asarray(rows)` (and so
`jnp.asarray`) raises `InMemoryRequiredError`, which says so and how to proceed, instead of
quietly loading everything.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import numpy as np

# Rows per chunk of a streaming pass: about this many bytes of float64 per chunk.
CHUNK_BYTES = 4 << 20


class InMemoryRequiredError(ValueError):
  """A feature needs the whole training set in memory, but it is streamed (data.streaming)."""


class Rows:
  """A read-only (N, ...) array view whose rows are read from `base` when indexed.

  Args:
    base: a row source: `shape` (N, ...) and numpy-style indexing by a sorted int64 array
      returning an ndarray (np.memmap, `TFDSRows`, `ImageFileRows`, any ndarray).
    fn: rows of base (b, ...) -> rows (b, ...), applied after each read (dtype conversion,
      preprocessing); identity if None.
    index: int64 (n,) positions in base of this view's rows (a subset), or None for all.

  Indexing with an int, a slice, an integer array or a boolean mask returns a numpy array; rows
  are read in sorted order (memory-map locality) and returned in the order asked.
  """

  def __init__(self, base: Any, fn: Optional[Callable[[np.ndarray], np.ndarray]] = None,
               index: Optional[np.ndarray] = None):
    self.base, self.fn = base, fn
    self.index = None if index is None else np.asarray(index, np.int64)
    n = int(base.shape[0]) if self.index is None else len(self.index)
    if n == 0:
      raise ValueError('a streaming view needs at least one row')
    probe = self._read(np.zeros(1, np.int64))       # one row fixes the converted shape / dtype
    self.shape = (n,) + tuple(probe.shape[1:])
    self.dtype = probe.dtype

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def nbytes(self) -> int:
    """Bytes the converted view would take in memory."""
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

  def __len__(self) -> int:
    return self.shape[0]

  def _positions(self, key) -> tuple[np.ndarray, bool]:
    """(positions (b,) in this view, whether key was a scalar)."""
    n = self.shape[0]
    if isinstance(key, (int, np.integer)):
      k = int(key) + n if key < 0 else int(key)
      if not 0 <= k < n:
        raise IndexError(f'index {key} out of range for {n} rows')
      return np.array([k], np.int64), True
    if isinstance(key, slice):
      return np.arange(*key.indices(n), dtype=np.int64), False
    key = np.asarray(key)
    if key.dtype == bool:
      if key.shape != (n,):
        raise IndexError(f'boolean index of shape {key.shape} for {n} rows')
      return np.flatnonzero(key).astype(np.int64), False
    if not np.issubdtype(key.dtype, np.integer) or key.ndim != 1:
      raise IndexError(f'Rows take an int, a slice, a 1-d integer array or a mask, not {key!r}')
    key = np.where(key < 0, key + n, key).astype(np.int64)
    if key.size and (key.min() < 0 or key.max() >= n):
      raise IndexError(f'index out of range for {n} rows')
    return key, False

  def _read(self, positions: np.ndarray) -> np.ndarray:
    where = positions if self.index is None else self.index[positions]
    order = np.argsort(where, kind='stable')
    rows = np.asarray(self.base[where[order]])
    if len(order) > 1 and np.any(order[1:] < order[:-1]):
      out = np.empty_like(rows)
      out[order] = rows
      rows = out
    return rows if self.fn is None else self.fn(rows)

  def __getitem__(self, key) -> np.ndarray:
    positions, scalar = self._positions(key)
    if positions.size == 0:
      return np.zeros((0,) + self.shape[1:], self.dtype)
    rows = self._read(positions)
    return rows[0] if scalar else rows

  def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> 'Rows':
    """The same rows with `fn` applied after this view's own conversion."""
    inner = self.fn
    return Rows(self.base, fn if inner is None else (lambda r: fn(inner(r))), self.index)

  def subset(self, indices) -> 'Rows':
    """The rows at `indices` (positions in this view) as a new view; nothing is read."""
    positions, _ = self._positions(np.asarray(indices))
    where = positions if self.index is None else self.index[positions]
    return Rows(self.base, self.fn, where)

  def chunks(self, rows_per_chunk: int) -> Iterator[np.ndarray]:
    """The view in order, `rows_per_chunk` rows at a time."""
    for start in range(0, len(self), rows_per_chunk):
      yield self[start:start + rows_per_chunk]

  def rows_per_chunk(self, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows whose float64 copy takes about `chunk_bytes` (at least 1)."""
    row = int(np.prod(self.shape[1:], dtype=np.int64)) * 8
    return max(1, chunk_bytes // max(row, 1))

  def __array__(self, dtype=None, copy=None):
    raise InMemoryRequiredError(
        f'this step needs the whole training set in memory as one array, but it is streamed from '
        f'disk (data.streaming=True; {self.shape} would take {self.nbytes / 2**30:.2f} GiB as '
        f'{self.dtype}). Streaming serves the distillation loop\'s batches; what reads every '
        'training example at once (BiLP preemptive pruning, training expert trajectories or '
        'an observer) needs data.streaming=False and the memory for it, or a smaller subset '
        'of the data written with ddjax.data.write_npy.')

  def __repr__(self) -> str:
    return f'Rows(shape={self.shape}, dtype={self.dtype}, base={type(self.base).__name__})'


def is_streamed(x: Any) -> bool:
  """Whether x is a streaming view (`Rows`) rather than an in-memory array."""
  return isinstance(x, Rows)


def channel_moments(x: Rows, chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) variance of x (N, ..., C), float64 (C,), in one pass.

  Chunks of about `chunk_bytes` of float64 are reduced to (count, mean, M2) and merged with
  Chan et al.'s pairwise update, which is as stable as the two-pass formula.
  """
  count, mean, m2 = 0, None, None
  for chunk in x.chunks(x.rows_per_chunk(chunk_bytes)):
    flat = np.asarray(chunk, np.float64).reshape(-1, chunk.shape[-1])
    n_b = flat.shape[0]
    mean_b = flat.mean(axis=0)
    flat -= mean_b
    m2_b = np.einsum('ij,ij->j', flat, flat)
    if mean is None:
      count, mean, m2 = n_b, mean_b, m2_b
      continue
    delta = mean_b - mean
    total = count + n_b
    mean = mean + delta * (n_b / total)
    m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
    count = total
  return mean, m2 / count
