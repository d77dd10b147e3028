"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) in JAX.

A port of `DiffAugment` / `ParamDiffAug` from the official VICO-UoE/DatasetCondensation
`utils.py`, for NHWC images (N, H, W, C) that are already normalized.

Op families (names used in strategy strings such as 'color_crop_cutout_flip_scale_rotate'):
  color   brightness, then saturation, then contrast (three draws per sample),
  crop    integer translation by up to round(ratio_crop_pad * side) pixels, zero fill,
  cutout  zero a round(ratio_cutout * side) square at a random centre (clipped to the image),
  flip    horizontal (width-axis) mirror with probability `prob_flip`,
  scale   affine scaling, x and y factors in [1/ratio_scale, ratio_scale],
  rotate  affine rotation by up to +-ratio_rotate degrees.
scale and rotate use torch's `affine_grid` + `grid_sample` convention with align_corners=True,
bilinear interpolation and zero padding.

Siamese property: every random parameter of sample i is drawn from
`jax.random.fold_in(op_key, i)`, so it does not depend on the batch size. Calling `dsa` with the
same key on a real batch and on a synthetic batch therefore augments sample i of both the same
way (and in mode 'S' picks the same op family, which depends on the call key only). With
`batchmode=True` every sample uses sample 0's parameters. Note that the official code turns its
batchmode on whenever a seed is passed, i.e. in the matching loops of DC/DSA/DM (where it
reseeds for the real and the synthetic batch), and off in evaluation training (no seed); pass
`batchmode=True` to reproduce the former.

Everything is pure and differentiable w.r.t. `x`: crop / cutout / flip are gathers and masks
(the gradient reaches the kept pixels), scale / rotate are bilinear. The public functions are
already `jax.jit`-compiled with `strategy`, `mode`, `params` and `batchmode` static (hashable
Python values), so eager calls compile once per shape; they compose with jit, vmap and grad.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import jax
import jax.numpy as jnp

Array = jax.Array

DSA_OPS = ('color', 'crop', 'cutout', 'flip', 'scale', 'rotate')
DEFAULT_DSA_STRATEGY = 'color_crop_cutout_flip_scale_rotate'
DSA_MODES = ('S', 'M')
# Datasets whose classes are not mirror-symmetric: no horizontal flip.
_NO_FLIP_DATASETS = ('mnist', 'svhn')


@dataclasses.dataclass(frozen=True)
class DSAParams:
  """Augmentation strengths of DSA (the official `ParamDiffAug` defaults).

  Frozen (hashable) so that it can be a static argument of `jax.jit`.
  """
  ratio_scale: float = 1.2
  ratio_rotate: float = 15.0  # degrees
  ratio_crop_pad: float = 0.125
  ratio_cutout: float = 0.5  # side of the cutout square, as a fraction of the image side
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5
  prob_flip: float = 0.5


def _jit_static(*static_argnames: str):
  """jax.jit with `static_argnames`, binding every call to keyword arguments with defaults.

  jax.jit caches on how static arguments were passed (positionally, by keyword or left to
  their defaults); normalizing the call makes equal configurations share one compilation.
  """
  def deco(fn):
    sig = inspect.signature(fn)
    jitted = jax.jit(fn, static_argnames=static_argnames)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      bound = sig.bind(*args, **kwargs)
      bound.apply_defaults()
      return jitted(**bound.arguments)

    return wrapper
  return deco


# ----------------------------------------------------------------------------------------------
# Validation and per-sample randomness.


def _check_images(x) -> Array:
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f'DSA expects NHWC images of shape (N, H, W, C); got shape {x.shape}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f'DSA expects floating-point images; got dtype {x.dtype}')
  return x


def parse_dsa_strategy(strategy: str) -> tuple[str, ...]:
  """Split a strategy string ('color_crop_...') into op names; '' / 'none' give ().

  Raises ValueError naming the allowed ops when an op is unknown.
  """
  if not isinstance(strategy, str):
    raise ValueError(f'DSA strategy must be a string; got {strategy!r}')
  if strategy in ('', 'none', 'None'):
    return ()
  ops = tuple(strategy.split('_'))
  bad = [op for op in ops if op not in DSA_OPS]
  if bad:
    raise ValueError(f'unknown DSA op(s) {bad} in strategy {strategy!r}; '
                     f'allowed ops: {", ".join(DSA_OPS)}')
  return ops


