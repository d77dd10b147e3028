"""Matching distillers: DC's distance, per-sample gradients, DM's loss, PAD's depth mask, DC's loops."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import run_shipped
from ddjax import transforms as T
from ddjax.distill import step as step_lib
from ddjax.distill.dc import DC, dc_loops
from ddjax.distill.dm import DM
from ddjax.distill.matching import depth_mask, gradient_distance, group_by_class
from ddjax.models import build_model

K, H, C = 3, 8, 2
SHAPE = (H, H, C)


def _model(norm='instance', width=8):
  return build_model('convnet', K, depth=2, width=width, norm=norm)


def _batch(seed, per_class):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(K), per_class)
  rng.shuffle(labels)
  x = rng.normal(size=(len(labels),) + SHAPE).astype(np.float32) + labels[:, None, None, None]
  y = np.eye(K, dtype=np.float32)[labels]
  return {'x': jnp.asarray(x), 'y': jnp.asarray(y)}, labels


def _syn(seed, ipc):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(K * ipc,) + SHAPE).astype(np.float32)
  return {'x': jnp.asarray(x), 'y': jnp.asarray(np.eye(K, dtype=np.float32).repeat(ipc, 0))}


def _numpy_dc_distance(gr, gs):
  """DC's distance_wb over PyTorch-layout arrays, written directly."""
  total = 0.0
  for a, b in zip(gr, gs):
    if a.ndim == 1:
      continue
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    total += np.sum(1 - np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
                                             + 1e-6))
  return total


def test_dc_distance_equals_numpy_on_random_gradients():
  rng = np.random.default_rng(0)
  shapes = {'conv0': {'kernel': (3, 3, 2, 4), 'bias': (4,)}, 'norm0': {'scale': (4,), 'bias': (4,)},
            'head': {'kernel': (16, 5), 'bias': (5,)}}
  mk = lambda: jax.tree_util.tree_map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                                      is_leaf=lambda s: isinstance(s, tuple))
  gr, gs = mk(), mk()
  torch = lambda g: [g['conv0']['kernel'].transpose(3, 2, 0, 1), g['conv0']['bias'],
                     g['norm0']['scale'], g['norm0']['bias'], g['head']['kernel'].T,
                     g['head']['bias']]
  want = _numpy_dc_distance(torch(gr), torch(gs))
  got = gradient_distance(gr, gs, 'ours')
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # identical gradients are at distance ~0; biases/norm parameters do not enter
  np.testing.assert_allclose(gradient_distance(gr, gr), 0.0, atol=1e-4)
  gs2 = jax.tree_util.tree_map(lambda a: a, gr)
  gs2['conv0']['bias'] = -gr['conv0']['bias']
  gs2['norm0']['scale'] = gr['norm0']['scale'] * 5
  np.testing.assert_allclose(gradient_distance(gr, gs2), 0.0, atol=1e-4)
  # mse / cos over the concatenated vectors
  flat = lambda g: np.concatenate([a.ravel() for a in jax.tree_util.tree_leaves(g)])
  np.testing.assert_allclose(gradient_distance(gr, gs, 'mse'),
                             np.sum((flat(gr) - flat(gs)) ** 2), rtol=1e-5)
  cos = flat(gr) @ flat(gs) / (np.linalg.norm(flat(gr)) * np.linalg.norm(flat(gs)) + 1e-6)
  np.testing.assert_allclose(gradient_distance(gr, gs, 'cos'), 1 - cos, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='not one of'):
    gradient_distance(gr, gs, 'l3')


def test_depth_mask_removes_the_shallow_fraction_in_pytorch_order():
  params = _model().init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE))['params']
  sizes = [int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params)]
  total = sum(sizes)
  for fraction in (0.0, 0.3, 0.75):
    mask = depth_mask(params, fraction)
    kept = sum(float(m.sum()) for m in jax.tree_util.tree_leaves(mask))
    assert kept == total - round(fraction * total)
  mask = depth_mask(params, 0.3)
  assert float(mask['conv0']['kernel'].sum()) == 0          # the shallowest layer goes first
  assert float(mask['head']['kernel'].min()) == 1           # the readout is always matched
  # a partly masked conv kernel is cut along PyTorch's (out, in, h, w) order: whole output units
  # first, so the mask is constant over (h, w, in) for all but one unit
  partial = [m for m in jax.tree_util.tree_leaves(mask) if 0 < float(m.mean()) < 1]
  for m in partial:
    if m.ndim == 4:
      per_out = np.asarray(m).reshape(-1, m.shape[-1]).mean(0)
      assert np.sum((per_out > 0) & (per_out < 1)) <= 1
  with pytest.raises(ValueError):
    depth_mask(params, 1.0)


