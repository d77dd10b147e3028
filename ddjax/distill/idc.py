"""IDC's multi-formation parameterization (Kim et al., "Dataset Condensation via Efficient
Synthetic-Data Parameterization", ICML 2022; snu-mllab/Efficient-Dataset-Condensation, condense.py
`Synthesizer.decode_zoom` and `Synthesizer.init(init_type='mix')`).

A stored synthetic image (H, W, C) holds f^2 images at reduced resolution, laid out as an f x f grid
of tiles of size (th, tw) = (ceil(H / f), ceil(W / f)); when H or W is not divisible by f the
bottom / right are padded first so that the grid covers (f * th, f * tw). Decoding cuts the grid
and upsamples every tile back to (H, W) bilinearly, like PyTorch's
`nn.Upsample(size=(H, W), mode='bilinear')` (align_corners=False: half-pixel centres, source
coordinate (dst + 0.5) * in / out - 0.5 clamped at the borders), which `jax.image.resize(...,
'bilinear')` reproduces when upsampling. Decoding is linear in the stored pixels, hence
differentiable, so any distiller's meta-loss can be taken through it (`MultiFormation`, the
stored set's parameterisation that the step decodes).

Order: the f^2 tiles of stored image i are rows i * f^2 ... (i + 1) * f^2 - 1 of the decoded set,
row-major over the grid (tile t sits at grid row t // f, column t % f), so a class-grouped stored
set stays class-grouped. IDC's own code concatenates crop-major (all images' tile 0, then all
images' tile 1, ...): the decoded set is the same, only its order differs.

Padding: IDC pads with the value 0.5 in raw [0, 1] pixel space (mid-grey). ddjax stores images
standardized (or ZCA-whitened), where 0 is the per-channel train mean, so the padding here is 0.

Everything is a pure function of arrays with static shapes; `factor` must be a Python (or numpy)
integer, i.e. static under `jax.jit`.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from ddjax.distill.base import IDENTITY, SetParameterisation

Array = jax.Array
PyTree = Any


def _check_factor(factor: Any) -> int:
  """`factor` as an int, or ValueError if it is not an integer >= 1 (bools are rejected)."""
  if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
    raise ValueError(f'idc.factor must be an integer >= 1 (1: off), got {factor!r}.')
  return int(factor)


def _check_images(x: Array, what: str) -> None:
  if x.ndim != 4:
    raise ValueError(f'IDC expects {what} as NHWC images (n, H, W, C), got shape {x.shape}.')


def tile_shape(h: int, w: int, factor: int) -> tuple[int, int]:
  """(th, tw) = (ceil(H / f), ceil(W / f)), the size of one tile of a stored image."""
  factor = _check_factor(factor)
  return math.ceil(h / factor), math.ceil(w / factor)


def decode(x: Array, factor: int) -> Array:
  """Stored images -> the images they parameterize.

  Args:
    x: (n, H, W, C) stored images.
    factor: f >= 1; each stored image holds an f x f grid of tiles of size
      (ceil(H / f), ceil(W / f)), zero-padded at the bottom / right when needed.

  Returns:
    (n * f^2, H, W, C): row i * f^2 + t is tile t (row-major over the grid) of stored image i,
    upsampled bilinearly (align_corners=False) to (H, W). f = 1 returns x unchanged.
  """
  factor = _check_factor(factor)
  _check_images(x, 'the stored images')
  if factor == 1:
    return x
  n, h, w, c = x.shape
  th, tw = tile_shape(h, w, factor)
  x = jnp.pad(x, ((0, 0), (0, th * factor - h), (0, tw * factor - w), (0, 0)))
  tiles = x.reshape(n, factor, th, factor, tw, c).transpose(0, 1, 3, 2, 4, 5)
  tiles = tiles.reshape(n * factor * factor, th, tw, c)
  # Upsampling (th <= H, tw <= W): jax's triangle kernel is not widened, so this is exactly
  # PyTorch's half-pixel bilinear interpolation with border clamping.
  return jax.image.resize(tiles, (n * factor * factor, h, w, c), 'bilinear')


def decode_labels(y: Array, factor: int) -> Array:
  """Labels of the decoded set: (n, ...) -> (n * f^2, ...), each row repeated f^2 times in a row
  (the order of `decode`)."""
  factor = _check_factor(factor)
  return jnp.repeat(y, factor * factor, axis=0)


def decoded_classes(classes: Array, factor: int) -> Array:
  """Class of every decoded image: int (n,) -> (n * f^2,), in the order of `decode`."""
  factor = _check_factor(factor)
  return jnp.repeat(classes, factor * factor, axis=0)


def encode(x_real: Array, factor: int) -> Array:
  """IDC's initialization from real data: f^2 real images per stored image.

  Each group of f^2 consecutive real images (rows j * f^2 ... (j + 1) * f^2 - 1) becomes stored
  image j: image t of the group is downsampled to the tile size (ceil(H / f), ceil(W / f)) and
  placed at grid row t // f, column t % f, the position `decode` reads tile t from. Downsampling
  is `jax.image.resize(..., 'bilinear', antialias=True)`: a triangle filter stretched by the
  downscale ratio (for H = f * th and f = 2, per-axis weights [1, 3, 3, 1] / 8, renormalized at
  the borders), so constant images stay exactly constant. IDC itself uses `F.interpolate`'s
  default mode='nearest' (plain subsampling). When H or W is not divisible by f the grid overhangs
  the stored image and the overhanging last rows / columns of the bottom / right tiles are dropped
  (`decode` reads zeros there).

  Args:
    x_real: (n * f^2, H, W, C) real images, grouped as above (e.g. class-grouped with a multiple
      of f^2 images per class, so that every stored image holds one class).
    factor: f >= 1.

  Returns:
    (n, H, W, C) stored images. f = 1 returns x_real unchanged.
  """
  factor = _check_factor(factor)
  _check_images(x_real, 'the real images')
  if factor == 1:
    return x_real
  m, h, w, c = x_real.shape
  per = factor * factor
  if m % per:
    raise ValueError(f'encoding real images with factor {factor} needs a multiple of {per} '
                     f'images ({per} per stored image), got {m}; pass {m - m % per} or '
                     f'{m + per - m % per}.')
  th, tw = tile_shape(h, w, factor)
  small = jax.image.resize(x_real, (m, th, tw, c), 'bilinear', antialias=True)
  n = m // per
  grid = small.reshape(n, factor, factor, th, tw, c).transpose(0, 1, 3, 2, 4, 5)
  grid = grid.reshape(n, factor * th, factor * tw, c)
  return grid[:, :h, :w]


class MultiFormation(SetParameterisation):
  """IDC's parameterization of the stored set, for any distiller (`ddjax.distill.step` takes it
  as the step's `param`).

  The stored set {'x': (n, H, W, C), 'y': (n, K), ...} is what the optimizer updates; the step
  decodes it to {'x': (n * f^2, H, W, C), 'y': (n * f^2, K), other keys unchanged} before calling
  the distiller, so its meta-loss is differentiated through `decode` onto the stored pixels. The
  initial stored set is encoded from f^2 real images per stored image (`encode`), and the
  exported / evaluated set is the decoded one. BiLP's adaptive pruning composes: it wraps the
  distiller, so it sees the decoded set.
  """

  def __init__(self, factor: int):
    self.factor = _check_factor(factor)

  @property
  def images_per_stored(self) -> int:
    return self.factor * self.factor

  def decode(self, syn: PyTree) -> PyTree:
    """The synthetic set the distiller sees: x and y decoded, other keys unchanged."""
    if syn['y'].shape[0] != syn['x'].shape[0]:
      raise ValueError(f"syn['y'] has {syn['y'].shape[0]} rows but syn['x'] holds "
                       f"{syn['x'].shape[0]} stored images; they must match.")
    return {**syn, 'x': decode(syn['x'], self.factor),
            'y': decode_labels(syn['y'], self.factor)}

  def decode_classes(self, classes: Array) -> Array:
    """classes: int (n,) class of each stored image -> those of the decoded set."""
    return decoded_classes(classes, self.factor)

  def encode(self, syn: PyTree) -> PyTree:
    """Stored images from f^2 real images each (`encode`), with the first image's label."""
    f2 = self.factor * self.factor
    return {**syn, 'x': encode(syn['x'], self.factor), 'y': syn['y'][::f2]}


def from_config(cfg) -> SetParameterisation:
  """IDC's multi-formation when idc.factor > 1, else the identity parameterisation."""
  return MultiFormation(cfg.idc.factor) if cfg.idc.factor > 1 else IDENTITY