def strategy_from_config(cfg) -> str:
  """cfg.dsa.strategy with 'auto' resolved for cfg.data.name ('' = no augmentation)."""
  if cfg.dsa.strategy == 'auto':
    return dsa_strategy_for(cfg.data.name)
  return cfg.dsa.strategy


def dsa_strategy_for(dataset_name: str, strategy: str = DEFAULT_DSA_STRATEGY) -> str:
  """The DSA strategy for a dataset: drops 'flip' for digit datasets ('mnist', 'svhn').

  Fashion-MNIST and all other datasets keep the strategy unchanged. The strategy is validated;
  '' means no augmentation.
  """
  ops = parse_dsa_strategy(strategy)
  if dataset_name.lower() in _NO_FLIP_DATASETS:
    ops = tuple(op for op in ops if op != 'flip')
    return '_'.join(ops)
  return strategy


def _sample_keys(key: Array, n: int, batchmode: bool) -> Array:
  """(n,) keys, `fold_in(key, i)` for sample i (sample 0's key for all when batchmode)."""
  idx = jnp.zeros((n,), jnp.uint32) if batchmode else jnp.arange(n, dtype=jnp.uint32)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, idx)


def _uniform_per_sample(key: Array, n: int, batchmode: bool = False, num: int = 1) -> Array:
  """(n, num) float32 draws from U(0, 1); row i depends only on (key, i)."""
  keys = _sample_keys(key, n, batchmode)
  return jax.vmap(lambda k: jax.random.uniform(k, (num,), jnp.float32))(keys)


def _randint_per_sample(key: Array, n: int, lows, highs, batchmode: bool = False) -> Array:
  """(n, len(lows)) int32 draws, column j uniform in [lows[j], highs[j]); row i from (key, i).

  floor(lo + u * (hi - lo)) of one U(0, 1) draw per value (cheaper to compile than
  jax.random.randint); the clip guards against u * (hi - lo) rounding up to hi in float32.
  """
  lo = jnp.asarray(lows, jnp.float32)
  hi = jnp.asarray(highs, jnp.float32)
  u = _uniform_per_sample(key, n, batchmode, num=len(lows))
  v = jnp.floor(lo + u * (hi - lo))
  return jnp.clip(v, lo, hi - 1.0).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Affine warps (torch affine_grid + grid_sample, align_corners=True, bilinear, zero padding).


def _norm_coords(size: int) -> Array:
  """Normalized pixel-centre coordinates in [-1, 1] for align_corners=True, shape (size,)."""
  if size == 1:
    return jnp.zeros((1,), jnp.float32)
  return jnp.linspace(-1.0, 1.0, size, dtype=jnp.float32)


def _bilinear_sample(img: Array, iy: Array, ix: Array) -> Array:
  """Sample img (H, W, C) at pixel coordinates iy, ix (H', W') with zero padding -> (H', W', C)."""
  h, w, _ = img.shape
  y0 = jnp.floor(iy)
  x0 = jnp.floor(ix)
  wy1 = iy - y0
  wx1 = ix - x0
  y0 = y0.astype(jnp.int32)
  x0 = x0.astype(jnp.int32)
  out = jnp.zeros(iy.shape + (img.shape[-1],), img.dtype)
  for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
    for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
      yy = y0 + dy
      xx = x0 + dx
      valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
      val = img[jnp.clip(yy, 0, h - 1), jnp.clip(xx, 0, w - 1)]
      weight = jnp.where(valid, wy * wx, 0.0).astype(img.dtype)
      out = out + val * weight[..., None]
  return out


