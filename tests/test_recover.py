"""The recovery family's shared math (SRe2L, CDA): batch-norm statistic loss, views, curriculum,
batch layout, the recovery step, presets and an end-to-end run."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from ddjax.distill import recover
from ddjax.distill.recover import (BNStat, ObserverNet, Recovery, View, apply_with_bn_statistics,
                                   bn_matching_loss, crop_lower_bound, from_batches,
                                   recovery_view, to_batches)

EPS = 1e-5


class TwoBN(nn.Module):
  """x -> BN -> 1x1 conv -> BN -> ReLU -> mean pool -> dense: both BN inputs have closed forms."""
  features: int = 4
  classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train, epsilon=EPS, name='bn0')(x)
    h = nn.Conv(self.features, (1, 1), name='conv')(h)
    h = nn.BatchNorm(use_running_average=not train, epsilon=EPS, name='bn1')(h)
    f = jnp.mean(nn.relu(h), axis=(1, 2))
    return nn.Dense(self.classes, name='head')(f), f


def _randomised(variables, key):
  """Variables with random running statistics and BN scales / offsets."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  out = []
  for i, (path, v) in enumerate(leaves):
    k = jax.random.fold_in(key, i)
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      out.append(jax.random.uniform(k, v.shape, minval=0.5, maxval=2.0))
    else:
      out.append(v + 0.3 * jax.random.normal(k, v.shape))
  return jax.tree_util.tree_unflatten(tree, out)


def test_bn_loss_matches_numpy_from_the_layers_inputs():
  model = TwoBN()
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5, 5, 3)) * 1.5 + 0.2
  v = _randomised(model.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2))
  (logits, _), stats = apply_with_bn_statistics(model, v, x)
  assert [s.name for s in stats] == ['bn0', 'bn1']
  # numpy: the first BN's input is x, the second's is the 1x1 conv of the first's output
  p, bs = jax.tree_util.tree_map(np.asarray, v['params']), jax.tree_util.tree_map(
      np.asarray, v['batch_stats'])
  xn = np.asarray(x, np.float64)
  h0 = (xn - bs['bn0']['mean']) / np.sqrt(bs['bn0']['var'] + EPS) * p['bn0']['scale'] + \
      p['bn0']['bias']
  h1 = h0 @ p['conv']['kernel'][0, 0] + p['conv']['bias']
  want = 0.0
  for mult, h, name in ((10.0, xn, 'bn0'), (1.0, h1, 'bn1')):
    mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))      # biased
    np.testing.assert_allclose(stats[['bn0', 'bn1'].index(name)].mean, mean, rtol=1e-4,
                               atol=1e-5)
    want += mult * (np.linalg.norm(bs[name]['var'] - var) + np.linalg.norm(bs[name]['mean'] - mean))
  np.testing.assert_allclose(float(bn_matching_loss(stats, 10.0)), want, rtol=1e-4)
  # the forward pass itself is unchanged by the interception
  np.testing.assert_allclose(logits, model.apply(v, x, train=False)[0], atol=1e-6)


def test_bn_loss_is_zero_when_the_batch_has_the_running_statistics():
  model = TwoBN()
  x = jax.random.normal(jax.random.PRNGKey(3), (8, 4, 4, 3))
  v = _randomised(model.init(jax.random.PRNGKey(4), x), jax.random.PRNGKey(5))
  assert float(bn_matching_loss(apply_with_bn_statistics(model, v, x)[1])) > 0.1
  # set each layer's running statistics to the batch's own, layer by layer (a layer's input
  # depends on the earlier layers' running statistics)
  for name in ('bn0', 'bn1'):
    stats = {s.name: s for s in apply_with_bn_statistics(model, v, x)[1]}
    bs = dict(v['batch_stats'])
    bs[name] = {'mean': stats[name].mean, 'var': stats[name].var}
    v = {'params': v['params'], 'batch_stats': bs}
  assert float(bn_matching_loss(apply_with_bn_statistics(model, v, x)[1])) < 1e-5


def test_bn_loss_of_hand_built_statistics():
  s = BNStat('a', jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]),
             jnp.array([4.0, 1.0]))
  t = BNStat('b', jnp.zeros(3), jnp.ones(3), jnp.ones(3), jnp.ones(3))
  # 10 * (||(3, 0)|| + ||(0, 2)||) + (0 + sqrt(3))
  assert float(bn_matching_loss([s, t], 10.0)) == pytest.approx(10 * 5.0 + np.sqrt(3), rel=1e-6)
  assert float(bn_matching_loss([])) == 0.0


