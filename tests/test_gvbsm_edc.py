"""G-VBSM and EDC's recovery: Conv / patch statistics, the EMA straight-through statistics, the DD
loss, round-robin observers, EDC's category-aware targets and flatness, presets against the
official scripts, composition refusals and end-to-end runs that resume."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from ddjax.distill import statistics as st
from ddjax.distill.gvbsm import StatisticRecovery, class_major_layout
from ddjax.distill.recover import ObserverNet, View

EPS = 1e-5


class ConvBN(nn.Module):
  """x -> 1x1 conv0 -> BN -> ReLU -> 1x1 conv1 -> mean -> dense: every hook input has a numpy
  closed form."""
  classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.Conv(4, (1, 1), name='conv0')(x)
    h = nn.BatchNorm(use_running_average=not train, epsilon=EPS, name='bn')(h)
    h = nn.relu(h)
    h = nn.Conv(5, (1, 1), name='conv1')(h)
    f = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.classes, name='head')(f), f


def _bilinear_up(h, out_h, out_w):
  """F.interpolate(mode='bilinear', align_corners=False) of h (B, H, W, C), numpy."""
  def axis_weights(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0
  r0, r1, rl = axis_weights(h.shape[1], out_h)
  c0, c1, cl = axis_weights(h.shape[2], out_w)
  rows = h[:, r0] * (1 - rl)[None, :, None, None] + h[:, r1] * rl[None, :, None, None]
  return rows[:, :, c0] * (1 - cl)[None, None, :, None] + rows[:, :, c1] * cl[None, None, :, None]


def _np_conv_stats(h):
  """Channel mean / biased var over (B, H, W) and 4x4 patch mean / var over (B, C, 4, 4) of
  h (B, H, W, C), resized up to multiples of 4 (einops' (u v) order)."""
  b, hh, ww, c = h.shape
  th, tw = -(-hh // 4) * 4, -(-ww // 4) * 4
  r = _bilinear_up(h, th, tw) if (th, tw) != (hh, ww) else h
  pm, pv = [], []
  for u in range(th // 4):
    for v in range(tw // 4):
      block = r[:, 4 * u:4 * u + 4, 4 * v:4 * v + 4, :]
      pm.append(block.mean())
      pv.append(block.var())
  return h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2)), np.array(pm), np.array(pv)


def _variables(model, x, key):
  v = model.init(jax.random.PRNGKey(0), x)
  k1, k2 = jax.random.split(key)
  bs = {'bn': {'mean': 0.3 * jax.random.normal(k1, (4,)),
               'var': jax.random.uniform(k2, (4,), minval=0.5, maxval=2.0)}}
  return {'params': v['params'], 'batch_stats': bs}


@pytest.mark.parametrize('side', [6, 8])       # 6: resized to 8 first; 8: already a multiple
def test_conv_and_patch_statistics_match_numpy_from_the_layer_inputs(side):
  model = ConvBN()
  x = jax.random.normal(jax.random.PRNGKey(1), (3, side, side + 2, 2)) * 1.3 + 0.4
  v = _variables(model, x, jax.random.PRNGKey(2))
  (logits, _), hooks = st.apply_with_statistics(model, v, x, per_image=True)
  assert [(h.kind, h.name) for h in hooks] == [('conv', 'conv0'), ('bn', 'bn'), ('conv', 'conv1')]
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v['params'])
  bs = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v['batch_stats'])['bn']
  xn = np.asarray(x, np.float64)
  h0 = xn @ p['conv0']['kernel'][0, 0] + p['conv0']['bias']
  h1 = np.maximum((h0 - bs['mean']) / np.sqrt(bs['var'] + EPS) * p['bn']['scale']
                  + p['bn']['bias'], 0)
  for hook, inp in ((hooks[0], xn), (hooks[2], h1)):
    for got, want in zip(hook.stats, _np_conv_stats(inp)):
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    # per image: channel stats over (H, W), patch stats over (C, 4, 4)
    first = _np_conv_stats(inp[:1])
    for got, want in zip(hook.per_image, first):
      np.testing.assert_allclose(got[0], want, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(hooks[1].stats[0], h0.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(hooks[1].stats[1], h0.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(hooks[1].running[1], bs['var'], rtol=1e-6)
  assert hooks[0].stats[2].shape == ((-(-side // 4)) * (-(-(side + 2) // 4)),)
  np.testing.assert_allclose(logits, model.apply(v, x)[0], atol=1e-6)   # forward unchanged


def test_ema_straight_through_has_the_emas_value_and_the_batch_statistics_gradient():
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  stat = lambda x: jnp.mean(jnp.square(x), axis=0)             # a batch statistic (3,)
  ema = jnp.array([0.2, -1.0, 4.0])
  np.testing.assert_allclose(st.straight_through(stat(x), ema), ema, atol=1e-6)
  w = jnp.array([1.0, -2.0, 0.5])
  g_st = jax.grad(lambda x: jnp.dot(w, st.straight_through(stat(x), ema)))(x)
  g_s = jax.grad(lambda x: jnp.dot(w, stat(x)))(x)
  np.testing.assert_allclose(g_st, g_s, atol=1e-6)
  assert float(jnp.abs(g_s).sum()) > 0
  # the update: the first value, then a old + (1 - a) new, unchanged when dropped
  new = stat(x)
  np.testing.assert_allclose(st.ema_update(ema, new, 0.8, False, True), new, atol=1e-6)
  np.testing.assert_allclose(st.ema_update(ema, new, 0.8, True, True), 0.8 * ema + 0.2 * new,
                             atol=1e-6)
  np.testing.assert_allclose(st.ema_update(ema, new, 0.8, True, False), ema)


def _np_dd(x, groups, tau):
  xs = np.asarray(x, np.float64).reshape(groups, x.shape[0] // groups, -1)
  total = 0.0
  for g in xs:
    lam = np.linalg.eigvalsh(g @ g.T)
    logt = lam / tau - (lam / tau).max()
    logt -= np.log(np.exp(logt).sum())
    logs = lam - lam.max() - np.log(np.exp(lam - lam.max()).sum())
    total += np.sum(np.exp(logt) * (logt - logs))
  return total


def test_dd_loss_matches_numpy_and_vanishes_with_one_image_per_class():
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 1)) * 0.3
  got = float(st.dd_loss(x, groups=2, tau=4.0))
  assert got == pytest.approx(_np_dd(x, 2, 4.0), rel=1e-4)
  assert got > 1e-4
  assert float(st.dd_loss(x, groups=6)) == 0.0                    # one image per class
  # images above 32 px are average-pooled to 32 x 32 first
  big = jax.random.normal(jax.random.PRNGKey(1), (4, 64, 64, 1)) * 0.05
  pooled = np.asarray(big).reshape(4, 32, 2, 32, 2, 1).mean(axis=(2, 4))
  assert float(st.dd_loss(big, groups=2)) == pytest.approx(_np_dd(pooled, 2, 4.0), rel=1e-3)
  g = jax.grad(lambda x: st.dd_loss(x, 2))(x)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def test_dd_loss_stays_finite_when_the_spectrum_spreads_widely():
  # 10 images of 28 x 28 pixels in [0, 1], one class: the Gram eigenvalues spread by hundreds,
  # softmax(lambda / 4) underflows to exactly 0 for the small ones (the run diverged at step 7)
  x = jax.random.uniform(jax.random.PRNGKey(2), (10, 28, 28, 1))
  lam = np.linalg.eigvalsh(np.asarray(x, np.float64).reshape(10, -1) @
                           np.asarray(x, np.float64).reshape(10, -1).T)
  assert lam.max() - lam.min() > 4 * 200            # exp(-200) is 0 in float32
  got = float(st.dd_loss(x, groups=1))
  assert np.isfinite(got) and got == pytest.approx(_np_dd(x, 1, 4.0), rel=1e-3)
  g = jax.grad(lambda x: st.dd_loss(x, 1))(x)
  assert bool(jnp.all(jnp.isfinite(g)))


def test_category_aware_target_is_the_label_weighted_mean_of_class_targets():
  rng = np.random.default_rng(0)
  k, d = 4, 5
  stats = [jnp.asarray(rng.normal(size=d), jnp.float32) for _ in range(2)]
  glob = [jnp.asarray(rng.normal(size=d), jnp.float32) for _ in range(2)]
  cls = [jnp.asarray(rng.normal(size=(k, d)), jnp.float32) for _ in range(2)]
  labels = np.array([0, 0, 2, 3, 3, 3])
  weights = jnp.asarray(np.bincount(labels, minlength=k) / len(labels), jnp.float32)
  mixed = [np.asarray(c)[labels].mean(0) for c in cls]               # the official indexing
  want_cls = sum(np.linalg.norm(m - np.asarray(s)) for m, s in zip(mixed, stats))
  want_glob = sum(np.linalg.norm(np.asarray(g) - np.asarray(s)) for g, s in zip(glob, stats))
  term = lambda a: float(st.hook_term(stats, stats, glob, cls, weights, a))
  assert term(1.0) == pytest.approx(want_cls, rel=1e-5)
  assert term(0.0) == pytest.approx(want_glob, rel=1e-5)
  assert term(0.5) == pytest.approx(0.5 * want_cls + 0.5 * want_glob, rel=1e-5)
  # the distiller's label fractions of its class-major batches
  b, m, g = class_major_layout(6, 2, 4)
  assert (b, m, g) == (4, 2, 3)
  with pytest.raises(ValueError, match='equal chunks of whole classes'):
    class_major_layout(6, 2, 3)


def test_flatness_term_is_torchs_mean_reduced_kl():
  rng = np.random.default_rng(1)
  z, ze = rng.normal(size=(3, 5)) * 3, rng.normal(size=(3, 5)) * 3
  soft = lambda a: np.exp(a - a.max(1, keepdims=True)) / np.exp(a - a.max(1, keepdims=True)).sum(
      1, keepdims=True)
  p, q = soft(ze / 4), soft(z / 4)
  want = np.mean(p * (np.log(p) - np.log(q)))                  # F.kl_div(log q, p), 'mean'
  assert float(st.flatness_kl(jnp.asarray(z), jnp.asarray(ze), 4.0)) == pytest.approx(want,
                                                                                        rel=1e-5)
  g = jax.grad(lambda ze: st.flatness_kl(jnp.asarray(z), ze))(jnp.asarray(ze))
  assert float(jnp.abs(g).sum()) == 0.0                         # the EMA side: no gradient


# -- tiny observers ------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_problem():
  """Two tiny batch-norm ConvNets trained on three separable classes of 8x8 images, and their
  real targets."""
  from ddjax.evaluate.observer import train
  from ddjax.models import build_model
  rng = np.random.default_rng(0)
  protos = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 3, 240)
  x = protos[y] + 0.5 * rng.normal(size=(240, 8, 8, 1)).astype(np.float32)
  observers, targets = [], []
  for i, (depth, width) in enumerate([(2, 8), (1, 6)]):
    model = build_model('convnet', 3, depth=depth, width=width, norm='batch', pooling='avg')
    variables = train(model, x, y, jax.random.PRNGKey(i), epochs=5, batch_size=60, lr=3e-3)
    observers.append(ObserverNet(model, variables))
    targets.append(st.real_statistics(model, variables, x, y, 3, jax.random.PRNGKey(7),
                                      batch_size=64))
  return observers, targets, x, y


def test_real_targets_are_per_batch_averages_and_class_means_of_per_image_statistics(tiny_problem):
  observers, _, x, y = tiny_problem
  obs = observers[1]
  key = jax.random.PRNGKey(3)
  got = st.real_statistics(obs.model, obs.variables, x[:10], y[:10], 3, key, batch_size=4,
                           translate=0, flip=False)
  order = np.asarray(jax.random.permutation(jax.random.split(key)[0], 10))
  model = st.hookable(obs.model)
  want_glob, sums, counts = None, None, np.zeros(3)
  for s in range(0, 10, 4):
    idx = order[s:s + 4]
    _, hooks = st.apply_with_statistics(model, obs.variables, jnp.asarray(x[idx]),
                                        per_image=True)
    w = len(idx) / 10
    glob = [[np.asarray(a) * w for a in h.stats] for h in hooks]
    onehot = np.eye(3)[y[idx]]
    cls = [[onehot.T @ np.asarray(a) for a in h.per_image] for h in hooks]
    want_glob = glob if want_glob is None else [[a + b for a, b in zip(p, q)]
                                                for p, q in zip(want_glob, glob)]
    sums = cls if sums is None else [[a + b for a, b in zip(p, q)] for p, q in zip(sums, cls)]
    counts += onehot.sum(0)
  assert [t.kind for t in got] == ['conv', 'bn']
  for t, g, s in zip(got, want_glob, sums):
    if t.kind == 'conv':
      for a, b in zip(t.glob, g):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(t.classwise, s):
      np.testing.assert_allclose(a, b / counts[:, None], rtol=1e-5, atol=1e-6)


def _distiller(observers, targets, **kw):
  base = dict(num_classes=3, ipc=2, iterations=50, batch_size=6, r_bn=0.05,
              view=View(crop=False, flip=False, jitter=1), image_shape=(8, 8, 1), drop_rate=0.0,
              pad_crop=0)
  base.update(kw)
  return StatisticRecovery(observers, targets, **base)


def _syn(seed=1):
  return {'x': jax.random.normal(jax.random.PRNGKey(seed), (6, 8, 8, 1)),
          'y': jax.nn.one_hot(jnp.repeat(jnp.arange(3), 2), 3)}


def test_step_s_uses_observer_s_mod_n(tiny_problem):
  observers, targets, _, _ = tiny_problem
  both = _distiller(observers, targets, momentum=0.8)
  alone = [_distiller([o], [t], momentum=0.8) for o, t in zip(observers, targets)]
  syn, key = _syn(), jax.random.PRNGKey(5)

  def loss_of(d):
    @jax.jit
    def run(state):
      state = d.before_loss(syn, state, None, 0, key)
      return d.per_class(syn, state, None, key).loss[0], state
    return run

  run_both, run_alone = loss_of(both), [loss_of(d) for d in alone]
  state = both.init(syn, key)
  losses = []
  for s in range(4):
    got, st_s = run_both(state._replace(step=jnp.asarray(s, jnp.int32)))
    one = alone[s % 2]
    want, _ = run_alone[s % 2](one.init(syn, key)._replace(step=jnp.asarray(s, jnp.int32)))
    got, want = float(got), float(want)
    assert got == pytest.approx(want, rel=1e-5)
    losses.append(got)
    # before_loss touched only observer s % 2's EMA
    assert bool(st_s.seen[s % 2].all()) and not bool(st_s.seen[1 - s % 2].any())
  assert abs(losses[0] - losses[1]) > 1e-3                     # the observers differ


def test_recovery_lowers_the_combined_statistic_loss(tiny_problem):
  from ddjax import transforms
  from ddjax.distill import step as step_lib
  observers, targets, _, _ = tiny_problem
  steps = 80
  d = _distiller(observers, targets, iterations=steps, r_bn=1.0, drop_rate=0.4, momentum=0.8,
                 dd_weight=1.0, alpha=0.5, flatness_weight=0.25)
  syn = _syn()
  before = d.statistic_reading(syn['x'])
  opt = step_lib.make_syn_optimizer('adam', 0.1, 0.0, steps, learn_label=False,
                                    betas=(0.5, 0.9))
  classes = jnp.repeat(jnp.arange(3), 2)
  state = step_lib.init_state(d, transforms.identity(), opt, syn, jax.random.PRNGKey(2))
  step = jax.jit(step_lib.make_step(d, transforms.identity(), opt, classes))
  for s in range(steps):
    state, _ = step(state, d.batch_sampler(0)(s), jax.random.PRNGKey(100 + s))
  after = d.statistic_reading(state.syn['x'])
  assert after['stat'] < 0.7 * before['stat'], (before, after)
  for b, a in zip(before['per_observer'], after['per_observer']):
    assert a['stat'] < b['stat']
  ds = state.distiller_state
  assert int(ds.step) == steps
  assert all(bool(s.all()) for s in ds.seen)
  # the images' EMA trails the images
  assert ds.images_ema.shape == syn['x'].shape
  assert 0 < float(jnp.abs(ds.images_ema - state.syn['x']).mean()) < float(
      jnp.abs(syn['x'] - state.syn['x']).mean())


# -- presets, composition, end to end --------------------------------------------------------------
GVBSM_CIFAR10 = {   # shaoshitong/G_VBSM_Dataset_Condensation Branch_CIFAR_10/recover/
    'distill.lr': 0.05,                  # recover.sh:6
    'recover.batch_size': 100,           # recover.sh:5
    'distill.ipc': 10,                   # recover.sh:7
    'distill.steps': 4000,               # recover.sh:8
    'recover.r_bn': 0.01,                # recover.sh:10 (--r-loss)
    'gsm.dd_weight': 1.0,                # recover.sh:10 (--nuc-norm)
    'gsm.momentum': 0.8,                 # data_synthesis_with_svd_..._statistic.py:296 (default)
    'gsm.drop_rate': 0.4,                # ...statistic.py:297 (default, not overridden)
    'recover.jitter': 32,                # ...statistic.py:301 (default)
    'recover.first_bn_multiplier': 10.0,  # ...statistic.py:298 (default)
    'gsm.dd_tau': 4.0,                   # ...statistic.py:315
    'gsm.pad_crop': 4, 'recover.flip': True, 'recover.crop': False,   # ...statistic.py:136-140
    'distill.init': 'noise', 'distill.adam_b1': 0.5, 'distill.adam_b2': 0.9,  # :123-128
    'distill.schedule': 'cosine', 'distill.end_fraction': 0.0,
    'gsm.stat_batch': 64, 'gsm.stat_translate': 4, 'gsm.stat_flip': True,    # :70-93
    'data.name': 'cifar10',
}
EDC_CIFAR10 = {     # shaoshitong/EDC Branch_CIFAR_10/recover/
    'recover.batch_size': 10,            # recover.sh:4
    'edc.alpha': 0.5,                    # recover.sh:4 (--category-aware global); utils.py:224-229
    'distill.lr': 0.05, 'gsm.drop_rate': 0.0,   # recover.sh:5
    'distill.ipc': 1, 'gsm.momentum': 0.8,      # recover.sh:6
    'distill.steps': 75,                 # recover.sh:7
    'recover.r_bn': 0.01, 'distill.init': 'real',   # recover.sh:9
    'edc.flatness': False,               # recover.py:366 (store_true, not passed)
    'edc.flatness_ema': 0.99,            # recover.py:370
    'recover.crop': True, 'recover.min_crop': 0.08, 'recover.flip': True,   # recover.py:236-240
    'recover.jitter': 0, 'gsm.pad_crop': 0,     # recover.py:236-240 (no roll)
    'gsm.dd_weight': 0.0,                # recover.py:253-276 (no DD term)
    'recover.first_bn_multiplier': 10.0, 'distill.adam_b1': 0.5, 'distill.adam_b2': 0.9,
    'observer.epochs': 5,                # squeeze.sh:1
    'data.name': 'cifar10',
}


def _get(cfg, dotted):
  for part in dotted.split('.'):
    cfg = cfg[part]
  return cfg


@pytest.mark.parametrize('method,table,observers', [('gvbsm', GVBSM_CIFAR10, 5),
                                                    ('edc', EDC_CIFAR10, 8)])
def test_paper_presets_are_the_official_scripts(method, table, observers):
  from ddjax import registry
  from ddjax.config import method_config, validate
  from ddjax.evaluate.protocols.rded import ensemble_names
  cfg = method_config(method, 'paper')
  validate(cfg)
  assert {k: _get(cfg, k) for k in table} == table
  assert len(ensemble_names(cfg)) == observers
  assert registry.protocol_name(cfg) == 'ensemble'
  # the official evaluations (G: train.sh + train_FKD.py; E: train.sh + direct_train.py)
  want = {'gvbsm': dict(loss='mse_ce', w_ce=0.15, schedule='cosine', weight_decay=0.0,
                        batch_size=100, ema=0.0, epochs=1000),
          'edc': dict(loss='mse_ce', w_ce=0.025, schedule='multistep', weight_decay=0.01,
                      batch_size=25, ema=0.99, epochs=1000)}[method]
  assert {k: cfg.ensemble[k] for k in want} == want
  for preset in ('', 'image_folder'):
    validate(method_config(method, preset))


@pytest.mark.parametrize('method', ['gvbsm', 'edc'])
def test_bad_values_and_reading_real_examples_are_refused(method):
  from ddjax.config import method_config, validate
  for key, value, match in (('observer.ensemble', '', 'observer.ensemble'),
                            ('gsm.drop_rate', 1.0, 'gsm.drop_rate'),
                            ('gsm.momentum', -0.1, 'gsm.momentum'),
                            ('transform.isa_eps', 1.0, 'isa|ISA|per-example|row'),
                            ('bilp.adaptive_beta', 0.3, 'bilp')):
    cfg = method_config(method)
    section, name = key.split('.')
    cfg[section][name] = value
    with pytest.raises(ValueError, match=match):
      validate(cfg)
  if method == 'edc':
    cfg = method_config('edc')
    cfg.edc.init = 'patches'
    with pytest.raises(ValueError, match='edc.init'):
      validate(cfg)


@pytest.fixture(scope='module')
def observer_dir(tmp_path_factory):
  """One observer directory for both end-to-end runs (the second reuses the cached observers and
  their real statistics)."""
  return tmp_path_factory.mktemp('observers') / 'obs'


@pytest.mark.parametrize('method', ['gvbsm', 'edc'])
def test_end_to_end_run_and_resume(method, tiny_npz, tmp_path, monkeypatch, observer_dir):
  import ddjax
  from ddjax.config import method_config
  cfg = method_config(method)
  base = tiny_config(tiny_npz)
  cfg.data, cfg.eval.model = base.data, base.eval.model
  cfg.eval.model.norm = 'batch'
  cfg.distill.ipc = 2
  cfg.distill.steps = 8
  cfg.checkpoint.every = 4
  cfg.recover.batch_size = 6                    # one batch of 3 classes x 2 images
  cfg.observer.update(dict(dir=str(observer_dir), width=8, depth=2, epochs=2,
                           batch_size=32, lr=3e-3, ensemble='LeNet,ConvNet-1'))
  cfg.gsm.stat_images = 64
  if method == 'edc':
    cfg.edc.flatness = True
  cfg.ensemble.epochs = 1
  results = ddjax.run(cfg, str(tmp_path / 'run'))
  assert results['eval']['protocol'] == 'ensemble'
  out = np.load(tmp_path / 'run' / 'distilled.npz')
  assert out['x'].shape == (6, 12, 12, 1)
  root = observer_dir.parent
  cached = sorted(p.name for p in root.iterdir() if p.name.startswith('obs_'))
  assert cached == ['obs_convnet_1', 'obs_lenet']
  assert all(any(f.name.startswith('statistics_') for f in (root / c).iterdir())
             for c in cached)
  real = StatisticRecovery.batch_sampler

  def crashing(self, seed):
    sample = real(self, seed)

    def sample_or_crash(step):
      if step == 6:
        raise KeyboardInterrupt('simulated kill at step 6')
      return sample(step)
    return sample_or_crash

  monkeypatch.setattr(StatisticRecovery, 'batch_sampler', crashing)
  with pytest.raises(KeyboardInterrupt):
    ddjax.run(cfg, str(tmp_path / 'resumed'))
  monkeypatch.setattr(StatisticRecovery, 'batch_sampler', real)
  again = ddjax.run(cfg, str(tmp_path / 'resumed'))
  assert again['distill']['resumed_from'] == 4
  np.testing.assert_allclose(np.load(tmp_path / 'resumed' / 'distilled.npz')['x'], out['x'],
                             atol=1e-5)


def test_real_statistics_are_cached_and_a_mismatched_record_is_refused(tiny_problem, tmp_path):
  observers, _, x, y = tiny_problem
  obs = observers[1]
  record = {'arch': 'tiny', 'test_acc': 0.9}
  args = (obs.model, obs.variables, x[:40], y[:40], 3, 0)
  first = st.cached_real_statistics(str(tmp_path), record, *args, batch_size=16)
  files = [f for f in tmp_path.iterdir() if f.name.startswith('statistics_')]
  assert len(files) == 1
  again = st.cached_real_statistics(str(tmp_path), record, *args, batch_size=16)
  for a, b in zip(first, again):
    assert (a.kind, a.name) == (b.kind, b.name)
    for p, q in zip(a.glob + a.classwise, b.glob + b.classwise):
      np.testing.assert_array_equal(p, q)
  with pytest.raises(st.StatisticsMismatch, match='observer.test_acc'):
    st.cached_real_statistics(str(tmp_path), dict(record, test_acc=0.5), *args, batch_size=16)
