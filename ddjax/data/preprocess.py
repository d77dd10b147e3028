"""Image preprocessing fitted on the train set: per-channel standardization and ZCA whitening.

'standard': x -> (x - mean_c) / std_c with per-channel mean and std over the train set.

'zca' (as in FRePo): standardize per channel, flatten each image to d = H*W*C values, then whiten
with the regularized ZCA matrix of the standardized train set. With C = X^T X / n (X the
standardized, flattened train images, not re-centred), C = U diag(s) U^T and
reg = zca_reg * trace(C) / d:

    W     = U diag(1 / sqrt(s + reg)) U^T      (applied: x_flat @ W)
    W_inv = U diag(sqrt(s + reg)) U^T          (exact inverse of W)

so the whitened train covariance is U diag(s / (s + reg)) U^T. Computed in float64, stored float32.

Covariance sample: when d <= 1024 (MNIST-sized images; X^T X costs n d^2, a few seconds even for
60000 images) all train images are used. For larger images (CIFAR, d = 3072) at most
`zca_max_samples` = 20000 images are used, a uniformly random subset drawn with a fixed seed
(`seed=0`): the fit stays deterministic and takes about 20 s on a shared 2-core CPU (measured),
and 20000 samples estimate a 3072 x 3072 covariance well. Pass `zca_max_samples` to override.
The per-channel mean and std always use every image.

A streamed training set (`ddjax.data.streaming.Rows`, data.streaming) is fitted the same way
without being loaded: the per-channel mean and variance in one chunked pass (Chan's merge of
chunk moments, float64), ZCA's covariance from its sample read chunk by chunk.

A `Preprocessor` is a frozen bundle of numpy arrays; `apply_preprocessor`/`invert_preprocessor` are
pure and work on numpy arrays (returning numpy) or jax arrays (returning jax arrays, jittable).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import numpy as np

from ddjax.data import sources, streaming

KINDS = ('none', 'standard', 'zca')
_STD_FLOOR = 1e-8  # a constant channel gets std 1e-8 instead of a division by zero
_AUTO_FULL_D = 1024
_AUTO_MAX_SAMPLES = 20000


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessor:
  """A fitted preprocessing, d = H*W*C.

  Attributes:
    kind: 'none', 'standard' or 'zca'.
    mean: float32 (C,) per-channel train mean (zeros for 'none').
    std: float32 (C,) per-channel train std (ones for 'none').
    zca: float32 (d, d) whitening matrix W (right-multiplies flattened images), or None.
    zca_inv: float32 (d, d) its inverse, or None.
  """
  kind: str
  mean: np.ndarray
  std: np.ndarray
  zca: Optional[np.ndarray] = None
  zca_inv: Optional[np.ndarray] = None


def default_preprocessing(name: str) -> str:
  """FRePo's default preprocessing kind for a registry dataset: 'standard' (MNIST-like) or 'zca'."""
  if name not in sources.DATASETS:
    raise ValueError(f'unknown dataset {name!r}; known datasets: '
                     f'{", ".join(sorted(sources.DATASETS))}')
  return sources.DATASETS[name]['preprocessing']


def _zca_matrices(x: np.ndarray, mean: np.ndarray, std: np.ndarray,
                  zca_reg: float) -> tuple[np.ndarray, np.ndarray]:
  """W and W_inv, float64 (d, d), from images x (n, H, W, C) standardized with mean/std (C,)."""
  n = x.shape[0]
  d = int(np.prod(x.shape[1:]))
  cov = np.zeros((d, d), np.float64)
  for i in range(0, n, 4096):  # standardize chunk by chunk: float64 copies stay 4096 x d
    c = ((x[i:i + 4096].astype(np.float64) - mean) / std).reshape(-1, d)
    cov += c.T @ c
  cov /= n
  s, u = np.linalg.eigh(cov)
  s = np.maximum(s, 0.0)  # round-off can make tiny eigenvalues negative
  reg = zca_reg * np.trace(cov) / d
  w = (u * (1.0 / np.sqrt(s + reg))) @ u.T
  w_inv = (u * np.sqrt(s + reg)) @ u.T
  return w, w_inv