def test_crop_curriculum_goes_from_easy_to_hard():
  t = 100
  assert float(crop_lower_bound(0, t, 'none', 1.0)) == pytest.approx(0.08)
  for mode in ('step', 'linear', 'cosine'):
    assert float(crop_lower_bound(0, t, mode, 1.0)) == pytest.approx(1.0)
    assert float(crop_lower_bound(50, t, mode, 0.5)) == pytest.approx(0.08)   # after milestone
  assert float(crop_lower_bound(25, t, 'linear', 0.5)) == pytest.approx(0.08 + 0.92 * 0.5)
  assert float(crop_lower_bound(25, t, 'cosine', 0.5)) == pytest.approx(0.08 + 0.92 * 0.5)
  assert float(crop_lower_bound(10, t, 'cosine', 1.0)) == pytest.approx(
      0.08 + 0.92 * (1 + np.cos(np.pi * 0.1)) / 2, rel=1e-6)
  assert float(crop_lower_bound(40, t, 'step', 0.5)) == 1.0
  lows = [float(crop_lower_bound(s, t, 'cosine', 1.0)) for s in range(t)]
  assert all(a >= b for a, b in zip(lows, lows[1:]))
  with pytest.raises(ValueError, match='curriculum'):
    crop_lower_bound(0, t, 'sideways', 1.0)


def test_one_view_is_drawn_for_the_whole_batch():
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 8, 8, 2))
  x = x.at[1].set(x[0])                                  # two identical images in the batch
  for seed in range(6):
    v = recovery_view(jax.random.PRNGKey(seed), x, View(crop=True, flip=True, jitter=3),
                      jnp.float32(0.3))
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)   # the same crop, flip and roll
  # flip + roll only: every image is the same cyclic shift (and flip) of itself
  v = recovery_view(jax.random.PRNGKey(7), x, View(crop=False, flip=False, jitter=3), 0.08)
  shifts = [(a, b) for a in range(4) for b in range(4)
            if np.allclose(np.roll(np.asarray(x), (a, b), axis=(1, 2)), v)]
  assert len(shifts) == 1
  # no crop, flip or jitter: the identity
  np.testing.assert_array_equal(recovery_view(jax.random.PRNGKey(1), x,
                                              View(crop=False, flip=False, jitter=0), 0.08), x)


def test_batches_hold_one_image_of_each_class_and_invert():
  k, ipc = 6, 3
  x = jnp.arange(k * ipc, dtype=jnp.float32)[:, None]      # row c * ipc + i
  classes = jnp.repeat(jnp.arange(k), ipc)
  xb = to_batches(x, k, ipc, 3)                            # B = 3: 2 batches per IPC index
  cb = to_batches(classes, k, ipc, 3)
  assert xb.shape == (6, 3, 1)
  np.testing.assert_array_equal(cb[0], [0, 1, 2])
  np.testing.assert_array_equal(cb[1], [3, 4, 5])
  np.testing.assert_array_equal(xb[2, :, 0], [1, 4, 7])   # image 1 of classes 0, 1, 2
  np.testing.assert_array_equal(from_batches(xb, k, ipc), x)
  np.testing.assert_array_equal(to_batches(classes, k, ipc, 100)[0], np.arange(k))
  with pytest.raises(ValueError, match='must divide'):
    to_batches(x, k, ipc, 4)


@pytest.fixture(scope='module')
def tiny_observer():
  """A tiny ConvNet with batch norm trained on three separable classes of 8x8 images."""
  from ddjax.models import build_model
  model = build_model('convnet', 3, depth=2, width=8, norm='batch', pooling='avg')
  rng = np.random.default_rng(0)
  protos = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 3, 300)
  x = protos[y] + 0.5 * rng.normal(size=(300, 8, 8, 1)).astype(np.float32)
  from ddjax.evaluate.observer import train
  variables = train(model, x, y, jax.random.PRNGKey(0), epochs=15, batch_size=50, lr=3e-3)
  return ObserverNet(model, variables)


def test_recovery_lowers_the_bn_loss_and_the_observers_cross_entropy(tiny_observer):
  from ddjax.distill import step as step_lib
  from ddjax import transforms
  k, ipc, steps = 3, 2, 150
  project = lambda x: jnp.clip(x, -3.0, 3.0)
  d = Recovery(tiny_observer, k, ipc, steps, batch_size=100, r_bn=0.05,
               view=View(crop=False, flip=False, jitter=1), project=project,
               image_shape=(8, 8, 1))
  syn = {'x': jax.random.normal(jax.random.PRNGKey(1), (k * ipc, 8, 8, 1)),
         'y': jax.nn.one_hot(jnp.repeat(jnp.arange(k), ipc), k)}
  before = d.observer_reading(syn['x'])
  opt = step_lib.make_syn_optimizer('adam', 0.1, 0.0, steps, learn_label=False,
                                    betas=(0.5, 0.9))
  transform = transforms.identity()
  classes = jnp.repeat(jnp.arange(k), ipc)
  state = step_lib.init_state(d, transform, opt, syn, jax.random.PRNGKey(2))
  step = jax.jit(step_lib.make_step(d, transform, opt, classes))
  batch = d.batch_sampler(0)(0)
  for s in range(steps):
    state, metrics = step(state, batch, jax.random.PRNGKey(100 + s))
  after = d.observer_reading(state.syn['x'])
  assert after['bn'] < 0.7 * before['bn'], (before, after)
  assert after['ce'] < 0.5 * before['ce'], (before, after)
  assert after['observer_acc'] == 1.0
  assert int(state.distiller_state.step) == steps           # the curriculum's counter
  assert float(jnp.abs(state.syn['x']).max()) <= 3.0         # projected after every update