def _affine(x: Array, theta: Array) -> Array:
  """Warp x (N, H, W, C) by theta (N, 2, 3) like torch affine_grid + grid_sample.

  align_corners=True: output pixel (i, j) has normalized coordinates (x_j, y_i) in [-1, 1]
  (x along the width) and takes the bilinear value of the input at theta @ (x_j, y_i, 1),
  zero outside the image. Returns (N, H, W, C) in x's dtype.
  """
  _, h, w, _ = x.shape
  ys = _norm_coords(h)
  xs = _norm_coords(w)
  gy, gx = jnp.meshgrid(ys, xs, indexing='ij')  # (H, W)
  base = jnp.stack([gx, gy, jnp.ones_like(gx)], axis=-1)  # (H, W, 3)

  def warp(img, th):
    src = jnp.einsum('hwk,rk->hwr', base, th.astype(jnp.float32))  # (H, W, 2): (x, y)
    ix = (src[..., 0] + 1.0) * 0.5 * (w - 1)
    iy = (src[..., 1] + 1.0) * 0.5 * (h - 1)
    return _bilinear_sample(img, iy, ix)

  return jax.vmap(warp)(x, theta).astype(x.dtype)


def _scale_factors(key: Array, n: int, params: DSAParams, batchmode: bool = False):
  """Per-sample (sx, sy), each (n,) in [1/ratio_scale, ratio_scale]."""
  r = params.ratio_scale
  u = _uniform_per_sample(key, n, batchmode, num=2)
  s = u * (r - 1.0 / r) + 1.0 / r
  return s[:, 0], s[:, 1]


def _rotation_angles(key: Array, n: int, params: DSAParams, batchmode: bool = False) -> Array:
  """Per-sample angle (n,) in radians, uniform in [-ratio_rotate, ratio_rotate] degrees."""
  u = _uniform_per_sample(key, n, batchmode)[:, 0]
  return (u - 0.5) * 2.0 * params.ratio_rotate / 180.0 * math.pi


def _rotation_theta(angle: Array) -> Array:
  """(n,) angles -> (n, 2, 3) thetas [[cos, -sin, 0], [sin, cos, 0]] (official DSA).

  A positive angle rotates the image anticlockwise (90 degrees == np.rot90(img, 1)).
  """
  c, s = jnp.cos(angle), jnp.sin(angle)
  z = jnp.zeros_like(angle)
  return jnp.stack([jnp.stack([c, -s, z], -1), jnp.stack([s, c, z], -1)], -2)


@_jit_static('params', 'batchmode')
def rand_scale(key: Array, x: Array, params: DSAParams = DSAParams(),
               batchmode: bool = False) -> Array:
  """Random per-sample x / y scaling of x (N, H, W, C) -> (N, H, W, C).

  theta = [[sx, 0, 0], [0, sy, 0]]; a factor above 1 samples a larger area (zooms out).
  """
  x = _check_images(x)
  sx, sy = _scale_factors(key, x.shape[0], params, batchmode)
  z = jnp.zeros_like(sx)
  theta = jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1)], -2)
  return _affine(x, theta)


@_jit_static('params', 'batchmode')
def rand_rotate(key: Array, x: Array, params: DSAParams = DSAParams(),
                batchmode: bool = False) -> Array:
  """Random per-sample rotation of x (N, H, W, C) by up to +-ratio_rotate degrees."""
  x = _check_images(x)
  angle = _rotation_angles(key, x.shape[0], params, batchmode)
  return _affine(x, _rotation_theta(angle))


# ----------------------------------------------------------------------------------------------
# Flip, colour, crop, cutout.


def _flip_mask(key: Array, n: int, params: DSAParams, batchmode: bool = False) -> Array:
  """(n,) bool, True where the sample is mirrored (u < prob_flip)."""
  return _uniform_per_sample(key, n, batchmode)[:, 0] < params.prob_flip


@_jit_static('params', 'batchmode')
def rand_flip(key: Array, x: Array, params: DSAParams = DSAParams(),
              batchmode: bool = False) -> Array:
  """Mirror samples of x (N, H, W, C) along the width axis with probability prob_flip."""
  x = _check_images(x)
  m = _flip_mask(key, x.shape[0], params, batchmode)
  return jnp.where(m[:, None, None, None], x[:, :, ::-1, :], x)


def _brightness(x: Array, u: Array, params: DSAParams) -> Array:
  """x + (u - 0.5) * brightness; x (N, H, W, C), u (N,)."""
  u = u.reshape(-1, 1, 1, 1)
  return (x + (u - 0.5) * params.brightness).astype(x.dtype)


