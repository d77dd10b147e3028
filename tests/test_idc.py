"""IDC multi-formation (ddjax.distill.idc): shapes, PyTorch-equivalent bilinear decoding, grid
order, encode/decode round trip, gradients through decode, and the MultiFormation
parameterisation of the step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import transforms as T
from ddjax.distill import idc
from ddjax.distill import step as step_lib
from ddjax.distill.base import Distiller
from ddjax.transforms.base import PerSample, per_sample_mse


def _bilinear_align_corners_false(img, out_h, out_w):
  """PyTorch's bilinear resize (align_corners=False) of img (h, w, ...), written directly: source
  coordinate (dst + 0.5) * in / out - 0.5, negative coordinates clamped to 0 and the upper
  neighbour clamped to the last pixel."""
  img = np.asarray(img, np.float64)
  h, w = img.shape[:2]

  def coords(out, size):
    src = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), size - 1)
    i1 = np.minimum(i0 + 1, size - 1)
    return i0, i1, src - i0

  y0, y1, fy = coords(out_h, h)
  x0, x1, fx = coords(out_w, w)
  extra = (None,) * (img.ndim - 2)
  fx = fx[(None, slice(None)) + extra]
  fy = fy[(slice(None), None) + extra]
  top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
  bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
  return top * (1 - fy) + bottom * fy


def _decode_reference(x, f):
  """numpy decode: zero-pad to f * ceil, cut the grid row-major, upsample each tile."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  th, tw = -(-h // f), -(-w // f)
  xp = np.zeros((n, f * th, f * tw, c))
  xp[:, :h, :w] = x
  out = []
  for i in range(n):
    for r in range(f):
      for col in range(f):
        tile = xp[i, r * th:(r + 1) * th, col * tw:(col + 1) * tw]
        out.append(_bilinear_align_corners_false(tile, h, w))
  return np.stack(out)


