"""Membership inference (`ddjax.evaluate.privacy`) and the suite's 'privacy' axis."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from conftest import make_tiny_arrays
from ddjax.evaluate import privacy


# ------------------------------------------------------------------------------ ROC metrics
def _mann_whitney_auc(s_m, s_n):
  diff = s_m[:, None] - s_n[None, :]
  return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _tpr_at_fpr_sweep(s_m, s_n, fpr, strict=False):
  best = 0.0
  for t in np.r_[np.inf, np.unique(np.r_[s_m, s_n])]:
    f = np.mean(s_n >= t)
    if (f < fpr) if strict else (f <= fpr + 1e-15):
      best = max(best, float(np.mean(s_m >= t)))
  return best


def _split(s_m, s_n):
  return np.r_[s_m, s_n], np.r_[np.ones(len(s_m), bool), np.zeros(len(s_n), bool)]


def test_auc_equals_mann_whitney_with_ties():
  rng = np.random.default_rng(0)
  s_m = np.round(rng.normal(0.7, 1, 300), 1)     # rounded: many ties across the groups
  s_n = np.round(rng.normal(0.0, 1, 200), 1)
  got = privacy.auc(*_split(s_m, s_n))
  assert got == pytest.approx(_mann_whitney_auc(s_m, s_n), abs=1e-12)
  assert 0.6 < got < 0.8


def test_tpr_at_fpr_equals_threshold_sweep():
  rng = np.random.default_rng(1)
  s_m = np.round(rng.normal(1.0, 1, 400), 2)
  s_n = np.round(rng.normal(0.0, 1, 1000), 2)
  s, m = _split(s_m, s_n)
  for fpr in (0.0, 0.001, 0.0015, 0.01, 0.1, 0.5, 1.0):
    assert privacy.tpr_at_fpr(s, m, fpr) == pytest.approx(_tpr_at_fpr_sweep(s_m, s_n, fpr))
    assert privacy.tpr_at_fpr(s, m, fpr, strict=True) == pytest.approx(
        _tpr_at_fpr_sweep(s_m, s_n, fpr, strict=True))
  # at 0.1 % of 1000 non-members strictly below means no false positive at all
  assert privacy.tpr_at_fpr(s, m, 0.001, strict=True) == pytest.approx(np.mean(s_m > s_n.max()))


def test_perfect_and_reversed_attacks():
  s, m = _split(np.arange(10, 20.0), np.arange(10.0))
  assert privacy.auc(s, m) == 1.0 and privacy.tpr_at_fpr(s, m, 0.0) == 1.0
  assert privacy.auc(-s, m) == 0.0 and privacy.tpr_at_fpr(-s, m, 0.5) == 0.0
  with pytest.raises(ValueError, match='both members and non-members'):
    privacy.auc(s, np.ones_like(m))


# ---------------------------------------------------------------------------- the signals
def test_logit_confidence_is_stable_and_exact():
  z32 = np.array([[100.0, 0.0, 0.0], [30.0, -30.0, 5.0]], np.float32)
  p = np.asarray(jax.nn.softmax(jnp.asarray(z32), axis=-1))
  assert p[0, 0] == 1.0                          # p_y rounds to 1 in float32
  conf = privacy.logit_confidence(z32, np.array([0, 0]))
  assert np.all(np.isfinite(conf))
  assert conf[0] == pytest.approx(100.0 - np.log(2.0))
  rng = np.random.default_rng(2)
  z = rng.normal(0, 3, (50, 7))
  y = rng.integers(0, 7, 50)
  p = special.softmax(z, axis=1)[np.arange(50), y]
  np.testing.assert_allclose(privacy.logit_confidence(z, y), np.log(p / (1 - p)), rtol=1e-9)
  np.testing.assert_allclose(privacy.per_example_loss(z, y), -np.log(p), rtol=1e-9)
  np.testing.assert_allclose(privacy.per_example_loss(z, np.eye(7)[y]), -np.log(p), rtol=1e-9)
  np.testing.assert_array_equal(privacy.loss_threshold_scores([1.0, 2.0]), [-1.0, -2.0])
  f = privacy.attack_features(z, y)
  assert f.shape == (50, 2 + 14) and np.all(np.diff(f[:, 2:9], axis=1) <= 0)


# -------------------------------------------------------- attacks on a network that memorised
def _train_mlp(x, y, key, steps=400):
  """A 2-layer ReLU MLP (256 hidden) fitted full-batch with Adam: it memorises random labels."""
  k1, k2 = jax.random.split(key)
  params = {'w1': jax.random.normal(k1, (x.shape[1], 256)) / np.sqrt(x.shape[1]),
            'b1': jnp.zeros(256), 'w2': jax.random.normal(k2, (256, 10)) / 16.0,
            'b2': jnp.zeros(10)}
  apply = lambda p, a: jax.nn.relu(a @ p['w1'] + p['b1']) @ p['w2'] + p['b2']
  opt = optax.adam(3e-3)

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

  @jax.jit
  def run(p):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = opt.update(g, s)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0]

  params = run(params)
  return lambda a: np.asarray(apply(params, jnp.asarray(a)))


def _points(rng, n):
  return rng.normal(size=(n, 32)).astype(np.float32), rng.integers(0, 10, n)


def test_attacks_expose_memorised_members_and_not_unseen_ones():
  rng = np.random.default_rng(3)
  (x_m, y_m), (x_n, y_n) = _points(rng, 64), _points(rng, 64)
  net = _train_mlp(jnp.asarray(x_m), jnp.asarray(y_m), jax.random.PRNGKey(0))
  assert np.mean(net(x_m).argmax(-1) == y_m) == 1.0          # memorised the random labels
  scores = privacy.attack_scores(net(x_m), y_m, net(x_n), y_n, ('loss', 'lr', 'mlp'), seed=0)
  rep = privacy.attack_report(scores)
  for attack in ('loss', 'lr', 'mlp'):
    assert rep[attack]['auc'] > 0.9, (attack, rep[attack])
  assert rep['loss']['tpr_at_1pct_fpr'] > 0.5

  # a network trained on other data: neither group is its training data -> chance
  (x_o, y_o), (x_a, y_a), (x_b, y_b) = _points(rng, 64), _points(rng, 500), _points(rng, 500)
  other = _train_mlp(jnp.asarray(x_o), jnp.asarray(y_o), jax.random.PRNGKey(1))
  scores = privacy.attack_scores(other(x_a), y_a, other(x_b), y_b, ('loss', 'lr', 'mlp'), seed=0)
  for attack, row in privacy.attack_report(scores).items():
    assert abs(row['auc'] - 0.5) < 0.1, (attack, row)


def test_learned_attack_scores_each_example_out_of_fold():
  """On pure-noise features (100 of them, 160 examples) a classifier fitted on all examples
  separates members from non-members in sample; scored out of fold it is at chance."""
  rng = np.random.default_rng(4)
  f_m, f_n = rng.normal(0, 1, (80, 100)), rng.normal(0, 1, (80, 100))
  for model in ('lr', 'mlp'):
    s_m, s_n = privacy.learned_attack_scores(f_m, f_n, seed=0, folds=2, model=model)
    assert s_m.shape == (80,) and s_n.shape == (80,) and np.all((s_m >= 0) & (s_m <= 1))
    assert abs(privacy.auc(*_split(s_m, s_n)) - 0.5) < 0.15, model
  clf = privacy._classifier('lr', 0).fit(np.r_[f_m, f_n], np.r_[np.ones(80), np.zeros(80)])
  in_sample = clf.predict_proba(np.r_[f_m, f_n])[:, 1]
  assert privacy.auc(*_split(in_sample[:80], in_sample[80:])) > 0.9
  np.testing.assert_array_equal(
      s_m, privacy.learned_attack_scores(f_m, f_n, seed=0, folds=2, model='mlp')[0])  # seeded
  with pytest.raises(ValueError, match='folds'):
    privacy.learned_attack_scores(f_m, f_n, seed=0, folds=1)


# ----------------------------------------------------------------------------------- LiRA
def test_lira_offline_on_gaussians():
  rng = np.random.default_rng(5)
  n, shadows = 2000, 8
  mu = rng.normal(0, 3, 2 * n)                  # examples differ a lot in their typical conf
  out = mu + rng.normal(0, 1, (shadows, 2 * n))
  is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
  shifted = mu + rng.normal(0, 1, 2 * n) + 3.0 * is_member
  z = privacy.lira_offline_scores(shifted, out)
  assert privacy.auc(z, is_member) > 0.9
  # the per-example calibration is what helps: the raw confidence ranks far worse
  assert privacy.auc(shifted, is_member) < privacy.auc(z, is_member) - 0.1
  z_per = privacy.lira_offline_scores(shifted, out, global_std=False)
  assert privacy.auc(z_per, is_member) > 0.9
  unshifted = mu + rng.normal(0, 1, 2 * n)
  assert abs(privacy.auc(privacy.lira_offline_scores(unshifted, out), is_member) - 0.5) < 0.05
  with pytest.raises(ValueError, match='at least 2'):
    privacy.lira_offline_scores(shifted, out[:1])


def test_lira_through_attack_scores_uses_shadow_logits():
  rng = np.random.default_rng(6)
  k, m = 5, 300
  y = rng.integers(0, k, 2 * m)
  base = rng.normal(0, 2, (2 * m, k))
  shadow = base[None] + rng.normal(0, 0.5, (6, 2 * m, k))
  target = base + rng.normal(0, 0.5, (2 * m, k))
  target[np.arange(m), y[:m]] += 4.0            # members: the target is surer of their label
  scores = privacy.attack_scores(target[:m], y[:m], target[m:], y[m:], ('lira',),
                                 shadow_logits=shadow)
  assert privacy.attack_report(scores)['lira']['auc'] > 0.9
  with pytest.raises(ValueError, match='shadow'):
    privacy.attack_scores(target[:m], y[:m], target[m:], y[m:], ('lira',))


# ------------------------------------------------------------------------------------ axis
def test_split_is_disjoint_balanced_and_checked():
  from ddjax.suite.builtin import privacy as axis
  y = np.repeat(np.arange(3), 50)
  parts = axis.split(y, 3, 30, seed=0)
  assert set(parts['members']).isdisjoint(parts['nonmembers'])
  assert set(parts['members']).isdisjoint(parts['pool'])
  assert set(parts['nonmembers']).isdisjoint(parts['pool'])
  assert len(parts['members']) + len(parts['nonmembers']) + len(parts['pool']) == 150
  for name in ('members', 'nonmembers'):
    np.testing.assert_array_equal(np.bincount(y[parts[name]]), [10, 10, 10])
  chunk = axis.shadow_chunk(y, parts['pool'], 10, 3, 0, 1)
  assert set(chunk) <= set(parts['pool']) and np.all(np.bincount(y[chunk]) == 10)
  np.testing.assert_array_equal(parts['members'], axis.split(y, 3, 30, seed=0)['members'])
  with pytest.raises(ValueError, match='at most 48'):
    axis.split(y, 3, 60, seed=0)


def test_isolated_keeps_caches_per_chunk():
  from ddjax import config as config_lib
  from ddjax.suite.builtin import privacy as axis
  cfg = config_lib.method_config('rded')
  out = axis.isolated(cfg, '/x/chunk')
  assert out.observer.dir == '/x/chunk/observer' and out.expert.dir == '/x/chunk/experts'
  assert out.bilp.score_dir == '/x/chunk/scores' and cfg.observer.dir == ''
  cfg.observer.checkpoint = '/mine'
  assert axis.isolated(cfg, '/x/chunk').observer.dir == ''   # the user's own observer, as given


def test_axis_end_to_end_on_tiny_data(tmp_path):
  """A random-subset 'method' on a 3-class toy problem: the set is distilled from the members
  only, every network is a unit, the report, plot and summary are written, and a second call
  reads the finished axis back."""
  from ddjax.config import method_config
  from ddjax.runtime import pipeline
  from ddjax.suite.runner import evaluate_set
  from ddjax.suite.sets import load_set
  x_tr, y_tr, x_te, y_te = make_tiny_arrays(per_class=60, test_per_class=20)
  npz = tmp_path / 'tiny.npz'
  np.savez(npz, x_train=(x_tr[..., 0] * 255).astype(np.uint8), y_train=y_tr,
           x_test=(x_te[..., 0] * 255).astype(np.uint8), y_test=y_te)
  cfg = method_config('random_subset')
  cfg.data.name, cfg.data.dir = 'npz', str(npz)
  cfg.eval.model.width, cfg.eval.model.depth = 8, 2
  cfg.eval.num_models = 0                      # the judged set's own evaluation: not needed
  cfg.distill.ipc = 2
  workdir = tmp_path / 'set'
  pipeline.run(cfg, str(workdir))
  out = tmp_path / 'suite'
  overrides = {'num_models': 1, 'max_steps': 30, 'privacy.members': 45, 'privacy.targets': 1,
               'privacy.shadows': 2, 'cache_dir': str(tmp_path / 'cache')}
  res = evaluate_set(str(workdir), str(out), axes='privacy', overrides=overrides)
  r = res['axes']['privacy']
  assert r['members'] == r['nonmembers'] == 45 and r['pool'] == 180 - 90
  assert r['attacks'] == ['loss', 'lr', 'mlp', 'lira']
  for c in ('set', 'real'):
    for a in r['attacks']:
      row = r['results'][c]['attacks'][a]
      assert 0.0 <= row['auc'] <= 1.0 and 0.0 <= row['tpr_at_0.1pct_fpr'] <= row[
          'tpr_at_1pct_fpr'] <= 1.0
    assert 0.0 <= r['results'][c]['acc_mean'] <= 1.0
  assert r['false_positives_allowed'] == {'tpr_at_1pct_fpr': 0, 'tpr_at_0.1pct_fpr': 0}
  # the target set was made from the members only: each of its images is a member's
  made = load_set(str(out / 'privacy' / 'distil_members'))
  from ddjax.suite.builtin.privacy import split
  parts = split(y_tr, 3, 45, seed=0)
  pixels = ((x_tr[..., 0] * 255).astype(np.uint8) / 255.0).reshape(len(y_tr), -1)
  members, others = pixels[parts['members']], pixels[np.r_[parts['nonmembers'], parts['pool']]]
  for img in made.x_pixels.reshape(len(made.x_pixels), -1):
    assert np.abs(members - img).sum(1).min() < 1e-3
    assert np.abs(others - img).sum(1).min() > 1e-3
  units = out / 'units' / 'privacy'
  assert sorted(os.listdir(units)) == ['real', 'set', 'shadow_real']
  assert len(os.listdir(units / 'shadow_real')) == 2
  report = (out / 'report.md').read_text()
  assert 'LiRA offline' in report and 'zero false positives' in report
  assert (out / 'privacy' / 'privacy_roc.png').stat().st_size > 0
  from ddjax.suite.axes import get_axis
  summary = get_axis('privacy').summary(r)
  assert set(summary) == {'mia_auc', 'mia_tpr@0.1%', 'mia_auc[real]'}
  again = evaluate_set(str(workdir), str(out), axes='privacy', overrides=overrides)
  assert again['axes']['privacy']['results'] == r['results']
