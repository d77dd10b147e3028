"""FRePo's evaluation augmentation (ddjax.augment.frepo): one op per batch, FRePo's ranges, edge fill."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.augment import frepo as F
from ddjax.evaluate.protocols import get_protocol

SIDE = 28


def blob_images(n=64, background=-1.0):
  """(n, 28, 28, 1): a standardised black background with a bright 10 x 10 square at the centre."""
  x = np.full((n, SIDE, SIDE, 1), background, np.float32)
  x[:, 9:19, 9:19] = 2.0
  return jnp.asarray(x)


def test_one_op_is_drawn_per_batch_and_every_op_is_reachable():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, SIDE, SIDE, 1)), jnp.float32)
  ops = F.parse_strategy(F.FREPO_STRATEGY_FLIP)
  jitted = {op: jax.jit(getattr(F, op)) for op in ops}
  chosen = []
  for seed in range(40):
    key = jax.random.PRNGKey(seed)
    out = np.asarray(F.frepo_augment(key, x, F.FREPO_STRATEGY_FLIP))
    _, k_args = jax.random.split(key)
    matches = [op for op in ops
               if np.allclose(out, np.asarray(jitted[op](k_args, x)), atol=1e-4)]
    assert len(matches) >= 1, f'seed {seed}: the batch is not one op applied to every image'
    # flip may draw "no mirror" for all 6 images only with probability 1/64; colour never matches
    # another op: so one match except in that rare case.
    chosen.append(matches[0])
  counts = {op: chosen.count(op) for op in ops}
  assert all(c >= 2 for c in counts.values()), counts


def test_geometric_ops_replicate_the_black_edge_instead_of_padding_with_the_mean():
  x = blob_images()
  for op in (F.crop, F.rotate, F.translate):
    y = np.asarray(jax.jit(op)(jax.random.PRNGKey(3), x))
    border = np.concatenate([y[:, 0], y[:, -1], y[:, :, 0], y[:, :, -1]], axis=1)
    np.testing.assert_allclose(border, -1.0, atol=1e-5, err_msg=op.__name__)
    assert y.min() >= -1.0 - 1e-5 and y.max() <= 2.0 + 1e-5, op.__name__


def _centroid(img):
  w = np.asarray(img[..., 0]) + 1.0                    # background -> 0 mass
  r, c = np.indices(w.shape)
  return np.array([(w * r).sum(), (w * c).sum()]) / w.sum()


def test_translate_shifts_within_an_eighth_of_the_side_and_uses_the_range():
  x = blob_images(200)
  y = jax.jit(F.translate)(jax.random.PRNGKey(5), x)
  shifts = np.array([_centroid(img) for img in y]) - 13.5
  assert np.abs(shifts).max() <= 0.125 * SIDE + 0.05
  assert np.abs(shifts).max() > 0.8 * 0.125 * SIDE          # the range is actually used
  assert abs(shifts.mean()) < 0.5                             # symmetric


def _bar_angle(img):
  w = np.asarray(img[..., 0]) + 1.0
  r, c = np.indices(w.shape)
  r, c = r - (w * r).sum() / w.sum(), c - (w * c).sum() / w.sum()
  cov = np.array([[(w * c * c).sum(), (w * c * r).sum()], [(w * c * r).sum(), (w * r * r).sum()]])
  vals, vecs = np.linalg.eigh(cov)
  v = vecs[:, -1]
  return np.degrees(np.arctan2(v[1], v[0]) % np.pi)


def test_rotate_turns_by_at_most_15_degrees_and_uses_the_range():
  x = np.full((200, SIDE, SIDE, 1), -1.0, np.float32)
  x[:, 12:16, 4:24] = 2.0                                     # a horizontal bar through the centre
  y = jax.jit(F.rotate)(jax.random.PRNGKey(7), jnp.asarray(x))
  angles = np.array([_bar_angle(img) for img in y])
  angles = np.where(angles > 90, angles - 180, angles)
  assert np.abs(angles).max() <= 15.5
  assert np.abs(angles).max() > 12.0


def test_crop_zooms_between_0_8_and_1_25():
  x = blob_images(200)
  y = jax.jit(F.crop)(jax.random.PRNGKey(9), x)
  mass = (np.asarray(y) + 1.0).sum(axis=(1, 2, 3)) / (np.asarray(x[0]) + 1.0).sum()
  # The square's area scales by 1 / zoom^2 with zoom in [0.8, 1.25].
  assert mass.min() >= 1 / 1.25 ** 2 - 0.03 and mass.max() <= 1 / 0.8 ** 2 + 0.03
  assert mass.min() < 0.75 and mass.max() > 1.35


def test_cutout_zeroes_one_side_over_4_square_inside_the_image():
  x = jnp.asarray(np.random.default_rng(1).uniform(1.0, 2.0, size=(50, SIDE, SIDE, 1)),
                  jnp.float32)
  y = np.asarray(jax.jit(F.cutout)(jax.random.PRNGKey(2), x))[..., 0]
  for img in y:
    rows, cols = np.nonzero(img == 0)
    assert len(rows) == 7 * 7
    assert rows.max() - rows.min() == 6 and cols.max() - cols.min() == 6


def test_color_jitter_strengths_follow_frepo_and_saturation_keeps_grey_images_grey():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(300, SIDE, SIDE, 1)), jnp.float32)
  y = jax.jit(F.color)(jax.random.PRNGKey(6), x)
  d_mean = np.asarray(y.mean(axis=(1, 2, 3)) - x.mean(axis=(1, 2, 3)))
  ratio = np.asarray(y.std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3)))
  assert np.abs(d_mean).max() <= 0.25 + 1e-4 and np.abs(d_mean).max() > 0.2
  assert ratio.min() >= np.exp(-0.25) - 1e-4 and ratio.max() <= np.exp(0.25) + 1e-4
  # On three equal channels (a grey image) saturation changes nothing: the channels stay equal.
  grey = jnp.repeat(x[:20], 3, axis=-1)
  out = np.asarray(F.color(jax.random.PRNGKey(8), grey))
  np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)


def test_strategy_by_dataset_and_the_frepo_protocol_uses_it():
  assert 'flip' not in F.frepo_strategy_for('fashion_mnist')
  assert F.frepo_strategy_for('cifar10').startswith('flip_')
  assert get_protocol('frepo', 10).augment_ops == F.FREPO_STRATEGY
  with pytest.raises(ValueError, match='zoom'):
    get_protocol('frepo', 10, augment_ops='crop_zoom')