def _saturation(x: Array, u: Array, params: DSAParams) -> Array:
  """(x - m) * (u * saturation) + m, m = per-pixel channel mean; x (N, H, W, C), u (N,)."""
  u = u.reshape(-1, 1, 1, 1)
  m = jnp.mean(x, axis=-1, keepdims=True)
  return ((x - m) * (u * params.saturation) + m).astype(x.dtype)


def _contrast(x: Array, u: Array, params: DSAParams) -> Array:
  """(x - m) * (u + contrast) + m, m = per-sample mean over H, W, C; x (N, H, W, C), u (N,)."""
  u = u.reshape(-1, 1, 1, 1)
  m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return ((x - m) * (u + params.contrast) + m).astype(x.dtype)


@_jit_static('params', 'batchmode')
def rand_brightness(key: Array, x: Array, params: DSAParams = DSAParams(),
                    batchmode: bool = False) -> Array:
  """x + (u - 0.5) * brightness, one u ~ U(0, 1) per sample. x: (N, H, W, C)."""
  x = _check_images(x)
  return _brightness(x, _uniform_per_sample(key, x.shape[0], batchmode)[:, 0], params)


@_jit_static('params', 'batchmode')
def rand_saturation(key: Array, x: Array, params: DSAParams = DSAParams(),
                    batchmode: bool = False) -> Array:
  """(x - m) * (u * saturation) + m, m = per-pixel mean over channels. x: (N, H, W, C)."""
  x = _check_images(x)
  return _saturation(x, _uniform_per_sample(key, x.shape[0], batchmode)[:, 0], params)


@_jit_static('params', 'batchmode')
def rand_contrast(key: Array, x: Array, params: DSAParams = DSAParams(),
                  batchmode: bool = False) -> Array:
  """(x - m) * (u + contrast) + m, m = per-sample mean over H, W, C. x: (N, H, W, C)."""
  x = _check_images(x)
  return _contrast(x, _uniform_per_sample(key, x.shape[0], batchmode)[:, 0], params)


def _color_uniforms(key: Array, n: int, batchmode: bool = False) -> Array:
  """(n, 3) independent U(0, 1) draws of (brightness, saturation, contrast) for 'color'."""
  return _uniform_per_sample(key, n, batchmode, num=3)


@_jit_static('params', 'batchmode')
def rand_color(key: Array, x: Array, params: DSAParams = DSAParams(),
               batchmode: bool = False) -> Array:
  """Brightness, then saturation, then contrast (independent draws). x: (N, H, W, C)."""
  x = _check_images(x)
  u = _color_uniforms(key, x.shape[0], batchmode)
  x = _brightness(x, u[:, 0], params)
  x = _saturation(x, u[:, 1], params)
  return _contrast(x, u[:, 2], params)


def _crop_shifts(key: Array, n: int, h: int, w: int, params: DSAParams,
                 batchmode: bool = False) -> Array:
  """(n, 2) int32 (dy, dx), uniform in [-s_h, s_h] x [-s_w, s_w], s = int(side * pad + 0.5)."""
  sh = int(h * params.ratio_crop_pad + 0.5)
  sw = int(w * params.ratio_crop_pad + 0.5)
  return _randint_per_sample(key, n, (-sh, -sw), (sh + 1, sw + 1), batchmode)


@_jit_static('params', 'batchmode')
def rand_crop(key: Array, x: Array, params: DSAParams = DSAParams(),
              batchmode: bool = False) -> Array:
  """Random integer translation of x (N, H, W, C), zero fill.

  out[n, i, j] = x[n, i + dy, j + dx] (0 outside the image), (dy, dx) from `_crop_shifts`.
  """
  x = _check_images(x)
  n, h, w, _ = x.shape
  shifts = _crop_shifts(key, n, h, w, params, batchmode)
  # As the official code: pad by one zero pixel and clamp the indices into the padding.
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

  def shift_one(img, d):
    rows = jnp.clip(jnp.arange(h) + d[0] + 1, 0, h + 1)
    cols = jnp.clip(jnp.arange(w) + d[1] + 1, 0, w + 1)
    return img[rows[:, None], cols[None, :]]

  return jax.vmap(shift_one)(xp, shifts)


