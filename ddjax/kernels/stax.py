r"""Infinite-width NNGP / NTK kernels with neural-tangents' `stax` names and conventions.

Every layer returns `(init_fn, apply_fn, kernel_fn)` like `neural_tangents.stax`:
`init_fn(rng, input_shape) -> (output_shape, params)` and `apply_fn(params, x)` give the finite
network (NTK parameterization: `y = W_std / sqrt(fan_in) * x @ W + b_std * b`, W, b ~ N(0, 1));
`kernel_fn(x1, x2=None, get=None)` its infinite-width limit. Inputs are NHWC for convolutions and
(n, d) for dense networks. Conventions (neural-tangents, NTK parameterization):

    input:  K = x1 . x2 / C  (per pair of positions; C channels, or d for dense inputs),  Theta = 0
    Dense / Conv:  K' = W_std^2 * avg_window(K) + b_std^2,   Theta' = K' + W_std^2 * avg_window(Theta)
    Relu:   K' = (sqrt(k11 k22 - k12^2) + (pi - theta) k12) / (2 pi),   theta = arccos(k12 / sqrt(k11 k22))
            Theta' = Theta * (pi - theta) / (2 pi)                      (arc-cosine kernel, Cho & Saul)
    Erf:    K' = a^2 (2/pi) arcsin(2 b^2 k12 / sqrt((1 + 2 b^2 k11)(1 + 2 b^2 k22))) + c^2
    AvgPool averages K over the pairs of positions in two windows; Flatten averages the diagonal
    over positions (the kernel of the flattened features divided by their dimension);
    GlobalAvgPool averages K over all pairs of positions.

Spatial covariances are *banded*. Between a pixel p of x1 and a pixel q of x2 a network of
convolutions, nonlinearities and poolings only ever needs K(p, q) for offsets q - p inside a band
that the readout decides, so each spatial kernel is stored as

    K[..., h, w, i, j] = Cov(z1[h, w], z2[h + i - bh, w + j - bw]),   shape (..., H, W, 2bh+1, 2bw+1)

(zero where the x2 pixel falls outside the image). A convolution keeps offsets (both pixels move by
the same filter tap), a pointwise nonlinearity keeps them, a stride s multiplies them by s, and an
average pool with window k widens the band by k - 1. `serial` works the band out from the top:
Flatten needs only the diagonal (band 0), GlobalAvgPool needs every offset (the full covariance,
stored with about 4x padding in this layout), and each pool below widens it: ConvNet-3 with three
2x2 pools and a Flatten readout on 28x28 inputs carries offsets up to 7 at its first layer (225 of
the 784 offsets of the full covariance), and no layer carries more than it needs. neural-tangents
carries the full (H, H, W, W) covariance in both cases.

Memory: the kernel of (n1, n2) inputs is computed in blocks of rows of x1 and x2 (`lax.map`, with
rematerialization so that gradients do not keep every block's intermediates) so that no block's band
array exceeds `block_bytes` (`kernel_fn(..., block_bytes=2**28)`). Variances of each input with
itself (what the nonlinearities normalise by) are computed first, per input, in the same blocks.

Any callable `kernel_fn(x1, x2, get)` with these semantics, e.g. neural-tangents' own, can be used
wherever ddjax expects a kernel (`ddjax.distill.kip`, `ddjax.evaluate.krr_kernel_accuracy`).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Band = tuple[int, int]

Kernel = collections.namedtuple('Kernel', ['nngp', 'ntk'])


# ------------------------------------------------------------------------------------------------
# Banded covariance helpers
# ------------------------------------------------------------------------------------------------
def _valid_mask(h: int, w: int, band: Band) -> Array:
  """(H, W, 2bh+1, 2bw+1) bool: whether pixel (h + i - bh, w + j - bw) lies inside the image."""
  bh, bw = band
  rh = np.arange(h)[:, None] + np.arange(2 * bh + 1)[None, :] - bh
  rw = np.arange(w)[:, None] + np.arange(2 * bw + 1)[None, :] - bw
  vh = (rh >= 0) & (rh < h)
  vw = (rw >= 0) & (rw < w)
  return jnp.asarray(vh[:, None, :, None] & vw[None, :, None, :])


def _shifted(x: Array, band: Band) -> Array:
  """x (..., H, W) -> (..., H, W, 2bh+1, 2bw+1) with [..., h, w, i, j] = x[..., h+i-bh, w+j-bw].

  Zero outside the image. Built one axis at a time: 2bh+1 + 2bw+1 slices, not their product.
  """
  bh, bw = band
  h, w = x.shape[-2:]
  pad = [(0, 0)] * (x.ndim - 2) + [(bh, bh), (bw, bw)]
  xp = jnp.pad(x, pad)
  rows = jnp.stack([xp[..., i:i + h, :] for i in range(2 * bh + 1)], axis=-1)   # (.., H, Wp, Bh)
  both = jnp.stack([rows[..., j:j + w, :] for j in range(2 * bw + 1)], axis=-1)  # (.., H, W, Bh, Bw)
  return both


def _band_of(k: Array) -> Band:
  return (k.shape[-2] - 1) // 2, (k.shape[-1] - 1) // 2


def _widen(k: Array, band: Band) -> Array:
  """Zero-pad the offset axes of a banded kernel to at least `band` (offsets beyond the image)."""
  bh, bw = _band_of(k)
  ph, pw = max(band[0] - bh, 0), max(band[1] - bw, 0)
  if ph == 0 and pw == 0:
    return k
  return jnp.pad(k, [(0, 0)] * (k.ndim - 2) + [(ph, ph), (pw, pw)])


def _center(k: Array) -> Array:
  """The offset-0 entries of a banded kernel: (..., H, W, Bh, Bw) -> (..., H, W)."""
  bh, bw = _band_of(k)
  return k[..., bh, bw]


def _pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
  """(out_size, pad_low, pad_high) of a window op along one axis (lax's SAME/VALID rule)."""
  if padding == 'VALID':
    return (size - window) // stride + 1, 0, 0
  if padding == 'SAME':
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2, total - total // 2
  raise ValueError(f"padding={padding!r}: use 'SAME' or 'VALID'.")


def _pool_axis(k: Array, axis: int, window: int, stride: int, padding: str,
               band_out: int) -> Array:
  """Average a banded kernel over pairs of window taps along one spatial axis.

  k: (..., H, W, Bh, Bw) with `axis` in {0 (H), 1 (W)}. Output position P, offset D:
  mean over taps (t1, t2) of K[s P + t1 - pad, offset s D + t2 - t1]. Returns the axis resized to
  the output size and the offset axis to 2*band_out+1 entries.
  """
  pos_ax = k.ndim - 4 + axis
  off_ax = k.ndim - 2 + axis
  size = k.shape[pos_ax]
  out, lo, hi = _pads(size, window, stride, padding)
  need = stride * band_out + window - 1
  k = _widen(k, (need, 0) if axis == 0 else (0, need))
  b_in = (k.shape[off_ax] - 1) // 2
  pad = [(0, 0)] * k.ndim
  pad[pos_ax] = (lo, hi + stride)       # extra room so every strided slice below is in range
  k = jnp.pad(k, pad)
  total = 0.0
  for t1 in range(window):
    for t2 in range(window):
      start = b_in + t2 - t1 - stride * band_out
      part = lax.slice_in_dim(k, t1, t1 + stride * (out - 1) + 1, stride, pos_ax)
      part = lax.slice_in_dim(part, start, start + stride * 2 * band_out + 1, stride, off_ax)
      total = total + part
  return total / (window * window)


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Layer:
  """One layer: finite network (init/apply) and its action on (banded) kernels.

  `band_in(band_out, in_shape)` is the band this layer's input must carry for its output to carry
  `band_out` (None: the output is not spatial). `kernel(k, ntk, in_shape, band_out)` maps the
  kernel arrays; nonlinearities also receive the variances (see `_Nonlinear`).
  """

  def out_shape(self, in_shape):
    return in_shape

  def init(self, rng, in_shape):
    return self.out_shape(in_shape), ()

  def band_in(self, band_out, in_shape):
    return band_out

  nonlinear = False


def _is_spatial(shape) -> bool:
  return len(shape) == 4


@dataclasses.dataclass(frozen=True)
class _Dense(_Layer):
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
    if _is_spatial(in_shape):
      b2 = b2 * _valid_mask(in_shape[1], in_shape[2], _band_of(k)) if b2 else 0.0
    k = self.W_std ** 2 * k + b2
    if ntk is not None:
      ntk = k if _is_zero(ntk) else k + self.W_std ** 2 * ntk
    return k, ntk


@dataclasses.dataclass(frozen=True)
class _Conv(_Layer):
  out_chan: int
  filter_shape: tuple[int, int]
  strides: tuple[int, int]
  padding: str
  W_std: float
  b_std: float | None

  def out_shape(self, in_shape):
    n, h, w, _ = in_shape
    (fh, fw), (sh, sw) = self.filter_shape, self.strides
    return (n, _pads(h, fh, sh, self.padding)[0], _pads(w, fw, sw, self.padding)[0], self.out_chan)

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
    k = _widen(k, need)
    bh, bw = _band_of(k)
    nd = k.ndim
    h, w = k.shape[nd - 4], k.shape[nd - 3]
    _, lh, hh = _pads(h, fh, sh, self.padding)
    _, lw, hw = _pads(w, fw, sw, self.padding)
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
    mask = _valid_mask(out[1], out[2], band_out)
    k = (self.W_std ** 2 * self._window(k, band_out) + b2) * mask
    if ntk is not None:
      ntk = k if _is_zero(ntk) else k + self.W_std ** 2 * self._window(ntk, band_out) * mask
    return k, ntk


@dataclasses.dataclass(frozen=True)
class _AvgPool(_Layer):
  window_shape: tuple[int, int]
  strides: tuple[int, int]
  padding: str

  def out_shape(self, in_shape):
    n, h, w, c = in_shape
    (kh, kw), (sh, sw) = self.window_shape, self.strides
    return (n, _pads(h, kh, sh, self.padding)[0], _pads(w, kw, sw, self.padding)[0], c)

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
        a = _pool_axis(a, axis, self.window_shape[axis], self.strides[axis], self.padding,
                       band_out[axis])
      return a
    out = self.out_shape(in_shape)
    mask = _valid_mask(out[1], out[2], band_out)    # x2 windows past the output edge
    keep = ntk is None or _is_zero(ntk)
    return pool(k) * mask, (ntk if keep else pool(ntk) * mask)


@dataclasses.dataclass(frozen=True)
class _Flatten(_Layer):
  """Flatten: the kernel of the flattened features / their dimension = mean of the diagonal."""

  def out_shape(self, in_shape):
    return (in_shape[0], int(np.prod(in_shape[1:])))

  def apply(self, params, x):
    return x.reshape(x.shape[0], -1)

  def band_in(self, band_out, in_shape):
    return (0, 0)

  def kernel(self, k, ntk, in_shape, band_out):
    if not _is_spatial(in_shape):
      return k, ntk
    mean = lambda a: jnp.mean(_center(a), axis=(-2, -1))
    return mean(k), (ntk if ntk is None or _is_zero(ntk) else mean(ntk))


@dataclasses.dataclass(frozen=True)
class _GlobalAvgPool(_Layer):
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
    return total(k), (ntk if ntk is None or _is_zero(ntk) else total(ntk))


def _is_zero(ntk) -> bool:
  """The NTK of the inputs is the constant 0, carried as a python float so XLA never builds
  (and constant-folds) a band array of zeros."""
  return isinstance(ntk, float) and ntk == 0.0


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
class _Relu(_Layer):
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
    if ntk is not None and not _is_zero(ntk):
      ntk = jnp.where(ok, ntk * (jnp.pi - theta) / (2 * jnp.pi), 0.0)
    return nngp, ntk


@dataclasses.dataclass(frozen=True)
class _Erf(_Layer):
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
    if ntk is not None and not _is_zero(ntk):
      dot = self.a ** 2 * 4 * b2 / jnp.pi * lax.rsqrt(jnp.maximum(denom - 4 * b2 * b2 * k12 ** 2,
                                                                  1e-30))
      ntk = ntk * dot
    return nngp, ntk


def Dense(out_dim: int, W_std: float = 1.0, b_std: float | None = None):
  """Fully connected layer on the last axis (NTK parameterization). b_std=None: no bias."""
  return _triple(_Dense(int(out_dim), float(W_std), None if b_std is None else float(b_std)))


def Conv(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
         padding: str = 'VALID', W_std: float = 1.0, b_std: float | None = None):
  """2-D convolution, NHWC inputs, HWIO filters (NTK parameterization, fan_in = C fh fw).

  'SAME' pads with zeros and normalises by the full filter size, as neural-tangents does.
  """
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"Conv padding={padding!r}: use 'SAME' or 'VALID' (CIRCULAR is not offered).")
  strides = tuple(strides) if strides is not None else (1, 1)
  return _triple(_Conv(int(out_chan), tuple(int(f) for f in filter_shape), strides, padding,
                       float(W_std), None if b_std is None else float(b_std)))


