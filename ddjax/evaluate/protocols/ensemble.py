"""The 'ensemble' protocol: students trained on the mean logits of SEVERAL observers, as EDC's and
G-VBSM's evaluations do, with the evaluation-side switches of EDC's design space.

Teachers: the observers named by `observer.ensemble` (zoo names, `ddjax.models.zoo`; each trained
once with the observer block's budget and cached by `ddjax.evaluate.observer.get_observers`), or
the run's single observer (`get_observer`) when that key is empty. Only the set's images and
their hard labels (argmax of y) are used.

Per student step (`make_student_step`), on a mini-batch of the set (one epoch = a fresh
permutation, `ddjax.models.training.epoch_batches`):

  1. RandomResizedCrop(scale (ensemble.min_crop, 1), ratio (3/4, 4/3)) and a horizontal flip,
     drawn per image (`ddjax.augment.patches.random_resized_crop`; EDC
     E:Branch_CIFAR_10/train/direct_train.py:227-238, G-VBSM's FKD crops
     G:Branch_CIFAR_10/relabel/generate_soft_label_with_db.py:57-75);
  2. CutMix with lambda ~ Beta(1, 1) and one box per batch (`ddjax.evaluate.soft_labels.cutmix`;
     direct_train.py:165,260,400), or mixup (ensemble.mix='mixup', Beta(0.8, 0.8), SRe2L's CIFAR
     relabel S:SRe2L/*small_dataset/relabel_cifar.py:111-121);
  3. the soft target: the MEAN of the teachers' LOGITS on that augmented, mixed batch, computed
     online, teachers in inference mode (`mean_teacher_logits`; direct_train.py:394-408). G-VBSM
     stores FKD crop records and replays them (relabel G:generate_soft_label_with_db.py:269-283,
     eval G:Branch_CIFAR_10/train/train_FKD.py:154-160,280), but its targets are the same mean
     logits on the mixed crop: computing them online is the ddjax equivalent (fresh crops every
     epoch instead of 1000 stored epochs);
  4. the loss (`ensemble_loss`), ensemble.loss:
       'mse_ce'  mean_{B,K} (z_s - zbar_t)^2 + w_ce * CE(z_s, y): PyTorch's F.mse_loss, whose
                 'mean' reduction averages over all B * K entries, plus the cross-entropy against
                 the hard label y of the UN-mixed image (EDC 'mse_gt', direct_train.py:421-422,
                 w_ce 0.025; G-VBSM train_FKD.py:307-308, w_ce 0.15). No temperature.
       'kl'      KL(softmax(zbar_t / T) || softmax(z_s / T)), 'batchmean', no T^2 (the 'rded'
                 protocol's `soft_kl`; SRe2L S:SRe2L/validate/train_FKD.py:216,248-252).
  5. one AdamW step (lr 1e-3, betas (0.9, 0.999), ensemble.weight_decay on weights only: arrays
     with ndim > 1, as FKD's get_parameters, S:SRe2L/validate/utils.py:59-73 @0bd3cf0; EDC
     imports get_parameters from its train/utils.py, not in the stored copy: assumed the same);
  6. with ensemble.ema = d > 0, theta_ema <- d theta_ema + (1 - d) theta after every optimiser
     step, theta_ema starting at the initial parameters (EDC's EMAMODEL, direct_train.py:79-97,
     437-438). Only PARAMETERS are averaged: the EMA network is evaluated with the live network's
     batch-norm statistics, as EDC swaps parameters only (direct_train.py:351-354).

Learning rate per epoch e of E (`lr_factor`), ensemble.schedule:

  'cosine'     lr0 * 0.5 (1 + cos(pi e / E)) (G-VBSM train_FKD.py:203-207; SRe2L's --cos)
  'multistep'  lr0 * 0.5^#{m : e >= m}, milestones round(0.8 E), round(0.9 E), round(0.95 E)
               ([800, 900, 950] at E = 1000: EDC CIFAR-10, direct_train.py:330-332)
  'smoothed'   lr0 * 0.5 (1 + cos(pi e / (zeta E))) for e <= zeta E, else 0 (EDC's smoothing
               LR schedule, `--ls-type cos --st zeta`, direct_train.py:317-321; zeta 2 ends at
               about half of lr0). EDC's ImageNet trainer has `if` where `elif` was meant
               (E:Branch_full_ImageNet_1k/train/train_FKD_parallel.py:274-283), so its 'cos' run
               is silently overwritten by the linear rule below with the same zeta; ddjax
               implements the intended cosine.
  'linear'     lr0 * max(0, 1 - e / (zeta E)) (EDC's fall-through branch right after
               direct_train.py:332; zeta = 1 is SRe2L's non-cosine 1 - e / E,
               S:SRe2L/validate/train_FKD.py:164-166; zeta = 2 is what EDC's ImageNet run does).

Reported: the final test accuracy of each student (the EMA parameters when ema > 0) as
mean / std over eval.num_models, and separately the best over the validations in the last 20 % of
epochs (`ddjax.evaluate.soft_labels.validation_epochs`; EDC validates every 10 epochs after 800 and
keeps the best, direct_train.py:351-354), which selects on the test set.

Setting bundles (`ensemble_preset(cfg, name)`; CIFAR-10, ResNet-18 students in the papers):

  edc     loss mse_ce, w_ce 0.025, schedule multistep, ema 0.99, batch 25 (paper Tab. 10; the
          shipped train.sh runs 10), weight decay 0.01, 1000 epochs, cutmix
          (E:Branch_CIFAR_10/train/train.sh:7-12)
  gvbsm   loss mse_ce, w_ce 0.15, schedule cosine, ema 0 (none), batch 100, weight decay 0,
          1000 epochs, cutmix (G:Branch_CIFAR_10/train/train.sh:7-11, train_FKD.py:78,104-105)
  sre2l   loss kl, T 30, schedule cosine, ema 0, batch 128, weight decay 0.01, 400 epochs, mixup
          (S:SRe2L/*small_dataset/relabel_cifar.py:104-108, relabel_cifar.sh:2,6; CIFAR-100,
          one teacher: leave observer.ensemble empty). Its crop is RandomCrop(32, pad 4), not a
          resized crop (L49-56): ensemble.min_crop = 1 turns the resized crop off, nothing here
          adds the padded crop; its teacher runs in batch-norm train mode (never .eval(),
          L85-92), here in inference mode.

Differences from the official code: no RandAugment (EDC applies torchvision's RandAugment to the
PIL image before the crop, direct_train.py:227-238; ensemble.randaugment=True is refused: a faithful
port needs the 14 PIL ops on uint8 pixels, not cheap in JAX on model-space floats); the
milestones scale with E (EDC hard-codes [800, 900, 950]); crops are continuous boxes
(`ddjax.augment.patches`); EDC evaluates the EMA only at its validation epochs and reports the
best, here the final one is the headline. The default epochs (ENSEMBLE_EPOCHS = 300, the 'rded'
protocol's RDED_EPOCHS, so the two protocols compare recipes at one budget) are a CPU budget: the
official runs train 1000 epochs (EDC, G-VBSM) or 400 (SRe2L CIFAR). Epochs count passes over the
set, so at IPC 1 (10 images, one batch) an epoch is one step: 40 epochs left students near chance.

eval.lr and eval.batch_size override the block's learning rate and batch when non-zero, as for
every protocol. EDC and G-VBSM store their sets as images, so 'auto' pixel clipping is on.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddjax import registry
from ddjax.augment.basic import random_flip
from ddjax.augment.patches import random_resized_crop
from ddjax.evaluate.protocols.common import log
from ddjax.evaluate.protocols.rded import OBSERVER_BLOCK, ensemble_names
from ddjax.infra import distributed
from ddjax.infra.config_checks import choice_errors, int_errors
from ddjax.models import from_config
from ddjax.models.training import epoch_batches, fresh_carry, make_train_step, merge_variables

Array = jax.Array

LOSSES = ('mse_ce', 'kl')
SCHEDULES = ('cosine', 'multistep', 'smoothed', 'linear')
MIXES = ('cutmix', 'mixup', 'none')
MULTISTEP_FRACTIONS = (0.8, 0.9, 0.95)   # of the epochs: EDC's [800, 900, 950] of 1000
MULTISTEP_GAMMA = 0.5
MIXUP_ALPHA = 0.8                        # SRe2L relabel_cifar.py's mixup Beta(0.8, 0.8)
ENSEMBLE_LR = 1e-3                       # AdamW, EDC / G-VBSM / SRe2L
ENSEMBLE_EPOCHS = 300                    # CPU default (= rded's 300); the official runs 1000
ENSEMBLE_BATCH = 25                      # EDC paper Tab. 10

# the keys `ensemble_preset` sets; epochs only with paper=True (the official budget)
PRESETS = {
    'edc': dict(loss='mse_ce', w_ce=0.025, schedule='multistep', ema=0.99, batch_size=25,
                weight_decay=0.01, mix='cutmix', min_crop=0.08, epochs=1000),
    'gvbsm': dict(loss='mse_ce', w_ce=0.15, schedule='cosine', ema=0.0, batch_size=100,
                  weight_decay=0.0, mix='cutmix', min_crop=0.08, epochs=1000),
    'sre2l': dict(loss='kl', temperature=30.0, schedule='cosine', ema=0.0, batch_size=128,
                  weight_decay=0.01, mix='mixup', min_crop=0.08, epochs=400),
}
# The zoo's closest match to each paper's CIFAR-10 teachers (the zoo has no MobileNetV2,
# WRN-16-2 or ShuffleNetV2): EDC's 8 (direct_train.py's aux_teacher list) include ResNet18,
# ConvNetW128, ConvNetD1, ConvNetD2; G-VBSM's 5 (generate_soft_label_with_db.py:144) include
# ResNet18 and ConvNetW128.
ZOO_OBSERVERS = {'edc': 'ResNet-18-BN,ConvNet-3,ConvNet-1,ConvNet-2',
                 'gvbsm': 'ResNet-18-BN,ConvNet-3'}

# what `train` (Protocol.train) accepts as EvalProtocol field overrides
TRAIN_OVERRIDES = ('epochs', 'steps', 'batch_size', 'lr', 'weight_decay', 'temperature',
                   'augment', 'flip')


# -- the recipe ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything a student's training under 'ensemble' needs (hashable, static under jit)."""
  lr: float = ENSEMBLE_LR
  weight_decay: float = 0.01       # AdamW, on arrays with ndim > 1 only
  loss: str = 'mse_ce'             # 'mse_ce' | 'kl'
  w_ce: float = 0.025              # 'mse_ce': weight of the hard-label cross-entropy
  temperature: float = 20.0        # 'kl' only
  schedule: str = 'multistep'      # 'cosine' | 'multistep' | 'smoothed' | 'linear'
  zeta: float = 2.0                # 'smoothed' and 'linear'
  batch_size: int = ENSEMBLE_BATCH  # at most n
  epochs: int = ENSEMBLE_EPOCHS
  steps_per_epoch: int = 1         # ceil(n / batch)
  augment: bool = True             # False: no crop, flip or mix
  min_crop: float = 0.08           # RandomResizedCrop scale (min_crop, 1); 1: no crop
  flip: bool = True
  mix: str = 'cutmix'              # 'cutmix' | 'mixup' | 'none'
  ema: float = 0.99                # 0: off

  def __post_init__(self):
    for field, value, allowed in (('loss', self.loss, LOSSES),
                                  ('schedule', self.schedule, SCHEDULES),
                                  ('mix', self.mix, MIXES)):
      if value not in allowed:
        raise ValueError(f'ensemble.{field}={value!r} is not one of {allowed}')
    if not 0.0 <= self.ema < 1.0:
      raise ValueError(f'ensemble.ema must lie in [0, 1) (0: off), got {self.ema}')
    if self.w_ce < 0:
      raise ValueError(f'ensemble.w_ce must be >= 0, got {self.w_ce}')
    if not 0.0 < self.min_crop <= 1.0:
      raise ValueError(f'ensemble.min_crop must lie in (0, 1], got {self.min_crop}')
    if self.zeta <= 0 or self.temperature <= 0:
      raise ValueError(f'ensemble.zeta and ensemble.temperature must be > 0, got {self.zeta}, '
                       f'{self.temperature}')
    if min(self.epochs, self.batch_size, self.steps_per_epoch) < 1:
      raise ValueError(f'epochs, batch_size and steps_per_epoch must be >= 1, got {self.epochs}, '
                       f'{self.batch_size}, {self.steps_per_epoch}')

  @property
  def steps(self) -> int:
    return self.epochs * self.steps_per_epoch