@pytest.mark.parametrize('fraction', [0.2, 0.5])
def test_dc_layer_fraction_cuts_in_module_order_whatever_the_key_order(fraction):
  """DC's distance with layer_fraction on gradients as JAX returns them (keys sorted by name:
  the norms after the head) equals the 'mse' distance over PAD's rule written by hand: the
  PyTorch-order vector (conv0, norm0, conv1, norm1, head; weight then bias; OIHW) with its first
  int(fraction * P) entries dropped."""
  dc = DC(_model(), SHAPE, K, outer_loop=1, inner_loop=1, metric='mse', layer_fraction=fraction)
  params = _model().init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE))['params']
  rng = np.random.default_rng(0)
  noise = lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32))
  gr, gs = jax.tree_util.tree_map(noise, params), jax.tree_util.tree_map(noise, params)
  assert list(gr) == sorted(gr)
  torch = lambda a: (np.transpose(a, (3, 2, 0, 1)) if a.ndim == 4 else a.T if a.ndim == 2
                     else a)
  vec = lambda g: np.concatenate([torch(np.asarray(g[m][k])).ravel()
                                  for m in ('conv0', 'norm0', 'conv1', 'norm1', 'head')
                                  for k in (('scale' if m.startswith('norm') else 'kernel'),
                                            'bias')])
  a, b = vec(gr), vec(gs)
  cut = int(fraction * a.size)
  np.testing.assert_allclose(dc.distance(gr, gs), np.sum((a[cut:] - b[cut:]) ** 2), rtol=1e-5)


def test_group_by_class():
  batch, labels = _batch(1, 4)
  grouped = group_by_class(batch['x'], jnp.asarray(labels), K)
  assert grouped.shape == (K, 4) + SHAPE
  for c in range(K):
    np.testing.assert_array_equal(grouped[c], np.asarray(batch['x'])[labels == c])
  with pytest.raises(ValueError, match='multiple'):
    group_by_class(batch['x'][:-1], jnp.asarray(labels[:-1]), K)


