"""IDC's multi-formation parameterization (Kim et al., ICML 2022; snu-mllab/Efficient-Dataset-
Condensation, `decode_zoom`).

A stored synthetic image (H, W) holds factor^2 images at reduced resolution, laid out as a
factor x factor grid of tiles of size ceil(H / f) x ceil(W / f) (the bottom / right are zero-padded
when H or W is not divisible by f). Decoding cuts the grid and upsamples every tile back to (H, W)
bilinearly (PyTorch's `nn.Upsample(mode='bilinear')`, align_corners=False, which
`jax.image.resize(..., 'bilinear')` matches when upsampling). Decoding is linear, hence
differentiable, so any distiller's meta-loss can be taken through it (`MultiFormation`).

Order: the f^2 tiles of stored image i are rows i * f^2 ... (i + 1) * f^2 - 1 of the decoded set
(row-major over the grid), so a class-grouped stored set stays class-grouped; IDC's own code
concatenates crop-major. The set is the same, only the order differs.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ddjax.transforms.base import PerSample

Array = jax.Array
PyTree = Any


def _check(x: Array, factor: int) -> None:
  if not isinstance(factor, int) or factor < 1:
    raise ValueError(f'idc.factor must be an integer >= 1 (1: off), got {factor!r}.')
  if x.ndim != 4:
    raise ValueError(f'IDC expects NHWC images (n, H, W, C), got shape {x.shape}.')


def tile_shape(h: int, w: int, factor: int) -> tuple[int, int]:
  """(th, tw) = (ceil(H / f), ceil(W / f)), the size of one stored tile."""
  return math.ceil(h / factor), math.ceil(w / factor)


def decode(x: Array, factor: int) -> Array:
  """Stored images (n, H, W, C) -> decoded images (n * f^2, H, W, C)."""
  _check(x, factor)
  if factor == 1:
    return x
  n, h, w, c = x.shape
  th, tw = tile_shape(h, w, factor)
  x = jnp.pad(x, ((0, 0), (0, th * factor - h), (0, tw * factor - w), (0, 0)))
  tiles = x.reshape(n, factor, th, factor, tw, c).transpose(0, 1, 3, 2, 4, 5)
  tiles = tiles.reshape(n * factor * factor, th, tw, c)
  return jax.image.resize(tiles, (tiles.shape[0], h, w, c), 'bilinear')


def decode_labels(y: Array, factor: int) -> Array:
  """(n, ...) -> (n * f^2, ...): each stored image's label for each of its tiles."""
  return jnp.repeat(y, factor * factor, axis=0)


def decoded_classes(classes: Array, factor: int) -> Array:
  """Class of every decoded image, (n,) -> (n * f^2,)."""
  return jnp.repeat(classes, factor * factor, axis=0)


def encode(x_real: Array, factor: int) -> Array:
  """IDC's initialisation: (n * f^2, H, W, C) real images -> (n, H, W, C) stored images; each
  group of f^2 consecutive images is downsampled to the tile size (bilinear with antialiasing,
  i.e. area-like averaging) and placed row-major into the grid that `decode` reads."""
  _check(x_real, factor)
  if factor == 1:
    return x_real
  m, h, w, c = x_real.shape
  if m % (factor * factor):
    raise ValueError(f'encoding {m} real images into factor {factor} stored images needs a '
                     f'multiple of {factor * factor} images.')
  th, tw = tile_shape(h, w, factor)
  small = jax.image.resize(x_real, (m, th, tw, c), 'bilinear', antialias=True)
  n = m // (factor * factor)
  grid = small.reshape(n, factor, factor, th, tw, c).transpose(0, 1, 3, 2, 4, 5)
  grid = grid.reshape(n, factor * th, factor * tw, c)
  return grid[:, :h, :w]


class MultiFormation:
  """Any distiller on IDC's parameterization: the stored set {'x': (n, H, W, C), 'y': (n, K),
  ...} is decoded to (n * f^2, ...) before the base distiller sees it."""

  def __init__(self, base, factor: int):
    if not isinstance(factor, int) or factor < 1:
      raise ValueError(f'idc.factor must be an integer >= 1 (1: off), got {factor!r}.')
    self.base = base
    self.factor = factor

  def decoded(self, syn: PyTree) -> PyTree:
    return {**syn, 'x': decode(syn['x'], self.factor), 'y': decode_labels(syn['y'], self.factor)}

  def init(self, key: Array, syn: PyTree) -> Any:
    return self.base.init(key, self.decoded(syn))

  def per_sample(self, syn: PyTree, state: Any, batch: dict[str, Array], key: Array) -> PerSample:
    return self.base.per_sample(self.decoded(syn), state, batch, key)

  def regularizer(self, syn: PyTree, classes: Array) -> Array:
    return self.base.regularizer(self.decoded(syn), decoded_classes(classes, self.factor))

  def update(self, syn: PyTree, state: Any, key: Array) -> Any:
    return self.base.update(self.decoded(syn), state, key)
