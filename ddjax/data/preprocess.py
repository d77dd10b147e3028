"""Image preprocessing fitted on the train set: per-channel standardization and ZCA whitening.

'standard': x -> (x - mean_c) / std_c with per-channel mean and std over the train set.

'zca' (as in FRePo): standardize per channel, flatten each image to d = H*W*C values, then whiten
with the regularized ZCA matrix of the standardized train set. With C = X^T X / n (X the
standardized, flattened train images, not re-centred), C = U diag(s) U^T and
reg = zca_reg * trace(C) / d:

    W     = U diag(1 / sqrt(s + reg)) U^T      (applied: x_flat @ W)
    W_inv = U diag(sqrt(s + reg)) U^T          (exact inverse of W)

so the whitened train covariance is U diag(s / (s + reg)) U^T. Computed in float64, stored float32.

'zca_mtt' (as MTT, DATM, PAD and TESLA: kornia's `ZCAWhitening(eps=0.1)` fitted on the raw [0, 1]
pixels, no standardisation): with mu (d,) the per-pixel train mean, X_c the centred, flattened
train images and the unbiased covariance C = X_c^T X_c / (n - 1) = U diag(s) U^T,

    W     = U diag(1 / sqrt(s + eps)) U^T      (applied: (x_flat - mu) @ W)
    W_inv = U diag(sqrt(s + eps)) U^T          (inverse: x_flat @ W_inv + mu)

with eps = zca_reg absolute (kornia's eps, MTT's 0.1), not relative to the spectrum. Standardising
by the channel std sigma scales the spectrum by 1 / sigma^2, so in 'zca''s units MTT's eps is
0.1 / sigma^2 (0.8 on Fashion-MNIST, sigma = 0.353) against 'zca''s 0.1 x the mean eigenvalue
(0.1): it damps more directions and whitens less, and its whitened pixels are smaller, the scale
MTT's image learning rates (lr_img 100 / 1000) were tuned on. Measured on 10000 Fashion-MNIST
training images (raw mean eigenvalue 0.087, 731 of the 784 below 0.1): whitened pixels' std 0.37
('zca_mtt') against 0.63 ('zca'), whitened spectrum summing to 107 against 306 (of 784). The mean
is a per-pixel (H, W, C) array (`Preprocessor.mean`), the std ones.

Covariance sample: when d <= 1024 (MNIST-sized images; X^T X costs n d^2, a few seconds even for
60000 images) all train images are used. For larger images (CIFAR, d = 3072) at most
`zca_max_samples` = 20000 images are used, a uniformly random subset drawn with a fixed seed
(`seed=0`): the fit stays deterministic and takes about 20 s on a shared 2-core CPU (measured),
and 20000 samples estimate a 3072 x 3072 covariance well. Pass `zca_max_samples` to override.
The per-channel mean and std always use every image ('zca_mtt': its per-pixel mean is that of the
covariance sample, as kornia fits both on what it is given).

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

KINDS = ('none', 'standard', 'zca', 'zca_mtt')
ZCA_KINDS = ('zca', 'zca_mtt')
_STD_FLOOR = 1e-8  # a constant channel gets std 1e-8 instead of a division by zero
_AUTO_FULL_D = 1024
_AUTO_MAX_SAMPLES = 20000


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessor:
  """A fitted preprocessing, d = H*W*C.

  Attributes:
    kind: 'none', 'standard', 'zca' or 'zca_mtt'.
    mean: float32 (C,) per-channel train mean (zeros for 'none'); 'zca_mtt': (H, W, C) per-pixel.
    std: float32 (C,) per-channel train std (ones for 'none' and 'zca_mtt').
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


