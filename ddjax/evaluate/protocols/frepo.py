"""The 'frepo' protocol: FRePo's official evaluation (script/eval.py).

Adam, peak lr 3e-4, no weight decay (FRePo passes 3e-4 but Adam ignores it); linear warm-up from
0, then cosine decay to 0.01 * lr (optax.warmup_cosine_decay_schedule, whose decay_steps include
the warm-up, as in FRePo). Steps by the TOTAL number of prototypes n: `frepo_steps(n)`. Warm-up:
FRePo's 500 steps whenever steps >= 1000 (every entry of its table); for shorter, overridden runs
(smoke tests) 500 would swallow the run, so steps // 10 is used instead. Batch min(n, 500). Loss:
mean over the batch of 0.5 * sum_k (pred_k - y_k)^2 against the (possibly learned, real-valued)
labels y (n, K). Augmentation: FRePo's own, one op per batch drawn from
'color_crop_rotate_translate_cutout' (`ddjax.augment.frepo`), with 'flip_' prepended for natural
images as FRePo does (`frepo_strategy_for`).
"""
from __future__ import annotations

from ddjax import registry
from ddjax.augment.frepo import FREPO_STRATEGY, frepo_strategy_for
from ddjax.evaluate.protocols.common import train_on_set, train_one_on_set

# FRePo script/eval.py:207-209, keyed by the total number of prototypes.
FREPO_STEPS_TABLE = {10: 1000, 100: 2000, 200: 20000, 400: 5000, 500: 5000, 1000: 10000}
FREPO_STEPS_LARGER = 10000


def frepo_steps(num_prototypes: int) -> int:
  """FRePo's evaluation steps for a synthetic set of `num_prototypes` images IN TOTAL: the value
  at the smallest key of FREPO_STEPS_TABLE that is >= n; 10000 beyond 1000."""
  if num_prototypes < 1:
    raise ValueError(f'num_prototypes must be >= 1, got {num_prototypes}')
  for key in sorted(FREPO_STEPS_TABLE):
    if num_prototypes <= key:
      return FREPO_STEPS_TABLE[key]
  return FREPO_STEPS_LARGER


def frepo_warmup(steps: int) -> int:
  """500 (FRePo) when steps >= 1000, else steps // 10 for short runs."""
  return 500 if steps >= 1000 else steps // 10


def settings(n: int, num_classes, overrides: dict) -> dict:
  del num_classes
  steps = overrides.get('steps', frepo_steps(n))
  return dict(optimizer='adam', lr=3e-4, momentum=0.0, weight_decay=0.0, loss='mse',
              schedule='warmup_cosine', warmup_steps=frepo_warmup(steps), final_lr_fraction=0.01,
              batch_size=min(n, 500), steps=steps, epochs=None, augment=True,
              translate_frac=0.0, cutout_frac=0.0, flip=False, augment_ops=FREPO_STRATEGY)


def evaluate(cfg, data, syn: dict, plan, key) -> tuple[dict, str]:
  """Networks trained on the set with FRePo's augmentation for the dataset."""
  return train_on_set(cfg, data, syn, plan, key,
                      {'augment_ops': frepo_strategy_for(cfg.data.name)})


def train(cfg, data, syn: dict, plan, key, model, overrides: dict) -> dict:
  """One network on the set, as `evaluate` trains each (`Protocol.train`)."""
  return train_one_on_set(cfg, data, syn, plan, key, model,
                          {'augment_ops': frepo_strategy_for(cfg.data.name), **overrides})


registry.register_protocol(registry.Protocol(
    name='frepo', settings=settings, evaluate=evaluate, train=train,
    description="FRePo's evaluation: Adam, warm-up cosine, MSE on the set's labels"))