def _rand(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_reference_reproduces_known_pytorch_outputs():
  # torch.nn.functional.interpolate(torch.tensor([[[[0., 1.]]]]), size=(1, 4), mode='bilinear')
  # -> [0, 0.25, 0.75, 1]; size=(1, 3) -> [0, 0.5, 1] (border coordinates clamped).
  row = np.array([[0.0, 1.0]])
  np.testing.assert_allclose(_bilinear_align_corners_false(row, 1, 4)[0], [0, 0.25, 0.75, 1])
  np.testing.assert_allclose(_bilinear_align_corners_false(row, 1, 3)[0], [0, 0.5, 1])


@pytest.mark.parametrize('in_hw,out_hw', [((4, 4), (7, 7)), ((5, 3), (14, 9)), ((6, 6), (12, 12))])
def test_jax_bilinear_upsampling_matches_align_corners_false(in_hw, out_hw):
  tile = np.random.default_rng(1).normal(size=in_hw + (2,)).astype(np.float32)
  got = jax.image.resize(jnp.asarray(tile), out_hw + (2,), 'bilinear')
  np.testing.assert_allclose(got, _bilinear_align_corners_false(tile, *out_hw), atol=1e-5)


def test_decode_shapes():
  assert idc.decode(_rand((3, 28, 28, 1)), 2).shape == (12, 28, 28, 1)
  assert idc.decode(_rand((3, 7, 7, 2)), 2).shape == (12, 7, 7, 2)     # padded to 8, tiles of 4
  assert idc.decode(_rand((2, 9, 6, 3)), 3).shape == (18, 9, 6, 3)     # tiles of 3 x 2
  assert idc.tile_shape(7, 7, 2) == (4, 4) and idc.tile_shape(9, 6, 3) == (3, 2)
  assert idc.encode(_rand((8, 28, 28, 3)), 2).shape == (2, 28, 28, 3)
  assert idc.encode(_rand((18, 7, 5, 1)), 3).shape == (2, 7, 5, 1)


@pytest.mark.parametrize('shape,f', [((2, 8, 8, 1), 2), ((3, 7, 7, 2), 2), ((2, 12, 9, 3), 3),
                                     ((1, 10, 10, 1), 4)])
def test_decode_matches_numpy_reference_including_padding_and_order(shape, f):
  x = _rand(shape, seed=2)
  np.testing.assert_allclose(idc.decode(x, f), _decode_reference(x, f), atol=1e-5)


def test_padding_is_zero_in_the_decoded_border_tiles():
  dec = np.asarray(idc.decode(jnp.ones((1, 7, 7, 1)), 2))
  # tile 0 lies inside the image: all ones; tile 3 has a zero last row and column (padding), so
  # its upsampled bottom-right corner is exactly 0 and its top-left exactly 1.
  np.testing.assert_allclose(dec[0], 1.0, atol=1e-6)
  assert abs(dec[3, 0, 0, 0] - 1.0) < 1e-6 and abs(dec[3, -1, -1, 0]) < 1e-6
  assert dec[1, :, -1, 0].max() < 1e-6 and dec[2, -1, :, 0].max() < 1e-6


def test_factor_one_is_the_identity():
  x = _rand((3, 6, 5, 2))
  for fn in (idc.decode, idc.encode):
    np.testing.assert_array_equal(fn(x, 1), x)
  np.testing.assert_array_equal(idc.decode_labels(jnp.eye(3), 1), jnp.eye(3))
  np.testing.assert_array_equal(idc.decoded_classes(jnp.arange(3), 1), np.arange(3))


def test_labels_and_classes_repeat_contiguously():
  y = jnp.asarray([[1.0, 0.0], [0.2, 0.8]])
  np.testing.assert_array_equal(idc.decode_labels(y, 2), np.repeat(np.asarray(y), 4, axis=0))
  np.testing.assert_array_equal(idc.decoded_classes(jnp.asarray([2, 0, 1]), 3),
                                [2] * 9 + [0] * 9 + [1] * 9)


def test_encode_places_image_t_at_grid_position_t_and_decode_reads_it_back():
  consts = jnp.arange(8, dtype=jnp.float32)[:, None, None, None] * jnp.ones((8, 10, 12, 1))
  stored = np.asarray(idc.encode(consts, 2))
  assert stored.shape == (2, 10, 12, 1)
  for j in range(2):           # stored image j holds real images 4j .. 4j+3, row-major
    np.testing.assert_allclose(stored[j, :5, :6], 4 * j + 0, atol=1e-5)
    np.testing.assert_allclose(stored[j, :5, 6:], 4 * j + 1, atol=1e-5)
    np.testing.assert_allclose(stored[j, 5:, :6], 4 * j + 2, atol=1e-5)
    np.testing.assert_allclose(stored[j, 5:, 6:], 4 * j + 3, atol=1e-5)
  dec = np.asarray(idc.decode(jnp.asarray(stored), 2))
  np.testing.assert_allclose(dec, np.asarray(consts), atol=1e-5)


def test_encode_then_decode_approximates_smooth_images():
  yy, xx = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32), indexing='ij')
  smooth = np.stack([np.sin(2 * yy + k) * np.cos(1.5 * xx - k) + 0.3 * k
                     for k in range(8)])[..., None].astype(np.float32)
  back = np.asarray(idc.decode(idc.encode(jnp.asarray(smooth), 2), 2))
  err = np.abs(back - smooth)           # images vary by ~0.8 (std); tiles' borders err most
  assert err.max() < 0.1 and err.mean() < 0.01, (err.max(), err.mean())
  # not a trivially loose bound: a high-frequency checkerboard is destroyed by the round trip
  checker = (((np.indices((32, 32)).sum(0) % 2) * 2 - 1)[None, ..., None]
             * np.ones((4, 1, 1, 1))).astype(np.float32)
  back_c = np.asarray(idc.decode(idc.encode(jnp.asarray(checker), 2), 2))
  assert np.abs(back_c - checker).mean() > 0.5


