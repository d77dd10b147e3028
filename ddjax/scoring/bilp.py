"""BiLP's preemptive pruning: the empirical-loss criterion and class-wise selection, plus a score
cache on disk (Xu et al., "Distill Gold from Massive Ores", Sec. 4.1, Alg. 1 lines 1-2, supp. 12.4).

Criterion (supp. 12.4): train networks on the full real set for several trials, average the
per-sample loss curves over the trials, smooth each curve over epochs with a Gaussian filter of
sigma = 3 and read it at the last epoch ("approximately the weighted mean loss of the last 8
epochs"):

    score_i = (G_sigma * mean_t loss[t, :, i])[epoch]

Pruning (Alg. 1 line 2): D'_r = {x : l(x) < tau} with |D'_r| = (1 - alpha) |D_r|, class-wise
(supp. 12.3: "the removal of data samples is class-wise"), i.e. drop the alpha fraction with the
LARGEST loss of every class (`direction='drop_largest'`, the default).

The smoothing is numpy code equal to `scipy.ndimage.gaussian_filter1d` (same kernel, radius
int(truncate * sigma + 0.5), same boundary modes); scipy is not needed at run time.
"""
from __future__ import annotations

import fractions
import math
import os
import re
from typing import Any, Callable

import jax
import numpy as np

from ddjax.infra import artifacts
from ddjax.infra.files import write_npz

Array = jax.Array

DIRECTIONS = ('drop_largest', 'drop_smallest', 'random')
# scipy.ndimage mode -> numpy.pad mode.
_PAD_MODES = {'reflect': 'symmetric', 'mirror': 'reflect', 'nearest': 'edge', 'wrap': 'wrap',
              'constant': 'constant', 'grid-constant': 'constant', 'grid-mirror': 'symmetric',
              'grid-wrap': 'wrap'}


# -- the criterion --------------------------------------------------------------------------------
def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """The normalised 1-D Gaussian of scipy.ndimage.gaussian_filter1d: radius r =
  int(truncate * sigma + 0.5), weights exp(-x^2 / (2 sigma^2)) for x in -r..r, summing to 1."""
  if sigma <= 0:
    raise ValueError(f'the Gaussian sigma must be > 0, got {sigma}.')
  r = int(truncate * float(sigma) + 0.5)
  t = np.arange(-r, r + 1, dtype=np.float64)
  w = np.exp(-0.5 * (t / float(sigma)) ** 2)
  return w / w.sum()


def gaussian_smooth(curve, sigma: float = 3.0, axis: int = -1, truncate: float = 4.0,
                    mode: str = 'reflect', cval: float = 0.0) -> np.ndarray:
  """Gaussian smoothing along `axis`, equal to scipy.ndimage.gaussian_filter1d(curve, sigma, axis,
  mode=mode, cval=cval, truncate=truncate) (order 0).

  Boundary modes as in scipy: 'reflect' (default; d c b a | a b c d | d c b a), 'mirror'
  (d c b | a b c d | c b a), 'nearest', 'wrap', 'constant' (cval); padding repeats as needed
  when the kernel is longer than the curve. Computed in float64; float inputs keep their dtype,
  others come back as float64.
  """
  if mode not in _PAD_MODES:
    raise ValueError(f'unknown smoothing mode {mode!r}; allowed: {", ".join(_PAD_MODES)}')
  a = np.asarray(curve)
  out_dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64
  w = gaussian_kernel1d(sigma, truncate)
  r = (len(w) - 1) // 2
  a = np.moveaxis(a.astype(np.float64), axis, -1)
  n = a.shape[-1]
  if n == 0:
    return np.moveaxis(a, -1, axis).astype(out_dtype)
  pad = [(0, 0)] * (a.ndim - 1) + [(r, r)]
  pad_mode = _PAD_MODES[mode]
  if pad_mode == 'reflect' and n == 1:
    pad_mode = 'edge'  # scipy's 'mirror' of a single value is that value
  kwargs = {'constant_values': cval} if pad_mode == 'constant' else {}
  padded = np.pad(a, pad, mode=pad_mode, **kwargs)
  windows = np.lib.stride_tricks.sliding_window_view(padded, len(w), axis=-1)
  out = windows @ w
  return np.moveaxis(out, -1, axis).astype(out_dtype)


