"""Evaluation protocols: how a network is trained from scratch on a synthetic set.

Two named protocols, every field overridable through `get_protocol(name, n, **overrides)`:

'frepo' (FRePo's official evaluation, script/eval.py; see references section 6):
  Adam, peak lr 3e-4, no weight decay (FRePo passes 3e-4 but Adam ignores it); linear warm-up from
  0, then cosine decay to 0.01 * lr (optax.warmup_cosine_decay_schedule, whose decay_steps include
  the warm-up, as in FRePo). Steps by the TOTAL number of prototypes n: `frepo_steps(n)`.
  Warm-up: FRePo's 500 steps whenever steps >= 1000 (every entry of its table); for shorter,
  overridden runs (smoke tests) 500 would swallow the run, so steps // 10 is used instead.
  Batch min(n, 500). Loss: mean over the batch of 0.5 * sum_k (pred_k - y_k)^2 against the
  (possibly learned, real-valued) labels y (N, K). Augmentation: FRePo's own, one op per batch
  drawn from 'color_crop_rotate_translate_cutout' (`ddjax.augment.frepo`; the caller prepends
  'flip_' for natural images, as FRePo, via `frepo_strategy_for`).
'dc' (DC/DSA official evaluation):
  SGD lr 0.01, momentum 0.9, weight decay 5e-4 (coupled L2 as PyTorch's SGD), cross-entropy
  against the HARD labels argmax(y) (learned soft labels are reduced to their argmax; DC's
  evaluation only knows integer labels), 1000 epochs with lr x 0.1 at half, batch 256 (at most n),
  steps = epochs * ceil(n / batch). Augmentation: translate only.

With `dsa_strategy` set (DSA and DM evaluate with DSA, as their official code), each training
batch gets one DSA op per step instead of translate / cutout / flip.

'rded' (RDED's validation/main.py; references section 5.2): students trained on soft labels that
the observer computes online per batch (`ddjax.evaluate.soft_labels`): cutmix images, KL at
temperature 20 ('batchmean', no T^2 factor, as the official code), AdamW lr 1e-3, betas (0.9,
0.999), weight decay 0.01 on weights only (arrays with ndim > 1; biases and norms 0), the official
quarter-cosine lr * 0.5 * (1 + cos(pi * epoch / (2 E))) stepped per epoch (ends at 0.5 lr), batch
by IPC as argument.py:233-258 (IPC <= 1: 10, <= 10: 50, else 100; x2 for >= 100 classes; at most
n), 300 epochs, random horizontal flip, preceded for a set stitched from `patch_factor` > 1
patches per side by ShufflePatches and RandomResizedCrop(scale (1 / factor, 1)) (RDED
validation/main.py:115-126; `ddjax.augment.patches`; identities at factor 1). Needs `num_classes`
for the batch rule; the caller gives `patch_factor` (the method's, `registry.Method.patch_factor`).

'tm' (trajectory matching: MTT utils.py:352-389, DATM utils_baseline.py:472-534): SGD momentum
0.9, weight decay 5e-4, lr = the set's learned step size (`syn_lr`; 0.01 for a set without one),
1000 epochs with lr x 0.1 at half, batch 256 (MTT; DATM / PAD: 128), DSA on every batch
(color_crop_cutout_flip_scale_rotate unless the run sets its own), cross-entropy against argmax(y)
for one-hot labels and against softmax(y) for learned label logits ('soft_ce', DATM's
SoftCrossEntropy); the caller picks the loss from the labels (`ddjax.runtime.evaluation`).

The basic ops' sizes ('dc', or any protocol with augment_ops='' and no DSA) are fractions of the
image side, converted to pixels at train time by `augment_pixels` (translate 0.125: 4 px on 32 px).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ddjax.augment.frepo import FREPO_STRATEGY, parse_strategy

OPTIMIZERS = ('adam', 'sgd')
LOSSES = ('mse', 'ce', 'soft_ce', 'kl')
SCHEDULES = ('warmup_cosine', 'step', 'quarter_cosine')
PROTOCOLS = ('frepo', 'dc', 'rded', 'tm')
# Protocols whose official code reads a set back from image files, so its pixels arrive clipped
# to [0, 1]: RDED's synthesis writes JPEGs and its validation loads them with ImageFolder +
# ToTensor (references section 5.1 steps 6-8). The others train on the float tensors as learned.
READS_IMAGE_FILES = ('rded',)
TM_EPOCHS = 1000                    # MTT utils.py:352-389 (epoch_eval_train)
RDED_EPOCHS = 300                   # RDED argument.py:114 and its scripts

# FRePo script/eval.py:207-209, keyed by the total number of prototypes.
FREPO_STEPS_TABLE = {10: 1000, 100: 2000, 200: 20000, 400: 5000, 500: 5000, 1000: 10000}
FREPO_STEPS_LARGER = 10000


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
  """Everything needed to train an evaluation network from scratch (hashable, static under jit)."""
  name: str
  optimizer: str = 'adam'          # 'adam' | 'sgd'
  lr: float = 3e-4                 # peak learning rate
  momentum: float = 0.0            # sgd only
  weight_decay: float = 0.0        # sgd: coupled L2; adam: decoupled (AdamW) when > 0
  loss: str = 'mse'                # 'mse' (0.5 * sum_k, mean over batch) | 'ce' (vs argmax(y))
                                   # | 'soft_ce' (vs softmax(y): learned label logits, DATM)
  schedule: str = 'warmup_cosine'  # 'warmup_cosine' | 'step'
  warmup_steps: int = 0            # warmup_cosine: linear 0 -> lr over these steps
  final_lr_fraction: float = 0.01  # warmup_cosine: end lr = fraction * lr
  decay_at: float = 0.5            # step: fraction of steps where lr is multiplied by decay_factor
  decay_factor: float = 0.1
  batch_size: int = 500            # clipped to n at train time
  steps: int = 1000
  epochs: int | None = None        # informational for epoch-based protocols ('dc')
  augment: bool = True
  translate_frac: float = 0.125    # max shift, fraction of the image side
  cutout_frac: float = 0.0         # cutout square side, fraction of the image side
  flip: bool = False
  dsa_strategy: str = ''           # non-empty: DSA (ddjax.augment.dsa) instead of the basic ops
  augment_ops: str = ''            # non-empty: FRePo's one-op-per-batch augmentation with these
                                   # ops (ddjax.augment.frepo) instead of the basic ops
  temperature: float = 1.0         # 'kl' loss: softmax temperature of student and teacher
  steps_per_epoch: int = 0         # 'quarter_cosine': the schedule moves once per epoch
  decay_weights_only: bool = False  # weight decay on arrays with ndim > 1 only (RDED)
  patch_factor: int = 1            # 'rded': patches per side of the set's stitched images; > 1
                                   # adds ShufflePatches + RandomResizedCrop (ddjax.augment.patches)

  def __post_init__(self):
    for field, value, allowed in (('optimizer', self.optimizer, OPTIMIZERS),
                                  ('loss', self.loss, LOSSES),
                                  ('schedule', self.schedule, SCHEDULES)):
      if value not in allowed:
        raise ValueError(f'unknown {field} {value!r}; allowed: {", ".join(allowed)}')
    if self.patch_factor < 1:
      raise ValueError(f'patch_factor must be >= 1, got {self.patch_factor}')
    if self.steps < 1 or self.batch_size < 1:
      raise ValueError(f'steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}')
    if not 0 <= self.warmup_steps <= self.steps:
      raise ValueError(f'warmup_steps must lie in [0, steps], got {self.warmup_steps}')
    if self.augment_ops:
      parse_strategy(self.augment_ops)


def frepo_steps(num_prototypes: int) -> int:
  """FRePo's evaluation steps for a synthetic set of `num_prototypes` images IN TOTAL.

  The smallest key of FREPO_STEPS_TABLE that is >= n; 10000 beyond 1000.
  """
  if num_prototypes < 1:
    raise ValueError(f'num_prototypes must be >= 1, got {num_prototypes}')
  for key in sorted(FREPO_STEPS_TABLE):
    if num_prototypes <= key:
      return FREPO_STEPS_TABLE[key]
  return FREPO_STEPS_LARGER


def frepo_warmup(steps: int) -> int:
  """500 (FRePo) when steps >= 1000, else steps // 10 for short runs."""
  return 500 if steps >= 1000 else steps // 10