def make_recipe(n: int, **fields: Any) -> Recipe:
  """The `Recipe` for a set of n images: `fields` over the defaults, the batch clipped to n and
  steps_per_epoch = ceil(n / batch)."""
  batch = max(1, min(int(fields.pop('batch_size', ENSEMBLE_BATCH)), int(n)))
  return Recipe(batch_size=batch, steps_per_epoch=math.ceil(n / batch), **fields)


def recipe_of(cfg: ml_collections.ConfigDict, n: int, overrides: dict | None = None) -> Recipe:
  """The run's recipe for a set of n images: cfg.ensemble, eval.lr / eval.batch_size when
  non-zero, then `overrides` (`TRAIN_OVERRIDES`: EvalProtocol field names; 'steps' is turned
  into whole epochs). ValueError for another override or ensemble.randaugment=True."""
  e = cfg.ensemble
  if e.get('randaugment', False):
    raise ValueError(randaugment_error())
  fields = dict(lr=float(cfg.eval.lr or ENSEMBLE_LR), weight_decay=float(e.weight_decay),
                loss=str(e.loss), w_ce=float(e.w_ce), temperature=float(e.temperature),
                schedule=str(e.schedule), zeta=float(e.zeta),
                batch_size=int(cfg.eval.batch_size or e.batch_size), epochs=int(e.epochs),
                min_crop=float(e.min_crop), flip=bool(e.flip), mix=str(e.mix),
                ema=float(e.ema))
  overrides = dict(overrides or {})
  unknown = sorted(set(overrides) - set(TRAIN_OVERRIDES))
  if unknown:
    raise ValueError(f"the 'ensemble' protocol cannot take the override(s) {unknown}; it takes "
                     f'{TRAIN_OVERRIDES} (its loss, schedule and augmentation are the ensemble '
                     'block\'s)')
  steps = overrides.pop('steps', None)
  fields.update(overrides)
  recipe = make_recipe(n, **fields)
  if steps is not None:
    recipe = dataclasses.replace(recipe, epochs=max(1, math.ceil(steps / recipe.steps_per_epoch)))
  return recipe