def empirical_loss_score(loss, sigma: float = 3.0, epoch: int = -1, truncate: float = 4.0,
                         mode: str = 'reflect') -> np.ndarray:
  """BiLP's preemptive criterion (supp. 12.4): loss (T, E, N) per-trial per-epoch losses (or
  (E, N), one trial) -> (N,): the trial-mean curve, Gaussian-smoothed over epochs (sigma = 3,
  scipy's 'reflect' boundary and truncate = 4 by default), read at `epoch` (default the last)."""
  loss = np.asarray(loss, np.float64)
  if loss.ndim == 3:
    loss = loss.mean(axis=0)
  if loss.ndim != 2:
    raise ValueError(f'empirical_loss_score needs (trials, epochs, N) or (epochs, N) losses, got '
                     f'shape {loss.shape}.')
  smooth = gaussian_smooth(loss, sigma, axis=0, truncate=truncate, mode=mode)
  return smooth[epoch].astype(np.float32)


# -- class-wise pruning ---------------------------------------------------------------------------
def num_kept_per_class(n: int, keep: fractions.Fraction) -> int:
  """ceil(keep * n) computed exactly, at least 1 when n >= 1 (0 for an absent class)."""
  if n == 0:
    return 0
  return max(1, min(n, math.ceil(keep * n)))


def _keep_fraction(alpha: float | None, keep_fraction: float | None) -> fractions.Fraction:
  if (alpha is None) == (keep_fraction is None):
    raise ValueError('prune_classwise: give exactly one of alpha (the fraction to drop) and '
                     'keep_fraction.')
  if alpha is not None:
    if not 0.0 <= alpha < 1.0:
      raise ValueError(f'prune_classwise: alpha must lie in [0, 1), got {alpha}.')
    return 1 - fractions.Fraction(repr(float(alpha)))
  if not 0.0 < keep_fraction <= 1.0:
    raise ValueError(f'prune_classwise: keep_fraction must lie in (0, 1], got {keep_fraction}.')
  return fractions.Fraction(repr(float(keep_fraction)))


def prune_classwise(scores, labels, alpha: float | None = None,
                    keep_fraction: float | None = None, direction: str = 'drop_largest',
                    key: Array | None = None) -> np.ndarray:
  """Class-wise preemptive pruning (BiLP Alg. 1 line 2): sorted indices of the kept examples.

  Of each class c with n_c examples, ceil((1 - alpha) n_c) are kept (computed exactly in decimal,
  so alpha = 0.3 of 10 keeps 7), at least 1:
    'drop_largest'   keep the smallest scores (BiLP: drop the largest empirical loss);
    'drop_smallest'  keep the largest scores;
    'random'         a uniform random subset of that size (the baseline; needs `key`, class c
                     uses fold_in(key, c)).
  Ties are broken by index (stable sort: the earlier example is kept first).

  Args:
    scores: (N,) finite floats (ignored by 'random'). labels: (N,) integers or (N, K) (argmax).
    alpha: fraction to drop in [0, 1), or keep_fraction in (0, 1] (exactly one of them).

  Returns (M,) int64 indices into the dataset, ascending.
  """
  if direction not in DIRECTIONS:
    raise ValueError(f'unknown pruning direction {direction!r}; allowed: {", ".join(DIRECTIONS)}')
  keep = _keep_fraction(alpha, keep_fraction)
  labels = np.asarray(labels)
  if labels.ndim == 2:
    labels = labels.argmax(-1)
  labels = labels.astype(np.int64)
  n = labels.shape[0]
  scores = np.asarray(scores, np.float64) if direction != 'random' else np.zeros(n)
  if scores.shape != (n,):
    raise ValueError(f'scores must be (N,) with N = {n} labels, got {scores.shape}.')
  if not np.all(np.isfinite(scores)):
    raise ValueError('prune_classwise: scores contain NaN or inf.')
  if direction == 'random' and key is None:
    raise ValueError("prune_classwise(direction='random') needs a PRNG key.")
  kept = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = num_kept_per_class(len(idx), keep)
    if direction == 'random':
      order = np.asarray(jax.random.permutation(jax.random.fold_in(key, int(c)), len(idx)))
    elif direction == 'drop_largest':
      order = np.argsort(scores[idx], kind='stable')
    else:
      order = np.argsort(-scores[idx], kind='stable')
    kept.append(idx[order[:k]])
  return np.sort(np.concatenate(kept)) if kept else np.zeros((0,), np.int64)


