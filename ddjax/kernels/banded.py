r"""Banded spatial covariances: the storage layout of ddjax's convolutional kernels, and the window
operations on it.

Between a pixel p of x1 and a pixel q of x2 a network of convolutions, nonlinearities and poolings
only ever needs K(p, q) for offsets q - p inside a band that the readout decides, so each spatial
kernel is stored as

    K[..., h, w, i, j] = Cov(z1[h, w], z2[h + i - bh, w + j - bw]),   shape (..., H, W, 2bh+1, 2bw+1)

(zero where the x2 pixel falls outside the image). A convolution keeps offsets (both pixels move by
the same filter tap), a pointwise nonlinearity keeps them, a stride s multiplies them by s, and an
average pool with window k widens the band by k - 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Band = tuple[int, int]


def valid_mask(h: int, w: int, band: Band) -> Array:
  """(H, W, 2bh+1, 2bw+1) bool: whether pixel (h + i - bh, w + j - bw) lies inside the image."""
  bh, bw = band
  rh = np.arange(h)[:, None] + np.arange(2 * bh + 1)[None, :] - bh
  rw = np.arange(w)[:, None] + np.arange(2 * bw + 1)[None, :] - bw
  vh = (rh >= 0) & (rh < h)
  vw = (rw >= 0) & (rw < w)
  return jnp.asarray(vh[:, None, :, None] & vw[None, :, None, :])


def shifted(x: Array, band: Band) -> Array:
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


def band_of(k: Array) -> Band:
  """(bh, bw) of a banded kernel (..., 2bh+1, 2bw+1)."""
  return (k.shape[-2] - 1) // 2, (k.shape[-1] - 1) // 2


def widen(k: Array, band: Band) -> Array:
  """Zero-pad the offset axes of a banded kernel to at least `band` (offsets beyond the image)."""
  bh, bw = band_of(k)
  ph, pw = max(band[0] - bh, 0), max(band[1] - bw, 0)
  if ph == 0 and pw == 0:
    return k
  return jnp.pad(k, [(0, 0)] * (k.ndim - 2) + [(ph, ph), (pw, pw)])


def center(k: Array) -> Array:
  """The offset-0 entries of a banded kernel: (..., H, W, Bh, Bw) -> (..., H, W)."""
  bh, bw = band_of(k)
  return k[..., bh, bw]


def window_pads(size: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
  """(out_size, pad_low, pad_high) of a window op along one axis (lax's SAME/VALID rule)."""
  if padding == 'VALID':
    return (size - window) // stride + 1, 0, 0
  if padding == 'SAME':
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2, total - total // 2
  raise ValueError(f"padding={padding!r}: use 'SAME' or 'VALID'.")


def pool_axis(k: Array, axis: int, window: int, stride: int, padding: str,
              band_out: int) -> Array:
  """Average a banded kernel over pairs of window taps along one spatial axis.

  k: (..., H, W, Bh, Bw) with `axis` in {0 (H), 1 (W)}. Output position P, offset D:
  mean over taps (t1, t2) of K[s P + t1 - pad, offset s D + t2 - t1]. Returns the axis resized to
  the output size and the offset axis to 2*band_out+1 entries.
  """
  pos_ax = k.ndim - 4 + axis
  off_ax = k.ndim - 2 + axis
  size = k.shape[pos_ax]
  out, lo, hi = window_pads(size, window, stride, padding)
  need = stride * band_out + window - 1
  k = widen(k, (need, 0) if axis == 0 else (0, need))
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
