"""BiLP wired into the distillers and the run: weighted real statistics, the adaptive-pruning
wrapper (lazy reselection, mask semantics, jitted steps), held batches, preemptive pruning in
ddjax.main (cached scores, kept indices) and the BiLP configs."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from ddjax import main as main_lib
from ddjax import transforms as T
from ddjax.distill import step as step_lib
from ddjax.distill.bilp import AdaptivePruning
from ddjax.distill.dc import DC
from ddjax.distill.dm import DM
from ddjax.distill.idc import MultiFormation
from ddjax.models import build_model
from ddjax.runtime import loop

K, H, C = 3, 8, 1
SHAPE = (H, H, C)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model():
  return build_model('convnet', K, depth=2, width=8, norm='instance')


def _batch(seed, per_class):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(K), per_class)
  rng.shuffle(labels)
  x = rng.normal(size=(len(labels),) + SHAPE).astype(np.float32) + labels[:, None, None, None]
  return {'x': jnp.asarray(x), 'y': jnp.asarray(np.eye(K, dtype=np.float32)[labels])}, labels


def _syn(seed, ipc):
  x = np.random.default_rng(seed).normal(size=(K * ipc,) + SHAPE).astype(np.float32)
  return {'x': jnp.asarray(x), 'y': jnp.asarray(np.eye(K, dtype=np.float32).repeat(ipc, 0))}


def _distillers():
  return [DC(_model(), SHAPE, K, outer_loop=1, inner_loop=1, dsa_strategy='crop_scale'),
          DM(_model(), SHAPE, K, dsa_strategy='crop_scale')]


@pytest.mark.parametrize('which', [0, 1], ids=['dc', 'dm'])
def test_weighted_real_statistic_equals_the_kept_subset(which):
  # A 0/1 batch['weight'] must give exactly the meta-loss of the batch holding only the kept
  # samples (same class-balanced layout: 3 of 6 kept per class, in the same order).
  base = _distillers()[which]
  batch, labels = _batch(0, 6)
  keep = np.zeros(len(labels), bool)
  for c in range(K):
    keep[np.flatnonzero(labels == c)[[0, 2, 5]]] = True
  syn = _syn(1, 2)
  state = base.init(jax.random.PRNGKey(0), syn)
  key = jax.random.PRNGKey(3)
  weighted = base.per_sample(syn, state, {**batch, 'weight': jnp.asarray(keep, jnp.float32)}, key)
  subset = base.per_sample(syn, state, {'x': batch['x'][keep], 'y': batch['y'][keep]}, key)
  full = base.per_sample(syn, state, batch, key)
  np.testing.assert_allclose(weighted.loss, subset.loss, rtol=2e-4, atol=1e-5)
  assert np.abs(np.asarray(weighted.loss) - np.asarray(full.loss)).max() > 1e-4


def test_adaptive_pruning_reselects_lazily_and_keeps_the_window():
  # DM (the DC adapter's scores are checked against exact ITE in test_scoring)
  base = _distillers()[1]
  per_class, every = 20, 3
  batch, _ = _batch(2, per_class)
  syn = _syn(3, 1)
  bilp = AdaptivePruning(base, K * per_class, beta=0.3, every=every)
  state = bilp.init(jax.random.PRNGKey(0), syn)
  assert bool(state.selection.mask.all())
  before = jax.jit(bilp.before_loss)
  masks = []
  for step in range(2 * every + 1):
    state = before(syn, state, batch, jax.random.PRNGKey(10 + step), jnp.int32(step))
    masks.append(np.asarray(state.selection.mask))
  # reselection only at steps 0, every, 2 * every
  for step in range(1, 2 * every + 1):
    changed_allowed = step % every == 0
    if not changed_allowed:
      np.testing.assert_array_equal(masks[step], masks[step - 1])
  assert int(state.selection.count) == 3
  # the first selection's mask is the quantile window of that batch's own scores
  scores = np.asarray(bilp.ite_scores(syn, bilp.init(jax.random.PRNGKey(0), syn).base, batch,
                                      jax.random.PRNGKey(10)))
  from scipy.stats import norm
  mu, sd = scores.mean(), scores.std(ddof=1)
  lo, hi = mu + sd * norm.ppf(0.15), mu + sd * norm.ppf(0.85)
  np.testing.assert_array_equal(masks[0], (scores > lo) & (scores < hi))
  assert 0.4 < masks[0].mean() < 0.95


@pytest.mark.parametrize('which,factor', [(0, 1), (1, 1), (1, 2)], ids=['dc', 'dm', 'dm-idc'])
def test_bilp_steps_run_jitted_and_lower_the_meta_loss(which, factor):
  base = _distillers()[which]
  batch, _ = _batch(4, 16)
  distiller = AdaptivePruning(base, K * 16, beta=0.3, every=2)
  if factor > 1:
    distiller = MultiFormation(distiller, factor)
  syn = _syn(5, 1)
  opt = step_lib.make_syn_optimizer('sgd', 0.1, 0.0, 20, learn_label=False,
                                    schedule='constant', momentum=0.5)
  state = step_lib.init_state(distiller, T.identity(), opt, syn, jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_step(distiller, T.identity(), opt, jnp.repeat(jnp.arange(K), 1)))
  key = jax.random.PRNGKey(7)      # one key: DM's network and DSA draw stay fixed
  losses, masks = [], []
  for _ in range(10):
    state, metrics = step(state, batch, key)
    losses.append(float(metrics['loss']))
    masks.append(np.asarray(state.inner.selection.mask))
  assert np.all(np.isfinite(losses))
  assert 0 < masks[-1].mean() < 1                  # the window dropped some, kept most
  if which == 1:                                   # fixed network: the meta-loss must fall
    assert losses[-1] < 0.7 * losses[0], losses


def test_sampler_holds_each_batch_for_its_period():
  x = np.arange(60, dtype=np.float32).reshape(60, 1, 1, 1)
  y = np.eye(3, dtype=np.float32)[np.arange(60) % 3]
  sample = loop.make_sampler(x, y, 6, seed=0, balanced=True, hold=4)
  batches = [sample(s)['x'].ravel() for s in range(9)]
  for s in range(9):
    np.testing.assert_array_equal(batches[s], batches[4 * (s // 4)])
  assert not np.array_equal(batches[0], batches[4])
  with pytest.raises(ValueError, match='hold'):
    loop.make_sampler(x, y, 6, seed=0, hold=0)


def _load_config(name):
  sys.path.insert(0, os.path.join(ROOT, 'configs'))
  return __import__(name).get_config()


def test_bilp_configs_validate_and_reject_adaptive_pruning_off_matching():
  from ddjax import config as config_lib
  for name in ('bilp_dc', 'bilp_dm', 'bilp_idc', 'frepo_isa_bilp'):
    cfg = _load_config(name)
    config_lib.validate(cfg)
    assert cfg.bilp.prune_fraction == 0.5
  assert _load_config('bilp_idc').idc.factor == 2
  assert _load_config('frepo_isa_bilp').transform.isa_eps == 1.0
  bad = _load_config('frepo_isa_bilp')
  bad.bilp.adaptive_beta = 0.3
  with pytest.raises(ValueError, match='additive-separable'):
    config_lib.validate(bad)
  bad = _load_config('bilp_dc')
  bad.bilp.prune_by = 'largest'
  with pytest.raises(ValueError, match='bilp.prune_by'):
    config_lib.validate(bad)


def test_preemptive_pruning_in_a_run_keeps_the_lowest_loss_half_and_caches_scores(
    tiny_npz, tmp_path, monkeypatch):
  cfg = tiny_config(tiny_npz)
  cfg.bilp.prune_fraction = 0.5
  cfg.bilp.score_trials = 2
  cfg.bilp.score_epochs = 2
  cfg.bilp.score_width = 4
  cfg.eval.num_models = 0
  workdir = str(tmp_path / 'run')
  res = main_lib.run(cfg, workdir)
  kept = np.load(os.path.join(workdir, 'kept_indices.npz'))
  idx, score = kept['indices'], kept['score']
  prep = main_lib.Prepared(cfg)
  assert res['preemptive_pruning']['kept'] == len(idx) == len(prep.y_train) // 2
  for c in range(3):                       # class-wise: the half with the smallest scores
    members = np.flatnonzero(prep.y_train == c)
    chosen = np.intersect1d(idx, members)
    assert len(chosen) == len(members) // 2
    assert score[chosen].max() <= np.sort(score[members])[len(members) // 2 - 1] + 1e-7
  # a second run in the same workdir does not train scorers again; PAD's EL2N filter (drop the
  # easiest) reads the cached EL2N curves instead of the losses
  from ddjax import scoring
  monkeypatch.setattr(scoring, 'score_trials', lambda *a, **k: pytest.fail('scored twice'))
  res2 = main_lib.run(cfg, workdir)
  assert res2['preemptive_pruning'] == res['preemptive_pruning']
  cfg.bilp.prune_score, cfg.bilp.prune_by = 'el2n', 'drop_smallest'
  res3 = main_lib.run(cfg, workdir)
  kept3 = np.load(os.path.join(workdir, 'kept_indices.npz'))
  cached = np.load(os.path.join(workdir, 'scores', os.listdir(os.path.join(workdir, 'scores'))[0]))
  np.testing.assert_allclose(kept3['score'], scoring.empirical_loss_score(cached['el2n']),
                             rtol=1e-6)
  for c in range(3):                       # the half with the largest EL2N (hardest) stays
    members = np.flatnonzero(prep.y_train == c)
    chosen = np.intersect1d(kept3['indices'], members)
    assert kept3['score'][chosen].min() >= np.sort(kept3['score'][members])[len(members) // 2] - 1e-7
  assert res3['preemptive_pruning']['score'] == 'el2n'
  # runs sharing bilp.score_dir share one score cache (the benchmarks' setting)
  shared = str(tmp_path / 'shared_scores')
  os.replace(os.path.join(workdir, 'scores'), shared)
  cfg.bilp.score_dir = shared
  res4 = main_lib.run(cfg, str(tmp_path / 'other_run'))     # scoring would fail the test
  assert res4['preemptive_pruning'] == res3['preemptive_pruning']
  assert not os.path.exists(str(tmp_path / 'other_run' / 'scores'))


def test_cli_bilp_dm_end_to_end(tiny_npz, tmp_path):
  import subprocess
  workdir = tmp_path / 'run'
  args = [sys.executable, '-m', 'ddjax.main', '--config=configs/bilp_dm.py',
          '--config.data.name=npz', f'--config.data.dir={tiny_npz}', '--config.model.width=8',
          '--config.model.depth=2', '--config.eval.model.width=8', '--config.eval.model.depth=2',
          '--config.distill.ipc=1', '--config.distill.steps=4', '--config.distill.batch_size=30',
          '--config.bilp.score_trials=1', '--config.bilp.score_epochs=1',
          '--config.bilp.score_width=4', '--config.bilp.adaptive_every=2',
          '--config.eval.num_models=1', '--config.eval.steps=10', '--config.log.every=1',
          f'--workdir={workdir}']
  proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(workdir / 'results.json'))
  assert results['preemptive_pruning']['kept'] == 60
  assert results['adaptive_pruning']['adaptive_beta'] == 0.3
  assert os.path.exists(workdir / 'kept_indices.npz')
