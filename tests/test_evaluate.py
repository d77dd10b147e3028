"""Evaluation protocols, train-from-scratch, accuracy and the KRR predictor."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.evaluate import (EvalProtocol, accuracy, evaluate_synthetic, frepo_steps, get_protocol,
                            make_schedule, protocol_loss, train_from_scratch, train_networks)
from ddjax.models import build_model


def test_frepo_steps_table():
  table = {1: 1000, 10: 1000, 11: 2000, 100: 2000, 101: 20000, 200: 20000, 201: 5000, 400: 5000,
           500: 5000, 501: 10000, 1000: 10000, 5000: 10000}
  assert {n: frepo_steps(n) for n in table} == table
  with pytest.raises(ValueError):
    frepo_steps(0)


def test_protocol_defaults_and_overrides():
  p = get_protocol('frepo', 100)
  assert (p.optimizer, p.lr, p.weight_decay, p.loss) == ('adam', 3e-4, 0.0, 'mse')
  assert (p.steps, p.warmup_steps, p.batch_size, p.flip) == (2000, 500, 100, False)
  assert get_protocol('frepo', 1000).batch_size == 500
  short = get_protocol('frepo', 10, steps=100)
  assert (short.steps, short.warmup_steps) == (100, 10)
  assert get_protocol('frepo', 10, steps=100, warmup_steps=3).warmup_steps == 3
  d = get_protocol('dc', 500)
  assert (d.optimizer, d.lr, d.momentum, d.weight_decay, d.loss) == ('sgd', 0.01, 0.9, 5e-4, 'ce')
  assert (d.batch_size, d.epochs, d.steps) == (256, 1000, 2000)  # 1000 * ceil(500 / 256)
  assert get_protocol('dc', 10).steps == 1000
  assert get_protocol('dc', 500, epochs=10).steps == 20
  with pytest.raises(ValueError, match='frepo'):
    get_protocol('kip', 10)
  with pytest.raises(ValueError, match='unknown EvalProtocol field'):
    get_protocol('frepo', 10, learning_rate=1.0)
  with pytest.raises(ValueError, match='adam'):
    get_protocol('frepo', 10, optimizer='lamb')
  with pytest.raises(dataclasses.FrozenInstanceError):
    p.lr = 1.0


def test_warmup_cosine_schedule_values():
  p = get_protocol('frepo', 10)  # 1000 steps, warm-up 500
  s = make_schedule(p)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(250)), 1.5e-4, rtol=1e-5)
  np.testing.assert_allclose(float(s(500)), 3e-4, rtol=1e-5)
  np.testing.assert_allclose(float(s(750)), 3e-6 + 0.5 * (3e-4 - 3e-6), rtol=1e-4)
  np.testing.assert_allclose(float(s(1000)), 3e-6, rtol=1e-4)


def test_step_schedule_values():
  p = get_protocol('dc', 10)  # 1000 steps
  s = make_schedule(p)
  np.testing.assert_allclose([float(s(0)), float(s(499)), float(s(500)), float(s(999))],
                             [0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_protocol_losses():
  logits = jnp.array([[1.0, 0.0], [0.0, 3.0]])
  y = jnp.array([[0.5, -0.5], [-0.5, 0.5]])
  mse = protocol_loss(get_protocol('frepo', 2), logits, y)
  np.testing.assert_allclose(mse, 0.5 * ((0.25 + 0.25) + (0.25 + 6.25)) / 2, rtol=1e-6)
  ce = protocol_loss(get_protocol('dc', 2), logits, y)
  expect = -np.mean([np.log(np.e / (np.e + 1)), np.log(np.e ** 3 / (1 + np.e ** 3))])
  np.testing.assert_allclose(ce, expect, rtol=1e-5)


# ----------------------------------------------------------------------------- training


def _toy(seed, n):
  """(x (n, 8, 8, 1), labels (n,)): class 0 bright top half, class 1 bright bottom half."""
  labels = np.arange(n) % 2
  noise = 0.5 * jax.random.normal(jax.random.PRNGKey(seed), (n, 8, 8, 1))
  rows = np.arange(8)[None, :, None, None]
  bright = np.where(labels[:, None, None, None] == 0, rows < 4, rows >= 4)
  return noise + bright - 0.5, labels


X, LABELS = _toy(0, 20)
X_TEST, LABELS_TEST = _toy(1, 400)
Y = jax.nn.one_hot(LABELS, 2) - 0.5  # FRePo's centred one-hot
MODEL = build_model('convnet', 2, depth=2, width=8)
FREPO = get_protocol('frepo', 20, steps=200)
DC = get_protocol('dc', 20, epochs=200)


def test_frepo_protocol_learns_toy_problem():
  variables = train_from_scratch(jax.random.PRNGKey(0), MODEL, X, Y, FREPO)
  assert accuracy(MODEL, variables, X_TEST, LABELS_TEST) >= 0.95
  # Same key, same network; another key, another network.
  again = train_from_scratch(jax.random.PRNGKey(0), MODEL, X, Y, FREPO)
  other = train_from_scratch(jax.random.PRNGKey(1), MODEL, X, Y, FREPO)
  k = ('params', 'head', 'kernel')
  get = lambda v: v[k[0]][k[1]][k[2]]
  np.testing.assert_array_equal(get(variables), get(again))
  assert not np.allclose(get(variables), get(other))


def test_dc_protocol_learns_toy_problem():
  assert DC.steps == 200
  variables = train_from_scratch(jax.random.PRNGKey(0), MODEL, X, Y, DC)
  # accuracy takes one-hot or integer test labels
  assert accuracy(MODEL, variables, X_TEST, jax.nn.one_hot(LABELS_TEST, 2)) >= 0.95


def test_random_label_control_stays_near_chance():
  # Labels independent of the class: within each class, half of the examples get each label.
  # One memorising network's test accuracy varies a lot (0.15-0.7 seen), so average 5 networks.
  rand = np.array([0, 0, 1, 1] * 5)
  assert np.mean(rand == LABELS) == 0.5
  out = evaluate_synthetic(jax.random.PRNGKey(0), MODEL, X, jax.nn.one_hot(rand, 2) - 0.5, X_TEST,
                           LABELS_TEST, FREPO, num_models=5, krr=False)
  assert 0.2 <= out['acc_mean'] <= 0.8
  assert max(out['accs']) < 0.9


def test_evaluate_synthetic_statistics():
  lines = []
  out = evaluate_synthetic(jax.random.PRNGKey(3), MODEL, X, Y, X_TEST, LABELS_TEST, FREPO,
                           num_models=3, krr=True, progress=lines.append)
  accs = out['accs']
  assert len(accs) == 3 and all(0.0 <= a <= 1.0 for a in accs)
  np.testing.assert_allclose(out['acc_mean'], np.mean(accs))
  np.testing.assert_allclose(out['acc_std'], np.std(accs))
  assert len(out['krr_accs']) == 3 and 0.0 <= out['krr_acc'] <= 1.0
  np.testing.assert_allclose(out['krr_acc'], np.mean(out['krr_accs']))
  assert out['acc_mean'] >= 0.95 and out['krr_acc'] >= 0.9
  assert len(lines) == 3 and 'steps/s' in lines[0]


def test_batch_norm_model_trains():
  model = build_model('convnet', 2, depth=2, width=8, norm='batch')
  variables = train_from_scratch(jax.random.PRNGKey(0), model, X, Y, DC)
  stats = variables['batch_stats']['norm0']['var']
  assert not np.allclose(stats, 1.0)  # running statistics were carried through the scan
  assert accuracy(model, variables, X_TEST, LABELS_TEST) >= 0.95


def test_rolled_scan_equals_unrolled_chunks():
  # The accelerator loop (one rolled 200-step scan) and the default loop (on CPU unrolled chunks)
  # train the same network.
  a = train_from_scratch(jax.random.PRNGKey(5), MODEL, X, Y, FREPO, chunk_size=200, unroll=1)
  b = train_from_scratch(jax.random.PRNGKey(5), MODEL, X, Y, FREPO)  # CPU: unrolled chunks
  np.testing.assert_allclose(a['params']['head']['kernel'], b['params']['head']['kernel'],
                             rtol=1e-4, atol=1e-5)


def test_rejects_bad_labels():
  with pytest.raises(ValueError):
    train_from_scratch(jax.random.PRNGKey(0), MODEL, X, LABELS, FREPO)
  assert isinstance(FREPO, EvalProtocol)


# ----------------------------------------------------------------------------- networks together


def _assert_same_networks(together, alone, atol):
  for a, b in zip(together, alone):
    assert sorted(a) == sorted(b)
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = dict(jax.tree_util.tree_leaves_with_path(b))
    assert len(leaves_a) == len(leaves_b)
    for path, leaf in leaves_a:
      np.testing.assert_allclose(leaf, leaves_b[path], rtol=1e-4, atol=atol,
                                 err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('norm', ['none', 'batch'])
def test_networks_trained_together_equal_networks_trained_alone(norm):
  # FRePo's batch-norm ConvNet (norm before the conv, so no conv bias is cancelled by a norm: a
  # cancelled bias has a zero gradient whose rounding noise Adam turns into lr-sized steps).
  model = build_model('convnet', 2, depth=2, width=8, norm=norm, norm_placement='frepo')
  protocol = get_protocol('frepo', 20, steps=12)    # augmentation, warm-up, Adam
  keys = jax.random.split(jax.random.PRNGKey(7), 3)
  together = train_networks(keys, model, X, Y, protocol)
  alone = [train_from_scratch(k, model, X, Y, protocol) for k in keys]
  _assert_same_networks(together, alone, atol=1e-5)
  if norm == 'batch':
    assert not np.allclose(together[1]['batch_stats']['norm1']['var'], 1.0)
  # different keys, different networks: the test can tell networks apart
  assert not np.allclose(together[0]['params']['head']['kernel'],
                         together[1]['params']['head']['kernel'], atol=1e-3)
  logits = lambda v: model.apply(v, X_TEST, train=False)[0]
  for a, b in zip(together, alone):
    np.testing.assert_array_equal(np.argmax(logits(a), -1), np.argmax(logits(b), -1))


def test_evaluate_synthetic_groups_do_not_change_results():
  # 3 networks one at a time, all together, and in groups of 2 (a group of 2, then one alone);
  # a process that owns networks 0 and 2 only gets exactly those networks' accuracies.
  run = lambda **kw: evaluate_synthetic(jax.random.PRNGKey(3), MODEL, X, Y, X_TEST, LABELS_TEST,
                                        get_protocol('dc', 20, epochs=6), num_models=3, **kw)
  lines = []
  alone = run(vmap_models=1)
  assert run(vmap_models=0)['accs'] == alone['accs']
  assert run(vmap_models=2, progress=lines.append)['krr_accs'] == alone['krr_accs']
  assert len(lines) == 3 and '2 networks together' in lines[0] and 'together' not in lines[2]
  assert run(vmap_models=2, members=[0, 2], krr=False)['accs'] == [alone['accs'][0],
                                                                   alone['accs'][2]]
  with pytest.raises(ValueError, match='vmap_models'):
    run(vmap_models=-1)