def stratify_classwise(scores, labels, num_strata: int = 10) -> list[np.ndarray]:
  """BiLP's stratified analysis (Sec. 5.4, Fig. 3): split every class, sorted by score from large
  to small, into `num_strata` contiguous parts of (nearly) equal size; stratum k is the union of
  the classes' k-th parts, so every stratum is class-balanced. S1 holds the largest scores.

  Args: scores (N,) finite floats; labels (N,) integers or (N, K) (argmax); num_strata >= 1, at
  most the smallest class size (else a stratum would miss a class).
  Returns num_strata ascending (M_k,) int64 index arrays that partition range(N). Ties by index.
  """
  labels = np.asarray(labels)
  if labels.ndim == 2:
    labels = labels.argmax(-1)
  scores = np.asarray(scores, np.float64)
  if scores.shape != labels.shape[:1]:
    raise ValueError(f'scores must be (N,) with N = {labels.shape[0]} labels, got {scores.shape}.')
  if not np.all(np.isfinite(scores)):
    raise ValueError('stratify_classwise: scores contain NaN or inf.')
  classes, counts = np.unique(labels, return_counts=True)
  if num_strata < 1 or num_strata > counts.min():
    raise ValueError(f'num_strata must lie in [1, {counts.min()}] (the smallest class), got '
                     f'{num_strata}.')
  strata = [[] for _ in range(num_strata)]
  for c in classes:
    idx = np.flatnonzero(labels == c)
    order = idx[np.argsort(-scores[idx], kind='stable')]
    for k, part in enumerate(np.array_split(order, num_strata)):
      strata[k].append(part)
  return [np.sort(np.concatenate(parts)).astype(np.int64) for parts in strata]


# -- the score cache ------------------------------------------------------------------------------
def cache_name(**setting: Any) -> str:
  """A file-name-safe name describing a scoring setting, e.g. cache_name(dataset='cifar10',
  model='convnet3', trials=50, epochs=100, lr=0.003, seed=0) ->
  'dataset=cifar10_epochs=100_lr=0.003_model=convnet3_seed=0_trials=50' (keys sorted)."""
  if not setting:
    raise ValueError('cache_name needs at least one key=value describing the setting.')
  parts = [f'{k}={v}' for k, v in sorted(setting.items())]
  return re.sub(r'[^A-Za-z0-9=._+-]', '-', '_'.join(parts))


def cache_path(directory: str, name: str) -> str:
  return os.path.join(directory, f'scores_{name}.npz')


def save_scores(directory: str, name: str, **arrays) -> str:
  """Write arrays to `<directory>/scores_<name>.npz` atomically (temporary file beside it, fsync,
  os.replace; `ddjax.infra.files.write_npz`). Returns the path."""
  if not arrays:
    raise ValueError('save_scores needs at least one array.')
  if '__name__' in arrays:
    raise ValueError("'__name__' is reserved in a score cache.")
  path = cache_path(directory, name)
  write_npz(path, __name__=np.array(name), **{k: np.asarray(v) for k, v in arrays.items()})
  return path


def load_scores(directory: str, name: str) -> dict[str, np.ndarray] | None:
  """The arrays saved under `name`, or None when there is no such file. An unreadable file (torn,
  corrupt, or written for another setting) raises ValueError naming the file to delete
  (`ddjax.infra.artifacts`: the file is the artifact, its stored name the record)."""
  path = cache_path(directory, name)
  fix = 'delete it to recompute the scores'
  arrays = artifacts.read_npz(path, 'score cache', fix)
  if arrays is None:
    return None
  stored = arrays.pop('__name__', None)
  artifacts.check({'setting': None if stored is None else str(stored)}, {'setting': name},
                  subject=f'score cache {path} was not written for this setting', fix=fix,
                  error=artifacts.RecordError)
  return arrays


def cached_scores(directory: str, name: str,
                  compute: Callable[[], dict[str, Any]]) -> dict[str, np.ndarray]:
  """Load the scores saved under `name`, or run `compute()` once, save and return its arrays."""
  arrays = load_scores(directory, name)
  if arrays is not None:
    return arrays
  arrays = {k: np.asarray(v) for k, v in compute().items()}
  save_scores(directory, name, **arrays)
  return arrays
