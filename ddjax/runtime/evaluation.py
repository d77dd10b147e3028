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
from ddjax import data as data_lib
from ddjax import registry
from ddjax.augment.dsa import strategy_from_config
from ddjax.augment.frepo import frepo_strategy_for
from ddjax.data.prepared import PreparedData
from ddjax.evaluate import evaluate_synthetic, get_protocol, kernel_krr_accuracy
from ddjax.kernels.architectures import kernel_fn_from_config
from ddjax.models import from_config
from ddjax.infra import distributed

PIXEL_TOLERANCE = 1e-3   # float round-off of preprocessing and its inverse, in pixel units
KEY_EVAL = 3      # the purpose folded into the root key for evaluation (ddjax.runtime.pipeline)


def _log(line: str) -> None:
  print('[eval] ' + line, flush=True)


def _overrides(cfg: ml_collections.ConfigDict, keys=('batch_size', 'lr')) -> dict:
  """The eval.* protocol overrides that are set (0 = the protocol's own rule)."""
  return {k: cfg.eval[k] for k in keys if cfg.eval[k]}


def soft_label_eval(cfg: ml_collections.ConfigDict, data: PreparedData,
                    syn: dict) -> tuple[dict, str]:
  """The 'rded' protocol: eval.num_models students trained on the observer's online soft labels
  (`ddjax.evaluate.soft_labels`; the observer of cfg.observer, trained or reused by
  `ddjax.evaluate.observer.get_observer`), eval.soft_label_epochs epochs, the set's patch factor
  from its method (`registry.Method.patch_factor`; 1 for unstitched sets). Returns (results
  entries 'eval' and 'observer', the summary line)."""
  from ddjax.evaluate import observer as observer_lib
  from ddjax.evaluate import soft_labels
  factor = int(registry.get(cfg.method).patch_factor(cfg, tuple(data.x_train.shape[1:])))
  protocol = get_protocol('rded', int(syn['x'].shape[0]), data.num_classes, **_overrides(cfg),
                          epochs=int(cfg.eval.soft_label_epochs), patch_factor=factor)
  obs = observer_lib.get_observer(cfg, data)
  reading = soft_labels.observer_agreement(obs, syn['x'], syn['y'], data.num_classes)
  _log(f'the observer puts {100 * reading["agreement"]:.1f} % of the set in its labels\' '
       f'classes; images per class it reads: {reading["class_counts"]}')
  model = from_config(cfg.eval.model, data.num_classes)
  _log(f'protocol rded: {protocol.epochs} epochs ({protocol.steps} steps), batch '
       f'{protocol.batch_size}, T {protocol.temperature}, patch factor {factor}, '
       f'{cfg.eval.num_models} students')
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_EVAL)
  ev = soft_labels.evaluate_soft_label(key, model, obs, syn['x'], data.x_test, data.y_test,
                                       protocol, cfg.eval.num_models, progress=_log,
                                       members=distributed.own_members(cfg.eval.num_models),
                                       gather=distributed.gather_members)
  keys = ('accs', 'acc_mean', 'acc_std', 'best_last20_accs', 'best_last20_mean',
          'best_last20_std')
  entries = {'eval': {**{k: ev[k] for k in keys}, 'protocol': 'rded', 'steps': protocol.steps,
                      'epochs': protocol.epochs, 'patch_factor': factor},
             'observer': dict(obs.reference(), preprocessing=data.pre.kind,
                              set_agreement=reading['agreement'],
                              set_class_counts=reading['class_counts'])}
  line = (f'test accuracy {100 * ev["acc_mean"]:.2f} +- {100 * ev["acc_std"]:.2f} % (final); '
          f'best over the last 20 % of epochs (RDED\'s reported number) '
          f'{100 * ev["best_last20_mean"]:.2f} %')
  return entries, line


def is_one_hot(y) -> bool:
  """Whether every row of y (n, K) is a one-hot vector (hard labels)."""
  y = np.asarray(y)
  return bool(np.all((y == 0) | (y == 1)) and np.all(y.sum(-1) == 1))


def learned_step_size(cfg: ml_collections.ConfigDict, syn: dict) -> dict:
  """{'lr': the set's learned step size syn['syn_lr']} for the 'tm' protocol (trajectory
  matching evaluates with the step size it learned), unless eval.lr is set."""
  if cfg.eval.lr or 'syn_lr' not in syn:
    return {}
  return {'lr': float(np.asarray(syn['syn_lr']))}


