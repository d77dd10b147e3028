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

from conftest import run_shipped, tiny_config
from ddjax.runtime import pipeline
from ddjax import transforms as T
from ddjax.distill import step as step_lib
from ddjax.distill.bilp import AdaptivePruning
from ddjax.distill.dc import DC
from ddjax.distill.dm import DM
from ddjax.distill.base import IDENTITY
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
  state = base.init(syn, jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(3)
  per_class = jax.jit(base.per_class)     # eager dispatch of the matching graph is slow
  weighted = per_class(syn, state, {**batch, 'weight': jnp.asarray(keep, jnp.float32)}, key)
  subset = per_class(syn, state, {'x': batch['x'][keep], 'y': batch['y'][keep]}, key)
  full = per_class(syn, state, batch, key)
  np.testing.assert_allclose(weighted.loss, subset.loss, rtol=2e-4, atol=1e-5)
  assert np.abs(np.asarray(weighted.loss) - np.asarray(full.loss)).max() > 1e-4


def test_adaptive_pruning_reselects_lazily_and_keeps_the_window():
  # DM (the DC adapter's scores are checked against exact ITE in test_scoring)
  base = _distillers()[1]
  per_class, every = 20, 3
  batch, _ = _batch(2, per_class)
  syn = _syn(3, 1)
  bilp = AdaptivePruning(base, K * per_class, beta=0.3, every=every)
  state = bilp.init(syn, jax.random.PRNGKey(0))
  assert bool(state.selection.mask.all())
  before = jax.jit(bilp.before_loss)
  masks = []
  for step in range(2 * every + 1):
    state = before(syn, state, batch, jnp.int32(step), jax.random.PRNGKey(10 + step))
    masks.append(np.asarray(state.selection.mask))
  # reselection only at steps 0, every, 2 * every
  for step in range(1, 2 * every + 1):
    changed_allowed = step % every == 0
    if not changed_allowed:
      np.testing.assert_array_equal(masks[step], masks[step - 1])
  assert int(state.selection.count) == 3
  # the first selection's mask is the quantile window of that batch's own scores
  scores = np.asarray(jax.jit(bilp.ite_scores)(
      syn, bilp.init(syn, jax.random.PRNGKey(0)).wrapped_state, batch, jax.random.PRNGKey(10)))
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
  param = MultiFormation(factor) if factor > 1 else IDENTITY    # IDC outside BiLP
  syn = _syn(5, 1)
  opt = step_lib.make_syn_optimizer('sgd', 0.1, 0.0, 20, learn_label=False,
                                    schedule='constant', momentum=0.5)
  state = step_lib.init_state(distiller, T.identity(), opt, syn, jax.random.PRNGKey(0), param)
  step = jax.jit(step_lib.make_step(distiller, T.identity(), opt, jnp.repeat(jnp.arange(K), 1),
                                    param))
  key = jax.random.PRNGKey(7)      # one key: DM's network and DSA draw stay fixed
  losses, masks = [], []
  for _ in range(10):
    state, metrics = step(state, batch, key)
    losses.append(float(metrics['loss']))
    masks.append(np.asarray(state.distiller_state.selection.mask))
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


# -- the KRR family: per-sample meta-losses -------------------------------------------------------
def _kip_problem(seed=0, b=14, ipc=1):
  from ddjax.distill.kip import KIP
  from ddjax.kernels.architectures import kernel_network
  _, _, kernel_fn = kernel_network('fc', depth=2)
  batch, _ = _batch(seed, b // K)
  batch = {'x': batch['x'], 'y': batch['y'] - 1.0 / K}            # centred one-hot targets
  return KIP(kernel_fn, get='ntk', reg=1e-3), _syn(seed + 1, ipc), batch


def test_per_sample_ite_equals_leave_one_out_recomputation_on_kip():
  """ITE_r = grad_S [sum_i l_i / B] - grad_S [sum_{i != r} l_i / B], recomputed on the batch
  without row r (BiLP Eq. 6 in the sum convention), for KIP's per-sample KRR losses."""
  from ddjax.scoring import ite as ite_lib
  kip, syn, batch = _kip_problem()
  b = batch['x'].shape[0]
  bilp = AdaptivePruning(kip, b, ite_method='exact')
  scores = np.asarray(jax.jit(bilp.ite_scores)(syn, (), batch, jax.random.PRNGKey(0)))

  def total(x, bt):              # sum_i l_i(S) / B over the rows of bt
    return jnp.sum(kip.per_sample({**syn, 'x': x}, (), bt, None).loss) / b

  grad = jax.jit(jax.grad(total))       # one compilation per batch size, not op by op
  full = grad(syn['x'], batch)
  brute = []
  for r in range(b):
    rest = {k: jnp.delete(v, r, axis=0) for k, v in batch.items()}
    brute.append(float(jnp.linalg.norm(full - grad(syn['x'], rest))))
  np.testing.assert_allclose(scores, brute, rtol=1e-4, atol=1e-8)
  assert scores.std() > 0.1 * scores.mean()            # the samples do differ
  first = AdaptivePruning(kip, b, ite_method='first_order').ite_scores(syn, (), batch, None)
  np.testing.assert_allclose(first, scores, rtol=1e-5)  # linear in l_i: Taylor is exact
  chunked = ite_lib.per_sample_ite_scores(
      lambda x: kip.per_sample({**syn, 'x': x}, (), batch, None).loss, syn['x'], chunk_size=4)
  np.testing.assert_allclose(chunked, scores, rtol=1e-5)


def test_per_sample_sketch_estimates_the_exact_scores():
  from ddjax.scoring import ite as ite_lib
  kip, syn, batch = _kip_problem(seed=3, b=30)
  losses = lambda x: kip.per_sample({**syn, 'x': x}, (), batch, None).loss
  exact = np.asarray(ite_lib.per_sample_ite_scores(losses, syn['x']))
  sketch = np.asarray(jax.jit(lambda k: ite_lib.per_sample_ite_scores(
      losses, syn['x'], 'sketch', k, sketch_dim=512))(jax.random.PRNGKey(1)))
  # unbiased for ||ITE||^2: the batch mean of squares within 20% (spread sqrt(2/512) per sample)
  assert abs(np.mean(sketch ** 2) / np.mean(exact ** 2) - 1) < 0.2
  assert ite_lib.rank_error(sketch, exact) < 0.05
  with pytest.raises(ValueError, match='key'):
    ite_lib.per_sample_ite_scores(losses, syn['x'], 'sketch')


def test_weighted_records_mean_over_the_kept_rows_through_isa_transforms():
  rng = np.random.default_rng(0)
  pred, target = (jnp.asarray(rng.normal(size=(10, 3)), jnp.float32) for _ in range(2))
  w = jnp.asarray([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], jnp.float32)
  ps = T.per_sample_mse(pred, target).replace(weight=w)
  keep = np.asarray(w, bool)
  np.testing.assert_allclose(T.mean_loss(ps), np.asarray(ps.loss)[keep].mean(), rtol=1e-6)
  assert float(ps.num_kept) == 7
  out, _ = T.chain(T.drop_easiest(0.2), T.isa(1.0)).apply(ps, T.chain(
      T.drop_easiest(0.2), T.isa(1.0)).init(), jax.random.PRNGKey(0))
  assert out.batch_size == 8 and out.weight.shape == (8,)
  # drop_easiest ranks by loss alone; the gathered weights are those of the kept rows
  idx = np.argsort(-np.asarray(ps.loss))[:8]
  np.testing.assert_array_equal(np.sort(np.asarray(out.weight)), np.sort(np.asarray(w)[idx]))
  zero = ps.replace(weight=jnp.zeros(10))
  assert float(T.mean_loss(zero)) == 0.0


def test_bilp_on_frepo_isa_runs_jitted_and_trains_only_on_the_kept_rows():
  from ddjax.distill.frepo import FRePo, FRePoConfig
  batch, _ = _batch(8, 8)
  batch = {'x': batch['x'], 'y': batch['y'] - 1.0 / K}
  b = batch['x'].shape[0]
  frepo = FRePo(build_model('convnet', K, depth=2, width=8), FRePoConfig(num_models=2), SHAPE)
  transform = T.chain(T.drop_easiest(0.2), T.isa(1.0))
  bilp = AdaptivePruning(frepo, b, beta=0.3, every=3, ite_method='sketch', sketch_dim=16)
  opt = step_lib.make_syn_optimizer('adam', 1e-2, 1e-2, 20)
  syn = _syn(9, 2)
  state = step_lib.init_state(bilp, transform, opt, syn, jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_step(bilp, transform, opt, jnp.repeat(jnp.arange(K), 2)))
  masks, kept = [], []
  for i in range(6):
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
    masks.append(np.asarray(state.distiller_state.selection.mask))
    kept.append(float(metrics['kept']))
    assert np.isfinite(float(metrics['loss']))
  np.testing.assert_array_equal(masks[1], masks[0])          # lazy: reselect at steps 0 and 3
  np.testing.assert_array_equal(masks[2], masks[0])
  assert 0 < masks[0].mean() < 1
  # of the ceil(0.8 B) rows ISA's drop_easiest keeps, only those inside the BiLP mask count
  assert all(k <= m.sum() for k, m in zip(kept, masks))
  # the meta-loss the step reports is the mean over the kept rows
  inner = state.distiller_state
  ps = frepo.per_sample(state.syn, inner.wrapped_state, batch, None)
  got = bilp.per_sample(state.syn, inner, batch, None)
  np.testing.assert_allclose(T.mean_loss(got), np.asarray(ps.loss)[masks[-1]].mean(), rtol=1e-5)


def _load_config(name):
  sys.path.insert(0, os.path.join(ROOT, 'configs'))
  return __import__(name).get_config()


def test_bilp_configs_validate_and_reject_adaptive_pruning_without_its_meta_loss():
  from ddjax import config as config_lib
  for name in ('bilp_dc', 'bilp_dm', 'bilp_idc', 'frepo_isa_bilp'):
    cfg = _load_config(name)
    config_lib.validate(cfg)
    assert cfg.bilp.prune_fraction == 0.5
  assert _load_config('bilp_idc').idc.factor == 2
  assert _load_config('frepo_isa_bilp').transform.isa_eps == 1.0
  both = _load_config('frepo_isa_bilp')       # the KRR family takes adaptive pruning too
  both.bilp.adaptive_beta = 0.3
  config_lib.validate(both)
  bad = _load_config('random_subset')
  bad.bilp.adaptive_beta = 0.3
  with pytest.raises(ValueError, match='additive form'):
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
  res = pipeline.run(cfg, workdir)
  kept = np.load(os.path.join(workdir, 'kept_indices.npz'))
  idx, score = kept['indices'], kept['score']
  prep = pipeline.load_data(cfg)
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
  res2 = pipeline.run(cfg, workdir)
  assert res2['preemptive_pruning'] == res['preemptive_pruning']
  cfg.bilp.prune_score, cfg.bilp.prune_by = 'el2n', 'drop_smallest'
  res3 = pipeline.run(cfg, workdir, restart=True)    # the score cache survives a restart
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
  res4 = pipeline.run(cfg, str(tmp_path / 'other_run'))     # scoring would fail the test
  assert res4['preemptive_pruning'] == res3['preemptive_pruning']
  assert not os.path.exists(str(tmp_path / 'other_run' / 'scores'))


def test_bilp_dm_end_to_end(tiny_npz, tmp_path):
  workdir = tmp_path / 'run'
  results = run_shipped('bilp_dm', workdir, {
      'data.name': 'npz', 'data.dir': tiny_npz, 'model.width': 8, 'model.depth': 2,
      'eval.model.width': 8, 'eval.model.depth': 2, 'distill.ipc': 1, 'distill.steps': 4,
      'distill.batch_per_class': 10, 'bilp.score_trials': 1, 'bilp.score_epochs': 1,
      'bilp.score_width': 4, 'bilp.adaptive_every': 2, 'eval.num_models': 1, 'eval.steps': 10,
      'log.every': 1})
  assert results['preemptive_pruning']['kept'] == 60
  assert results['adaptive_pruning']['adaptive_beta'] == 0.3
  assert os.path.exists(workdir / 'kept_indices.npz')


def test_run_frepo_isa_with_adaptive_pruning(tiny_npz, tmp_path):
  cfg = tiny_config(tiny_npz)                 # FRePo, the base config's method
  cfg.transform.drop_easiest, cfg.transform.isa_eps = 0.2, 1.0
  cfg.bilp.adaptive_beta, cfg.bilp.adaptive_every, cfg.bilp.ite = 0.3, 2, 'exact'
  cfg.eval.num_models = 0
  res = pipeline.run(cfg, str(tmp_path / 'run'))
  assert res['method'] == 'frepo' and res['adaptive_pruning']['ite'] == 'exact'
  log = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  kept = [r['kept'] for r in log if 'kept' in r]
  # ISA keeps ceil(0.8 * 32) = 26 rows; the BiLP mask zeroes some of them
  assert kept and all(0 < k < 26 for k in kept), kept


def test_bilp_under_multiformation_scores_the_decoded_set():
  # IDC's parameterisation sits outside BiLP: the step hands the wrapper the decoded set, so its
  # reselection is the one BiLP makes on that set (4 decoded images per class from 1 stored).
  dm = _distillers()[1]
  mf = MultiFormation(2)
  batch, _ = _batch(0, 4)
  syn = _syn(1, 1)
  bilp = AdaptivePruning(dm, K * 4, beta=0.5, every=1)
  opt = step_lib.make_syn_optimizer('sgd', 0.1, 0.0, 4, learn_label=False)
  state = step_lib.init_state(bilp, T.identity(), opt, syn, jax.random.PRNGKey(0), mf)
  parts = step_lib.make_host_step(bilp, T.identity(), opt, jnp.arange(K), mf)
  key = jax.random.PRNGKey(2)
  got = parts.prepare(state, batch, key, phase=(True, None)).distiller_state.selection
  k_loss = jax.random.split(key, 3)[0]          # the step's meta-loss key
  want = bilp.before_loss_at((True, None), mf.decode(syn), state.distiller_state, batch,
                             state.step, k_loss).selection
  np.testing.assert_array_equal(got.mask, want.mask)
  np.testing.assert_allclose(got.mean, want.mean, rtol=1e-6)
  stored = bilp.before_loss_at((True, None), syn, state.distiller_state, batch, state.step,
                               k_loss).selection
  assert not np.allclose(got.mean, stored.mean)             # the stored set scores otherwise
