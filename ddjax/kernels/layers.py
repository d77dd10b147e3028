"""The layers of ddjax's stax networks: frozen records of each layer's hyperparameters, with its
finite network (init/apply, NTK parameterization) and its action on the kernel arrays (the
equations are listed in `ddjax.kernels.stax`).

Kernel arrays are one value per pair for dense features and banded (..., H, W, 2bh+1, 2bw+1) for
spatial ones (`ddjax.kernels.banded`). The NTK argument `ntk` is None when only the NNGP is wanted,
the python float 0.0 while it is still the constant 0 of the inputs (`is_zero_ntk`), else an array
shaped like the NNGP.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ddjax.kernels.banded import (Array, Band, band_of, center, pool_axis, valid_mask, widen,
                                  window_pads)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer: finite network (init/apply) and its action on (banded) kernels.

  `init(rng, in_shape) -> (out_shape, params)`, `apply(params, x)`. `band_in(band_out, in_shape)`
  is the band this layer's spatial input must carry for its output to carry `band_out`. Layers
  with `nonlinear = False` map the kernel arrays by `kernel(k, ntk, in_shape, band_out)`; pointwise
  nonlinearities by `kernel_nl(k12, ntk, v1, v2)`, given the variances of the two inputs there.
  """

  def out_shape(self, in_shape):
    return in_shape

  def init(self, rng, in_shape):
    return self.out_shape(in_shape), ()

  def band_in(self, band_out, in_shape):
    return band_out

  nonlinear = False


def is_spatial(shape) -> bool:
  """Whether a layer input/output shape is NHWC (else (n, d))."""
  return len(shape) == 4


def is_zero_ntk(ntk) -> bool:
  """The NTK of the inputs is the constant 0, carried as a python float so XLA never builds
  (and constant-folds) a band array of zeros."""
  return isinstance(ntk, float) and ntk == 0.0


@dataclasses.dataclass(frozen=True)
class DenseLayer(Layer):
  out_dim: int
  W_std: float
  b_std: float | None

  def out_shape(self, in_shape):
    return tuple(in_shape[:-1]) + (self.out_dim,)

  def init(self, rng, in_shape):
    k1, k2 = jax.random.split(rng)
    w = jax.random.normal(k1, (in_shape[-1], self.out_dim))
    b = jax.random.normal(k2, (self.out_dim,)) if self.b_std is not None else None
    return self.out_shape(in_shape), (w, b)

  def apply(self, params, x):
    w, b = params
    y = self.W_std / math.sqrt(x.shape[-1]) * (x @ w)
    return y if b is None else y + self.b_std * b

  def kernel(self, k, ntk, in_shape, band_out):
    b2 = 0.0 if self.b_std is None else self.b_std ** 2
    if is_spatial(in_shape):
      b2 = b2 * valid_mask(in_shape[1], in_shape[2], band_of(k)) if b2 else 0.0
    k = self.W_std ** 2 * k + b2
    if ntk is not None:
      ntk = k if is_zero_ntk(ntk) else k + self.W_std ** 2 * ntk
    return k, ntk