def train_from_scratch(cfg: ml_collections.ConfigDict, data: PreparedData,
                       syn: dict) -> tuple[dict, str]:
  """Train eval.num_models fresh eval.model networks on `syn` under the configured protocol
  (eval.protocol, 'auto' = the method's; DSA on when dsa.strategy is); with several processes
  each trains its share (`distributed.own_members`) and every process gets every network's
  accuracy (`distributed.gather_members`), as the one-process run computes them. Returns
  (results entries 'eval' and, with eval.krr, 'krr_eval'; the summary line)."""
  overrides = _overrides(cfg, ('steps', 'batch_size', 'lr'))
  strategy = strategy_from_config(cfg)
  if strategy:
    overrides['dsa_strategy'] = strategy     # DSA / DM evaluate with DSA
  name = config_lib.eval_protocol(cfg)
  if name == 'frepo':
    overrides['augment_ops'] = frepo_strategy_for(cfg.data.name)   # flip for natural images
  if name == 'tm':
    overrides.update(learned_step_size(cfg, syn))
    overrides['loss'] = 'ce' if is_one_hot(syn['y']) else 'soft_ce'
  protocol = get_protocol(name, int(syn['x'].shape[0]), **overrides)
  model = from_config(cfg.eval.model, data.num_classes)
  _log(f'protocol {protocol.name}: {protocol.steps} steps, batch {protocol.batch_size}, '
       f'lr {protocol.lr:.4g}, loss {protocol.loss}, {cfg.eval.num_models} models')
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_EVAL)
  ev = evaluate_synthetic(key, model, jnp.asarray(syn['x']), jnp.asarray(syn['y']),
                          data.x_test, data.y_test, protocol, num_models=cfg.eval.num_models,
                          krr=cfg.eval.krr, krr_reg=registry.get(cfg.method).krr_reg(cfg),
                          progress=_log, members=distributed.own_members(cfg.eval.num_models),
                          gather=distributed.gather_members,
                          vmap_models=cfg.eval.vmap_models or None)
  entries = {'eval': {**{k: ev[k] for k in ('accs', 'acc_mean', 'acc_std')},
                      'protocol': protocol.name, 'steps': protocol.steps, 'lr': protocol.lr,
                      'loss': protocol.loss}}
  line = f'test accuracy {100 * ev["acc_mean"]:.2f} +- {100 * ev["acc_std"]:.2f} %'
  if 'krr_acc' in ev:
    entries['krr_eval'] = {'acc': ev['krr_acc'], 'accs': ev['krr_accs'],
                           'acc_std': ev['krr_acc_std']}
    line += f', KRR predictor {100 * ev["krr_acc"]:.2f} %'
  return entries, line


# Protocols whose networks need more than the synthetic set (a teacher); the others train on it.
RUNNERS = {'rded': soft_label_eval}


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


def pixel_range(cfg: ml_collections.ConfigDict, data: PreparedData,
                syn: dict) -> tuple[dict, dict]:
  """(syn, report): when eval.clip_pixels says so (`config.clips_pixels`; 'auto': for the 'rded'
  protocol, whose official code reads sets from image files) the set's images clipped to the
  data's pixel range [0, 1] (`ddjax.data.clip_to_pixel_range`), otherwise syn unchanged; the
  report says how far the learned pixels leave [0, 1] (min, max, the fraction of values outside)
  and whether they were clipped. A network trained on the set itself does not mind; a teacher
  trained on real images (the 'rded' protocol's observer) reads values far outside [0, 1] as
  other classes."""
  pixels = np.asarray(data_lib.invert_preprocessor(data.pre, np.asarray(syn['x'])))
  outside = float(np.mean((pixels < -PIXEL_TOLERANCE) | (pixels > 1 + PIXEL_TOLERANCE)))
  clip = config_lib.clips_pixels(cfg)
  report = {'pixel_min': float(pixels.min()), 'pixel_max': float(pixels.max()),
            'outside_fraction': outside, 'clipped': clip}
  if clip:
    syn = dict(syn, x=data_lib.clip_to_pixel_range(data.pre, np.asarray(syn['x'])))
  return syn, report


def evaluate(cfg: ml_collections.ConfigDict, data: PreparedData, syn: dict) -> dict:
  """The results entries of every evaluation the config asks for ('set_pixels', 'eval',
  'krr_eval', 'observer', 'kernel_krr_eval'), each printed as it finishes; every one sees the
  set clipped to [0, 1] when eval.clip_pixels says so (`pixel_range`)."""
  syn, report = pixel_range(cfg, data, syn)
  results = {'set_pixels': report}
  _log(f'set pixels in [{report["pixel_min"]:.2f}, {report["pixel_max"]:.2f}], '
       f'{100 * report["outside_fraction"]:.1f} % outside [0, 1]'
       + (', clipped to [0, 1] (eval.clip_pixels)' if report['clipped'] else ''))
  if cfg.eval.num_models > 0:
    runner = RUNNERS.get(config_lib.eval_protocol(cfg), train_from_scratch)
    entries, line = runner(cfg, data, syn)
    results.update(entries)
    _log(line)
  if cfg.eval.kernel_krr:
    results['kernel_krr_eval'] = kernel_krr(cfg, data, syn)
    _log(f'kernel KRR accuracy {100 * results["kernel_krr_eval"]["acc"]:.2f} %')
  return results
