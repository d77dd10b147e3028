"""KIP and RFAD: wiring of the KRR meta-loss, convergence of RFAD's random features to the NNGP,
Platt scaling, loss decrease, ISA composition, kernel KRR evaluation, configs and the CLI."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY_CLASSES, TINY_SHAPE, make_tiny_arrays, run_shipped
from ddjax import config as config_lib
from ddjax import transforms as T
from ddjax.data import centered_one_hot, init_synthetic
from ddjax.distill import step as step_lib
from ddjax.distill.kip import KIP
from ddjax.distill.rfad import RFAD
from ddjax.evaluate import kernel_krr_accuracy
from ddjax.kernels.architectures import kernel_network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(ipc=2):
  x, y, x_te, y_te = make_tiny_arrays()
  syn = {k: jnp.asarray(v) for k, v in init_synthetic(0, x, y, ipc, TINY_CLASSES).items()}
  batch = {'x': jnp.asarray(x), 'y': jnp.asarray(centered_one_hot(y, TINY_CLASSES))}
  return syn, batch, (x_te, y_te)


def _numpy_krr(k_ss, k_ts, y_s, reg):
  k_ss, k_ts, y_s = (np.asarray(a, np.float64) for a in (k_ss, k_ts, y_s))
  lam = reg * np.trace(k_ss) / k_ss.shape[0]
  return k_ts @ np.linalg.solve(k_ss + lam * np.eye(len(k_ss)), y_s)


def test_kip_prediction_is_krr_with_the_given_kernel_fn():
  """KIP accepts any kernel_fn(x1, x2, get) (here a user's own) and predicts K_TS (K_SS + l I)^-1 Y_S."""
  syn, batch, _ = _data()
  calls = []

  def user_kernel_fn(x1, x2=None, get='ntk'):      # e.g. a neural-tangents kernel_fn
    calls.append(get)
    x2 = x1 if x2 is None else x2
    f1, f2 = x1.reshape(len(x1), -1), x2.reshape(len(x2), -1)
    return jnp.tanh(f1 @ f2.T / f1.shape[1]) + 0.5

  kip = KIP(user_kernel_fn, get='nngp', reg=1e-3)
  ps = kip.per_sample(syn, kip.init(None, syn), batch, None)
  x_s, x_t = np.asarray(syn['x']).reshape(len(syn['x']), -1), np.asarray(batch['x']).reshape(
      len(batch['x']), -1)
  k = lambda a, b: np.tanh(a @ b.T / a.shape[1]) + 0.5
  expect = _numpy_krr(k(x_s, x_s), k(x_t, x_s), syn['y'], 1e-3)
  np.testing.assert_allclose(ps.pred, expect, rtol=2e-3, atol=2e-4)
  np.testing.assert_allclose(ps.loss, 0.5 * np.sum((expect - np.asarray(batch['y'])) ** 2, -1),
                             rtol=5e-3, atol=1e-4)
  assert set(calls) == {'nngp'}


def _run_steps(distiller, syn, batch, transform, steps, lr=1e-2, extra=None):
  opt = step_lib.make_syn_optimizer('adam', lr, lr, steps=steps, schedule='constant',
                                    extra_lrs=extra)
  state = step_lib.init_state(distiller, transform, opt, syn, jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_step(distiller, transform, opt,
                                    jnp.repeat(jnp.arange(TINY_CLASSES), 2)))
  losses = []
  for i in range(steps):
    state, m = step(state, batch, jax.random.PRNGKey(i))
    losses.append(float(m['meta_loss']))
  return state, losses


@pytest.mark.parametrize('transform', ['none', 'isa'])
def test_kip_steps_lower_the_meta_loss(transform):
  syn, batch, _ = _data()
  _, _, kernel_fn = kernel_network('conv', depth=2)
  kip = KIP(kernel_fn, get='ntk')
  tr = T.identity() if transform == 'none' else T.chain(T.drop_easiest(0.2), T.isa(1.0))
  state, losses = _run_steps(kip, syn, batch, tr, 25)
  final = float(jnp.mean(kip.per_sample(state.syn, (), batch, None).loss))
  assert final < 0.6 * losses[0], (losses[0], final)


def test_rfad_random_features_converge_to_the_infinite_width_nngp():
  """W^2 Phi Phi^T + b^2 of M random ConvNets -> the NNGP of the same ConvNet + readout."""
  x = jnp.asarray(make_tiny_arrays()[0][::20])                     # (6, 12, 12, 1)
  x = (x - x.mean()) / x.std()
  _, _, kernel_fn = kernel_network('convnet', depth=2)
  exact = np.asarray(kernel_fn(x, None, 'nngp'))
  errors = {}
  for m, width in ((1, 8), (16, 128)):
    rfad = RFAD(kernel_network('convnet', depth=2, width=width, readout=False), m, TINY_SHAPE)
    approx = np.mean([np.asarray(rfad.kernel(*(2 * [rfad.random_features(
        jax.random.PRNGKey(s), x)]))) for s in range(4)], axis=0)
    errors[m] = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
  assert errors[16] < 0.05, errors
  assert errors[16] < errors[1] / 3, errors


def test_rfad_platt_loss_and_temperature():
  syn, batch, _ = _data()
  syn['log_temp'] = jnp.asarray(0.3)
  rfad = RFAD(kernel_network('convnet', depth=2, width=16, readout=False), 2, TINY_SHAPE,
              loss='platt')
  ps = rfad.per_sample(syn, (), batch, jax.random.PRNGKey(1))
  logits = np.exp(0.3) * np.asarray(ps.pred, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  labels = np.asarray(batch['y']).argmax(-1)
  np.testing.assert_allclose(ps.loss, -logp[np.arange(len(labels)), labels], rtol=1e-4, atol=1e-5)
  # The temperature is learned with the set, and the Platt loss goes down.
  state, losses = _run_steps(rfad, syn, batch, T.drop_easiest(0.2), 30,
                             extra={'log_temp': 1e-1})
  assert float(state.syn['log_temp']) != pytest.approx(0.3, abs=1e-3)
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_rfad_mse_with_isa_lowers_the_loss():
  syn, batch, _ = _data()
  rfad = RFAD(kernel_network('convnet', depth=2, width=16, readout=False), 2, TINY_SHAPE,
              loss='mse')
  _, losses = _run_steps(rfad, syn, batch, T.chain(T.drop_easiest(0.2), T.isa(1.0)), 30)
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_kernel_krr_accuracy_matches_numpy():
  syn, _, (x_te, y_te) = _data(ipc=3)
  _, _, kernel_fn = kernel_network('fc', depth=2)
  acc = kernel_krr_accuracy(kernel_fn, syn['x'], syn['y'], x_te, y_te, get='ntk', reg=1e-4,
                            batch_size=16)    # 90 test images: several blocks and a padded one
  pred = _numpy_krr(kernel_fn(syn['x'], None, 'ntk'), kernel_fn(jnp.asarray(x_te), syn['x'], 'ntk'),
                    syn['y'], 1e-4)
  assert acc == pytest.approx(np.mean(pred.argmax(-1) == y_te), abs=1e-9)
  assert acc > 0.9          # the tiny problem is easy for 3 images per class


def test_kernel_configs_validate_and_reject_isa_with_platt():
  sys.path.insert(0, os.path.join(ROOT, 'configs'))
  import kip, kip_isa, rfad, rfad_isa  # noqa: E401
  for module in (kip, kip_isa, rfad, rfad_isa):
    for preset in ('', 'paper'):
      config_lib.validate(module.get_config(preset))
  assert rfad_isa.get_config().rfad.loss == 'mse'
  assert (kip_isa.get_config().transform.drop_easiest, kip_isa.get_config().transform.isa_eps) \
      == (0.2, 1.0)
  bad = rfad_isa.get_config()
  bad.rfad.loss = 'platt'
  with pytest.raises(ValueError, match="rfad.loss='mse'"):
    config_lib.validate(bad)
  bad = kip.get_config()
  bad.kernel.arch = 'resnet'
  with pytest.raises(ValueError, match="kernel.arch='resnet' is not one of"):
    config_lib.validate(bad)


@pytest.mark.parametrize('config', ['kip_isa', 'rfad'])
def test_end_to_end_kernel_methods(config, tiny_npz, tmp_path):
  workdir = tmp_path / 'run'
  results = run_shipped(config, workdir, {
      'data.name': 'npz', 'data.dir': tiny_npz, 'kernel.depth': 2, 'eval.model.width': 8,
      'eval.model.depth': 2, 'distill.ipc': 2, 'distill.steps': 4, 'distill.batch_size': 30,
      'rfad.width': 8, 'rfad.num_models': 2, 'eval.num_models': 1, 'eval.steps': 10,
      'eval.kernel_krr_test': 40, 'log.every': 2})
  assert results['method'] == config.split('_')[0] and results['distill']['steps'] == 4
  kk = results['kernel_krr_eval']
  assert 0 <= kk['acc'] <= 1 and kk['test_images'] == 40
  assert (workdir / 'distilled.png').exists() and (workdir / 'distilled.npz').exists()


def test_class_balanced_batches():
  from ddjax.runtime.loop import balanced_batch_indices, make_sampler
  labels = np.repeat(np.arange(4), [50, 30, 70, 20])
  for step in range(3):
    idx = balanced_batch_indices(0, step, labels, 42, 4)
    assert len(np.unique(idx)) == 42
    counts = np.bincount(labels[idx], minlength=4)
    assert sorted(counts) == [10, 10, 11, 11], counts
  assert not np.array_equal(balanced_batch_indices(0, 0, labels, 42, 4),
                            balanced_batch_indices(0, 1, labels, 42, 4))
  np.testing.assert_array_equal(balanced_batch_indices(3, 7, labels, 42, 4),
                                balanced_batch_indices(3, 7, labels, 42, 4))
  with pytest.raises(ValueError, match='class 3'):
    balanced_batch_indices(0, 0, labels, 100, 4)
  x = np.arange(len(labels), dtype=np.float32)[:, None]
  batch = make_sampler(x, np.eye(4, dtype=np.float32)[labels], 40, 0, balanced=True)(5)
  np.testing.assert_array_equal(batch['y'].sum(0), [10, 10, 10, 10])