def randaugment_error() -> str:
  return ("ensemble.randaugment=True: RandAugment (EDC's direct_train.py:227-238) is not "
          "implemented in ddjax (its 14 PIL ops on uint8 pixels have no cheap faithful JAX port "
          "on model-space images); set ensemble.randaugment=False.")


# -- learning rate ---------------------------------------------------------------------------------
def milestones(epochs: int) -> tuple[int, ...]:
  """The 'multistep' epochs round(f E) for f in MULTISTEP_FRACTIONS ((800, 900, 950) at 1000)."""
  return tuple(int(round(f * epochs)) for f in MULTISTEP_FRACTIONS)


def lr_factor(schedule: str, epoch, epochs: int, zeta: float = 2.0):
  """lr(epoch) / lr0 of `schedule` at 0-based `epoch` (a number or a jnp array) of `epochs`
  (module docstring: the formulas)."""
  e, big_e = epoch, float(epochs)
  if schedule == 'cosine':
    return 0.5 * (1.0 + jnp.cos(jnp.pi * e / big_e))
  if schedule == 'multistep':
    passed = sum((e >= m) * 1 for m in milestones(epochs))
    return MULTISTEP_GAMMA ** passed
  if schedule == 'smoothed':
    span = zeta * big_e
    return jnp.where(e <= span, 0.5 * (1.0 + jnp.cos(jnp.pi * e / span)), 0.0)
  if schedule == 'linear':
    return jnp.maximum(0.0, 1.0 - e / (zeta * big_e))
  raise ValueError(f'unknown schedule {schedule!r}; allowed: {SCHEDULES}')