def AvgPool(window_shape: Sequence[int], strides: Sequence[int] | None = None,
            padding: str = 'VALID'):
  """Average pooling (neural-tangents' normalize_edges=False: padded zeros count)."""
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"AvgPool padding={padding!r}: use 'SAME' or 'VALID'.")
  window_shape = tuple(int(w) for w in window_shape)
  return _triple(_AvgPool(window_shape, tuple(strides) if strides else window_shape, padding))


def Relu():
  """max(x, 0); its kernel is the first-order arc-cosine kernel."""
  return _triple(_Relu())


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0):
  """a * erf(b x) + c."""
  return _triple(_Erf(float(a), float(b), float(c)))


def Flatten():
  """Flatten (N, H, W, C) -> (N, H W C). Its kernel needs only the diagonal spatial covariance."""
  return _triple(_Flatten())


def GlobalAvgPool():
  """Mean over spatial positions. Its kernel needs the full spatial covariance."""
  return _triple(_GlobalAvgPool())


def serial(*layers):
  """Compose layers (each an (init_fn, apply_fn, kernel_fn) triple of this module)."""
  flat = []
  for triple in layers:
    specs = getattr(triple[2], '_ddjax_layers', None)
    if specs is None:
      raise TypeError('serial() takes layers of ddjax.kernels.stax (Dense, Conv, Relu, ...); '
                      f'got {triple!r}.')
    flat.extend(specs)
  return _triple(*flat)


