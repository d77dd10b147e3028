"""The evaluation stage of a run: networks trained from scratch on the (decoded) synthetic set under
the configured protocol, FRePo's KRR predictor on their features, and optionally KRR with the
infinite-width kernel of cfg.kernel."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import config as config_lib
from ddjax import registry
from ddjax.augment.dsa import strategy_from_config
from ddjax.data.prepared import PreparedData
from ddjax.evaluate import evaluate_synthetic, get_protocol, kernel_krr_accuracy
from ddjax.kernels.architectures import kernel_fn_from_config
from ddjax.models import from_config

KEY_EVAL = 3      # the purpose folded into the root key for evaluation (ddjax.runtime.pipeline)


def _log(line: str) -> None:
  print('[eval] ' + line, flush=True)


def train_from_scratch(cfg: ml_collections.ConfigDict, data: PreparedData, syn: dict) -> dict:
  """Train eval.num_models fresh eval.model networks on `syn` under the configured protocol
  (eval.protocol, 'auto' = the method's; DSA on when dsa.strategy is)."""
  overrides = {k: cfg.eval[k] for k in ('steps', 'batch_size', 'lr') if cfg.eval[k]}
  strategy = strategy_from_config(cfg)
  if strategy:
    overrides['dsa_strategy'] = strategy     # DSA / DM evaluate with DSA
  protocol = get_protocol(config_lib.eval_protocol(cfg), int(syn['x'].shape[0]), **overrides)
  model = from_config(cfg.eval.model, data.num_classes)
  _log(f'protocol {protocol.name}: {protocol.steps} steps, batch {protocol.batch_size}, '
       f'{cfg.eval.num_models} models')
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_EVAL)
  out = evaluate_synthetic(key, model, jnp.asarray(syn['x']), jnp.asarray(syn['y']),
                           data.x_test, data.y_test, protocol, num_models=cfg.eval.num_models,
                           krr=cfg.eval.krr, krr_reg=registry.get(cfg.method).krr_reg(cfg),
                           progress=_log)
  out['protocol'] = protocol.name
  out['steps'] = protocol.steps
  return out


def kernel_krr(cfg: ml_collections.ConfigDict, data: PreparedData, syn: dict) -> dict:
  """KRR test accuracy with the infinite-width kernel of cfg.kernel, at the method's
  regulariser, on eval.kernel_krr_test test images (0: all)."""
  n_test = cfg.eval.kernel_krr_test or len(data.y_test)
  idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(data.y_test))[:n_test])
  reg = registry.get(cfg.method).krr_reg(cfg)
  k = cfg.kernel
  _log(f'kernel KRR: {k.arch}-{k.depth} {k.kind}, {n_test} test images')
  t0 = time.perf_counter()
  acc = kernel_krr_accuracy(kernel_fn_from_config(k), syn['x'], syn['y'], data.x_test[idx],
                            data.y_test[idx], get=k.kind, reg=reg, progress=_log)
  return {'acc': acc, 'kernel': f'{k.arch}-{k.depth}', 'get': k.kind, 'reg': reg,
          'test_images': int(n_test), 'seconds': time.perf_counter() - t0}


def evaluate(cfg: ml_collections.ConfigDict, data: PreparedData, syn: dict) -> dict:
  """The results entries of every evaluation the config asks for ('eval', 'krr_eval',
  'kernel_krr_eval'), each printed as it finishes."""
  results = {}
  if cfg.eval.num_models > 0:
    ev = train_from_scratch(cfg, data, syn)
    results['eval'] = {k: ev[k] for k in ('accs', 'acc_mean', 'acc_std', 'protocol', 'steps')}
    line = f'test accuracy {100 * ev["acc_mean"]:.2f} +- {100 * ev["acc_std"]:.2f} %'
    if 'krr_acc' in ev:
      results['krr_eval'] = {'acc': ev['krr_acc'], 'accs': ev['krr_accs'],
                             'acc_std': ev['krr_acc_std']}
      line += f', KRR predictor {100 * ev["krr_acc"]:.2f} %'
    _log(line)
  if cfg.eval.kernel_krr:
    results['kernel_krr_eval'] = kernel_krr(cfg, data, syn)
    _log(f'kernel KRR accuracy {100 * results["kernel_krr_eval"]["acc"]:.2f} %')
  return results