def test_decode_is_linear_and_its_gradient_is_the_adjoint():
  x, v = _rand((2, 9, 9, 3), seed=3), _rand((2, 9, 9, 3), seed=4)
  w = _rand((8, 9, 9, 3), seed=5)
  dec = jax.jit(idc.decode, static_argnums=1)
  np.testing.assert_allclose(dec(x + v, 2), dec(x, 2) + dec(v, 2), atol=1e-5)
  np.testing.assert_allclose(dec(x, 2), idc.decode(x, 2), atol=1e-6)
  g = jax.jit(jax.grad(lambda x: jnp.sum(idc.decode(x, 2) * w)))(x)
  # <decode^T w, v> = <w, decode v>
  np.testing.assert_allclose(jnp.vdot(g, v), jnp.vdot(w, idc.decode(v, 2)), rtol=1e-4)


@pytest.mark.parametrize('shape', [(2, 8, 8, 1), (2, 7, 7, 2)])
def test_every_stored_pixel_receives_gradient(shape):
  x = _rand(shape, seed=6)
  target = _rand((shape[0] * 4,) + shape[1:], seed=7)
  g = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum((idc.decode(x, 2) - target) ** 2)))(x))
  assert np.all(np.isfinite(g))
  assert np.all(np.abs(g) > 0)


class _RecordingBase(Distiller):
  """A fake distiller: pred = mean pixel of each decoded image times its label; records what it
  was called with (when called eagerly)."""

  def __init__(self):
    self.seen = {}

  def init(self, syn, key):
    self.seen['init'] = syn
    return syn['x'].shape[0]

  def per_sample(self, syn, state, batch, key):
    self.seen['per_sample'] = syn
    pred = syn['x'].mean(axis=(1, 2, 3))[:, None] * syn['y'] * jnp.exp(syn['log_temp'])
    return per_sample_mse(pred, syn['y'])

  def regularizer(self, syn, classes):
    self.seen['regularizer'] = (syn, classes)
    return jnp.sum(syn['x'].mean(axis=(1, 2, 3)) * classes)

  def update(self, syn, state, key):
    self.seen['update'] = syn
    return syn['x'].shape[0]


def _syn():
  x = _rand((3, 8, 8, 2), seed=8)
  return {'x': x, 'y': jnp.eye(3), 'log_temp': jnp.asarray(0.25)}


def _step_parts(base, mf, syn, classes):
  opt = step_lib.make_syn_optimizer('sgd', 1e-2, 1e-2, 4, extra_lrs={'log_temp': 1e-2})
  state = step_lib.init_state(base, T.identity(), opt, syn, jax.random.PRNGKey(0), mf)
  return state, step_lib.make_step(base, T.identity(), opt, classes, mf)


def test_the_step_feeds_the_decoded_set_to_the_distiller():
  base = _RecordingBase()
  mf = idc.MultiFormation(2)
  assert mf.images_per_stored == 4
  syn = _syn()
  classes = jnp.asarray([0, 1, 2])
  state, step = _step_parts(base, mf, syn, classes)
  assert state.distiller_state == 12 and state.syn['x'].shape == (3, 8, 8, 2)   # stored set kept
  new, metrics = step(state, {}, jax.random.PRNGKey(2))
  assert new.distiller_state == 12 and new.syn['x'].shape == (3, 8, 8, 2)
  for name in ('init', 'per_sample', 'update'):    # per_sample's are tracers (differentiated)
    seen = base.seen[name]
    assert seen['x'].shape == (12, 8, 8, 2) and seen['y'].shape == (12, 3)
    assert seen['log_temp'].shape == ()
  np.testing.assert_array_equal(base.seen['init']['log_temp'], syn['log_temp'])  # other keys
  np.testing.assert_array_equal(base.seen['update']['log_temp'], new.syn['log_temp'])  # as is
  np.testing.assert_allclose(base.seen['update']['x'], idc.decode(new.syn['x'], 2), atol=1e-6)
  ps = base.per_sample(mf.decode(syn), None, None, None)
  assert isinstance(ps, PerSample) and ps.pred.shape == (12, 3) and ps.loss.shape == (12,)
  np.testing.assert_array_equal(ps.target, np.repeat(np.eye(3), 4, axis=0))
  tile_means = np.asarray(idc.decode(syn['x'], 2)).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(ps.pred.max(axis=1) + ps.pred.min(axis=1),   # the one non-zero
                             tile_means * np.exp(0.25), atol=1e-5)
  _, seen_classes = base.seen['regularizer']
  np.testing.assert_array_equal(seen_classes, np.repeat([0, 1, 2], 4))
  reg = np.sum(tile_means * np.repeat([0, 1, 2], 4))
  np.testing.assert_allclose(metrics['loss'], ps.loss.mean() + reg, rtol=1e-5)
  np.testing.assert_allclose(metrics['meta_loss'], ps.loss.mean(), rtol=1e-5)


