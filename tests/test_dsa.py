"""ddjax.augment.dsa: differentiable siamese augmentation against independent numpy references.

References, none of them taken from the implementation under test:
  * a per-pixel numpy float64 loop of torch's affine_grid + grid_sample (align_corners=True,
    bilinear, zero padding), written from the documented formulas;
  * np.rot90 for a rotation by exactly 90 degrees;
  * zero-filled shifts, explicit cutout squares, x[:, :, ::-1] and the colour formulas of the
    official DiffAugment, evaluated with the parameters the module reports it drew.
"""
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.augment import DSAParams, dsa, dsa_strategy_for

# The module itself (the package attribute `ddjax.augment.dsa` is the function).
D = importlib.import_module('ddjax.augment.dsa')

OPS = D.DSA_OPS
# Internal helpers, jitted here so that eager calls don't compile primitive by primitive.
_affine = jax.jit(D._affine)
_scale_factors = jax.jit(D._scale_factors, static_argnums=(1, 2))
_rotation_angles = jax.jit(D._rotation_angles, static_argnums=(1, 2))
_crop_shifts = jax.jit(D._crop_shifts, static_argnums=(1, 2, 3, 4))
_cutout_centres = jax.jit(D._cutout_centres, static_argnums=(1, 2, 3, 4))
_flip_mask = jax.jit(D._flip_mask, static_argnums=(1, 2))
_uniform_per_sample = jax.jit(D._uniform_per_sample, static_argnums=(1,))
_color_uniforms = jax.jit(D._color_uniforms, static_argnums=(1,))
_choose_op = jax.jit(lambda key, n_ops: D._choose_op(D._split_call_key(key)[0], n_ops),
                     static_argnums=(1,))


def _images(seed, n, h=8, w=8, c=3):
  return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


def _grid_sample_ref(img, theta):
  """torch affine_grid + grid_sample(align_corners=True, bilinear, zeros), numpy float64 loops.

  img (H, W, C), theta (2, 3) -> (H, W, C).
  """
  img = np.asarray(img, np.float64)
  theta = np.asarray(theta, np.float64)
  h, w, c = img.shape
  out = np.zeros((h, w, c))
  for i in range(h):
    for j in range(w):
      xn = -1.0 + 2.0 * j / (w - 1)
      yn = -1.0 + 2.0 * i / (h - 1)
      gx, gy = theta @ np.array([xn, yn, 1.0])
      px = (gx + 1.0) / 2.0 * (w - 1)
      py = (gy + 1.0) / 2.0 * (h - 1)
      x0, y0 = math.floor(px), math.floor(py)
      for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
          wgt = (1.0 - abs(px - xx)) * (1.0 - abs(py - yy))
          if 0 <= yy < h and 0 <= xx < w:
            out[i, j] += wgt * img[yy, xx]
  return out


def _shift_zero_fill(img, dy, dx):
  """out[i, j] = img[i + dy, j + dx], 0 outside (np.roll by (-dy, -dx) without wrap-around)."""
  h, w = img.shape[:2]
  out = np.roll(img, (-dy, -dx), axis=(0, 1)).copy()
  if dy > 0:
    out[h - dy:] = 0
  elif dy < 0:
    out[:-dy] = 0
  if dx > 0:
    out[:, w - dx:] = 0
  elif dx < 0:
    out[:, :-dx] = 0
  return out


# ---------------------------------------------------------------------------------------------
# Siamese property.


@pytest.mark.parametrize('strategy', list(OPS) + ['S'])
def test_siamese_same_params_for_first_samples_of_smaller_batch(strategy):
  real = _images(0, 12)
  syn = real[:3]
  # 'S': the default strategy in mode 'S' (one op family picked per key). Mode 'M' composes the
  # single ops with the same keys (test_mode_m_applies_every_op_in_order).
  strategy, keys = (D.DEFAULT_DSA_STRATEGY, range(8)) if strategy == 'S' else (strategy, range(2))
  for seed in keys:
    key = jax.random.PRNGKey(seed)
    a = dsa(key, real, strategy)
    b = dsa(key, syn, strategy)
    np.testing.assert_allclose(np.asarray(a)[:3], np.asarray(b), rtol=1e-5, atol=1e-5)


