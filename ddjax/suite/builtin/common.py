"""Cells several axes share: the set and the random real subset under a protocol on an
architecture, and the full real data with hard labels. A cell with the same name is computed once
per suite directory (unit files); baselines once per cache (`Context.cached`)."""
from __future__ import annotations

import math

import numpy as np

from ddjax.data.sampling import one_hot

from ddjax.suite.context import Context

HARD_PROTOCOL = 'dc'    # the hard-label protocol of HLR: SGD, cross-entropy on hard labels
FULL_DATA_BATCH = 256   # DC's batch, for the full-data reference


def protocol_record(ctx: Context, protocol: str | None) -> dict:
  """What decides a protocol's training besides the set: its name, the eval block and its own
  blocks' settings (the 'rded' observer), the suite's step cap."""
  spec = ctx.protocol(protocol)
  cfg = ctx.run_cfg
  return {'protocol': spec.name, 'eval': {k: cfg.eval[k] for k in
                                          ('steps', 'batch_size', 'lr', 'soft_label_epochs')},
          'dsa': cfg.dsa.to_dict() if 'dsa' in cfg else None,
          'blocks': {b.name: cfg[b.name].to_dict() for b in spec.blocks if b.name in cfg},
          'max_steps': int(ctx.suite.max_steps)}


def _name(protocol: str | None, arch: str | None) -> str:
  return f'{protocol or "own"}/{arch or "eval_model"}'


def set_accuracy(ctx: Context, protocol: str | None = None, arch: str | None = None,
                 overrides: dict | None = None, hard: bool = False, tag: str = '') -> dict:
  """The judged set (hard: with one-hot labels) trained on under `protocol` on `arch`."""
  syn = ctx.hard(ctx.syn) if hard else ctx.syn
  cell = f'set/{_name(protocol, arch)}{"/hard" if hard else ""}{tag}'
  return ctx.accuracy(cell, syn, arch=arch, protocol=protocol, overrides=overrides)


def random_accuracy(ctx: Context, protocol: str | None = None, arch: str | None = None,
                    overrides: dict | None = None, hard: bool = False) -> dict:
  """A random real subset of the set's IPC (a fresh draw per network, seeds suite.seed * 1000 +
  i, as DD-Ranking draws one per evaluation), trained on exactly as the set; cached per data,
  architecture, protocol, IPC, labels and seed."""
  record = {**random_record(ctx, protocol, arch), 'overrides': overrides or {},
            'hard': hard or ctx.judged.hard_labels}

  def subset(i: int) -> dict:
    sub = random_draw(ctx, i)
    return ctx.hard(sub) if hard else sub

  return ctx.cached('random', record, lambda d: ctx.accuracy(
      'random', subset, arch=arch, protocol=protocol, overrides=overrides, root=d))


def random_record(ctx: Context, protocol: str | None = None, arch: str | None = None) -> dict:
  """What decides a random-subset baseline besides what is trained on it: data, architecture,
  protocol settings, IPC, seed, network count, the set's learned extras, its labels."""
  return {'data': ctx.data_record(), 'arch': arch or ctx.run_cfg.eval.model.to_dict(),
          **protocol_record(ctx, protocol), 'ipc': ctx.judged.ipc,
          'seed': int(ctx.suite.seed), 'num_models': int(ctx.suite.num_models),
          'extras': {k: np.asarray(v).tolist() for k, v in ctx.syn.items() if k not in ('x', 'y')},
          'hard': ctx.judged.hard_labels,
          'label_init': ctx.run_cfg.distill.get('label_init', 'one_hot')}


def random_draw(ctx: Context, i: int) -> dict:
  """Network i's random real subset at the set's IPC (seed suite.seed * 1000 + i)."""
  return ctx.random_subset(ctx.judged.ipc, int(ctx.suite.seed) * 1000 + i)


def full_data_accuracy(ctx: Context, arch: str | None, epochs: int,
                       num: int | None = None) -> dict:
  """The whole real training set with hard labels under the hard-label protocol for `epochs`
  epochs (the reference of HLR); cached per data, architecture, epochs and seed."""
  record = {'data': ctx.data_record(), 'arch': arch or ctx.run_cfg.eval.model.to_dict(),
            'protocol': HARD_PROTOCOL, 'epochs': int(epochs), 'seed': int(ctx.suite.seed),
            'num_models': int(num or ctx.suite.num_models)}
  budget = full_data_budget(ctx, epochs)
  return ctx.cached('full_data', {**record, **budget}, lambda d: ctx.accuracy(
      'full_data', full_data_set(ctx), arch=arch, protocol=HARD_PROTOCOL, overrides=budget,
      num=num, root=d))


def full_data_set(ctx: Context) -> dict:
  """The whole real training set with one-hot labels."""
  return {'x': ctx.data.x_train,
          'y': one_hot(np.asarray(ctx.data.y_train), ctx.data.num_classes)}


def full_data_budget(ctx: Context, epochs: int) -> dict:
  """The full-data reference's training under the hard-label protocol: `epochs` epochs at batch
  256, every number given, so the run's own eval.steps / eval.batch_size (meant for its small
  set) do not reach it."""
  n = len(ctx.data.y_train)
  return {'epochs': int(epochs), 'batch_size': FULL_DATA_BATCH,
          'steps': int(epochs) * math.ceil(n / FULL_DATA_BATCH)}


def pm(acc: dict) -> str:
  """'mean +- std' in percent."""
  return f'{100 * acc["acc_mean"]:.2f} +- {100 * acc["acc_std"]:.2f}'