def make_schedule(recipe: Recipe) -> optax.Schedule:
  """step -> lr: `lr_factor` of the step's epoch (step // steps_per_epoch), times recipe.lr."""
  r = recipe
  return lambda step: r.lr * lr_factor(r.schedule, step // r.steps_per_epoch, r.epochs, r.zeta)


def make_optimizer(recipe: Recipe) -> optax.GradientTransformation:
  """AdamW (betas 0.9 / 0.999, eps 1e-8: PyTorch's) at `make_schedule`, decoupled weight decay
  scaled by the lr as PyTorch's, on arrays with ndim > 1 only."""
  mask = lambda params: jax.tree_util.tree_map(lambda a: a.ndim > 1, params)
  return optax.adamw(make_schedule(recipe), weight_decay=recipe.weight_decay, mask=mask)


# -- targets, loss, augmentation, EMA --------------------------------------------------------------
def mean_teacher_logits(teachers: Sequence[nn.Module], teacher_vars: Sequence[Any],
                        x: Array) -> Array:
  """The mean over teachers of their inference-mode logits on x (B, H, W, C): (B, K), no
  gradient (EDC direct_train.py:394-408)."""
  logits = [m.apply(v, x, train=False)[0] for m, v in zip(teachers, teacher_vars)]
  return jax.lax.stop_gradient(jnp.mean(jnp.stack(logits), axis=0))


def mse_ce(student_logits: Array, teacher_logits: Array, labels: Array, w_ce: float) -> Array:
  """mean_{B,K} (s - t)^2 + w_ce * mean_B CE(s, labels): F.mse_loss (mean over all B * K
  entries) plus the cross-entropy against integer labels (B,)."""
  mse = jnp.mean(jnp.square(student_logits - teacher_logits))
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(student_logits, labels))
  return mse + w_ce * ce


