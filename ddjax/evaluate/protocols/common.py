"""What the protocols that train on the set itself share (frepo, dc, tm): the eval.* overrides,
and `train_on_set`, which trains eval.num_models fresh eval.model networks on the set, with
several processes each training its share."""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ddjax.augment.dsa import strategy_from_config
from ddjax.evaluate.protocols.base import EvalProtocol, settings_of
from ddjax.evaluate.train import evaluate_synthetic, train_from_scratch
from ddjax.infra import distributed
from ddjax.models import from_config


def log(line: str) -> None:
  print('[eval] ' + line, flush=True)


def config_overrides(cfg: ml_collections.ConfigDict, keys=('steps', 'batch_size', 'lr')) -> dict:
  """The eval.* protocol overrides that are set (0 = the protocol's own rule)."""
  return {k: cfg.eval[k] for k in keys if cfg.eval[k]}


def protocol_on_set(cfg: ml_collections.ConfigDict, data, syn: dict, plan,
                    overrides: dict) -> EvalProtocol:
  """The `EvalProtocol` of `plan.evaluator` for the set `syn`: its settings for the set's size,
  then the eval.* overrides, DSA when dsa.strategy is set, then `overrides`."""
  settings = config_overrides(cfg)
  strategy = strategy_from_config(cfg)
  if strategy:
    settings['dsa_strategy'] = strategy
  settings.update(overrides)
  return settings_of(plan.evaluator, int(syn['x'].shape[0]), data.num_classes, **settings)


def train_one_on_set(cfg: ml_collections.ConfigDict, data, syn: dict, plan, key, model,
                     overrides: dict) -> dict:
  """One fresh `model` trained on `syn` {'x': (n, H, W, C), 'y': (n, K)} under
  `protocol_on_set(..., overrides)`; returns its variables (`Protocol.train` of the protocols
  that train on the set itself)."""
  protocol = protocol_on_set(cfg, data, syn, plan, overrides)
  return train_from_scratch(key, model, jnp.asarray(syn['x']), jnp.asarray(syn['y']), protocol)


def train_on_set(cfg: ml_collections.ConfigDict, data, syn: dict, plan, key,
                 overrides: dict) -> tuple[dict, str]:
  """Train eval.num_models fresh eval.model networks on `syn` {'x': (n, H, W, C), 'y': (n, K)}
  under protocol `plan.protocol` with the eval.* overrides, then `overrides` (DSA on when
  dsa.strategy is, as DSA / DM evaluate); with several processes each trains its share
  (`distributed.own_members`) and every process gets every network's accuracy. Returns (results
  entries 'eval' and, with eval.krr, 'krr_eval' at the plan's regulariser; the summary line)."""
  protocol = protocol_on_set(cfg, data, syn, plan, overrides)
  model = from_config(cfg.eval.model, data.num_classes)
  log(f'protocol {protocol.name}: {protocol.steps} steps, batch {protocol.batch_size}, '
      f'lr {protocol.lr:.4g}, loss {protocol.loss}, {cfg.eval.num_models} models')
  ev = evaluate_synthetic(key, model, jnp.asarray(syn['x']), jnp.asarray(syn['y']),
                          data.x_test, data.y_test, protocol, num_models=cfg.eval.num_models,
                          krr=cfg.eval.krr, krr_reg=plan.krr_reg, progress=log,
                          members=distributed.own_members(cfg.eval.num_models),
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
