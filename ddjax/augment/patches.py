"""RDED's student augmentation of stitched images: ShufflePatches and RandomResizedCrop.

RDED trains its students (validation/main.py:115-126) on

    ToTensor -> ShufflePatches(factor) -> RandomResizedCrop(size, scale=(1 / factor, 1))
    -> RandomHorizontalFlip -> Normalize

where `factor` is the number of patches per side the images were stitched from. ShufflePatches
(validation/utils.py) cuts an image into `factor` column strips and shuffles them, then does the
same with `factor` row strips: cell (r, c) of the output is cell (rows[r], cols[c]) of the input
for two independent permutations `rows` and `cols` (a product of a row and a column permutation,
not an arbitrary permutation of the factor^2 cells, as the official code). RandomResizedCrop is
torchvision's: up to 10 attempts of an area fraction ~ U(scale) and an aspect ratio log-uniform in
(3/4, 4/3), the first box that fits the image kept at a uniform position, else the whole image
(centre crop clamped to the ratio range), resized bilinearly to the image size. At factor 1 both
are identities (scale (1, 1) admits no box but the whole image), so `student_augment` skips them.

Differences from the official code, on purpose: boxes are continuous (torchvision rounds their
sides to whole pixels), so an accepted box's area fraction lies exactly in `scale`; ShufflePatches
keeps the image size when a side is not a multiple of the factor (the remainder rows at the
bottom keep their place and are shuffled only along the columns, likewise the remainder columns
at the right; the official code drops them, and its crop resizes the rest back).
Pure and jittable (sizes, factors and ranges are static); every image draws its own parameters
from `key`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)    # torchvision's RandomResizedCrop default
RRC_ATTEMPTS = 10                      # torchvision's


def crop_resize(image: Array, box: Array, out_h: int, out_w: int) -> Array:
  """The box (top, left, height, width) (float, pixels) of image (H, W, C) resized to
  (out_h, out_w, C): bilinear at pixel centres (align_corners=False), edge-clamped. The whole
  image as box at its own size returns the image."""
  top, left, bh, bw = box[0], box[1], box[2], box[3]
  h, w = image.shape[:2]
  ys = jnp.clip(top + (jnp.arange(out_h) + 0.5) * bh / out_h - 0.5, 0, h - 1)
  xs = jnp.clip(left + (jnp.arange(out_w) + 0.5) * bw / out_w - 0.5, 0, w - 1)
  y0 = jnp.floor(ys).astype(jnp.int32)
  x0 = jnp.floor(xs).astype(jnp.int32)
  y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
  wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  rows0, rows1 = image[y0], image[y1]
  top_row = rows0[:, x0] * (1 - wx) + rows0[:, x1] * wx
  bottom_row = rows1[:, x0] * (1 - wx) + rows1[:, x1] * wx
  return top_row * (1 - wy) + bottom_row * wy


def patch_permutations(key: Array, n: int, factor: int) -> tuple[Array, Array]:
  """ShufflePatches' draws for n images: (rows (n, factor), cols (n, factor)) int32, each row of
  each array a uniform permutation of range(factor)."""
  k_cols, k_rows = jax.random.split(key)
  perm = lambda k: jax.random.permutation(k, factor)
  cols = jax.vmap(perm)(jax.random.split(k_cols, n))
  rows = jax.vmap(perm)(jax.random.split(k_rows, n))
  return rows.astype(jnp.int32), cols.astype(jnp.int32)


def _source_index(perm: Array, size: int, factor: int) -> Array:
  """(size,) source pixel of each output pixel along one axis: pixel i of cell k comes from pixel
  i of cell perm[k] (cells of size // factor); the remainder past factor cells stays in place."""
  cell = size // factor
  idx = jnp.arange(size)
  mapped = perm[jnp.minimum(idx // cell, factor - 1)] * cell + idx % cell
  return jnp.where(idx < factor * cell, mapped, idx)


def shuffle_patches(key: Array, x: Array, factor: int) -> Array:
  """RDED's ShufflePatches on x (N, H, W, C): output cell (r, c) of every image is its input cell
  (rows[r], cols[c]) with (rows, cols) = `patch_permutations(key, N, factor)`; cells are
  (H // factor) x (W // factor). Returns (N, H, W, C); x itself for factor <= 1.
  ValueError when a side is smaller than the factor."""
  f = int(factor)
  if f <= 1:
    return x
  n, h, w = x.shape[:3]
  if h < f or w < f:
    raise ValueError(f'shuffle_patches: images of {h} x {w} px cannot hold {f} x {f} patches')
  rows, cols = patch_permutations(key, n, f)
  ri = jax.vmap(lambda p: _source_index(p, h, f))(rows)
  ci = jax.vmap(lambda p: _source_index(p, w, f))(cols)
  return jax.vmap(lambda img, r, c: img[r][:, c])(x, ri, ci)


def rrc_boxes(key: Array, n: int, height: int, width: int, scale: tuple[float, float],
              ratio: tuple[float, float] = RRC_RATIO, attempts: int = RRC_ATTEMPTS) -> Array:
  """n RandomResizedCrop boxes (top, left, height, width) as float32 (n, 4) for a height x width
  image: per image `attempts` draws of area fraction ~ U(scale) and aspect w / h log-uniform in
  `ratio`; the first draw that fits the image is placed uniformly inside it; when none fits, the
  centred fallback of torchvision (the whole image when its aspect lies in `ratio`)."""
  u = jax.random.uniform(key, (n, 2 * attempts + 2))   # one draw: areas, aspects, positions
  area = float(height * width)
  target = (scale[0] + (scale[1] - scale[0]) * u[:, :attempts]) * area
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[:, attempts:2 * attempts])
  bw, bh = jnp.sqrt(target * aspect), jnp.sqrt(target / aspect)
  fits = (bw <= width) & (bh <= height)
  first = jnp.argmax(fits, axis=1)[:, None]            # the first fitting attempt (0 if none)
  bw = jnp.take_along_axis(bw, first, 1)[:, 0]
  bh = jnp.take_along_axis(bh, first, 1)[:, 0]
  top = u[:, -2] * (height - bh)
  left = u[:, -1] * (width - bw)
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fw, fh = float(width), width / ratio[0]
  elif in_ratio > ratio[1]:
    fw, fh = height * ratio[1], float(height)
  else:
    fw, fh = float(width), float(height)
  fallback = jnp.asarray([(height - fh) / 2, (width - fw) / 2, fh, fw], jnp.float32)
  boxes = jnp.stack([top, left, bh, bw], axis=-1)
  return jnp.where(jnp.any(fits, axis=1)[:, None], boxes, fallback).astype(jnp.float32)


def random_resized_crop(key: Array, x: Array, scale: tuple[float, float],
                        ratio: tuple[float, float] = RRC_RATIO) -> Array:
  """torchvision's RandomResizedCrop(size=(H, W), scale, ratio) on every image of x (N, H, W, C),
  boxes from `rrc_boxes`, bilinear (`crop_resize`). Returns (N, H, W, C)."""
  n, h, w = x.shape[:3]
  boxes = rrc_boxes(key, n, h, w, scale, ratio)
  return jax.vmap(lambda img, box: crop_resize(img, box, h, w))(x, boxes)


def student_augment(key: Array, x: Array, factor: int) -> Array:
  """RDED's student augmentation before the flip, for images x (N, H, W, C) stitched from
  factor x factor patches: `shuffle_patches`, then `random_resized_crop` with scale
  (1 / factor, 1). x itself for factor <= 1 (both are identities there)."""
  f = int(factor)
  if f <= 1:
    return x
  k_shuffle, k_crop = jax.random.split(key)
  return random_resized_crop(k_crop, shuffle_patches(k_shuffle, x, f), (1.0 / f, 1.0))