def test_dc_per_sample_gradients_sum_to_the_batch_gradient():
  dc = DC(_model(), SHAPE, K, outer_loop=1, inner_loop=1)
  variables = dc.fresh_network(jax.random.PRNGKey(1))
  batch, labels = _batch(2, 5)
  g = jax.jit(dc.per_sample_gradients)(variables, batch['x'], jnp.asarray(labels),
                                       jax.random.PRNGKey(0))
  summed = jax.tree_util.tree_map(lambda a: a.sum(0), g)
  full = jax.grad(dc.classifier_loss)(variables['params'], {}, batch['x'], jnp.asarray(labels))
  for a, b in zip(jax.tree_util.tree_leaves(summed), jax.tree_util.tree_leaves(full)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # in chunks of 4 (the last one partial) the same per-sample gradients, in order
  chunked = jax.jit(dc.per_sample_gradients, static_argnums=4)(
      variables, batch['x'], jnp.asarray(labels), jax.random.PRNGKey(0), 4)
  for a, b in zip(jax.tree_util.tree_leaves(chunked), jax.tree_util.tree_leaves(g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_dc_meta_loss_is_the_class_sum_of_distances():
  dc = DC(_model(), SHAPE, K, outer_loop=1, inner_loop=1)
  state = dc.init(None, jax.random.PRNGKey(3))
  batch, labels = _batch(4, 6)
  syn = _syn(5, 2)
  ps = dc.per_class(syn, state, batch, jax.random.PRNGKey(0))
  want = 0.0
  params = state.variables['params']
  grad = jax.jit(jax.grad(dc.classifier_loss))
  for c in range(K):
    xr = np.asarray(batch['x'])[labels == c]
    xs = np.asarray(syn['x'])[2 * c:2 * c + 2]
    gr = grad(params, {}, xr, jnp.full((len(xr),), c))
    gs = grad(params, {}, xs, jnp.full((2,), c))
    want += float(gradient_distance(gr, gs))
  np.testing.assert_allclose(float(ps.loss.mean()), want, rtol=1e-4)


def test_dc_class_batching_unroll_equals_vmap():
  # the per-class gradients unrolled over classes (ddjax's CPU default) or vmapped: the same
  # meta-loss per class and the same image gradient, with DSA draws keyed per class
  batch, _ = _batch(4, 6)
  syn = _syn(5, 2)
  out = {}
  for mode in ('unroll', 'vmap'):
    dc = DC(_model(), SHAPE, K, outer_loop=1, inner_loop=1, dsa_strategy='color_crop',
            class_batching=mode)
    assert dc.class_batching == mode
    state = dc.init(None, jax.random.PRNGKey(3))
    loss = lambda s: dc.per_class(s, state, batch, jax.random.PRNGKey(0)).loss
    out[mode] = (loss(syn), jax.grad(lambda s: loss(s).sum())(syn)['x'])
  np.testing.assert_allclose(out['unroll'][0], out['vmap'][0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['unroll'][1], out['vmap'][1], rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(out['vmap'][1])).max() > 0
  from ddjax.distill.dc import resolve_class_batching
  assert resolve_class_batching('auto', 10, 'cpu') == 'unroll'
  assert resolve_class_batching('auto', 100, 'cpu') == 'vmap'
  assert resolve_class_batching('auto', 10, 'gpu') == 'vmap'
  with pytest.raises(ValueError, match='class_batching'):
    resolve_class_batching('loop', 10)


def test_dm_loss_equals_the_mean_embedding_distance():
  model = _model()
  dm = DM(model, SHAPE, K, dsa_strategy='')
  batch, labels = _batch(6, 5)
  syn = _syn(7, 2)
  key = jax.random.PRNGKey(8)
  ps = dm.per_class(syn, (), batch, key)
  variables = dm.fresh_network(jax.random.split(key)[0])
  _, fr = model.apply(variables, batch['x'])
  _, fs = model.apply(variables, syn['x'])
  want = sum(float(np.sum((np.asarray(fr)[labels == c].mean(0)
                           - np.asarray(fs)[2 * c:2 * c + 2].mean(0)) ** 2)) for c in range(K))
  np.testing.assert_allclose(float(ps.loss.mean()), want, rtol=1e-4)
  # the additive form: the sum of per-sample contributions gives the same loss
  keys = jax.random.split(jax.random.split(key)[1], K)
  xr = group_by_class(batch['x'], jnp.asarray(labels), K)
  g = dm.real_statistic(variables, xr, keys)
  assert g.shape[:2] == (K, 5)
  per_class = dm.loss_from_statistic(g.sum(1), syn['x'].reshape((K, 2) + SHAPE), variables, keys)
  np.testing.assert_allclose(float(per_class.sum()), want, rtol=1e-4)


@pytest.mark.parametrize('method', ['dc', 'dsa', 'dm'])
def test_matching_steps_lower_the_meta_loss(method):
  strategy = '' if method == 'dc' else 'color_crop_cutout_scale_rotate'
  if method == 'dm':
    distiller = DM(_model(), SHAPE, K, dsa_strategy=strategy)
    lr = 1.0
  else:
    distiller = DC(_model(), SHAPE, K, outer_loop=5, inner_loop=1, dsa_strategy=strategy)
    lr = 0.1
  opt = step_lib.make_syn_optimizer('sgd', lr, 0.0, 100, learn_label=False, schedule='constant',
                                    momentum=0.5)
  syn = _syn(9, 2)
  state = step_lib.init_state(distiller, T.identity(), opt, syn, jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_step(distiller, T.identity(), opt, jnp.repeat(jnp.arange(K), 2)))
  batch, _ = _batch(10, 8)
  probe = jax.random.PRNGKey(123)
  fixed = state.distiller_state

  def meta(syn):
    return float(distiller.per_class(syn, fixed, batch, probe).loss.mean())

  before = meta(state.syn)
  for i in range(25):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    assert np.isfinite(float(metrics['loss']))
  after = meta(state.syn)
  # DSA's random augmentation makes its matching problem noisier (a smaller but clear decrease).
  assert after < (0.9 if method == 'dsa' else 0.8) * before, (before, after)


def test_dc_inner_loop_schedule_and_training():
  assert dc_loops(1) == (1, 1) and dc_loops(10) == (10, 50) and dc_loops(50) == (50, 10)
  with pytest.raises(ValueError, match='dc.outer_loop'):
    dc_loops(7)
  dc = DC(_model(), SHAPE, K, outer_loop=3, inner_loop=5, lr_net=0.05)
  syn = _syn(11, 4)
  syn = {**syn, 'x': syn['x'] + jnp.repeat(jnp.arange(K), 4)[:, None, None, None]}
  state = dc.init(syn, jax.random.PRNGKey(0))
  labels = jnp.repeat(jnp.arange(K), 4)

  def ce(variables):
    return float(dc.classifier_loss(variables['params'], {}, syn['x'], labels))

  update = jax.jit(dc.update)
  s1 = update(syn, state, jax.random.PRNGKey(1))
  assert int(s1.count) == 1 and ce(s1.variables) < ce(state.variables)   # trained on S
  s2 = update(syn, s1, jax.random.PRNGKey(2))
  assert int(s2.count) == 2
  s3 = update(syn, s2, jax.random.PRNGKey(3))                            # after the last outer loop
  assert int(s3.count) == 0
  fresh = dc.fresh_network(jax.random.split(jax.random.PRNGKey(3))[0])
  for a, b in zip(jax.tree_util.tree_leaves(s3.variables), jax.tree_util.tree_leaves(fresh)):
    np.testing.assert_array_equal(a, b)


def test_dc_with_batch_norm_sets_statistics_from_real_images():
  dc = DC(_model('batch'), SHAPE, K, outer_loop=2, inner_loop=1, bn_size=3)
  state = dc.init(None, jax.random.PRNGKey(0))
  batch, _ = _batch(12, 6)
  ps = dc.per_class(_syn(13, 2), state, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(ps.loss.mean()))
  grouped = group_by_class(batch['x'], jnp.argmax(batch['y'], -1), K)
  upd = dc.with_bn_stats(state.variables, grouped)
  before = jax.tree_util.tree_leaves(state.variables['batch_stats'])
  after = jax.tree_util.tree_leaves(upd['batch_stats'])
  assert any(float(jnp.abs(a - b).max()) > 1e-4 for a, b in zip(before, after))
  s1 = jax.jit(dc.update)(_syn(13, 2), state, jax.random.PRNGKey(2))
  assert np.all(np.isfinite(np.asarray(jax.tree_util.tree_leaves(s1.variables)[0])))


def test_dm_rejects_batch_norm():
  with pytest.raises(ValueError, match='instance'):
    DM(_model('batch'), SHAPE, K)


def test_matching_configs_validate():
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  'configs'))
  import dc, dm, dsa, idc  # noqa: E401
  from ddjax import config as config_lib
  for module in (dc, dm, dsa, idc):
    for preset in ('', 'paper'):
      config_lib.validate(module.get_config(preset))
  assert (dc.get_config().dsa.strategy, dsa.get_config().dsa.strategy) == ('', 'auto')
  assert idc.get_config().idc.factor == 2
  bad = dm.get_config()
  bad.transform.isa_eps = 1.0
  with pytest.raises(ValueError, match='rank or pair real examples'):
    config_lib.validate(bad)
  bad = dc.get_config()
  bad.distill.balanced_batch, bad.distill.batch_per_class = False, 0
  with pytest.raises(ValueError, match='balanced_batch'):
    config_lib.validate(bad)


@pytest.mark.parametrize('config,extra', [
    ('dm', {}),
    ('idc', {'dc.iterations': 2}),
])
def test_end_to_end_matching_methods(config, extra, tiny_npz, tmp_path):
  workdir = tmp_path / 'run'
  results = run_shipped(config, workdir, {
      'data.name': 'npz', 'data.dir': tiny_npz, 'model.width': 8, 'model.depth': 2,
      'eval.model.width': 8, 'eval.model.depth': 2, 'distill.ipc': 1, 'distill.steps': 3,
      'distill.batch_per_class': 10, 'eval.num_models': 1, 'eval.steps': 10, 'log.every': 1,
      **extra})
  assert 0 <= results['eval']['acc_mean'] <= 1
  npz = np.load(workdir / 'distilled.npz')
  if config == 'idc':   # DC iterations x outer_loop (1 at IPC 1); 1 stored image -> 4 decoded
    assert results['distill']['steps'] == 2
    assert npz['x'].shape[0] == 3 * 4
  else:
    assert results['distill']['steps'] == 3
    assert npz['x'].shape[0] == 3