def ensemble_loss(recipe: Recipe) -> Callable[[Array, Array], Array]:
  """loss(student_logits (B, K), target (B, 2, K)) with target[:, 0] the mean teacher logits and
  target[:, 1] the one-hot hard label of the un-mixed image (the training step's label slot)."""
  from ddjax.evaluate.soft_labels import soft_kl
  if recipe.loss == 'kl':
    return lambda s, target: soft_kl(s, target[:, 0], recipe.temperature)
  return lambda s, target: mse_ce(s, target[:, 0], jnp.argmax(target[:, 1], -1), recipe.w_ce)


def mixup(key: Array, x: Array, alpha: float = MIXUP_ALPHA) -> Array:
  """lambda x + (1 - lambda) x[perm], one lambda ~ Beta(alpha, alpha) per batch (SRe2L's)."""
  k_lam, k_perm = jax.random.split(key)
  lam = jax.random.beta(k_lam, alpha, alpha)
  return lam * x + (1.0 - lam) * x[jax.random.permutation(k_perm, x.shape[0])]


def augment(key: Array, x: Array, recipe: Recipe) -> Array:
  """Steps 1-2 of the module docstring on x (B, H, W, C): resized crop (skipped at min_crop 1),
  flip, then the batch mix."""
  from ddjax.evaluate.soft_labels import cutmix
  if not recipe.augment:
    return x
  k_crop, k_flip, k_mix = jax.random.split(key, 3)
  if recipe.min_crop < 1.0:
    x = random_resized_crop(k_crop, x, (recipe.min_crop, 1.0))
  if recipe.flip:
    x = random_flip(k_flip, x)
  if recipe.mix == 'cutmix':
    x = cutmix(k_mix, x)
  elif recipe.mix == 'mixup':
    x = mixup(k_mix, x)
  return x


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """decay * ema + (1 - decay) * params, leaf by leaf (EDC's EMAMODEL.ema_step)."""
  return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


# -- training --------------------------------------------------------------------------------------
def init_state(student: nn.Module, key: Array, image_shape, recipe: Recipe) -> tuple:
  """(carry, ema params or None): a fresh student and its EMA starting at its parameters."""
  carry = fresh_carry(student, key, image_shape, make_optimizer(recipe))
  return carry, (carry[0] if recipe.ema > 0 else None)


def state_variables(state: tuple) -> dict:
  """The flax variables a student is tested with: its EMA parameters (the live ones without EMA)
  with the live batch statistics."""
  (params, batch_stats, _), ema = state
  return merge_variables(ema if ema is not None else params, batch_stats)


@functools.lru_cache(maxsize=16)
def make_student_step(student: nn.Module, teachers: tuple, recipe: Recipe, num_classes: int):
  """Jitted step(state, teacher_vars, x_all, labels_all, idx, key) -> (state, loss): one student
  update on the batch x_all[idx] (state: `init_state`'s; teacher_vars: a tuple, one per
  teacher; labels_all (n,) int)."""
  train_step = make_train_step(student, make_optimizer(recipe), ensemble_loss(recipe))

  @jax.jit
  def step(state, teacher_vars, x_all, labels_all, idx, key):
    carry, ema = state
    xb = augment(key, x_all[idx], recipe)
    target = jnp.stack([mean_teacher_logits(teachers, teacher_vars, xb),
                        jax.nn.one_hot(labels_all[idx], num_classes)], axis=1)
    carry, loss = train_step(carry, xb, target)
    if ema is not None:
      ema = ema_update(ema, carry[0], recipe.ema)
    return (carry, ema), loss

  return step