def test_siamese_choice_in_mode_s_depends_on_call_key_only():
  # Over several keys, the op picked for batches of 12 and of 3 is the same and differs by key.
  x12 = _images(0, 12)
  x3 = x12[:3]
  picked = set()
  for seed in range(12):
    key = jax.random.PRNGKey(seed)
    idx = int(_choose_op(key, len(OPS)))
    picked.add(idx)
    expect = dsa(key, x3, OPS[idx])  # the single op, with the key mode 'S' gives it
    np.testing.assert_allclose(np.asarray(dsa(key, x3)), np.asarray(expect), atol=1e-5)
    np.testing.assert_allclose(np.asarray(dsa(key, x12))[:3], np.asarray(expect), atol=1e-5)
  assert len(picked) >= 4


def test_siamese_does_not_rely_on_prefix_consistent_rng():
  # With jax_threefry_partitionable (the default in recent JAX) even jax.random.uniform(key, (n,))
  # shares its first values across n; the per-sample fold_in must not depend on that.
  real = _images(0, 12)
  key = jax.random.PRNGKey(4)
  with jax.threefry_partitionable(False):
    assert np.abs(np.asarray(jax.random.uniform(key, (12,)))[:3]
                  - np.asarray(jax.random.uniform(key, (3,)))).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(D._uniform_per_sample(key, 12, False, 3))[:3],
                                  np.asarray(D._uniform_per_sample(key, 3, False, 3)))
    np.testing.assert_allclose(np.asarray(dsa(key, real, 'color'))[:3],
                               np.asarray(dsa(key, real[:3], 'color')), atol=1e-5)