def test_recovery_refuses_a_batch_that_does_not_divide_the_classes(tiny_observer):
  with pytest.raises(ValueError, match='recover.batch_size=2 must divide'):
    Recovery(tiny_observer, 3, 1, 10, batch_size=2)


# -- presets against the official scripts -------------------------------------------------------
SRE2L_CIFAR = {   # VILA-Lab/SRe2L SRe2L/*small_dataset/recover_cifar.{py,sh}
    'distill.lr': 0.25, 'distill.steps': 1000, 'distill.adam_b1': 0.5, 'distill.adam_b2': 0.9,
    'distill.schedule': 'cosine', 'distill.end_fraction': 0.0, 'distill.init': 'noise',
    'recover.batch_size': 100, 'recover.r_bn': 0.01, 'recover.first_bn_multiplier': 10.0,
    'recover.jitter': 4, 'recover.crop': False, 'recover.flip': False,
    'recover.curriculum': 'none', 'observer.arch': 'resnet18', 'observer.epochs': 200}
CDA_TINY = {      # VILA-Lab/SRe2L CDA/README.md:66-71, recover_cda_tiny.py:233-245
    'distill.lr': 0.4, 'distill.steps': 4000, 'distill.adam_b1': 0.5, 'distill.adam_b2': 0.9,
    'recover.batch_size': 100, 'recover.r_bn': 0.05, 'recover.first_bn_multiplier': 10.0,
    'recover.jitter': 4, 'recover.crop': True, 'recover.flip': True, 'recover.min_crop': 0.08,
    'recover.curriculum': 'cosine', 'recover.milestone': 1.0, 'data.image_size': 64}


def _get(cfg, dotted):
  for part in dotted.split('.'):
    cfg = cfg[part]
  return cfg


@pytest.mark.parametrize('method,preset,table', [('sre2l', 'paper', SRE2L_CIFAR),
                                                 ('cda', 'image_folder', CDA_TINY)])
def test_presets_are_the_official_scripts(method, preset, table):
  from ddjax import registry
  from ddjax.config import method_config
  cfg = method_config(method, preset)
  got = {k: _get(cfg, k) for k in table}
  assert got == table
  assert registry.protocol_name(cfg) == 'rded'


def test_transforms_and_bilp_are_refused_for_recovery():
  from ddjax.config import method_config, validate
  cfg = method_config('sre2l')
  cfg.transform.isa_eps = 1.0
  with pytest.raises(ValueError, match='isa|ISA|per-example|row'):
    validate(cfg)
  cfg = method_config('sre2l')
  cfg.bilp.adaptive_beta = 0.3
  with pytest.raises(ValueError, match='bilp'):
    validate(cfg)


def test_sre2l_end_to_end_run_and_resume(tiny_npz, tmp_path, monkeypatch):
  import ddjax
  from ddjax.config import method_config
  cfg = method_config('sre2l')
  base = tiny_config(tiny_npz)
  cfg.data, cfg.eval.model = base.data, base.eval.model
  cfg.eval.model.norm = 'batch'
  cfg.distill.ipc = 2
  cfg.distill.steps = 12
  cfg.checkpoint.every = 6
  cfg.observer.update(dict(dir=str(tmp_path / 'obs'), width=8, depth=2, epochs=3,
                           batch_size=32, lr=3e-3))
  cfg.eval.soft_label_epochs = 2
  results = ddjax.run(cfg, str(tmp_path / 'run'))
  assert results['eval']['protocol'] == 'rded' and 0.0 <= results['eval']['acc_mean'] <= 1.0
  out = np.load(tmp_path / 'run' / 'distilled.npz')
  assert out['x'].shape == (6, 12, 12, 1)
  np.testing.assert_array_equal(out['classes'], np.repeat(np.arange(3), 2))
  data = ddjax.runtime.pipeline.load_data(cfg)
  from ddjax.data.preprocess import invert_preprocessor
  pixels = invert_preprocessor(data.pre, out['x'])
  assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4     # clipped to the pixel range
  # a run killed at step 9 (the checkpoint at 6 kept) and resumed ends with the same set
  real = Recovery.batch_sampler

  def crashing(self, seed):
    sample = real(self, seed)

    def sample_or_crash(step):
      if step == 9:
        raise KeyboardInterrupt('simulated kill at step 9')
      return sample(step)
    return sample_or_crash

  monkeypatch.setattr(Recovery, 'batch_sampler', crashing)
  with pytest.raises(KeyboardInterrupt):
    ddjax.run(cfg, str(tmp_path / 'resumed'))
  monkeypatch.setattr(Recovery, 'batch_sampler', real)
  again_results = ddjax.run(cfg, str(tmp_path / 'resumed'))
  assert again_results['distill']['resumed_from'] == 6
  again = np.load(tmp_path / 'resumed' / 'distilled.npz')
  np.testing.assert_allclose(again['x'], out['x'], atol=1e-5)
