"""ddjax.scoring: per-sample scores, BiLP's preemptive pruning, ITE and adaptive pruning."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from conftest import make_tiny_arrays
from ddjax.distill.dc import DC
from ddjax.distill.dm import DM
from ddjax.distill.matching import group_by_class
from ddjax.models import build_model
from ddjax.scoring import bilp, ite, per_sample, selection

K = 3
SHAPE = (12, 12, 1)


def _model(width=8, norm='instance'):
  return build_model('convnet', K, depth=2, width=width, norm=norm)


def _leaves_close(a, b, **kw):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for u, v in zip(la, lb):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), **kw)


# -- ITE ------------------------------------------------------------------------------------------
def _pytree_problem(seed=0, b=6):
  rng = np.random.default_rng(seed)
  g = {'a': jnp.asarray(rng.normal(size=(b, 3)), jnp.float32),
       'b': jnp.asarray(rng.normal(size=(b, 2, 2)), jnp.float32)}
  G = jax.tree_util.tree_map(lambda x: x.sum(0), g)
  S = {'u': jnp.asarray(rng.normal(size=(4,)), jnp.float32),
       'v': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  W = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  return g, G, S, W


def test_exact_ite_equals_brute_force_leave_one_out():
  g, G, S, W = _pytree_problem()

  def meta_loss(G, S):  # nonlinear in both
    t = jnp.tanh(G['a'] @ W - S['u'])
    return jnp.sum(t ** 2) * jnp.cos(jnp.sum(G['b']) * S['v'][0]) + jnp.sum(S['v'] ** 2 * G['a'][0])

  got = ite.ite_exact(meta_loss, G, S, g)
  grad_s = jax.jit(jax.grad(meta_loss, argnums=1))
  full = grad_s(G, S)
  for i in range(g['a'].shape[0]):
    # recompute G without sample i from the others, by an explicit sum
    G_i = {k: sum(g[k][j] for j in range(g[k].shape[0]) if j != i) for k in g}
    want = jax.tree_util.tree_map(lambda f, l: f - l, full, grad_s(G_i, S))
    _leaves_close(jax.tree_util.tree_map(lambda a: a[i], got), want, rtol=1e-4, atol=1e-5)
  # chunked evaluation gives the same answer; the score is the norm over the whole pytree
  _leaves_close(ite.ite_exact(meta_loss, G, S, g, chunk_size=4), got, rtol=1e-5, atol=1e-6)
  flat = np.concatenate([np.asarray(got['u']), np.asarray(got['v'])], axis=1)
  np.testing.assert_allclose(ite.ite_score(got), np.linalg.norm(flat, axis=1), rtol=1e-5)
  # the first-order approximation is NOT exact here (so the quadratic test below means something)
  approx = ite.ite_first_order(meta_loss, G, S, g)
  assert np.max(np.abs(np.asarray(approx['u']) - np.asarray(got['u']))) > 1e-3


def test_first_order_ite_is_exact_for_a_quadratic_meta_loss():
  g, G, S, W = _pytree_problem(1, b=8)
  A = jnp.asarray(np.random.default_rng(2).normal(size=(4, 4)), jnp.float32)

  def meta_loss(G, S):  # quadratic in (G, S)
    r = G['a'] @ W - A @ S['u']
    return jnp.sum(r ** 2) + jnp.sum(G['b']) * jnp.sum(S['v']) + jnp.sum(G['b'] ** 2)

  exact = ite.ite_exact(meta_loss, G, S, g)
  meta_grad, approx = ite.ite_first_order(meta_loss, G, S, g, return_meta_grad=True)
  _leaves_close(approx, exact, rtol=1e-4, atol=1e-4)
  _leaves_close(meta_grad, jax.grad(meta_loss, argnums=1)(G, S), rtol=1e-5, atol=1e-6)
  _leaves_close(ite.ite_first_order(meta_loss, G, S, g, chunk_size=3), approx, rtol=1e-5,
                atol=1e-6)
  assert ite.rank_error(ite.ite_score(approx), ite.ite_score(exact)) == 0.0


def test_rank_error_is_bilps_metric():
  assert ite.rank_error([1, 2, 3, 4], [10, 20, 30, 40]) == 0.0
  # reversal of 4: |1-4| + |2-3| + |3-2| + |4-1| = 8, / (4 * 3)
  assert ite.rank_error([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(8 / 12)
  np.testing.assert_array_equal(ite.ranks([0.5, -1.0, 2.0]), [2, 1, 3])


def _class_real(per_class=32):
  x, y, _, _ = make_tiny_arrays(per_class=per_class)
  return jnp.asarray(x[y == 1])


def test_dc_first_order_ite_ranks_like_exact():
  """A real DC problem (ConvNet-2 width 8, 12 x 12, 32 real images per class, IPC 2), through the
  class-batched `additive_ite_scores`: BiLP's rank error between first-order and exact ITE (supp. 8;
  2.7% in the paper), averaged over the 3 classes of 2 fresh networks, stays below 5%."""
  dc = DC(_model(), SHAPE, K, outer_loop=1, inner_loop=1)
  x, y, _, _ = make_tiny_arrays(per_class=32)
  xr = jnp.asarray(np.stack([x[y == c] for c in range(K)]))

  @jax.jit
  def scores(variables, xs, keys):
    form = dc.class_additive_form(variables, xr, xs, keys)
    return ite.additive_ite_scores(form), ite.additive_ite_scores(form, method='exact')

  errors = []
  for seed in range(2):
    xs = jnp.asarray(np.random.default_rng(seed).uniform(size=(K, 2) + SHAPE), jnp.float32)
    approx, exact = scores(dc.fresh_network(jax.random.PRNGKey(seed)), xs,
                           jax.random.split(jax.random.PRNGKey(9), K))
    assert approx.shape == exact.shape == (K, 32)
    for c in range(K):
      assert np.std(np.asarray(exact[c])) > 0.05 * np.mean(np.asarray(exact[c]))  # scores vary
      errors.append(ite.rank_error(approx[c], exact[c]))
  assert np.mean(errors) < 0.05, errors


def test_stored_statistics_sum_to_dcs_batch_gradient():
  """Scoring a whole class, the ITE takes G as the sum of the stored per-sample gradients instead
  of DC's own batch gradient: the two agree (the `Separable` contract G = sum_i g_i), and the
  scores from either are the same."""
  dc = DC(_model(), SHAPE, K, outer_loop=1, inner_loop=1)
  xr = _class_real()
  xs = jnp.asarray(np.random.default_rng(0).uniform(size=(2,) + SHAPE), jnp.float32)
  variables, key = dc.fresh_network(jax.random.PRNGKey(3)), jax.random.PRNGKey(4)

  @jax.jit
  def both(variables, key):
    sep = dc.class_separable(variables, xr, xs, 0, key)
    stored = ite.stored_statistics(sep)
    assert ite.stored_statistics(stored) is stored          # already stored: unchanged
    assert jax.tree_util.tree_leaves(stored.g)[0].shape[0] == xr.shape[0]
    return (sep.G, stored.G, ite.ite_score(ite.ite_first_order(*stored.problem)),
            ite.ite_score(ite.ite_first_order(*sep.problem)))

  G, G_sum, from_sum, from_batch = both(variables, key)
  scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree_util.tree_leaves(G))
  assert scale > 0
  for a, b in zip(jax.tree_util.tree_leaves(G_sum), jax.tree_util.tree_leaves(G)):
    np.testing.assert_allclose(a, b, atol=1e-5 * scale)
  np.testing.assert_allclose(from_sum, from_batch, rtol=1e-4)


def test_dm_first_order_ite_equals_exact():
  """DM's meta-loss is quadratic in G: first-order ITE is exact, rank error 0 (up to float ties)."""
  dm = DM(_model(), SHAPE, K, dsa_strategy='')
  xr = _class_real()
  xs = jnp.asarray(np.random.default_rng(0).uniform(size=(2,) + SHAPE), jnp.float32)

  @jax.jit
  def both(variables, key):
    p = dm.class_separable(variables, xr, xs, key).problem
    return ite.ite_first_order(*p), ite.ite_exact(*p)

  approx, exact = both(dm.fresh_network(jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
  scale = float(jnp.max(jnp.abs(exact)))
  np.testing.assert_allclose(approx, exact, atol=1e-4 * scale)
  assert ite.rank_error(ite.ite_score(approx), ite.ite_score(exact)) < 0.05


def test_adapters_match_the_distillers_meta_loss_with_dsa():
  """The adapters' L(G, S) is the distillers' class distance, with the same DSA draw on both sides
  (a different key changes it); DM's class-batched scores equal its per-class problems."""
  ipc, per_class = 2, 6
  rng = np.random.default_rng(3)
  labels = np.repeat(np.arange(K), per_class)
  rng.shuffle(labels)
  x = rng.uniform(size=(len(labels),) + SHAPE).astype(np.float32)
  batch = {'x': jnp.asarray(x), 'y': jnp.asarray(np.eye(K, dtype=np.float32)[labels])}
  syn_x = jnp.asarray(rng.uniform(size=(K * ipc,) + SHAPE), jnp.float32)
  syn = {'x': syn_x, 'y': jnp.asarray(np.eye(K, dtype=np.float32).repeat(ipc, 0))}
  xr = group_by_class(batch['x'], jnp.asarray(labels), K)
  xs = syn_x.reshape((K, ipc) + SHAPE)
  key = jax.random.PRNGKey(4)

  model = build_model('convnet', K, depth=1, width=4, norm='instance')   # cheap to compile
  c = 2

  dc = DC(model, SHAPE, K, outer_loop=1, inner_loop=1, dsa_strategy='scale')
  state = dc.init(None, jax.random.PRNGKey(5))
  keys = jax.random.split(key, K)
  ps_loss = jax.jit(dc.per_class)(syn, state, batch, key).loss

  @jax.jit
  def dc_class(k):
    p = dc.class_separable(state.variables, xr[c], xs[c], c, k).problem
    return p.meta_loss(p.G, p.S)

  loss_c = dc_class(keys[c])
  np.testing.assert_allclose(float(loss_c), float(ps_loss[c]) / K, rtol=1e-4)
  assert abs(float(dc_class(keys[0])) - float(loss_c)) > 1e-4    # another DSA draw differs

  dm = DM(model, SHAPE, K, dsa_strategy='scale')
  k_net, k_aug = jax.random.split(key)
  variables = dm.fresh_network(k_net)
  keys = jax.random.split(k_aug, K)
  ps_loss = jax.jit(dm.per_class)(syn, (), batch, key).loss

  @jax.jit
  def dm_class(k):
    p = dm.class_separable(variables, xr[c], xs[c], k).problem
    return p.meta_loss(p.G, p.S), ite.ite_score(ite.ite_first_order(*p))

  loss_c, score_c = dm_class(keys[c])
  np.testing.assert_allclose(float(loss_c), float(ps_loss[c]) / K, rtol=1e-4)
  batched = jax.jit(lambda: ite.additive_ite_scores(dm.class_additive_form(variables, xr, xs,
                                                                              keys)))()
  np.testing.assert_allclose(batched[c], score_c, rtol=1e-4, atol=1e-7)


def test_masked_statistic_is_the_mean_over_kept_samples():
  h = jnp.arange(12.0).reshape(4, 3)
  g = h / 4                                   # per-sample terms of a batch mean
  mask = jnp.array([True, False, True, False])
  np.testing.assert_allclose(ite.masked_statistic(g, mask), h[np.array([0, 2])].mean(0))


# -- adaptive pruning -----------------------------------------------------------------------------
@pytest.mark.parametrize('mode', selection.MODES)
def test_quantile_window_keeps_one_minus_beta_of_the_gaussian(mode):
  mu, sigma, beta = 2.0, 0.5, 0.3
  s = mu + sigma * jax.random.normal(jax.random.PRNGKey(0), (100_000,))
  mask = np.asarray(selection.quantile_window(s, jnp.float32(mu), jnp.float32(sigma ** 2), beta,
                                              mode))
  assert abs(mask.mean() - (1 - beta)) < 0.01
  s = np.asarray(s)
  if mode == 'drop_large':
    assert s[mask].max() < np.quantile(s, 0.72) and s[~mask].min() > np.quantile(s, 0.68)
  elif mode == 'drop_small':
    assert s[mask].min() > np.quantile(s, 0.28) and s[~mask].max() < np.quantile(s, 0.32)
  else:  # both tails, 15% each
    assert (s[~mask] < mu).mean() == pytest.approx(0.5, abs=0.02)
    assert s[mask].min() > np.quantile(s, 0.13) and s[mask].max() < np.quantile(s, 0.87)


def test_quantile_window_always_keeps_a_sample():
  s = jnp.array([10.0, 11.0, 12.0])           # all far outside N(0, 1)'s window
  np.testing.assert_array_equal(selection.quantile_window(s, 0.0, 1.0, 0.3), [True, False, False])
  np.testing.assert_array_equal(selection.quantile_window(s, 11.0, 0.0, 0.3), [True] * 3)


def test_running_statistics_converge_and_first_batch_initialises():
  state = selection.init_state(256)
  first = jnp.array(np.random.default_rng(0).normal(5.0, 2.0, 256), jnp.float32)
  state = selection.update_statistics(state, first, 0.1)
  np.testing.assert_allclose(state.mean, np.mean(first), rtol=1e-5)
  np.testing.assert_allclose(state.var, np.var(first, ddof=1), rtol=1e-4)
  update = jax.jit(lambda st, s: selection.update_statistics(st, s, 0.1))
  means, variances = [], []
  for i in range(300):
    batch = 3.0 + 1.5 * jax.random.normal(jax.random.PRNGKey(i), (256,))
    state = update(state, batch)
    means.append(float(state.mean))
    variances.append(float(state.var))
  assert int(state.count) == 301
  assert abs(np.mean(means[-100:]) - 3.0) < 0.03
  assert abs(np.mean(variances[-100:]) - 2.25) < 0.05


def test_lazy_selection_changes_the_mask_only_every_k_steps():
  k, b = 10, 64
  sel = selection.adaptive_pruning(beta=0.3, momentum=0.1, every=k)
  calls = []

  def score_fn(step):
    jax.debug.callback(lambda s: calls.append(int(s)), step)
    return jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), step), (b,))

  update = jax.jit(lambda st, step: sel.update(st, lambda: score_fn(step), step))
  state = sel.init(b)
  masks, counts = [], []
  for step in range(35):
    state = update(state, step)
    masks.append(np.asarray(state.mask))
    counts.append(int(state.count))
  jax.effects_barrier()
  assert calls == [0, 10, 20, 30]              # scores computed only when reselecting
  for step in range(1, 35):
    if step % k:
      np.testing.assert_array_equal(masks[step], masks[step - 1])
      assert counts[step] == counts[step - 1]
    else:
      assert not np.array_equal(masks[step], masks[step - 1])
      assert counts[step] == counts[step - 1] + 1
  assert 0.5 < masks[-1].mean() < 0.9
  # an array of scores works too, and the state is a checkpointable pytree
  state2 = sel.update(sel.init(b), jnp.arange(b, dtype=jnp.float32), 0)
  assert len(jax.tree_util.tree_leaves(state2)) == 4
  assert not state2.mask[0] and not state2.mask[-1] and state2.mask[b // 2]


# -- per-sample scores ----------------------------------------------------------------------------
def _trained_like():
  model = _model(norm='none')
  x, y, _, _ = make_tiny_arrays(per_class=7)   # 21 examples
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), train=False)
  return model, variables, x, y