def rded_batch_size(num_prototypes: int, num_classes: int) -> int:
  """RDED's student batch (argument.py:233-258) by IPC = n // K: 10 / 50 / 100 for IPC 1 / 10 /
  50 (up to 1, 10, larger), doubled for >= 100 classes, at most n."""
  ipc = max(1, num_prototypes // max(1, num_classes))
  batch = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
  if num_classes >= 100:
    batch *= 2
  return max(1, min(batch, num_prototypes))


def get_protocol(name: str, num_prototypes: int, num_classes: int | None = None,
                 **overrides: Any) -> EvalProtocol:
  """The named protocol for a synthetic set of `num_prototypes` images, with field overrides.

  Derived values follow the overrides unless overridden themselves: 'frepo' warm-up from steps;
  'dc' steps from epochs and batch_size; 'rded' steps from epochs and batch_size (its batch rule
  needs `num_classes`, 10 when not given).
  Raises ValueError for an unknown protocol name or field.
  """
  fields = {f.name for f in dataclasses.fields(EvalProtocol)} - {'name'}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'unknown EvalProtocol field(s) {unknown}; allowed: {sorted(fields)}')
  n = int(num_prototypes)
  if n < 1:
    raise ValueError(f'num_prototypes must be >= 1, got {n}')
  if name == 'frepo':
    steps = overrides.get('steps', frepo_steps(n))
    base = dict(optimizer='adam', lr=3e-4, momentum=0.0, weight_decay=0.0, loss='mse',
                schedule='warmup_cosine', warmup_steps=frepo_warmup(steps), final_lr_fraction=0.01,
                batch_size=min(n, 500), steps=steps, epochs=None, augment=True,
                translate_frac=0.0, cutout_frac=0.0, flip=False, augment_ops=FREPO_STRATEGY)
  elif name == 'dc':
    epochs = overrides.get('epochs', 1000)
    batch = overrides.get('batch_size', min(n, 256))
    base = dict(optimizer='sgd', lr=0.01, momentum=0.9, weight_decay=5e-4, loss='ce',
                schedule='step', warmup_steps=0, decay_at=0.5, decay_factor=0.1, batch_size=batch,
                steps=epochs * math.ceil(n / batch), epochs=epochs, augment=True,
                translate_frac=0.125, cutout_frac=0.0, flip=False)
  elif name == 'rded':
    epochs = overrides.get('epochs', RDED_EPOCHS)
    batch = overrides.get('batch_size', rded_batch_size(n, num_classes or 10))
    per_epoch = math.ceil(n / min(batch, n))
    base = dict(optimizer='adam', lr=1e-3, momentum=0.0, weight_decay=0.01, loss='kl',
                schedule='quarter_cosine', warmup_steps=0, batch_size=batch,
                steps=epochs * per_epoch, epochs=epochs, steps_per_epoch=per_epoch,
                decay_weights_only=True, temperature=20.0, augment=True, translate_frac=0.0,
                cutout_frac=0.0, flip=True)
  elif name == 'tm':
    from ddjax.augment.dsa import DEFAULT_DSA_STRATEGY
    epochs = overrides.get('epochs', TM_EPOCHS)
    batch = overrides.get('batch_size', min(n, 256))
    base = dict(optimizer='sgd', lr=0.01, momentum=0.9, weight_decay=5e-4, loss='ce',
                schedule='step', warmup_steps=0, decay_at=0.5, decay_factor=0.1, batch_size=batch,
                steps=epochs * math.ceil(n / batch), epochs=epochs, augment=True,
                dsa_strategy=DEFAULT_DSA_STRATEGY)
  else:
    raise ValueError(f'unknown protocol {name!r}; allowed: {", ".join(PROTOCOLS)}')
  base.update(overrides)
  return EvalProtocol(name=name, **base)


