"""IDC multi-formation: decode / encode shapes, PyTorch's bilinear upsampling, order, gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.distill import idc
from ddjax.transforms.base import per_sample_mse


def _torch_bilinear(img, out_h, out_w):
  """PyTorch's bilinear upsampling (align_corners=False) of img (h, w), written directly."""
  h, w = img.shape

  def coords(out, size):
    src = (np.arange(out) + 0.5) * size / out - 0.5
    src = np.clip(src, 0, None)
    i0 = np.minimum(np.floor(src).astype(int), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, src - i0

  y0, y1, fy = coords(out_h, h)
  x0, x1, fx = coords(out_w, w)
  top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
  bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
  return top * (1 - fy[:, None]) + bottom * fy[:, None]


def test_decode_shapes_and_identity():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 28, 28, 1)), jnp.float32)
  assert idc.decode(x, 2).shape == (12, 28, 28, 1)
  odd = jnp.ones((3, 7, 7, 2))
  assert idc.decode(odd, 2).shape == (12, 7, 7, 2)          # padded to 8, tiles of 4
  np.testing.assert_array_equal(idc.decode(x, 1), x)
  np.testing.assert_array_equal(idc.encode(x, 1), x)
  np.testing.assert_array_equal(idc.decode_labels(jnp.arange(3), 2),
                                [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])


def test_decoded_tiles_are_pytorch_bilinear_upsamplings_in_grid_order():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 12, 12, 1)).astype(np.float32)
  dec = np.asarray(idc.decode(jnp.asarray(x), 2))
  for i in range(2):
    for t, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
      tile = x[i, 6 * r:6 * r + 6, 6 * c:6 * c + 6, 0]
      np.testing.assert_allclose(dec[4 * i + t, :, :, 0], _torch_bilinear(tile, 12, 12),
                                 rtol=1e-5, atol=1e-5)


def test_encode_then_decode_recovers_constant_images_in_order():
  consts = jnp.arange(8, dtype=jnp.float32)[:, None, None, None] * jnp.ones((8, 10, 10, 1))
  stored = idc.encode(consts, 2)
  assert stored.shape == (2, 10, 10, 1)
  dec = np.asarray(idc.decode(stored, 2))
  np.testing.assert_allclose(dec.mean(axis=(1, 2, 3)), np.arange(8), atol=1e-5)
  np.testing.assert_allclose(dec.std(axis=(1, 2, 3)), 0, atol=1e-5)
  # a smooth image survives the round trip approximately
  yy, xx = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 16), indexing='ij')
  smooth = np.stack([np.sin(2 * yy + k) * np.cos(xx) for k in range(4)])[..., None]
  back = np.asarray(idc.decode(idc.encode(jnp.asarray(smooth, jnp.float32), 2), 2))
  assert np.abs(back - smooth).max() < 0.15


def test_decode_is_differentiable_and_reaches_every_stored_pixel():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 9, 1)), jnp.float32)
  g = jax.jit(jax.grad(lambda x: jnp.sum(idc.decode(x, 2) ** 2)))(x)
  assert np.all(np.isfinite(g))
  assert np.all(np.abs(np.asarray(g)) > 0)


class _MeanBase:
  """A fake distiller: predicts the mean pixel of each decoded image."""

  def init(self, key, syn):
    return syn['x'].shape[0]

  def per_sample(self, syn, state, batch, key):
    pred = syn['x'].mean(axis=(1, 2, 3))[:, None] * syn['y']
    return per_sample_mse(pred, jnp.ones_like(pred))

  def regularizer(self, syn, classes):
    return jnp.sum(classes).astype(jnp.float32)

  def update(self, syn, state, key):
    return syn['x'].shape[0]


def test_multiformation_feeds_the_decoded_set_to_any_distiller():
  mf = idc.MultiFormation(_MeanBase(), 2)
  syn = {'x': 0.5 * jnp.ones((3, 8, 8, 1)), 'y': jnp.eye(3)}
  assert mf.init(None, syn) == 12 and mf.update(syn, None, None) == 12
  ps = mf.per_sample(syn, None, None, None)
  assert ps.pred.shape == (12, 3)
  np.testing.assert_array_equal(np.asarray(ps.pred).argmax(1), np.repeat(np.arange(3), 4))
  assert float(mf.regularizer(syn, jnp.arange(3))) == 4 * (0 + 1 + 2)
  g = jax.grad(lambda x: mf.per_sample({**syn, 'x': x}, None, None, None).loss.sum())(syn['x'])
  assert np.all(np.abs(np.asarray(g)) > 0)


def test_bad_inputs_say_what_to_do():
  with pytest.raises(ValueError, match='integer >= 1'):
    idc.decode(jnp.ones((1, 4, 4, 1)), 0)
  with pytest.raises(ValueError, match='NHWC'):
    idc.decode(jnp.ones((4, 4, 1)), 2)
  with pytest.raises(ValueError, match='multiple of 4'):
    idc.encode(jnp.ones((5, 4, 4, 1)), 2)