@pytest.mark.parametrize('op', OPS)
def test_samples_get_different_params_and_batchmode_shares_sample0(op):
  # Identical images: without batchmode, samples are augmented differently; with it, identically.
  x = np.repeat(_images(2, 1), 12, axis=0)
  key = jax.random.PRNGKey(3)
  y = np.asarray(dsa(key, x, op))
  assert np.abs(y - y[:1]).max() > 1e-3
  yb = np.asarray(dsa(key, x, op, batchmode=True))
  np.testing.assert_allclose(yb, np.repeat(yb[:1], 12, axis=0), atol=1e-6)
  np.testing.assert_allclose(yb[0], y[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Affine ops: convention, known transforms, identities.


def test_rotation_by_90_degrees_is_rot90_anticlockwise():
  x = _images(4, 2, 6, 6, 2)
  exact = jnp.tile(jnp.array([[0., -1., 0.], [1., 0., 0.]]), (2, 1, 1))
  expect = np.rot90(x, 1, axes=(1, 2))
  np.testing.assert_allclose(np.asarray(_affine(x, exact)), expect, atol=1e-5)
  via_angle = D._rotation_theta(jnp.full((2,), math.pi / 2))
  np.testing.assert_allclose(np.asarray(_affine(x, via_angle)), expect, atol=1e-5)
  minus = D._rotation_theta(jnp.full((2,), -math.pi / 2))
  np.testing.assert_allclose(np.asarray(_affine(x, minus)), np.rot90(x, -1, axes=(1, 2)),
                             atol=1e-5)


def test_affine_matches_numpy_grid_sample_for_general_theta():
  # Rotation + shear + translation that reaches outside the image (zero padding).
  x = _images(5, 2, 7, 9, 2)
  theta = np.array([[[0.9, -0.3, 0.2], [0.4, 1.1, -0.3]],
                    [[1.3, 0.2, -0.5], [-0.1, 0.7, 0.6]]], np.float32)
  out = np.asarray(_affine(x, theta))
  for n in range(2):
    np.testing.assert_allclose(out[n], _grid_sample_ref(x[n], theta[n]), atol=1e-5)


def test_scale_matches_numpy_grid_sample_with_drawn_factors():
  x = _images(6, 4, 8, 10, 3)
  key = jax.random.PRNGKey(7)
  sx, sy = map(np.asarray, _scale_factors(key, 4, DSAParams()))
  assert np.all((sx >= 1 / 1.2 - 1e-6) & (sx <= 1.2 + 1e-6))
  assert np.all((sy >= 1 / 1.2 - 1e-6) & (sy <= 1.2 + 1e-6))
  assert np.abs(sx - sy).max() > 1e-3  # independent x / y factors
  out = np.asarray(D.rand_scale(key, x))
  for n in range(4):
    theta = np.array([[sx[n], 0, 0], [0, sy[n], 0]])
    np.testing.assert_allclose(out[n], _grid_sample_ref(x[n], theta), atol=1e-5)


def test_rotate_matches_numpy_grid_sample_with_drawn_angles():
  x = _images(0, 12)[:3]
  key = jax.random.PRNGKey(9)
  ang = np.asarray(_rotation_angles(key, 3, DSAParams()), np.float64)
  assert np.all(np.abs(ang) <= math.radians(15.0) + 1e-6)
  out = np.asarray(D.rand_rotate(key, x))
  for n in range(3):
    c, s = math.cos(ang[n]), math.sin(ang[n])
    theta = np.array([[c, -s, 0], [s, c, 0]])
    np.testing.assert_allclose(out[n], _grid_sample_ref(x[n], theta), atol=1e-5)


def test_affine_ops_are_identity_at_zero_strength():
  x = _images(10, 5, 8, 11, 3)
  key = jax.random.PRNGKey(11)
  np.testing.assert_allclose(np.asarray(D.rand_scale(key, x, DSAParams(ratio_scale=1.0))), x,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(D.rand_rotate(key, x, DSAParams(ratio_rotate=0.0))), x,
                             atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Crop, cutout, flip.


def test_crop_is_zero_filled_shift_by_drawn_offsets():
  n, h, w = 40, 16, 8
  x = _images(12, n, h, w, 2)
  key = jax.random.PRNGKey(13)
  shifts = np.asarray(_crop_shifts(key, n, h, w, DSAParams()))
  sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)  # 2, 1
  assert set(shifts[:, 0]) == set(range(-sh, sh + 1))
  assert set(shifts[:, 1]) == set(range(-sw, sw + 1))
  out = np.asarray(D.rand_crop(key, x))
  for i in range(n):
    np.testing.assert_array_equal(out[i], _shift_zero_fill(x[i], *shifts[i]))


def test_crop_with_zero_pad_is_identity():
  x = _images(0, 12)[:3]
  np.testing.assert_array_equal(
      np.asarray(D.rand_crop(jax.random.PRNGKey(0), x, DSAParams(ratio_crop_pad=0.0))), x)


@pytest.mark.parametrize('h,w', [(8, 8), (9, 7)])
def test_cutout_zeroes_the_drawn_square(h, w):
  n = 40
  x = np.abs(_images(15, n, h, w, 2)) + 1.0  # no zeros before cutout
  key = jax.random.PRNGKey(16)
  size_h, size_w = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
  centres = np.asarray(_cutout_centres(key, n, h, w, DSAParams()))
  assert centres[:, 0].min() >= 0 and centres[:, 0].max() < h + 1 - size_h % 2
  assert centres[:, 1].min() >= 0 and centres[:, 1].max() < w + 1 - size_w % 2
  out = np.asarray(D.rand_cutout(key, x))
  interior = 0
  for i in range(n):
    top, left = centres[i, 0] - size_h // 2, centres[i, 1] - size_w // 2
    mask = np.ones((h, w), bool)
    mask[max(top, 0):max(top + size_h, 0), max(left, 0):max(left + size_w, 0)] = False
    np.testing.assert_array_equal(out[i], x[i] * mask[..., None])
    if top >= 0 and left >= 0 and top + size_h <= h and left + size_w <= w:
      interior += 1
      assert (out[i, ..., 0] == 0).sum() == size_h * size_w
  assert interior > 5


def test_flip_mirrors_the_width_axis_where_drawn():
  n = 40
  x = _images(17, n, 6, 7, 2)
  key = jax.random.PRNGKey(18)
  chosen = np.asarray(_flip_mask(key, n, DSAParams()))
  assert 10 < chosen.sum() < n - 10
  out = np.asarray(D.rand_flip(key, x))
  np.testing.assert_array_equal(out[chosen], x[chosen][:, :, ::-1])
  np.testing.assert_array_equal(out[~chosen], x[~chosen])


# ---------------------------------------------------------------------------------------------
# Colour.


def test_color_ops_match_numpy_formulas():
  n = 3
  x = _images(0, 12)[:3].astype(np.float64)
  key = jax.random.PRNGKey(20)
  u = np.asarray(_uniform_per_sample(key, n)[:, 0], np.float64).reshape(-1, 1, 1, 1)
  x32 = x.astype(np.float32)
  np.testing.assert_allclose(np.asarray(D.rand_brightness(key, x32)), x + (u - 0.5) * 1.0,
                             atol=1e-5)
  m = x.mean(axis=3, keepdims=True)
  np.testing.assert_allclose(np.asarray(D.rand_saturation(key, x32)), (x - m) * (u * 2.0) + m,
                             atol=1e-5)
  m = x.mean(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(np.asarray(D.rand_contrast(key, x32)), (x - m) * (u + 0.5) + m,
                             atol=1e-5)
  # color = brightness -> saturation -> contrast with their own draws.
  uc = np.asarray(_color_uniforms(key, n), np.float64)
  ub, us, uc = (uc[:, j].reshape(-1, 1, 1, 1) for j in range(3))
  assert np.abs(ub - us).max() > 1e-3 and np.abs(us - uc).max() > 1e-3
  y = x + (ub - 0.5)
  m = y.mean(axis=3, keepdims=True)
  y = (y - m) * (us * 2.0) + m
  m = y.mean(axis=(1, 2, 3), keepdims=True)
  y = (y - m) * (uc + 0.5) + m
  np.testing.assert_allclose(np.asarray(D.rand_color(key, x32)), y, atol=1e-4)


def test_brightness_zero_is_identity():
  x = _images(0, 12)[:3]
  np.testing.assert_array_equal(
      np.asarray(D.rand_brightness(jax.random.PRNGKey(0), x, DSAParams(brightness=0.0))), x)


# ---------------------------------------------------------------------------------------------
# Gradients, dtypes, jit, vmap.


def test_gradient_through_every_op_is_finite_nonzero_and_correct():
  # Mode 'M' chains all six ops: an op that blocked or broke the gradient would make the whole
  # gradient zero or non-finite. For a fixed key every op is affine in x, so the loss is
  # quadratic and a central difference is exact up to rounding.
  x = jnp.asarray(_images(0, 12)[:3])
  key = jax.random.PRNGKey(23)
  loss = lambda xx: jnp.sum(dsa(key, xx, mode='M') ** 2)
  g = np.asarray(jax.grad(loss)(x))
  assert g.shape == x.shape and np.all(np.isfinite(g)) and np.abs(g).sum() > 1e-3
  v = _images(1, 3)
  eps = 1e-2
  fd = (float(loss(x + eps * v)) - float(loss(x - eps * v))) / (2 * eps)
  np.testing.assert_allclose(np.sum(g * v), fd, rtol=1e-3)


def test_crop_gradient_reaches_exactly_the_kept_pixels():
  n, h, w = 8, 8, 8
  x = jnp.asarray(np.abs(_images(24, n, h, w, 1)) + 1.0)
  key = jax.random.PRNGKey(25)
  g = np.asarray(jax.grad(lambda xx: jnp.sum(D.rand_crop(key, xx)))(x))
  shifts = np.asarray(_crop_shifts(key, n, h, w, DSAParams()))
  for i in range(n):
    kept = _shift_zero_fill(np.ones((h, w, 1)), *shifts[i])  # 1 where output is in-image
    # Pixel (a, b) of the input is used iff output (a - dy, b - dx) is in the image.
    used = np.roll(kept, tuple(shifts[i]), axis=(0, 1))
    np.testing.assert_array_equal(g[i], used)


@pytest.mark.parametrize('op', OPS)
def test_dtype_and_shape_preserved(op):
  x = _images(0, 12)[:3]
  y = dsa(jax.random.PRNGKey(0), x, op)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert np.abs(np.asarray(y) - x).max() > 1e-3 or op == 'flip'


def test_jit_and_vmap_over_keys_agree_with_direct_calls():
  x = jnp.asarray(_images(0, 12)[:3])
  keys = jax.random.split(jax.random.PRNGKey(28), 4)
  batched = jax.vmap(lambda k: dsa(k, x))(keys)  # as DM does, one key per class
  assert batched.shape == (4,) + x.shape and batched.dtype == jnp.float32
  # Inside a user's jit, with the configuration static (cheap strategy: compile time).
  jitted = jax.jit(dsa, static_argnames=('strategy', 'mode', 'params', 'batchmode'))
  for i in range(4):
    np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(dsa(keys[i], x)), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(jitted(keys[i], x, 'crop', mode='S')),
                                  np.asarray(dsa(keys[i], x, 'crop')))


# ---------------------------------------------------------------------------------------------
# Modes and strategies.


def test_mode_s_chooses_ops_uniformly():
  num = 6000
  keys = jax.random.split(jax.random.PRNGKey(29), num)
  idx = np.asarray(jax.jit(jax.vmap(lambda k: _choose_op(k, 6)))(keys))
  counts = np.bincount(idx, minlength=6)
  assert counts.shape == (6,)
  expected = num / 6
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 20.5, counts  # chi-square, 5 dof, p = 0.001


def test_mode_m_applies_every_op_in_order():
  x = _images(0, 12)[:3]
  key = jax.random.PRNGKey(31)
  _, ops_key = D._split_call_key(key)
  # A single-op strategy applies that op with its own key.
  np.testing.assert_array_equal(np.asarray(dsa(key, x, 'crop')),
                                np.asarray(D.rand_crop(D._op_key(ops_key, 'crop'), x)))
  y = x
  for op in OPS:
    y = dsa(key, y, op)
  np.testing.assert_allclose(np.asarray(dsa(key, x, mode='M')), np.asarray(y), atol=1e-5)
  # Crop then flip (always, prob_flip=1) in mode 'M'.
  both = np.asarray(dsa(key, x, 'crop_flip', mode='M', params=DSAParams(prob_flip=1.0)))
  crop = np.asarray(D.rand_crop(D._op_key(ops_key, 'crop'), x))
  np.testing.assert_allclose(both, crop[:, :, ::-1], atol=1e-6)


def test_empty_strategy_returns_input():
  x = _images(0, 12)[:3]
  for s in ('', 'none', 'None'):
    np.testing.assert_array_equal(np.asarray(dsa(jax.random.PRNGKey(0), x, s)), x)


def test_dsa_strategy_for_digits_drops_flip():
  assert 'flip' not in dsa_strategy_for('mnist').split('_')
  assert 'flip' not in dsa_strategy_for('svhn').split('_')
  assert dsa_strategy_for('mnist') == 'color_crop_cutout_scale_rotate'
  assert dsa_strategy_for('fashion_mnist') == D.DEFAULT_DSA_STRATEGY
  assert dsa_strategy_for('cifar10') == D.DEFAULT_DSA_STRATEGY
  assert dsa_strategy_for('mnist', 'flip') == ''


def test_bad_strategy_mode_and_shape_raise():
  x = _images(0, 12)[:3]
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r"unknown DSA op.*'blur'.*allowed ops: color, crop"):
    dsa(key, x, 'color_blur')
  with pytest.raises(ValueError, match='allowed ops'):
    dsa_strategy_for('mnist', 'flip_zoom')
  with pytest.raises(ValueError, match='mode'):
    dsa(key, x, mode='X')
  with pytest.raises(ValueError, match='NHWC'):
    dsa(key, x[0])
  with pytest.raises(ValueError, match='NHWC'):
    D.rand_crop(key, x[..., 0])