# ------------------------------------------------------------------------------------------------
# The network: init/apply of the finite net, kernel_fn of the infinite one
# ------------------------------------------------------------------------------------------------
def _shapes(layers, in_shape):
  shapes = [tuple(in_shape)]
  for layer in layers:
    shape = tuple(layer.out_shape(shapes[-1]))
    if _is_spatial(shape) and min(shape[1:3]) < 1:
      raise ValueError(f'{type(layer).__name__.strip("_")} maps spatial shape {shapes[-1][1:3]} '
                       f'to {shape[1:3]}: the input is too small for this network (fewer pools, '
                       "padding='SAME', or larger images).")
    shapes.append(shape)
  return shapes


def _bands(layers, shapes) -> list:
  """Band each layer's *output* must carry (None where not spatial), worked from the readout down.

  bands[i] is the band of the input of layer i (bands[len] = the network output's).
  """
  bands = [None] * (len(layers) + 1)
  out = shapes[-1]
  bands[-1] = (0, 0) if _is_spatial(out) else None
  for i in range(len(layers) - 1, -1, -1):
    shape = shapes[i]
    if not _is_spatial(shape):
      bands[i] = None
      continue
    b = layers[i].band_in(bands[i + 1] if bands[i + 1] is not None else (0, 0), shape)
    bands[i] = (min(b[0], shape[1] - 1), min(b[1], shape[2] - 1))
  return bands