def _kornia_zca(x, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """kornia's `zca_mean(x, unbiased=True, eps)`: (W, W_inv, mu), float64 (d, d), (d, d), (d,),
  from images x (n, H, W, C) (flattened in ddjax's HWC order: W permutes with the pixels, so the
  whitened images are kornia's in its CHW order, transposed)."""
  n = x.shape[0]
  if n < 2:
    raise ValueError('zca_mtt needs at least 2 training images (an unbiased covariance).')
  d = int(np.prod(x.shape[1:]))
  mu = np.zeros(d, np.float64)
  for i in range(0, n, 4096):
    mu += np.asarray(x[i:i + 4096], np.float64).reshape(-1, d).sum(0)
  mu /= n
  cov = np.zeros((d, d), np.float64)
  for i in range(0, n, 4096):
    c = np.asarray(x[i:i + 4096], np.float64).reshape(-1, d) - mu
    cov += c.T @ c
  cov /= n - 1
  s, u = np.linalg.eigh(cov)     # = the SVD of a symmetric PSD matrix
  s = np.maximum(s, 0.0)
  w = (u * (1.0 / np.sqrt(s + eps))) @ u.T
  w_inv = (u * np.sqrt(s + eps)) @ u.T
  return w, w_inv, mu


def fit_preprocessor(x_train: np.ndarray, kind: str = 'standard', zca_reg: float = 0.1,
                     zca_max_samples: Optional[int] = None, seed: int = 0) -> Preprocessor:
  """Fit a preprocessing on train images.

  Args:
    x_train: (N, H, W, C) images (float in [0, 1]).
    kind: 'none', 'standard', 'zca' or 'zca_mtt'.
    zca_reg: 'zca': relative regularization, reg = zca_reg * trace(C) / d (FRePo: 0.1);
      'zca_mtt': kornia's absolute eps (MTT: 0.1).
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
  if kind == 'zca_mtt':
    if not zca_reg > 0:
      raise ValueError(f"data.zca_reg={zca_reg} must be > 0 (zca_mtt's eps; MTT's is 0.1).")
    x = _zca_sample(x, zca_max_samples, seed)
    w_mat, w_inv, mu = _kornia_zca(x, zca_reg)
    return Preprocessor('zca_mtt', mu.reshape(h, w, c).astype(np.float32),
                        np.ones(c, np.float32), w_mat.astype(np.float32),
                        w_inv.astype(np.float32))
  # a streamed set: per-channel moments in one streaming pass, ZCA's sample read in chunks
  mean, var = streaming.channel_moments(x) if streamed else _channel_moments(x)
  std = np.maximum(np.sqrt(var), _STD_FLOOR)
  mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
  if kind == 'standard':
    return Preprocessor('standard', mean32, std32)

  x = _zca_sample(x, zca_max_samples, seed)
  w_mat, w_inv = _zca_matrices(x, mean, std, zca_reg)
  return Preprocessor('zca', mean32, std32, w_mat.astype(np.float32), w_inv.astype(np.float32))


def _zca_sample(x, zca_max_samples: Optional[int], seed: int):
  """The images ZCA's covariance is fitted on: all when d <= 1024, else a seeded uniform subset
  of zca_max_samples (default 20000; the module docstring)."""
  n, d = x.shape[0], int(np.prod(x.shape[1:]))
  if zca_max_samples is None:
    zca_max_samples = n if d <= _AUTO_FULL_D else _AUTO_MAX_SAMPLES
  if n <= zca_max_samples:
    return x
  idx = np.sort(np.random.default_rng(seed).choice(n, zca_max_samples, replace=False))
  return x.subset(idx) if streaming.is_streamed(x) else x[idx]


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
  if p.kind in ZCA_KINDS:
    x = _matmul_flat(x, p.zca)
  return x


def invert_preprocessor(p: Preprocessor, x):
  """Exact inverse of apply_preprocessor: preprocessed (..., H, W, C) -> pixel space (~[0, 1])."""
  x = _as_float(x)
  if p.kind == 'none':
    return x
  if p.kind in ZCA_KINDS:
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
  if kind in ZCA_KINDS and (zca is None or zca_inv is None):
    raise ValueError(f"preprocessing kind {kind!r} needs the 'zca' and 'zca_inv' arrays")
  return Preprocessor(kind, np.asarray(d[prefix + 'mean'], np.float32),
                      np.asarray(d[prefix + 'std'], np.float32), zca, zca_inv)
