"""FRePo's evaluation augmentation: ONE op per batch, drawn from a strategy list, per-image strengths.

FRePo (script/eval.py, `get_aug_by_name`) trains its evaluation networks with the strategy
'color_crop_rotate_translate_cutout' on (F-)MNIST and 'flip_color_crop_rotate_translate_cutout' on
natural images. Every step draws one op uniformly from the list and applies it to the whole batch,
each image with its own random strength:

  color      brightness + U(-0.25, 0.25), then contrast x logU(e^-0.25, e^0.25) around the image mean,
             then saturation x logU(e^-0.25, e^0.25) around the per-pixel channel mean (the identity
             on one channel). Applied in standardised space, as FRePo does.
  crop       a random sized crop rescaled to the image: sampling grid scaled by a zoom drawn
             log-uniformly from [0.8, 1.25] (< 1 zooms in, > 1 zooms out), its centre moved
             uniformly within what the zoom leaves free.
  rotate     rotation by U(-15, 15) degrees about the image centre.
  translate  shift by U(-0.125, 0.125) x side pixels on each axis (sub-pixel, bilinear).
  cutout     one (side // 4) x (side // 4) square (7 x 7 at 28 px) at a uniformly random position
             fully inside the image, filled with 0 (the data mean in standardised space).
  flip       horizontal mirror with probability 1/2.

Geometric ops (crop, rotate, translate) resample bilinearly and replicate the edge pixels where the
sampling grid leaves the image (augmax's `mode='nearest'`-style fill used by FRePo), so a shifted
Fashion-MNIST item keeps its black background instead of gaining the mean-grey band that zero
padding gives in standardised space.

ddjax draws the op index and the op's strengths from independent keys (FRePo reuses one key for
both, which ties the chosen op to its strengths); the distribution of each is FRePo's.
Pure and jittable; differentiable in x (cutout and flip are masks and gathers).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array

FREPO_OPS = ('color', 'crop', 'rotate', 'translate', 'cutout', 'flip')
FREPO_STRATEGY = 'color_crop_rotate_translate_cutout'          # (F-)MNIST: no flip
FREPO_STRATEGY_FLIP = 'flip_color_crop_rotate_translate_cutout'  # natural images
_NO_FLIP_DATASETS = ('mnist', 'fashion_mnist', 'kmnist', 'emnist', 'svhn')

BRIGHTNESS = 0.25
CONTRAST = 0.25          # log-range: factor in [e^-0.25, e^0.25]
SATURATION = 0.25
ZOOM_RANGE = (0.8, 1.25)
ROTATE_DEGREES = 15.0
TRANSLATE_RATIO = 0.125
CUTOUT_FRACTION = 4      # square side = side // 4


def parse_strategy(strategy: str) -> tuple[str, ...]:
  """'color_crop_rotate' -> ('color', 'crop', 'rotate'); ValueError naming unknown ops."""
  ops = tuple(s for s in strategy.split('_') if s)
  unknown = [op for op in ops if op not in FREPO_OPS]
  if not ops or unknown:
    raise ValueError(f'FRePo augmentation strategy {strategy!r}: unknown op(s) {unknown}; '
                     f'allowed ops: {", ".join(FREPO_OPS)} joined by "_"')
  return ops


def frepo_strategy_for(dataset: str) -> str:
  """FRePo's strategy for a dataset: no flip for digits / Fashion-MNIST, flip otherwise."""
  return FREPO_STRATEGY if dataset.lower() in _NO_FLIP_DATASETS else FREPO_STRATEGY_FLIP


def _log_uniform(key: Array, shape, lo: float, hi: float) -> Array:
  return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))


def color(key: Array, x: Array) -> Array:
  """Brightness, contrast, saturation jitter per image of x (N, H, W, C) (FRePo's strengths)."""
  n = x.shape[0]
  kb, kc, ks = jax.random.split(key, 3)
  x = x + jax.random.uniform(kb, (n, 1, 1, 1), minval=-BRIGHTNESS, maxval=BRIGHTNESS)
  c = _log_uniform(kc, (n, 1, 1, 1), math.exp(-CONTRAST), math.exp(CONTRAST))
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * c + mean
  s = _log_uniform(ks, (n, 1, 1, 1), math.exp(-SATURATION), math.exp(SATURATION))
  mean = x.mean(axis=-1, keepdims=True)
  return (x - mean) * s + mean