def _input_kernel(x1: Array, x2: Array, band: Band | None, pairwise: bool) -> Array:
  """K of the inputs: x1 . x2 / C, per pair of rows (pairwise) or per row (x1 with itself).

  Dense inputs (n, d): (n1, n2) or (n,). Images (n, H, W, C): banded (n1, n2, H, W, Bh, Bw) or
  (n, H, W, Bh, Bw).
  """
  c = x1.shape[-1]
  if band is None:
    if pairwise:
      return x1 @ x2.T / c
    return jnp.sum(x1 * x2, axis=-1) / c
  x2s = _shifted(jnp.moveaxis(x2, -1, 1), band)          # (n2, C, H, W, Bh, Bw)
  if pairwise:
    return jnp.einsum('ahwc,bchwij->abhwij', x1, x2s) / c
  return jnp.einsum('ahwc,achwij->ahwij', x1, x2s) / c


def _forward(layers, shapes, bands, k, ntk, variances1=None, variances2=None):
  """Push kernel arrays through the layers.

  Self mode (variances None): k holds each input with itself, (n, ...); the offset-0 variances
  before each nonlinearity are read off k and returned. Cross mode: k is (n1, n2, ...) and the
  variances of x1 and x2 at each nonlinearity come from the self pass.
  """
  recorded = []
  j = 0
  for i, layer in enumerate(layers):
    if layer.nonlinear:
      spatial = _is_spatial(shapes[i])
      if variances1 is None:
        v = _center(k) if spatial else k
        recorded.append(v)
        v1 = v[..., None, None] if spatial else v
        v2 = _shifted(v, bands[i]) if spatial else v
      else:
        a, b = variances1[j], variances2[j]
        j += 1
        if spatial:
          v1 = a[:, None, :, :, None, None]
          v2 = _shifted(b, bands[i])[None]
        else:
          v1, v2 = a[:, None], b[None, :]
      k, ntk = layer.kernel_nl(k, ntk, v1, v2)
      if spatial:
        mask = _valid_mask(shapes[i][1], shapes[i][2], bands[i])
        k = k * mask
        ntk = ntk if ntk is None or _is_zero(ntk) else ntk * mask
    else:
      k, ntk = layer.kernel(k, ntk, shapes[i], bands[i + 1])
  return k, ntk, recorded


