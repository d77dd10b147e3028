"""NCFM: the CF discrepancy against numpy, the sampling network, the min-max directions, the
additive form, the pipeline (resumable) and the `:paper` preset against the official yaml."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import load_shipped_config, run_killed_and_resumed
from ddjax import transforms as T
from ddjax.distill import step as step_lib
from ddjax.distill.ncfm import (NCFM, SampleNet, cf_discrepancy, distinct_frequencies,
                                empirical_cf, l2_normalize, tile_weights, tiled_frequencies)
from ddjax.models import build_model

K, SHAPE = 3, (8, 8, 2)


def numpy_cfd(fr, fs, t, alpha, beta, w_real=None):
  """The official formula with complex exponentials, written directly in numpy (float64)."""
  w = np.ones(len(fr)) if w_real is None else np.asarray(w_real, np.float64)
  phi_r = (w[:, None] * np.exp(1j * (fr @ t.T))).sum(0) / w.sum()
  phi_s = np.exp(1j * (fs @ t.T)).mean(0)
  a, b = np.abs(phi_r), np.abs(phi_s)
  amp = (a - b) ** 2
  phase = np.maximum(2 * (a * b - (phi_r * np.conj(phi_s)).real), 1e-12)
  return np.mean(np.sqrt(alpha * amp + beta * phase)), phi_r, phi_s


def _features(seed, n, d=16, shift=0.0):
  rng = np.random.default_rng(seed)
  f = rng.normal(size=(n, d)) + shift
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_cf_discrepancy_equals_the_complex_exponential_formula():
  fr, fs = _features(0, 40), _features(1, 7, shift=0.3)
  t = np.random.default_rng(2).normal(size=(64, 16)) * 2.0
  for alpha, beta in ((0.5, 0.5), (0.8, 0.2), (1.0, 0.0)):
    want, phi_r, phi_s = numpy_cfd(fr, fs, t, alpha, beta)
    got = cf_discrepancy(jnp.asarray(fr, jnp.float32), jnp.asarray(fs, jnp.float32),
                         jnp.asarray(t, jnp.float32), alpha, beta)
    np.testing.assert_allclose(float(got), want, rtol=1e-4)
  cf = empirical_cf(jnp.asarray(fr, jnp.float32), jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(np.asarray(cf[0]) + 1j * np.asarray(cf[1]), phi_r, atol=1e-5)
  # alpha = beta = 1: amplitude + phase = |phi_r - phi_s|^2
  got = cf_discrepancy(jnp.asarray(fr), jnp.asarray(fs), jnp.asarray(t), 1.0, 1.0)
  np.testing.assert_allclose(float(got), np.mean(np.abs(phi_r - phi_s)), rtol=1e-4)
  # real-sample weights (BiLP's mask): the weighted empirical CF
  w = (np.arange(40) % 3 != 0).astype(np.float32)
  want, _, _ = numpy_cfd(fr, fs, t, 0.5, 0.5, w)
  got = cf_discrepancy(jnp.asarray(fr), jnp.asarray(fs), jnp.asarray(t), real_weight=jnp.asarray(w))
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_cf_discrepancy_is_the_clamp_floor_for_identical_sets_and_positive_otherwise():
  f = jnp.asarray(_features(3, 20), jnp.float32)
  t = jax.random.normal(jax.random.PRNGKey(0), (128, 16))
  same = float(cf_discrepancy(f, f, t))
  # in exact arithmetic sqrt(beta * 1e-12) (the clamp); float32 rounding of the phase term's
  # difference of products leaves up to ~1e-4
  want, _, _ = numpy_cfd(np.asarray(f, np.float64), np.asarray(f, np.float64),
                         np.asarray(t, np.float64), 0.5, 0.5)
  np.testing.assert_allclose(want, np.sqrt(0.5 * 1e-12), rtol=1e-6)
  assert np.sqrt(0.5 * 1e-12) * 0.999 <= same < 1e-4
  assert float(cf_discrepancy(f, f[::-1], t)) < 1e-4       # a permutation: the same distribution
  other = float(cf_discrepancy(f, jnp.asarray(_features(4, 20, shift=0.5), jnp.float32), t))
  assert other > 1e3 * same
  g = jax.grad(lambda x: cf_discrepancy(f, x, t))(f[:5] + 0.1)
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0


def test_tiled_frequencies_equal_their_weighted_distinct_rows():
  rng = np.random.default_rng(5)
  fr, fs = jnp.asarray(_features(6, 30)), jnp.asarray(_features(7, 5, shift=0.4))
  for total, repeat in ((64, 16), (70, 16), (10, 3), (5, 16)):
    n = distinct_frequencies(total, repeat)
    assert n == max(1, -(-total // repeat))
    w = tile_weights(total, repeat)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    t = jnp.asarray(rng.normal(size=(n, 16)), jnp.float32)
    full = tiled_frequencies(t, total, repeat)
    assert full.shape == (total, 16)
    np.testing.assert_allclose(float(cf_discrepancy(fr, fs, t, freq_weight=jnp.asarray(w))),
                               float(cf_discrepancy(fr, fs, full)), rtol=1e-5)


def test_sample_net_shapes_init_and_batch_statistics():
  d = 12
  net = SampleNet(d)
  z = jax.random.normal(jax.random.PRNGKey(1), (8, d))
  params = net.init(jax.random.PRNGKey(0), z)['params']
  sizes = sum(a.size for a in jax.tree_util.tree_leaves(params))
  assert sizes == 3 * (d * d + d + 2 * d)
  bound = 1 / np.sqrt(d)
  for i in range(3):
    layer = params[f'linear{i}']
    assert float(jnp.abs(layer['kernel']).max()) <= bound and float(jnp.abs(layer['bias']).max()) <= bound
  t = net.apply({'params': params}, z)
  assert t.shape == (8, d) and float(jnp.abs(t).max()) < 1.0            # tanh output
  # batch statistics of the rows: the output depends on the other rows (train-mode BatchNorm)
  t2 = net.apply({'params': params}, z.at[1:].set(z[1:] * 3.0))
  assert float(jnp.abs(t2[0] - t[0]).max()) > 1e-3


def _ncfm(**kw):
  model = build_model('convnet', K, depth=2, width=8, norm='instance')
  flats = []
  for i in range(4):
    p = model.init(jax.random.PRNGKey(i), jnp.zeros((1,) + SHAPE), train=False)['params']
    flat, unravel = ravel_pytree(p)
    flats.append(np.asarray(flat))
  kw = {'t_batchsize': 64, 't_repeat': 16, 'dsa_strategy': '', **kw}
  return NCFM(model, unravel, np.stack(flats[:2]), np.stack(flats[2:]), SHAPE, K, **kw)


def _batch(seed=0, per_class=6):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(K), per_class)
  rng.shuffle(labels)
  x = rng.normal(size=(len(labels),) + SHAPE).astype(np.float32) + labels[:, None, None, None]
  return {'x': jnp.asarray(x), 'y': jnp.asarray(np.eye(K, dtype=np.float32)[labels])}, labels


def _syn(seed=1, ipc=2):
  rng = np.random.default_rng(seed)
  return {'x': jnp.asarray(rng.normal(size=(K * ipc,) + SHAPE).astype(np.float32)),
          'y': jnp.asarray(np.eye(K, dtype=np.float32).repeat(ipc, 0))}


def test_per_class_is_the_cf_discrepancy_of_the_drawn_network():
  d = _ncfm(calib_weight=0.0, sampling_net=False, num_freqs=32)
  batch, labels = _batch()
  syn = _syn()
  state = d.init(syn, jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(3)
  rec = d.per_class(syn, state, batch, key)
  draws = d.draws(state, key)
  feats = lambda x: np.asarray(l2_normalize(d.model.apply(draws.embed, x, train=False)[1]))
  fr, fs = feats(batch['x']), feats(syn['x'])
  for c in range(K):
    t = np.asarray(jax.random.normal(draws.noise_keys[c], (32, d.feature_dim)))
    want, _, _ = numpy_cfd(fr[labels == c], fs[2 * c:2 * c + 2], t, 0.5, 0.5)
    np.testing.assert_allclose(float(rec.loss[c]) / K, 300 * want, rtol=2e-4)


def test_sampling_net_ascends_and_the_set_descends():
  d = _ncfm(sampling_lr=0.05)
  batch, _ = _batch()
  syn = _syn()
  state = d.init(syn, jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(4)
  cache = jax.jit(d.prepare, static_argnums=4)(syn, state, batch, key, True)
  draws = d.draws(state, key)
  xs = syn['x'].reshape((K, -1) + SHAPE)
  psis = [jax.tree_util.tree_map(lambda a: a[c], cache.psi_per_class) for c in range(K)]
  psis.append(cache.psi_next)
  for c in range(K):     # the cache holds class c's frequencies from psi_c
    np.testing.assert_allclose(cache.freqs[c], d.frequencies(psis[c], draws.noise_keys[c]),
                               atol=1e-6)
  for c in range(K):     # class c's step takes psi_c to psi_{c+1}, raising class c's loss
    fs = d.embed(draws.embed, draws.aug_keys[c], xs[c])
    loss = lambda psi: float(d.match(cache.real_feats[c], fs,
                                     d.frequencies(psi, draws.noise_keys[c])))
    assert loss(psis[c + 1]) > loss(psis[c]) + 1e-4, (c, loss(psis[c]), loss(psis[c + 1]))
  # psi_0 is the state's; update keeps psi_K and drops the cache
  for a, b in zip(jax.tree_util.tree_leaves(psis[0]), jax.tree_util.tree_leaves(state.psi)):
    np.testing.assert_array_equal(a, b)
  new = d.update(syn, state.replace(cache=cache.replace(psi_per_class=None)), key)
  assert new.cache is None
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)
  for a, b in zip(jax.tree_util.tree_leaves(new.psi), jax.tree_util.tree_leaves(psis[-1])):
    np.testing.assert_array_equal(a, b)
  # one step of the set lowers the meta-loss it was taken on (same key, same psi_c)
  opt = step_lib.make_syn_optimizer('adam', 1e-2, 0.0, 10, learn_label=False,
                                    schedule='constant')
  st = step_lib.init_state(d, T.identity(), opt, syn, jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_step(d, T.identity(), opt, jnp.repeat(jnp.arange(K), 2)))
  k_loss = jax.random.split(key, 3)[0]
  meta = lambda s: float(d.per_class(s, st.distiller_state, batch, k_loss).loss.mean())
  new_state, metrics = step(st, batch, key)
  np.testing.assert_allclose(float(metrics['loss']), meta(st.syn), rtol=1e-5)
  assert meta(new_state.syn) < meta(st.syn)
  assert new_state.distiller_state.cache is None


def test_additive_form_gives_the_matching_loss():
  from ddjax.scoring.ite import additive_ite_scores
  d = _ncfm(calib_weight=0.0)
  batch, _ = _batch()
  syn = _syn()
  state = d.init(syn, jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(6)
  rec = d.per_class(syn, state, batch, key)
  form = d.additive_form(syn, state, batch, key)
  for c in range(K):
    sep = form.build(*(a[c] for a in form.args), form.keys[c])
    np.testing.assert_allclose(float(sep.distance(sep.G, sep.features(sep.S))),
                               float(rec.loss[c]) / K, rtol=1e-4)
  scores = additive_ite_scores(form, 'first_order', None, 8)
  assert scores.shape == (K, 6) and np.all(np.isfinite(np.asarray(scores)))
  assert float(scores.max()) > 0


def test_ncfm_runs_through_the_pipeline_and_resumes(tiny_npz, tmp_path, monkeypatch):
  cfg = load_shipped_config('ncfm')
  for key, value in {'data.name': 'npz', 'data.dir': tiny_npz, 'model.width': 8,
                     'model.depth': 2, 'eval.model.width': 8, 'eval.model.depth': 2,
                     'distill.ipc': 1, 'distill.steps': 6, 'distill.batch_per_class': 8,
                     'expert.num_experts': 2, 'expert.epochs': 1, 'expert.batch_size': 32,
                     'expert.dir': str(tmp_path / 'pool'), 'ncfm.t_batchsize': 32,
                     'ncfm.t_repeat': 8, 'eval.num_models': 0, 'checkpoint.every': 3,
                     'log.every': 1}.items():
    *path, leaf = key.split('.')
    node = cfg
    for part in path:
      node = node[part]
    node[leaf] = value
  straight, interrupted, results = run_killed_and_resumed(cfg, tmp_path, monkeypatch)
  assert results['distill']['resumed_from'] == 3 and results['distill']['steps'] == 6
  with np.load(os.path.join(straight, 'distilled.npz')) as f, \
      np.load(os.path.join(interrupted, 'distilled.npz')) as g:
    assert f['x'].shape[0] == 3 * 4          # IDC factor 2: 1 stored image -> 4 per class
    np.testing.assert_allclose(f['x'], g['x'], rtol=0, atol=1e-5)
  assert results['plan']['protocol'] == 'dc'


# config/sampling_net/ipc10/cifar10.yaml (gszfwsb/NCFM), the values :paper takes, by line
OFFICIAL_SAMPLING_NET_IPC10_CIFAR10 = {
    'dataset': 'cifar10', 'batch_real': 1024, 'net_type': 'convnet', 'norm_type': 'instance',
    'depth': 3, 'width': 1.0, 'pertrain_epochs': 60, 'batch_size': 256, 'lr': 0.01,
    'momentum': 0.9, 'weight_decay': 0.01, 'model_num': 20, 'aug_type': 'color_crop_cutout',
    'optimizer': 'adamw', 'lr_scale_adam': 0.1, 'lr_img': 0.01, 'mom_img': 0.5,
    'lr_sampling_net': 1e-3, 'ipc': 10, 'num_premodel': 20, 'niter': 20000, 'iter_calib': 1,
    'calib_weight': 1, 'sampling_net': True, 'num_freqs': 4096, 'factor': 2,
    'alpha_for_loss': 0.5, 'beta_for_loss': 0.5, 'decode_type': 'single',
    'sampling_net_t_batchsize': 4096, 'sampling_net_t_var': 1,
    'condense_scheduler_patience': 20000,
}


@pytest.mark.parametrize('preset', ['paper', 'cifar10'])
def test_paper_preset_is_the_official_yaml(preset):
  y = OFFICIAL_SAMPLING_NET_IPC10_CIFAR10
  cfg = load_shipped_config('ncfm', preset)
  assert cfg.method == 'ncfm' and cfg.data.name == y['dataset']
  assert cfg.distill.ipc == y['ipc'] and cfg.distill.steps == y['niter']
  assert cfg.distill.batch_per_class == y['batch_real'] and cfg.distill.balanced_batch
  assert (cfg.model.arch, cfg.model.depth, cfg.model.width, cfg.model.norm) == (
      y['net_type'], y['depth'], int(128 * y['width']), y['norm_type'])
  assert cfg.distill.optimizer == 'adam' and y['optimizer'] == 'adamw'
  assert cfg.distill.lr == pytest.approx(y['lr_img'] * y['lr_scale_adam'])
  assert cfg.distill.schedule == 'constant' and y['condense_scheduler_patience'] >= y['niter']
  assert cfg.idc.factor == y['factor'] and y['decode_type'] == 'single'
  assert cfg.distill.init == 'real' and cfg.dsa.strategy == y['aug_type']
  n = cfg.ncfm
  assert n.sampling_net is y['sampling_net'] and n.num_freqs == y['num_freqs']
  assert (n.t_batchsize, n.t_var, n.t_repeat) == (y['sampling_net_t_batchsize'],
                                                   y['sampling_net_t_var'], 16)
  assert n.sampling_lr == y['lr_sampling_net'] and n.sampling_momentum == y['mom_img']
  assert (n.alpha, n.beta, n.scale) == (y['alpha_for_loss'], y['beta_for_loss'], 300.0)
  assert n.calib_weight == y['calib_weight'] * (y['iter_calib'] > 0)
  e = cfg.expert
  assert e.num_experts == y['num_premodel'] == y['model_num'] and e.epochs == y['pertrain_epochs']
  assert (e.lr, e.momentum, e.weight_decay, e.batch_size) == (
      y['lr'], y['momentum'], y['weight_decay'], y['batch_size'])
  assert cfg.eval.protocol == 'dc'


def test_configs_validate_and_refuse_what_does_not_compose():
  from ddjax import config as config_lib
  for preset in ('', 'paper', 'cifar10', 'cifar100'):
    config_lib.validate(load_shipped_config('ncfm', preset))
  assert load_shipped_config('ncfm', 'cifar100').data.name == 'cifar100'
  bad = load_shipped_config('ncfm')
  bad.transform.isa_eps = 1.0
  with pytest.raises(ValueError, match='rank or pair real examples'):
    config_lib.validate(bad)
  bad = load_shipped_config('ncfm')
  bad.model.norm = 'batch'
  with pytest.raises(ValueError, match='running statistics'):
    config_lib.validate(bad)
  with pytest.raises(ValueError, match='instance'):
    _ncfm().__class__(build_model('convnet', K, depth=2, width=8, norm='batch'), None,
                      np.zeros((1, 3)), np.zeros((1, 3)), SHAPE, K)
  ok = load_shipped_config('ncfm')
  ok.bilp.adaptive_beta = 0.3          # BiLP's ITE: NCFM declares an additive form
  config_lib.validate(ok)


def test_ascent_scale_zero_keeps_the_sampling_network():
  """ascent_scale 0: the official default branch's net effect (its gradients cancel)."""
  d = _ncfm(sampling_lr=0.05, ascent_scale=0.0)
  batch, _ = _batch()
  syn = _syn()
  state = d.init(syn, jax.random.PRNGKey(0))
  cache = jax.jit(d.prepare)(syn, state, batch, jax.random.PRNGKey(4))
  for a, b in zip(jax.tree_util.tree_leaves(cache.psi_next), jax.tree_util.tree_leaves(state.psi)):
    np.testing.assert_array_equal(a, b)
