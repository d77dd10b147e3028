"""Basic per-example augmentation for evaluation training: translate, cutout, horizontal flip.

A small stand-in until differentiable siamese augmentation (DSA) lands. Pure and jittable (the
sizes and flags are static Python values); every example draws its own parameters from `key`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def random_translate(key: Array, x: Array, translate: int, pad_mode: str = 'constant') -> Array:
  """Shift each image of x (N, H, W, C) by a random (dy, dx) in [-translate, translate]^2.

  Implemented as pad by `translate` on each side ('constant' = zeros, or 'edge') and a random
  H x W crop. Returns (N, H, W, C).
  """
  if translate <= 0:
    return x
  n, h, w, c = x.shape
  t = translate
  xp = jnp.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode=pad_mode)
  offsets = jax.random.randint(key, (n, 2), 0, 2 * t + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  return jax.vmap(crop)(xp, offsets)


def random_cutout(key: Array, x: Array, size: int) -> Array:
  """Zero a size x size square per image of x (N, H, W, C) at a uniformly random centre.

  The square is clipped at the borders (DeVries & Taylor's cutout). Returns (N, H, W, C).
  """
  if size <= 0:
    return x
  n, h, w, _ = x.shape
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (n, 1, 1), 0, h)
  cx = jax.random.randint(kx, (n, 1, 1), 0, w)
  top, left = cy - size // 2, cx - size // 2
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = ((rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size))
  return x * (~inside)[..., None].astype(x.dtype)


def random_flip(key: Array, x: Array) -> Array:
  """Mirror each image of x (N, H, W, C) left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1, :], x)


def augment_batch(key: Array, x: Array, translate: int = 2, cutout: int = 0, flip: bool = False,
                  pad_mode: str = 'constant') -> Array:
  """Random translation (pixels), then cutout (square side, pixels), then optional flip.

  Args:
    key: PRNG key.
    x: (N, H, W, C) images.
    translate: maximal shift in pixels per axis (0 disables).
    cutout: side of the zeroed square in pixels (0 disables).
    flip: random horizontal flip (not for digits / Fashion-MNIST, as in FRePo).
    pad_mode: 'constant' (zeros) or 'edge' for the translation padding.

  Returns (N, H, W, C); x itself when everything is disabled.
  """
  if translate <= 0 and cutout <= 0 and not flip:
    return x
  k_t, k_c, k_f = jax.random.split(key, 3)
  x = random_translate(k_t, x, translate, pad_mode)
  x = random_cutout(k_c, x, cutout)
  if flip:
    x = random_flip(k_f, x)
  return x