def _map_rows(fn: Callable, args, rows: int):
  """fn over blocks of `rows` leading rows of every array in `args`; outputs concatenated.

  The last block is padded with zero rows (sliced off again). Several blocks run under `lax.map`
  with `jax.checkpoint`, so reverse-mode keeps one block's intermediates at a time.
  """
  n = jax.tree_util.tree_leaves(args)[0].shape[0]
  if rows >= n:
    return fn(args)
  nb = -(-n // rows)
  pad = lambda a: jnp.pad(a, [(0, nb * rows - n)] + [(0, 0)] * (a.ndim - 1)).reshape(
      (nb, rows) + a.shape[1:])
  out = lax.map(jax.checkpoint(fn), jax.tree_util.tree_map(pad, args))
  return jax.tree_util.tree_map(lambda a: a.reshape((nb * rows,) + a.shape[2:])[:n], out)


def _triple(*layers):
  layers = tuple(layers)

  def init_fn(rng, input_shape):
    params = []
    shape = tuple(input_shape)
    for layer, key in zip(layers, jax.random.split(rng, max(len(layers), 1))):
      shape, p = layer.init(key, shape)
      params.append(p)
    return shape, tuple(params)

  def apply_fn(params, x, **unused):
    for layer, p in zip(layers, params):
      x = layer.apply(p, x)
    return x

  def kernel_fn(x1: Array, x2: Array | None = None, get=None, *, block_bytes: int = 2 ** 28):
    """Infinite-width kernels of the network between x1 (n1, ...) and x2 (n2, ...).

    get: 'nngp' | 'ntk' -> (n1, n2) array; a tuple -> Kernel-like namedtuple in that order;
    None -> Kernel(nngp, ntk). x2=None means x1. block_bytes bounds one block's band array
    (the largest intermediate) by choosing how many rows of x1 and x2 each block holds.
    """
    if get is None:
      names = ('nngp', 'ntk')
    elif isinstance(get, str):
      names = (get,)
    else:
      names = tuple(get)
    for name in names:
      if name not in ('nngp', 'ntk'):
        raise ValueError(f"get={get!r}: ask for 'nngp', 'ntk' or a tuple of them.")
    want_ntk = 'ntk' in names
    x1 = jnp.asarray(x1, jnp.float32)
    x2 = x1 if x2 is None else jnp.asarray(x2, jnp.float32)
    if x1.shape[1:] != x2.shape[1:]:
      raise ValueError(f'x1 {x1.shape} and x2 {x2.shape} must agree except in the batch axis.')
    shape = (1,) + tuple(x1.shape[1:])
    if len(shape) not in (2, 4):
      raise ValueError(f'inputs must be (n, d) or NHWC (n, H, W, C); got {x1.shape}.')
    net = layers
    if len(shape) == 4 and net and isinstance(net[0], _Flatten):
      # Flatten first (FC networks on images): the kernel of the flat vectors is the same
      # (mean over positions of x1 . x2 / C = x1 . x2 / (H W C)) and is one matmul.
      same = x2 is x1
      x1 = x1.reshape(x1.shape[0], -1)
      x2 = x1 if same else x2.reshape(x2.shape[0], -1)
      shape, net = (1, x1.shape[1]), net[1:]
    shapes = _shapes(net, shape)
    if len(shapes[-1]) != 2:
      raise ValueError(f'the network output {shapes[-1]} is spatial: end it with Flatten() or '
                       'GlobalAvgPool() (and a Dense readout) to get an (n1, n2) kernel.')
    bands = _bands(net, shapes)
    # Largest per-pair band array over the layers (floats), for the block size.
    per_pair = max(
        (s[1] * s[2] * (2 * b[0] + 1) * (2 * b[1] + 1) if b is not None else 1)
        for s, b in zip(shapes, bands))
    per_pair = max(per_pair, int(np.prod(shape[1:])) // max(shape[-1], 1))
    budget = max(int(block_bytes) // (4 * per_pair * (3 if want_ntk else 2)), 1)

    def self_pass(xb):
      k = _input_kernel(xb, xb, bands[0], pairwise=False)
      _, _, var = _forward(net, shapes, bands, k, None)
      return var

    var1 = _map_rows(self_pass, x1, budget)
    var2 = var1 if x2 is x1 else _map_rows(self_pass, x2, budget)

    r2 = min(x2.shape[0], max(int(math.isqrt(budget)), 1))
    r1 = max(budget // r2, 1)

    def cross_block(args):
      x1b, v1b = args

      def inner(args2):
        x2b, v2b = args2
        k = _input_kernel(x1b, x2b, bands[0], pairwise=True)
        k, ntk, _ = _forward(net, shapes, bands, k, 0.0 if want_ntk else None, v1b, v2b)
        if want_ntk and _is_zero(ntk):
          ntk = jnp.zeros_like(k)
        return tuple(a.T for a in ((k, ntk) if want_ntk else (k,)))   # (rows of x2, r1)

      return tuple(a.T for a in _map_rows(inner, (x2, var2), r2))      # (r1, n2)

    out = _map_rows(cross_block, (x1, var1), r1)
    values = {'nngp': out[0]}
    if want_ntk:
      values['ntk'] = out[1]
    if isinstance(get, str):
      return values[get]
    return collections.namedtuple('Kernel', names)(*(values[n] for n in names))

  jitted = jax.jit(kernel_fn, static_argnames=('get', 'block_bytes'))

  @functools.wraps(kernel_fn)
  def kernel_fn_jit(x1, x2=None, get=None, *, block_bytes: int = 2 ** 28):
    get = get if get is None or isinstance(get, str) else tuple(get)
    return jitted(x1, x2, get, block_bytes=block_bytes)

  kernel_fn_jit._ddjax_layers = layers
  return init_fn, apply_fn, kernel_fn_jit


def is_kernel_fn(obj: Any) -> bool:
  """Whether obj can be called as kernel_fn(x1, x2, get) (ddjax's or neural-tangents')."""
  return callable(obj)