def _cutout_size(h: int, w: int, params: DSAParams):
  """(size_h, size_w) = (int(H * ratio_cutout + 0.5), int(W * ratio_cutout + 0.5))."""
  return int(h * params.ratio_cutout + 0.5), int(w * params.ratio_cutout + 0.5)


def _cutout_centres(key: Array, n: int, h: int, w: int, params: DSAParams,
                    batchmode: bool = False) -> Array:
  """(n, 2) int32 centre offsets, row in [0, H + 1 - size_h % 2), col likewise."""
  size_h, size_w = _cutout_size(h, w, params)
  return _randint_per_sample(key, n, (0, 0), (h + (1 - size_h % 2), w + (1 - size_w % 2)),
                             batchmode)


@_jit_static('params', 'batchmode')
def rand_cutout(key: Array, x: Array, params: DSAParams = DSAParams(),
                batchmode: bool = False) -> Array:
  """Zero a size_h x size_w square per sample of x (N, H, W, C), clipped to the image.

  The square covers rows [c_h - size_h // 2, c_h - size_h // 2 + size_h) (columns likewise)
  for the centre (c_h, c_w) from `_cutout_centres`.
  """
  x = _check_images(x)
  n, h, w, _ = x.shape
  size_h, size_w = _cutout_size(h, w, params)
  c = _cutout_centres(key, n, h, w, params, batchmode)
  top = (c[:, 0] - size_h // 2)[:, None, None]
  left = (c[:, 1] - size_w // 2)[:, None, None]
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
  return x * (~inside)[..., None].astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# DiffAugment.

_OP_FNS = {
    'color': rand_color,
    'crop': rand_crop,
    'cutout': rand_cutout,
    'flip': rand_flip,
    'scale': rand_scale,
    'rotate': rand_rotate,
}


def _split_call_key(key: Array):
  """(choice key, ops key) of a `dsa` call."""
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def _op_key(ops_key: Array, op: str) -> Array:
  """Key of op family `op`, independent of its position in the strategy."""
  return jax.random.fold_in(ops_key, DSA_OPS.index(op))


def _choose_op(choice_key: Array, n_ops: int) -> Array:
  """Index (int32 scalar) of the op family used in mode 'S', uniform in [0, n_ops)."""
  return jax.random.randint(choice_key, (), 0, n_ops, jnp.int32)


@_jit_static('strategy', 'mode', 'params', 'batchmode')
def dsa(key: Array, x: Array, strategy: str = DEFAULT_DSA_STRATEGY, mode: str = 'S',
        params: DSAParams = DSAParams(), batchmode: bool = False) -> Array:
  """Differentiable siamese augmentation of x (N, H, W, C) -> (N, H, W, C), x's dtype.

  Args:
    key: PRNG key; use the same key for the real and the synthetic batch (siamese).
    x: (N, H, W, C) floating-point images.
    strategy: op families joined by '_' (see DSA_OPS); '' or 'none' returns x unchanged.
    mode: 'S' applies ONE family chosen uniformly at random from the strategy (from `key`
      only, so it is the same for every batch size); 'M' applies every family in order.
    params: augmentation strengths.
    batchmode: all samples use sample 0's parameters.

  Sample i's parameters depend only on (key, i), never on N.
  """
  if mode not in DSA_MODES:
    raise ValueError(f'unknown DSA mode {mode!r}; expected one of {DSA_MODES}')
  ops = parse_dsa_strategy(strategy)
  x = _check_images(x)
  if not ops:
    return x
  choice_key, ops_key = _split_call_key(key)
  if mode == 'M':
    for op in ops:
      x = _OP_FNS[op](_op_key(ops_key, op), x, params, batchmode)
    return x
  if len(ops) == 1:
    return _OP_FNS[ops[0]](_op_key(ops_key, ops[0]), x, params, batchmode)
  branches = [
      (lambda xx, op=op: _OP_FNS[op](_op_key(ops_key, op), xx, params, batchmode))
      for op in ops
  ]
  return jax.lax.switch(_choose_op(choice_key, len(ops)), branches, x)