def train_student(key: Array, student: nn.Module, teachers: Sequence[nn.Module],
                  teacher_vars: Sequence[Any], x: Array, labels: Array, recipe: Recipe,
                  num_classes: int, test: Callable[[Any], float] | None = None,
                  progress: Callable[[str], Any] | None = None) -> tuple[dict, dict]:
  """Train a fresh `student` on images x (n, H, W, C) with hard labels (n,) int under `recipe`;
  returns (`state_variables` of the last state, {'final_acc', 'best_last20_acc', 'val_accs'})
  with accuracies from test(variables) (absent without `test`); progress: a line every 30 s."""
  from ddjax.evaluate.soft_labels import validation_epochs
  x = jnp.asarray(x, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  n = int(x.shape[0])
  step = make_student_step(student, tuple(teachers), recipe, int(num_classes))
  k_init, k_loop = jax.random.split(key)
  state = init_state(student, k_init, x.shape[1:], recipe)
  teacher_vars = tuple(teacher_vars)
  checks = set(validation_epochs(recipe.epochs)) if test is not None else set()
  val = {}
  t0 = last = time.perf_counter()
  for epoch in range(recipe.epochs):
    k_epoch = jax.random.fold_in(k_loop, epoch)
    batches = epoch_batches(k_epoch, n, recipe.batch_size)
    for b in range(batches.shape[0]):
      state, loss = step(state, teacher_vars, x, labels, batches[b],
                         jax.random.fold_in(k_epoch, b + 1))
    if progress is not None and time.perf_counter() - last > 30:
      last = time.perf_counter()
      progress(f'epoch {epoch + 1}/{recipe.epochs}: loss {float(loss):.4f} ({last - t0:.0f} s)')
    if epoch + 1 in checks:
      val[epoch + 1] = test(state_variables(state))
  out = {}
  if test is not None:
    out = {'final_acc': val[recipe.epochs], 'best_last20_acc': max(val.values()),
           'val_accs': {str(k): v for k, v in val.items()}}
  return state_variables(state), out


def evaluate_students(key: Array, student: nn.Module, teachers: Sequence, x_syn, labels,
                      x_test, y_test, recipe: Recipe, num_classes: int, num_models: int = 1,
                      progress: Callable[[str], Any] | None = None,
                      members: Sequence[int] | None = None,
                      gather: Callable[[np.ndarray, int], np.ndarray] | None = None) -> dict:
  """`num_models` students (student i: the i-th of split(key, num_models)) on x_syn with the
  observers `teachers` (`ddjax.evaluate.observer.Observer`s), each tested on (x_test, y_test);
  members / gather as `ddjax.evaluate.soft_labels.evaluate_soft_label`. Returns {'accs',
  'acc_mean', 'acc_std'} (final) and {'best_last20_accs', 'best_last20_mean',
  'best_last20_std'} (selected on the test set)."""
  from ddjax.evaluate.train import accuracy
  test = lambda variables: accuracy(student, variables, x_test, y_test)
  keys = jax.random.split(key, num_models)
  models = [t.model for t in teachers]
  variables = [t.variables for t in teachers]
  finals, bests = [], []
  for i in (range(num_models) if members is None else members):
    t0 = time.perf_counter()
    _, res = train_student(keys[i], student, models, variables, x_syn, labels, recipe,
                           num_classes, test, progress)
    finals.append(res['final_acc'])
    bests.append(res['best_last20_acc'])
    if progress is not None:
      progress(f'student {i + 1}/{num_models}: {recipe.steps} steps in '
               f'{time.perf_counter() - t0:.1f} s, final acc {res["final_acc"]:.4f}, best over '
               f'the last 20 % of epochs {res["best_last20_acc"]:.4f}')
  if gather is not None:
    finals = [float(a) for a in gather(np.asarray(finals, np.float64), num_models)]
    bests = [float(a) for a in gather(np.asarray(bests, np.float64), num_models)]
  return {'accs': finals, 'acc_mean': float(np.mean(finals)), 'acc_std': float(np.std(finals)),
          'best_last20_accs': bests, 'best_last20_mean': float(np.mean(bests)),
          'best_last20_std': float(np.std(bests))}


def teachers_of(cfg: ml_collections.ConfigDict, data) -> list:
  """The observers of observer.ensemble (`get_observers`), or [the run's observer]."""
  from ddjax.evaluate import observer as observer_lib
  names = ensemble_names(cfg)
  if names:
    return observer_lib.get_observers(cfg, data, names)
  return [observer_lib.get_observer(cfg, data)]


def ensemble_agreement(teachers: Sequence, x_syn, y_syn) -> float:
  """The fraction of the set's images whose mean teacher logits' argmax is their label's class."""
  from ddjax.evaluate.train import predict
  logits = np.mean([predict(t.model, t.variables, x_syn)[0] for t in teachers], axis=0)
  return float(np.mean(logits.argmax(-1) == np.asarray(y_syn).argmax(-1)))


# -- the config block ------------------------------------------------------------------------------
def ensemble_block() -> ml_collections.ConfigDict:
  """cfg.ensemble: the 'ensemble' protocol's student recipe (EDC's CIFAR-10 one, CPU epochs)."""
  b = ml_collections.ConfigDict()
  b.loss = 'mse_ce'          # mse_ce (EDC, G-VBSM) | kl (SRe2L, at `temperature`)
  b.w_ce = 0.025             # mse_ce: hard-label CE weight (EDC 0.025, G-VBSM 0.15)
  b.temperature = 20.0       # kl only (SRe2L CIFAR 30)
  b.schedule = 'multistep'   # cosine | multistep (0.8/0.9/0.95 E, x0.5) | smoothed | linear
  b.zeta = 2.0               # smoothed / linear: EDC's zeta (--st)
  b.weight_decay = 0.01      # AdamW, weights only (EDC 0.01, G-VBSM 0)
  b.batch_size = ENSEMBLE_BATCH   # EDC paper 25, G-VBSM 100; eval.batch_size overrides
  b.epochs = ENSEMBLE_EPOCHS      # CPU default; official 1000
  b.min_crop = 0.08          # RandomResizedCrop scale (min_crop, 1); 1 = no crop
  b.flip = True
  b.mix = 'cutmix'           # cutmix (Beta(1, 1)) | mixup (Beta(0.8, 0.8), SRe2L) | none
  b.ema = 0.99               # EMA of the parameters, evaluated (EDC 0.99); 0 = off
  b.randaugment = False      # EDC's RandAugment: not implemented, True is refused
  return b


def validate_ensemble(cfg: ml_collections.ConfigDict) -> list[str]:
  from ddjax.infra.config_checks import get
  errors = choice_errors(cfg, 'ensemble.loss', LOSSES)
  errors += choice_errors(cfg, 'ensemble.schedule', SCHEDULES)
  errors += choice_errors(cfg, 'ensemble.mix', MIXES)
  errors += int_errors(cfg, 'ensemble.batch_size', 1)
  errors += int_errors(cfg, 'ensemble.epochs', 1)
  number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  ema = get(cfg, 'ensemble.ema')
  if not (number(ema) and 0.0 <= ema < 1.0):
    errors.append(f'ensemble.ema must lie in [0, 1) (0: off; EDC 0.99), got {ema!r}.')
  w_ce = get(cfg, 'ensemble.w_ce')
  if not (number(w_ce) and w_ce >= 0):
    errors.append(f'ensemble.w_ce must be a number >= 0 (EDC 0.025, G-VBSM 0.15), got {w_ce!r}.')
  crop = get(cfg, 'ensemble.min_crop')
  if not (number(crop) and 0.0 < crop <= 1.0):
    errors.append(f'ensemble.min_crop must lie in (0, 1] (1: no crop), got {crop!r}.')
  for key in ('zeta', 'temperature'):
    v = get(cfg, f'ensemble.{key}')
    if not (number(v) and v > 0):
      errors.append(f'ensemble.{key} must be a number > 0, got {v!r}.')
  wd = get(cfg, 'ensemble.weight_decay')
  if not (number(wd) and wd >= 0):
    errors.append(f'ensemble.weight_decay must be a number >= 0, got {wd!r}.')
  if get(cfg, 'ensemble.randaugment') not in (False, None):
    errors.append(randaugment_error())
  return errors


ENSEMBLE_BLOCK = registry.ConfigBlock('ensemble', ensemble_block, validate=validate_ensemble)


def ensemble_preset(cfg: ml_collections.ConfigDict, name: str, paper: bool = False,
                    observers: bool = False) -> ml_collections.ConfigDict:
  """Set cfg.ensemble to the named bundle ('edc', 'gvbsm', 'sre2l'; `PRESETS`), in place, and
  return cfg. The epochs stay as they are (the CPU budget) unless `paper` (the official 1000 /
  400); `observers`: also set observer.ensemble to the zoo's closest match to the paper's
  teachers (`ZOO_OBSERVERS`; 'sre2l' has one teacher: observer.ensemble emptied).
  ValueError naming the bundles for another name."""
  if name not in PRESETS:
    raise ValueError(f'unknown ensemble preset {name!r}; choose one of {tuple(PRESETS)}')
  values = dict(PRESETS[name])
  epochs = values.pop('epochs')
  cfg.ensemble.update(values)
  if paper:
    cfg.ensemble.epochs = epochs
  if observers:
    cfg.observer.ensemble = ZOO_OBSERVERS.get(name, '')
  return cfg


# -- the protocol ----------------------------------------------------------------------------------
def settings(n: int, num_classes, overrides: dict) -> dict:
  """EvalProtocol fields: the budget the registry and the suite read (batch, epochs, steps, lr,
  weight decay) at the block's defaults; the loss, schedule, crop and EMA come from cfg.ensemble
  (`recipe_of`), so the 'loss' and 'schedule' fields here are nearest stand-ins, not read."""
  del num_classes
  epochs = overrides.get('epochs', ENSEMBLE_EPOCHS)
  batch = max(1, min(int(overrides.get('batch_size', ENSEMBLE_BATCH)), n))
  per_epoch = math.ceil(n / batch)
  return dict(optimizer='adam', lr=ENSEMBLE_LR, momentum=0.0, weight_decay=0.01, loss='mse',
              schedule='step', decay_at=MULTISTEP_FRACTIONS[0], decay_factor=MULTISTEP_GAMMA,
              warmup_steps=0, batch_size=batch, steps=epochs * per_epoch, epochs=epochs,
              steps_per_epoch=per_epoch, decay_weights_only=True, augment=True,
              translate_frac=0.0, cutout_frac=0.0, flip=True)


def evaluate(cfg, data, syn: dict, plan, key) -> tuple[dict, str]:
  """eval.num_models students on the teachers' mean logits (`teachers_of`). Returns (results
  entries 'eval' and 'observers', the summary line)."""
  del plan
  n = int(syn['x'].shape[0])
  recipe = recipe_of(cfg, n)
  teachers = teachers_of(cfg, data)
  names = list(ensemble_names(cfg)) or ['observer']
  agreement = ensemble_agreement(teachers, syn['x'], syn['y'])
  log(f'{len(teachers)} teacher(s) {names}: their mean logits put {100 * agreement:.1f} % of the '
      'set in its labels\' classes')
  model = from_config(cfg.eval.model, data.num_classes)
  log(f'protocol ensemble: {recipe.epochs} epochs ({recipe.steps} steps), batch '
      f'{recipe.batch_size}, loss {recipe.loss}, schedule {recipe.schedule}, ema {recipe.ema}, '
      f'{cfg.eval.num_models} students')
  labels = np.asarray(syn['y']).argmax(-1)
  ev = evaluate_students(key, model, teachers, syn['x'], labels, data.x_test, data.y_test,
                         recipe, data.num_classes, cfg.eval.num_models, progress=log,
                         members=distributed.own_members(cfg.eval.num_models),
                         gather=distributed.gather_members)
  keys = ('accs', 'acc_mean', 'acc_std', 'best_last20_accs', 'best_last20_mean',
          'best_last20_std')
  entries = {'eval': {**{k: ev[k] for k in keys}, 'protocol': 'ensemble', 'steps': recipe.steps,
                      'epochs': recipe.epochs, 'batch_size': recipe.batch_size,
                      'recipe': dataclasses.asdict(recipe)},
             'observers': {'names': names, 'set_agreement': agreement,
                           'teachers': [dict(t.reference(), preprocessing=data.pre.kind)
                                        for t in teachers]}}
  what = 'EMA parameters' if recipe.ema > 0 else 'final'
  line = (f'test accuracy {100 * ev["acc_mean"]:.2f} +- {100 * ev["acc_std"]:.2f} % ({what}); '
          f'best over the last 20 % of epochs {100 * ev["best_last20_mean"]:.2f} %')
  return entries, line


def train(cfg, data, syn: dict, plan, key, model, overrides: dict) -> dict:
  """One student on the teachers' mean logits (`Protocol.train`): the variables it is tested
  with (EMA parameters when ensemble.ema > 0, live batch statistics)."""
  del plan
  recipe = recipe_of(cfg, int(syn['x'].shape[0]), overrides)
  teachers = teachers_of(cfg, data)
  variables, _ = train_student(key, model, [t.model for t in teachers],
                               [t.variables for t in teachers], syn['x'],
                               np.asarray(syn['y']).argmax(-1), recipe, data.num_classes)
  return variables


registry.register_protocol(registry.Protocol(
    name='ensemble', settings=settings, evaluate=evaluate, train=train,
    blocks=(OBSERVER_BLOCK, ENSEMBLE_BLOCK), reads_image_files=True,
    description="EDC / G-VBSM's evaluation: students on several observers' mean logits"))