@dataclasses.dataclass(frozen=True)
class ConvLayer(Layer):
  out_chan: int
  filter_shape: tuple[int, int]
  strides: tuple[int, int]
  padding: str
  W_std: float
  b_std: float | None

  def out_shape(self, in_shape):
    n, h, w, _ = in_shape
    (fh, fw), (sh, sw) = self.filter_shape, self.strides
    return (n, window_pads(h, fh, sh, self.padding)[0], window_pads(w, fw, sw, self.padding)[0],
            self.out_chan)

  def init(self, rng, in_shape):
    k1, k2 = jax.random.split(rng)
    w = jax.random.normal(k1, tuple(self.filter_shape) + (in_shape[-1], self.out_chan))
    b = jax.random.normal(k2, (self.out_chan,)) if self.b_std is not None else None
    return self.out_shape(in_shape), (w, b)

  def apply(self, params, x):
    w, b = params
    fan_in = w.shape[0] * w.shape[1] * w.shape[2]
    y = lax.conv_general_dilated(x, w, self.strides, self.padding,
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = self.W_std / math.sqrt(fan_in) * y
    return y if b is None else y + self.b_std * b

  def band_in(self, band_out, in_shape):
    return (self.strides[0] * band_out[0], self.strides[1] * band_out[1])

  def _window(self, k: Array, band_out: Band) -> Array:
    """avg over filter taps of K[s P + t - pad, s D]: the same tap on both pixels of a pair."""
    (fh, fw), (sh, sw) = self.filter_shape, self.strides
    need = (sh * band_out[0], sw * band_out[1])
    k = widen(k, need)
    bh, bw = band_of(k)
    nd = k.ndim
    h, w = k.shape[nd - 4], k.shape[nd - 3]
    _, lh, hh = window_pads(h, fh, sh, self.padding)
    _, lw, hw = window_pads(w, fw, sw, self.padding)
    # Offsets kept: s * D for |D| <= band_out (a stride scales offsets).
    k = lax.slice_in_dim(k, bh - need[0], bh + need[0] + 1, sh, nd - 2)
    k = lax.slice_in_dim(k, bw - need[1], bw + need[1] + 1, sw, nd - 1)
    window = (1,) * (nd - 4) + (fh, fw, 1, 1)
    strides = (1,) * (nd - 4) + (sh, sw, 1, 1)
    pads = [(0, 0)] * (nd - 4) + [(lh, hh), (lw, hw), (0, 0), (0, 0)]
    return lax.reduce_window(k, 0.0, lax.add, window, strides, pads) / (fh * fw)

  def kernel(self, k, ntk, in_shape, band_out):
    out = self.out_shape(in_shape)
    b2 = 0.0 if self.b_std is None else self.b_std ** 2
    mask = valid_mask(out[1], out[2], band_out)
    k = (self.W_std ** 2 * self._window(k, band_out) + b2) * mask
    if ntk is not None:
      ntk = k if is_zero_ntk(ntk) else k + self.W_std ** 2 * self._window(ntk, band_out) * mask
    return k, ntk


@dataclasses.dataclass(frozen=True)
class AvgPoolLayer(Layer):
  window_shape: tuple[int, int]
  strides: tuple[int, int]
  padding: str

  def out_shape(self, in_shape):
    n, h, w, c = in_shape
    (kh, kw), (sh, sw) = self.window_shape, self.strides
    return (n, window_pads(h, kh, sh, self.padding)[0], window_pads(w, kw, sw, self.padding)[0],
            c)

  def apply(self, params, x):
    window = (1,) + tuple(self.window_shape) + (1,)
    strides = (1,) + tuple(self.strides) + (1,)
    s = lax.reduce_window(x, 0.0, lax.add, window, strides, self.padding)
    return s / (self.window_shape[0] * self.window_shape[1])   # normalize_edges=False

  def band_in(self, band_out, in_shape):
    (kh, kw), (sh, sw) = self.window_shape, self.strides
    return (sh * band_out[0] + kh - 1, sw * band_out[1] + kw - 1)

  def kernel(self, k, ntk, in_shape, band_out):
    def pool(a):
      for axis in (0, 1):
        a = pool_axis(a, axis, self.window_shape[axis], self.strides[axis], self.padding,
                      band_out[axis])
      return a
    out = self.out_shape(in_shape)
    mask = valid_mask(out[1], out[2], band_out)    # x2 windows past the output edge
    keep = ntk is None or is_zero_ntk(ntk)
    return pool(k) * mask, (ntk if keep else pool(ntk) * mask)


@dataclasses.dataclass(frozen=True)
class FlattenLayer(Layer):
  """Flatten: the kernel of the flattened features / their dimension = mean of the diagonal."""

  def out_shape(self, in_shape):
    return (in_shape[0], int(np.prod(in_shape[1:])))

  def apply(self, params, x):
    return x.reshape(x.shape[0], -1)

  def band_in(self, band_out, in_shape):
    return (0, 0)

  def kernel(self, k, ntk, in_shape, band_out):
    if not is_spatial(in_shape):
      return k, ntk
    mean = lambda a: jnp.mean(center(a), axis=(-2, -1))
    return mean(k), (ntk if ntk is None or is_zero_ntk(ntk) else mean(ntk))


@dataclasses.dataclass(frozen=True)
class GlobalAvgPoolLayer(Layer):
  """Mean over positions: the kernel averages over all pairs of positions (full covariance)."""

  def out_shape(self, in_shape):
    return (in_shape[0], in_shape[-1])

  def apply(self, params, x):
    return jnp.mean(x, axis=(1, 2))

  def band_in(self, band_out, in_shape):
    return (in_shape[1] - 1, in_shape[2] - 1)

  def kernel(self, k, ntk, in_shape, band_out):
    norm = float(in_shape[1] * in_shape[2]) ** 2
    total = lambda a: jnp.sum(a, axis=(-4, -3, -2, -1)) / norm   # invalid entries are zero
    return total(k), (ntk if ntk is None or is_zero_ntk(ntk) else total(ntk))


def _safe_sqrt(x: Array) -> Array:
  """sqrt(max(x, 0)) with derivative 0 where x <= 0 (neural-tangents' convention at the cusp).

  On the diagonal k11 k22 - k12^2 = 0; the kernel of a point with itself is smooth there, and
  this keeps its gradient finite (no NaN from d sqrt(0)).
  """
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


# Abramowitz & Stegun 4.4.46: arccos(x) = sqrt(1 - x) * sum_i a_i x^i on [0, 1], |error| <= 2e-8.
_ACOS = (1.5707963050, -0.2145988016, 0.0889789874, -0.0501743046, 0.0308918810, -0.0170881256,
         0.0066700901, -0.0012624911)


# |cos theta| within this of 1 counts as 1 (theta = 0 or pi, zero derivative): float32 rounding of
# a point's covariance with itself leaves 1 - cos ~ 1e-7, where d theta / d cos ~ 1 / sqrt(1 - cos)
# would amplify rounding noise ~1000x into the gradient. Costs at most ~1e-4 relative in Theta there.
_COS_TOL = 3e-7


def _arccos_sin(x: Array) -> tuple[Array, Array]:
  """(arccos x, sqrt(1 - x^2)) on [-1, 1] to float32 precision, finite derivatives at +-1.

  A polynomial instead of XLA's arctan2/arccos: the ReLU kernel is evaluated for every entry of the
  first layer's band (176k per pair for ConvNet-3 on 28x28), and this is several times cheaper.
  Both use the same thresholded 1 - |x|, so theta = 0 and sin = 0 together on the diagonal.
  """
  a = jnp.abs(x)
  poly = _ACOS[-1]
  for coef in _ACOS[-2::-1]:
    poly = poly * a + coef
  gap = 1.0 - a
  gap = jnp.where(gap > _COS_TOL, gap, 0.0)
  pos = _safe_sqrt(gap) * poly
  return jnp.where(x >= 0, pos, jnp.pi - pos), _safe_sqrt(gap * (1.0 + a))


@dataclasses.dataclass(frozen=True)
class ReluLayer(Layer):
  nonlinear = True

  def apply(self, params, x):
    return jax.nn.relu(x)

  def kernel_nl(self, k12, ntk, v1, v2):
    """k12 (...), variances v1, v2 broadcastable to it -> (K', Theta') (arc-cosine kernel)."""
    prod = v1 * v2
    ok = prod > 0
    norm = _safe_sqrt(prod)
    cos = jnp.clip(k12 * jnp.where(ok, lax.rsqrt(jnp.where(ok, prod, 1.0)), 0.0), -1.0, 1.0)
    theta, sin = _arccos_sin(cos)
    sin_part = norm * sin                                  # sqrt(k11 k22 - k12^2)
    nngp = (sin_part + (jnp.pi - theta) * k12) / (2 * jnp.pi)
    nngp = jnp.where(ok, nngp, 0.0)
    if ntk is not None and not is_zero_ntk(ntk):
      ntk = jnp.where(ok, ntk * (jnp.pi - theta) / (2 * jnp.pi), 0.0)
    return nngp, ntk


@dataclasses.dataclass(frozen=True)
class ErfLayer(Layer):
  a: float
  b: float
  c: float
  nonlinear = True

  def apply(self, params, x):
    return self.a * jax.scipy.special.erf(self.b * x) + self.c

  def kernel_nl(self, k12, ntk, v1, v2):
    b2 = self.b ** 2
    denom = (1 + 2 * b2 * v1) * (1 + 2 * b2 * v2)
    ratio = jnp.clip(2 * b2 * k12 * lax.rsqrt(denom), -1.0, 1.0)
    nngp = self.a ** 2 * (2 / jnp.pi) * jnp.arcsin(ratio) + self.c ** 2
    if ntk is not None and not is_zero_ntk(ntk):
      dot = self.a ** 2 * 4 * b2 / jnp.pi * lax.rsqrt(jnp.maximum(denom - 4 * b2 * b2 * k12 ** 2,
                                                                  1e-30))
      ntk = ntk * dot
    return nngp, ntk