def fit_preprocessor(x_train: np.ndarray, kind: str = 'standard', zca_reg: float = 0.1,
                     zca_max_samples: Optional[int] = None, seed: int = 0) -> Preprocessor:
  """Fit a preprocessing on train images.

  Args:
    x_train: (N, H, W, C) images (float in [0, 1]).
    kind: 'none', 'standard' or 'zca'.
    zca_reg: relative ZCA regularization; reg = zca_reg * trace(C) / d (FRePo: 0.1).
    zca_max_samples: cap on the images used for the ZCA covariance; None = all when d <= 1024,
      else 20000 (see the module docstring).
    seed: seed of the subsample when the cap applies.

  Returns:
    A Preprocessor with float32 arrays.
  """
  if kind not in KINDS:
    raise ValueError(f'unknown preprocessing {kind!r}; choose one of {KINDS}')
  streamed = streaming.is_streamed(x_train)
  x = x_train if streamed else np.asarray(x_train)
  if x.ndim != 4:
    raise ValueError(f'x_train must be (N, H, W, C), got shape {x.shape}')
  n, h, w, c = x.shape
  if kind == 'none':
    return Preprocessor('none', np.zeros(c, np.float32), np.ones(c, np.float32))
  # a streamed set: per-channel moments in one streaming pass, ZCA's sample read in chunks
  mean, var = streaming.channel_moments(x) if streamed else _channel_moments(x)
  std = np.maximum(np.sqrt(var), _STD_FLOOR)
  mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
  if kind == 'standard':
    return Preprocessor('standard', mean32, std32)

  d = h * w * c
  if zca_max_samples is None:
    zca_max_samples = n if d <= _AUTO_FULL_D else _AUTO_MAX_SAMPLES
  if n > zca_max_samples:
    idx = np.sort(np.random.default_rng(seed).choice(n, zca_max_samples, replace=False))
    x = x.subset(idx) if streamed else x[idx]
  w_mat, w_inv = _zca_matrices(x, mean, std, zca_reg)
  return Preprocessor('zca', mean32, std32, w_mat.astype(np.float32), w_inv.astype(np.float32))


def _channel_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) variance of x (N, H, W, C), float64, two-pass chunked."""
  flat = x.reshape(-1, x.shape[-1])
  mean = flat.mean(axis=0, dtype=np.float64)
  var = np.zeros(flat.shape[1], np.float64)
  for i in range(0, flat.shape[0], 1 << 20):
    var += ((flat[i:i + (1 << 20)].astype(np.float64) - mean) ** 2).sum(axis=0)
  return mean, var / flat.shape[0]


def _as_float(x: Any):
  if isinstance(x, jax.Array):
    return x.astype(np.float32)
  return np.asarray(x, np.float32)


def _matmul_flat(x, m: np.ndarray):
  """Right-multiply the flattened images of x (..., H, W, C) by m (d, d); keeps the shape."""
  shape = x.shape
  flat = x.reshape(shape[:-3] + (shape[-3] * shape[-2] * shape[-1],))
  return (flat @ m).reshape(shape)


def apply_preprocessor(p: Preprocessor, x):
  """Preprocess images x: (..., H, W, C) float -> same shape float32 (numpy in, numpy out; jax in,
  jax out)."""
  x = _as_float(x)
  if p.kind == 'none':
    return x
  x = (x - p.mean) / p.std
  if p.kind == 'zca':
    x = _matmul_flat(x, p.zca)
  return x


def invert_preprocessor(p: Preprocessor, x):
  """Exact inverse of apply_preprocessor: preprocessed (..., H, W, C) -> pixel space (~[0, 1])."""
  x = _as_float(x)
  if p.kind == 'none':
    return x
  if p.kind == 'zca':
    x = _matmul_flat(x, p.zca_inv)
  return x * p.std + p.mean


def clip_to_pixel_range(p: Preprocessor, x, low: float = 0.0, high: float = 1.0):
  """Preprocessed images x (..., H, W, C) clipped to the pixel range [low, high] of the data the
  preprocessing was fitted on: apply(clip(invert(x), low, high)). A learned set whose pixels left
  [0, 1] becomes the nearest set of displayable images (the identity on images already inside).
  numpy in, numpy out; jax in, jax out."""
  pixels = invert_preprocessor(p, x)
  clip = jax.numpy.clip if isinstance(pixels, jax.Array) else np.clip
  return apply_preprocessor(p, clip(pixels, low, high))


def preprocessor_to_dict(p: Preprocessor, prefix: str = '') -> dict[str, np.ndarray]:
  """Arrays for np.savez: {prefix+'kind': 0-d str array, 'mean', 'std'[, 'zca', 'zca_inv']}."""
  out = {prefix + 'kind': np.array(p.kind), prefix + 'mean': np.asarray(p.mean, np.float32),
         prefix + 'std': np.asarray(p.std, np.float32)}
  if p.zca is not None:
    out[prefix + 'zca'] = np.asarray(p.zca, np.float32)
    out[prefix + 'zca_inv'] = np.asarray(p.zca_inv, np.float32)
  return out


def preprocessor_from_dict(d: Mapping[str, Any], prefix: str = '') -> Preprocessor:
  """Inverse of preprocessor_to_dict; `d` may be a dict or an opened np.load(...) file."""
  kind = str(np.asarray(d[prefix + 'kind']))
  if kind not in KINDS:
    raise ValueError(f'unknown preprocessing kind {kind!r} in dict')
  zca = np.asarray(d[prefix + 'zca'], np.float32) if prefix + 'zca' in d else None
  zca_inv = np.asarray(d[prefix + 'zca_inv'], np.float32) if prefix + 'zca_inv' in d else None
  if kind == 'zca' and (zca is None or zca_inv is None):
    raise ValueError("preprocessing kind 'zca' needs the 'zca' and 'zca_inv' arrays")
  return Preprocessor(kind, np.asarray(d[prefix + 'mean'], np.float32),
                      np.asarray(d[prefix + 'std'], np.float32), zca, zca_inv)