def test_multiformation_is_jittable_and_differentiable_wrt_stored_images():
  mf = idc.MultiFormation(2)
  base = _RecordingBase()
  syn = _syn()
  classes = jnp.asarray([0, 1, 2])

  @jax.jit
  def loss(syn):
    ps = base.per_sample(mf.decode(syn), None, None, jax.random.PRNGKey(0))
    return ps.loss.mean() + 0.1 * base.regularizer(mf.decode(syn), mf.decode_classes(classes))

  g = jax.grad(loss)(syn)
  assert g['x'].shape == syn['x'].shape
  assert np.all(np.isfinite(g['x'])) and np.all(np.abs(np.asarray(g['x'])) > 0)
  assert np.abs(np.asarray(g['y'])).sum() > 0 and np.isfinite(g['log_temp'])
  # the same gradient as differentiating the base on an explicitly decoded set
  direct = jax.grad(lambda x: (base.per_sample({**syn, 'x': idc.decode(x, 2),
                                                'y': idc.decode_labels(syn['y'], 2)},
                                               None, None, None).loss.mean()
                               + 0.1 * base.regularizer({'x': idc.decode(x, 2)},
                                                        idc.decoded_classes(classes, 2))))
  np.testing.assert_allclose(g['x'], direct(syn['x']), rtol=1e-4, atol=1e-7)
  # the step's image gradient is that one: one SGD step at lr 1e-2 without regularizer weight
  state, step = _step_parts(base, mf, syn, classes)
  new, _ = jax.jit(step)(state, {}, jax.random.PRNGKey(2))
  full = jax.grad(lambda x: (base.per_sample({**syn, 'x': idc.decode(x, 2),
                                              'y': idc.decode_labels(syn['y'], 2)},
                                             None, None, None).loss.mean()
                             + base.regularizer({'x': idc.decode(x, 2)},
                                                idc.decoded_classes(classes, 2))))(syn['x'])
  np.testing.assert_allclose(new.syn['x'], syn['x'] - 1e-2 * full, rtol=1e-5, atol=1e-7)


def test_bad_inputs_raise_value_errors_that_say_what_to_do():
  with pytest.raises(ValueError, match='integer >= 1'):
    idc.decode(jnp.ones((1, 4, 4, 1)), 0)
  with pytest.raises(ValueError, match='integer >= 1'):
    idc.encode(jnp.ones((4, 4, 4, 1)), 2.0)
  with pytest.raises(ValueError, match='integer >= 1'):
    idc.decode_labels(jnp.eye(2), True)
  with pytest.raises(ValueError, match='integer >= 1'):
    idc.MultiFormation(0)
  with pytest.raises(ValueError, match='NHWC'):
    idc.decode(jnp.ones((4, 4, 1)), 2)
  with pytest.raises(ValueError, match='NHWC'):
    idc.encode(jnp.ones((4, 4, 4)), 2)
  with pytest.raises(ValueError, match=r'multiple of 4 images.*got 5'):
    idc.encode(jnp.ones((5, 4, 4, 1)), 2)
  with pytest.raises(ValueError, match='must match'):
    idc.MultiFormation(2).decode({'x': jnp.ones((2, 4, 4, 1)), 'y': jnp.eye(3)})
  # numpy integers are valid factors
  assert idc.decode(jnp.ones((1, 4, 4, 1)), np.int64(2)).shape == (4, 4, 4, 1)