def make_schedule(protocol: EvalProtocol) -> optax.Schedule:
  """The learning-rate schedule step -> lr of `protocol`."""
  p = protocol
  if p.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=p.lr, warmup_steps=p.warmup_steps, decay_steps=p.steps,
        end_value=p.final_lr_fraction * p.lr)
  if p.schedule == 'quarter_cosine':
    epochs = max(1, p.steps // max(1, p.steps_per_epoch))
    per_epoch = max(1, p.steps_per_epoch)
    return lambda step: p.lr * 0.5 * (1 + jnp.cos(jnp.pi * (step // per_epoch) / (2 * epochs)))
  boundary = int(p.decay_at * p.steps)
  return optax.piecewise_constant_schedule(p.lr, {boundary: p.decay_factor})


def make_optimizer(protocol: EvalProtocol) -> optax.GradientTransformation:
  """The optax optimizer of `protocol` with its schedule."""
  p = protocol
  sched = make_schedule(p)
  if p.optimizer == 'sgd':
    return optax.chain(optax.add_decayed_weights(p.weight_decay),
                       optax.sgd(sched, momentum=p.momentum or None))
  if p.weight_decay > 0:
    mask = ((lambda params: jax.tree_util.tree_map(lambda a: a.ndim > 1, params))
            if p.decay_weights_only else None)
    return optax.adamw(sched, weight_decay=p.weight_decay, mask=mask)
  return optax.adam(sched)


def augment_pixels(protocol: EvalProtocol, image_shape) -> tuple[int, int, bool]:
  """(translate_px, cutout_px, flip) for images of shape (H, W, C) or (N, H, W, C)."""
  if not protocol.augment:
    return 0, 0, False
  side = min(image_shape[-3], image_shape[-2])
  return (int(round(protocol.translate_frac * side)), int(round(protocol.cutout_frac * side)),
          bool(protocol.flip))
