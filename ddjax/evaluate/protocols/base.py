"""What every evaluation protocol shares: the `EvalProtocol` settings, their schedule, optimizer
and augmentation sizes, and `get_protocol`, which asks the named registered protocol for its
settings; plus `train_on_set`, the common way a protocol trains networks on the set itself.

Each protocol is one module beside this one, registered with `ddjax.registry.register_protocol`:
its defaults (`settings(n, num_classes, overrides) -> dict`), what it reads from the set and the
config, and how it trains (`evaluate(cfg, data, syn, plan, key)`):

  frepo  FRePo's official evaluation (Adam, warm-up cosine, MSE on the set's labels)
  dc     DC / DSA's (SGD, step decay, cross-entropy on hard labels)
  tm     trajectory matching's (SGD at the set's learned step size, DSA)
  rded   RDED's (students on an observer's soft labels)
  ensemble  EDC / G-VBSM's (students on several observers' mean logits, EDC's switches)

A user protocol registers the same way from its own module. The basic ops' sizes (any protocol
with augment_ops='' and no DSA) are fractions of the image side, converted to pixels at train time
by `augment_pixels` (translate 0.125: 4 px on 32 px).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ddjax.augment.frepo import parse_strategy

OPTIMIZERS = ('adam', 'sgd')
LOSSES = ('mse', 'ce', 'soft_ce', 'kl')
SCHEDULES = ('warmup_cosine', 'step', 'quarter_cosine')

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


def get_protocol(name: str, num_prototypes: int, num_classes: int | None = None,
                 **overrides: Any) -> EvalProtocol:
  """The registered protocol `name`'s settings for a set of `num_prototypes` images, with field
  overrides (`settings_of`). Raises ValueError for an unknown protocol name or field."""
  from ddjax import registry
  try:
    spec = registry.get_protocol(name)
  except registry.RegistryError as err:
    raise ValueError(str(err)) from None
  return settings_of(spec, num_prototypes, num_classes, **overrides)


def settings_of(spec, num_prototypes: int, num_classes: int | None = None,
                **overrides: Any) -> EvalProtocol:
  """The `EvalProtocol` of the registered protocol `spec` (a `ddjax.registry.Protocol`) for a set
  of `num_prototypes` images, with field overrides.

  The protocol's module gives its settings (`Protocol.settings`); derived values follow the
  overrides unless overridden themselves ('frepo' warm-up from steps; 'dc', 'tm' and 'rded' steps
  from epochs and batch_size; 'rded''s batch rule needs `num_classes`, 10 when not given).
  Raises ValueError for an unknown field.
  """
  fields = {f.name for f in dataclasses.fields(EvalProtocol)} - {'name'}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'unknown EvalProtocol field(s) {unknown}; allowed: {sorted(fields)}')
  n = int(num_prototypes)
  if n < 1:
    raise ValueError(f'num_prototypes must be >= 1, got {n}')
  base = dict(spec.settings(n, num_classes, overrides))
  base.update(overrides)
  return EvalProtocol(name=spec.name, **base)


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
