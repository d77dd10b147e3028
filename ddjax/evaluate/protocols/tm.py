"""The 'tm' protocol: trajectory matching's evaluation (MTT utils.py:352-389, DATM
utils_baseline.py:472-534).

SGD momentum 0.9, weight decay 5e-4, lr = the set's learned step size (`syn['syn_lr']`; 0.01 for
a set without one, or eval.lr when set), 1000 epochs with lr x 0.1 at half, batch 256 (MTT; DATM /
PAD: 128), DSA on every batch (color_crop_cutout_flip_scale_rotate unless the run sets its own),
cross-entropy against argmax(y) for one-hot labels and against softmax(y) for learned label
logits ('soft_ce', DATM's SoftCrossEntropy).
"""
from __future__ import annotations

import numpy as np

from ddjax import registry
from ddjax.data.sampling import is_one_hot
from ddjax.evaluate.protocols.common import train_on_set, train_one_on_set
from ddjax.evaluate.protocols.dc import sgd_step_decay

TM_EPOCHS = 1000                    # MTT utils.py:352-389 (epoch_eval_train)


def settings(n: int, num_classes, overrides: dict) -> dict:
  del num_classes
  from ddjax.augment.dsa import DEFAULT_DSA_STRATEGY
  return dict(sgd_step_decay(n, overrides, TM_EPOCHS), dsa_strategy=DEFAULT_DSA_STRATEGY)


def read_from_set(cfg, syn: dict) -> dict:
  """What the protocol reads from the set: its learned step size syn['syn_lr'] as the lr (unless
  eval.lr is set or the set has none), and the loss its labels call for (one-hot: 'ce', learned
  logits: 'soft_ce')."""
  out = {'loss': 'ce' if is_one_hot(syn['y']) else 'soft_ce'}
  if not cfg.eval.lr and 'syn_lr' in syn:
    out['lr'] = float(np.asarray(syn['syn_lr']))
  return out


def evaluate(cfg, data, syn: dict, plan, key) -> tuple[dict, str]:
  return train_on_set(cfg, data, syn, plan, key, read_from_set(cfg, syn))


def train(cfg, data, syn: dict, plan, key, model, overrides: dict) -> dict:
  """One network on the set, as `evaluate` trains each (`Protocol.train`)."""
  return train_one_on_set(cfg, data, syn, plan, key, model,
                          {**read_from_set(cfg, syn), **overrides})


registry.register_protocol(registry.Protocol(
    name='tm', settings=settings, evaluate=evaluate, train=train,
    description="trajectory matching's evaluation: SGD at the set's learned step size, DSA"))