def warp(x: Array, matrix: Array, offset: Array) -> Array:
  """Resample each image of x (N, H, W, C) at src = matrix_i @ (p - c) + c + offset_i.

  p is the output pixel (row, col), c the image centre ((H-1)/2, (W-1)/2); matrix (N, 2, 2),
  offset (N, 2) in pixels (row, col). Bilinear, edge pixels replicated outside the image.
  """
  _, h, w, _ = x.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype),
                            indexing='ij')
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2], x.dtype)
  grid = jnp.stack([rows, cols], 0).reshape(2, -1) - centre[:, None]          # (2, H*W)

  def one(img, m, t):
    src = m @ grid + (centre + t)[:, None]                                    # (2, H*W)
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, list(src), order=1, mode='nearest')
    return jax.vmap(sample, in_axes=2, out_axes=1)(img).reshape(h, w, -1)

  return jax.vmap(one)(x, matrix.astype(x.dtype), offset.astype(x.dtype))


def crop(key: Array, x: Array) -> Array:
  """Random sized crop, zoom logU(0.8, 1.25), rescaled to the image size."""
  n, h, w, _ = x.shape
  kz, kc = jax.random.split(key)
  zoom = _log_uniform(kz, (n,), *ZOOM_RANGE)
  free = (jnp.array([h, w], x.dtype)[None] * (zoom[:, None] - 1.0)) / 2     # (N, 2), signed
  centre = jax.random.uniform(kc, (n, 2), minval=-1.0, maxval=1.0) * jnp.abs(free)
  matrix = zoom[:, None, None] * jnp.eye(2)[None]
  return warp(x, matrix, centre)


def rotate(key: Array, x: Array) -> Array:
  """Rotation by U(-15, 15) degrees per image."""
  n = x.shape[0]
  theta = jnp.deg2rad(jax.random.uniform(key, (n,), minval=-ROTATE_DEGREES,
                                         maxval=ROTATE_DEGREES))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  matrix = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  return warp(x, matrix, jnp.zeros((n, 2)))


def translate(key: Array, x: Array) -> Array:
  """Shift by U(-0.125, 0.125) x side per axis per image (sub-pixel, bilinear, edge fill)."""
  n, h, w, _ = x.shape
  shift = jax.random.uniform(key, (n, 2), minval=-TRANSLATE_RATIO, maxval=TRANSLATE_RATIO)
  shift = shift * jnp.array([h, w], x.dtype)
  return warp(x, jnp.broadcast_to(jnp.eye(2), (n, 2, 2)), shift)


def cutout(key: Array, x: Array) -> Array:
  """Zero one (H//4) x (W//4) square per image, top-left corner uniform, fully inside."""
  n, h, w, _ = x.shape
  sh, sw = max(1, h // CUTOUT_FRACTION), max(1, w // CUTOUT_FRACTION)
  ky, kx = jax.random.split(key)
  top = jax.random.randint(ky, (n, 1, 1), 0, h - sh + 1)
  left = jax.random.randint(kx, (n, 1, 1), 0, w - sw + 1)
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)
  return jnp.where(inside[..., None], jnp.zeros((), x.dtype), x)


def flip(key: Array, x: Array) -> Array:
  """Horizontal mirror per image with probability 1/2."""
  mirror = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(mirror, x[:, :, ::-1, :], x)


_OPS = {'color': color, 'crop': crop, 'rotate': rotate, 'translate': translate,
        'cutout': cutout, 'flip': flip}


@functools.partial(jax.jit, static_argnames=('strategy',))
def frepo_augment(key: Array, x: Array, strategy: str = FREPO_STRATEGY) -> Array:
  """One op of `strategy`, drawn uniformly, applied to the whole batch x (N, H, W, C).

  Returns (N, H, W, C). Each image gets its own strength; the op index and the strengths come
  from independent keys.
  """
  ops = parse_strategy(strategy)
  k_op, k_args = jax.random.split(key)
  if len(ops) == 1:
    return _OPS[ops[0]](k_args, x)
  index = jax.random.randint(k_op, (), 0, len(ops))
  return jax.lax.switch(index, [_OPS[op] for op in ops], k_args, x)
