"""The 'dc' protocol: DC / DSA's official evaluation.

SGD lr 0.01, momentum 0.9, weight decay 5e-4 (coupled L2 as PyTorch's SGD), cross-entropy against
the HARD labels argmax(y) (learned soft labels are reduced to their argmax; DC's evaluation only
knows integer labels), 1000 epochs with lr x 0.1 at half, batch 256 (at most n), steps = epochs x
ceil(n / batch). Augmentation: translate only; with dsa.strategy set (DSA and DM evaluate with
DSA, as their official code) one DSA op per batch instead.
"""
from __future__ import annotations

import math

from ddjax import registry
from ddjax.evaluate.protocols.common import train_on_set, train_one_on_set

DC_EPOCHS = 1000


def sgd_step_decay(n: int, overrides: dict, epochs: int) -> dict:
  """DC's training of an evaluation network (shared by 'tm'): SGD lr 0.01, momentum 0.9, weight
  decay 5e-4, cross-entropy, `epochs` epochs (unless overridden) with lr x 0.1 at half, batch 256
  (at most n), steps = epochs x ceil(n / batch)."""
  epochs = overrides.get('epochs', epochs)
  batch = overrides.get('batch_size', min(n, 256))
  return dict(optimizer='sgd', lr=0.01, momentum=0.9, weight_decay=5e-4, loss='ce',
              schedule='step', warmup_steps=0, decay_at=0.5, decay_factor=0.1, batch_size=batch,
              steps=epochs * math.ceil(n / batch), epochs=epochs, augment=True)


def settings(n: int, num_classes, overrides: dict) -> dict:
  del num_classes
  return dict(sgd_step_decay(n, overrides, DC_EPOCHS), translate_frac=0.125, cutout_frac=0.0,
              flip=False)


def evaluate(cfg, data, syn: dict, plan, key) -> tuple[dict, str]:
  return train_on_set(cfg, data, syn, plan, key, {})


def train(cfg, data, syn: dict, plan, key, model, overrides: dict) -> dict:
  """One network on the set, as `evaluate` trains each (`Protocol.train`)."""
  return train_one_on_set(cfg, data, syn, plan, key, model, overrides)


registry.register_protocol(registry.Protocol(
    name='dc', settings=settings, evaluate=evaluate, train=train,
    description="DC / DSA's evaluation: SGD, step decay, cross-entropy on hard labels"))