def test_score_dataset_matches_per_sample_loops():
  model, variables, x, y = _trained_like()
  got = per_sample.score_dataset(model, variables, x, y,
                                 ('loss', 'el2n', 'entropy', 'margin', 'correct', 'grand'),
                                 batch_size=8)
  logits = np.asarray(model.apply(variables, jnp.asarray(x), train=False)[0], np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  n = len(y)
  np.testing.assert_allclose(got['loss'], -np.log(p[np.arange(n), y]), rtol=1e-4)
  np.testing.assert_allclose(got['el2n'], np.linalg.norm(p - np.eye(K)[y], axis=1), rtol=1e-4)
  np.testing.assert_allclose(got['entropy'], -(p * np.log(p)).sum(1), rtol=1e-4)
  other = np.where(np.eye(K, dtype=bool)[y], -np.inf, logits).max(1)
  np.testing.assert_allclose(got['margin'], logits[np.arange(n), y] - other, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_array_equal(got['correct'], logits.argmax(1) == y)

  def loss(params, xi, yi):
    lo, _ = model.apply({'params': params}, xi[None], train=False)
    return optax.softmax_cross_entropy_with_integer_labels(lo, jnp.asarray([yi]))[0]

  grad = jax.jit(jax.grad(loss))
  want = [np.sqrt(sum(float(jnp.sum(a ** 2)) for a in jax.tree_util.tree_leaves(
      grad(variables['params'], jnp.asarray(x[i]), int(y[i]))))) for i in range(n)]
  np.testing.assert_allclose(got['grand'], want, rtol=1e-4)
  # one-hot labels give the same scores
  onehot = per_sample.score_dataset(model, variables, x, np.eye(K)[y], ('loss',), batch_size=8)
  np.testing.assert_allclose(onehot['loss'], got['loss'], rtol=1e-6)


def test_forgetting_events_hand_example():
  correct = np.array([[1, 0, 1, 0],
                      [0, 0, 1, 1],
                      [1, 0, 0, 0],
                      [0, 0, 1, 1]], bool)   # (epochs, N)
  # sample 0: 1->0, 1->0 = 2; sample 1: never learned = 0; sample 2: 1->0 once; sample 3: 1->0 once
  np.testing.assert_array_equal(per_sample.forgetting_events(correct), [2, 0, 1, 1])
  np.testing.assert_array_equal(per_sample.never_learned(correct), [False, True, False, False])
  np.testing.assert_array_equal(per_sample.forgetting_events(np.stack([correct, correct])),
                                [[2, 0, 1, 1]] * 2)


def test_score_trials_records_per_epoch_scores():
  x, y, _, _ = make_tiny_arrays(per_class=20)   # 60 images
  x = x[:, 2:10, 2:10]                          # 8 x 8
  model = build_model('convnet', K, depth=1, width=8, norm='none')
  lines = []
  out = per_sample.score_trials(jax.random.PRNGKey(0), model, x, y, num_trials=2, epochs=2,
                                batch_size=16, learning_rate=1e-2, progress=lines.append)
  assert out['loss'].shape == out['el2n'].shape == out['correct'].shape == (2, 2, 60)
  assert out['correct'].dtype == bool and out['forgetting'].shape == (2, 60)
  np.testing.assert_array_equal(out['forgetting'], per_sample.forgetting_events(out['correct']))
  assert len(lines) == 4 and 'trial 2/2 epoch 2/2' in lines[-1]
  # trials are different networks; each epoch's loss is the scores of the trained net
  assert not np.allclose(out['loss'][0], out['loss'][1])
  assert out['loss'][:, -1].mean() < np.log(K)
  # loss, EL2N and correctness come from the same predictions: p_y > 1/2 implies correct, and
  # EL2N >= 1 - p_y (the label coordinate alone)
  p_y = np.exp(-out['loss'])
  assert np.all(out['correct'][p_y > 0.5])
  assert np.all(out['el2n'] >= 1 - p_y - 1e-5)


def test_score_trials_together_equal_trials_one_at_a_time():
  # 3 trials in a group of 2 and one alone (one vmapped step for the group) record what each
  # trial records when trained alone; batch norm's statistics travel with each network (FRePo's
  # placement: no conv bias cancelled by a norm, whose zero gradient's rounding noise Adam would
  # turn into lr-sized steps that differ between any two float orders).
  x, y, _, _ = make_tiny_arrays(per_class=20)
  x = x[:, 2:10, 2:10]
  model = build_model('convnet', K, depth=2, width=8, norm='batch', norm_placement='frepo')
  run = lambda together: per_sample.score_trials(jax.random.PRNGKey(1), model, x, y,
                                                 num_trials=3, epochs=2, batch_size=16,
                                                 learning_rate=1e-2, together=together)
  alone, grouped = run(1), run(2)
  assert not np.allclose(alone['loss'][0], alone['loss'][1])
  np.testing.assert_allclose(grouped['loss'], alone['loss'], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grouped['el2n'], alone['el2n'], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(grouped['correct'], alone['correct'])
  with pytest.raises(ValueError, match='together'):
    run(-1)


# -- BiLP preemptive pruning ----------------------------------------------------------------------
@pytest.mark.parametrize('mode', ['reflect', 'mirror', 'nearest', 'wrap', 'constant'])
@pytest.mark.parametrize('epochs', [5, 40])
def test_gaussian_smooth_matches_scipy(mode, epochs):
  curve = np.random.default_rng(epochs).normal(size=(epochs, 7)).astype(np.float32)
  want = ndimage.gaussian_filter1d(curve.astype(np.float64), 3.0, axis=0, mode=mode)
  got = bilp.gaussian_smooth(curve, 3.0, axis=0, mode=mode)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bilp.gaussian_smooth(curve.T, 2.0, mode=mode, truncate=2.5),
                             ndimage.gaussian_filter1d(curve.T.astype(np.float64), 2.0, mode=mode,
                                                       truncate=2.5), rtol=1e-5, atol=1e-6)


def test_empirical_loss_score_is_the_smoothed_trial_mean_at_the_last_epoch():
  loss = np.random.default_rng(0).uniform(size=(4, 12, 9)).astype(np.float32)   # (T, E, N)
  smooth = ndimage.gaussian_filter1d(loss.mean(0).astype(np.float64), 3, axis=0)
  np.testing.assert_allclose(bilp.empirical_loss_score(loss), smooth[-1], rtol=1e-5)
  np.testing.assert_allclose(bilp.empirical_loss_score(loss, epoch=5), smooth[5], rtol=1e-5)


def test_prune_classwise_counts_and_direction():
  rng = np.random.default_rng(0)
  labels = np.repeat([0, 1, 2], [10, 7, 1])
  scores = rng.permutation(18).astype(np.float64)
  kept = bilp.prune_classwise(scores, labels, alpha=0.3)
  assert np.all(np.diff(kept) > 0) and kept.dtype.kind == 'i'
  # ceil(0.7 * n): 10 -> 7, 7 -> 5 (4.9), 1 -> 1 (at least one per class)
  np.testing.assert_array_equal(np.bincount(labels[kept], minlength=3), [7, 5, 1])
  for c in range(2):
    idx = np.flatnonzero(labels == c)
    k = np.isin(idx, kept)
    assert scores[idx][k].max() < scores[idx][~k].min()       # the largest losses are dropped
  small = bilp.prune_classwise(scores, labels, alpha=0.3, direction='drop_smallest')
  for c in range(2):
    idx = np.flatnonzero(labels == c)
    k = np.isin(idx, small)
    assert scores[idx][k].min() > scores[idx][~k].max()
  np.testing.assert_array_equal(bilp.prune_classwise(scores, labels, keep_fraction=0.7), kept)
  r1 = bilp.prune_classwise(None, labels, alpha=0.5, direction='random', key=jax.random.PRNGKey(0))
  r2 = bilp.prune_classwise(None, labels, alpha=0.5, direction='random', key=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(r1, r2)
  np.testing.assert_array_equal(np.bincount(labels[r1], minlength=3), [5, 4, 1])
  one_hot = bilp.prune_classwise(scores, np.eye(3)[labels], alpha=0.3)
  np.testing.assert_array_equal(one_hot, kept)
  with pytest.raises(ValueError, match='exactly one'):
    bilp.prune_classwise(scores, labels)
  with pytest.raises(ValueError, match='key'):
    bilp.prune_classwise(scores, labels, alpha=0.1, direction='random')


def test_stratify_classwise_partitions_each_class_by_descending_score():
  rng = np.random.default_rng(1)
  labels = np.repeat([0, 1, 2], [20, 13, 10])
  scores = rng.normal(size=43)
  strata = bilp.stratify_classwise(scores, labels, num_strata=4)
  assert len(strata) == 4
  np.testing.assert_array_equal(np.sort(np.concatenate(strata)), np.arange(43))  # a partition
  for k, idx in enumerate(strata):
    assert np.all(np.diff(idx) > 0)
    # class-balanced: np.array_split sizes of each class (13 -> 4, 3, 3, 3)
    counts = np.bincount(labels[idx], minlength=3)
    np.testing.assert_array_equal(counts, [5, [4, 3, 3, 3][k], [3, 3, 2, 2][k]])
  for c in range(3):        # within a class, every score of S_k is >= every score of S_{k+1}
    for a, b in zip(strata[:-1], strata[1:]):
      sa, sb = scores[a][labels[a] == c], scores[b][labels[b] == c]
      assert sa.min() >= sb.max()
  np.testing.assert_array_equal(bilp.stratify_classwise(scores, np.eye(3)[labels], 4)[2],
                                strata[2])
  with pytest.raises(ValueError, match='smallest class'):
    bilp.stratify_classwise(scores, labels, num_strata=11)
  with pytest.raises(ValueError, match='NaN'):
    bilp.stratify_classwise(np.full(43, np.nan), labels, 2)


def test_score_cache_round_trip_and_corrupt_file(tmp_path):
  name = bilp.cache_name(dataset='tiny', trials=2, epochs=3, lr=0.01)
  assert '/' not in name and 'trials=2' in name
  calls = []

  def compute():
    calls.append(1)
    return {'loss': np.arange(6, dtype=np.float32).reshape(2, 3), 'score': np.ones(3)}

  first = bilp.cached_scores(str(tmp_path), name, compute)
  second = bilp.cached_scores(str(tmp_path), name, compute)
  assert len(calls) == 1
  for k in first:
    np.testing.assert_array_equal(first[k], second[k])
  assert [f for f in os.listdir(tmp_path) if f.endswith('.tmp')] == []
  assert bilp.load_scores(str(tmp_path), 'other') is None
  path = bilp.cache_path(str(tmp_path), name)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match='delete it'):
    bilp.load_scores(str(tmp_path), name)
  with open(path, 'wb') as f:
    f.write(b'not a zip file')
  with pytest.raises(ValueError, match='delete it'):
    bilp.cached_scores(str(tmp_path), name, compute)


def test_sketched_ite_scores_estimate_the_first_order_scores():
  """The sketch is unbiased for ||ITE_i||^2 (averaged over many probe draws it matches the
  first-order squared scores) and with 512 probes ranks the samples like the first-order ITE."""
  dc = DC(_model(), SHAPE, K, outer_loop=1, inner_loop=1)
  x, y, _, _ = make_tiny_arrays(per_class=24)
  xr = jnp.asarray(x[y == 0])
  xs = jnp.asarray(np.random.default_rng(3).uniform(size=(2,) + SHAPE), jnp.float32)
  variables = dc.fresh_network(jax.random.PRNGKey(0))
  sep = dc.class_separable(variables, xr, xs, 0, jax.random.PRNGKey(5))
  first = np.asarray(jax.jit(lambda S: ite.ite_score(ite.ite_first_order(
      sep.problem.meta_loss, sep.G, S, sep.g)))(sep.S))
  sketch = jax.jit(lambda k, d: ite.ite_sketch_scores(sep.distance, sep.features, sep.G, sep.S,
                                                      sep.g, k, d), static_argnums=1)
  draws = np.stack([np.asarray(sketch(jax.random.PRNGKey(i), 64)) for i in range(16)])
  mean_sq = np.mean(draws ** 2, axis=0)             # 16 x 64 = 1024 probes in all
  np.testing.assert_allclose(mean_sq, first ** 2, rtol=0.2)
  assert ite.rank_error(np.asarray(sketch(jax.random.PRNGKey(99), 512)), first) < 0.05
  # the class-batched entry point is this computation per class (directions from the class key)
  xr3 = jnp.asarray(np.stack([x[y == c] for c in range(K)]))
  xs3 = jnp.asarray(np.random.default_rng(4).uniform(size=(K, 2) + SHAPE), jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(9), K)
  form = dc.class_additive_form(variables, xr3, xs3, keys)
  a = jax.jit(lambda: ite.additive_ite_scores(form, 'sketch', sketch_dim=16))()

  @jax.jit
  def direct():
    sep1 = dc.class_separable(variables, xr3[1], xs3[1], 1, keys[1])
    return ite.ite_sketch_scores(sep1.distance, sep1.features, sep1.G, sep1.S, sep1.g,
                                 jax.random.fold_in(keys[1], 1), 16)

  direct = direct()
  np.testing.assert_allclose(a[1], direct, rtol=1e-3, atol=1e-6)
  with pytest.raises(ValueError, match='sketch'):
    ite.additive_ite_scores(form, 'taylor')
