r"""Recovery from a trained observer: the shared math of the decoupled "squeeze, recover, relabel"
family (SRe2L, CDA, EDC, G-VBSM). Registers no method; `ddjax.distill.sre2l`, `cda`, ... do.

Squeeze: a classifier (the observer, `ddjax.evaluate.observer`) is trained on the real data once.
Recover: synthetic images, from noise (or real images), are optimised so that the observer

  - classifies them as their class (cross-entropy on the target class), and
  - sees, at every batch-norm layer l, batch statistics equal to its running ones (SRe2L Eq. 4-6,
    the DeepInversion regulariser; the official BNFeatureHook, recover/utils.py):

      R_BN(x) = sum_l m_l ( || mu_l(x) - mu_l^run ||_2 + || sigma^2_l(x) - sigma^2_l^run ||_2 ),

    mu_l, sigma^2_l the per-channel mean and biased variance of the layer's INPUT over the batch
    and the spatial positions, m_1 = `first_bn_multiplier` (10) for the first layer, 1 after.

  L(x_g) = CE(observer(A(x_g)), c_g) + r_bn R_BN(A(x_g)), the loss of one batch x_g of images, A
  a random view drawn once for the whole batch each iteration (torchvision's transforms on a
  batched tensor draw one set of parameters): RandomResizedCrop(scale (lo, hi)) and a horizontal
  flip (the ImageNet scripts; off in the CIFAR scripts), then a roll by (0..jitter, 0..jitter)
  pixels with wrap-around. CDA (`crop_lower_bound`) lowers lo from 1 to `min_crop` over the first
  `milestone` fraction of the iterations (easy to hard).

Relabel: the set is evaluated by students on the observer's soft labels (the 'rded' protocol).

The set is recovered in batches as the official code: batch (i, j) holds the i-th image of the
classes j B .. (j + 1) B - 1 (B = `batch_size`, at most K), so batch statistics mix classes as
theirs do. All batches move in one jitted step (vmapped): their losses are independent, so the
mean over batches gives each batch its own gradient up to the factor 1 / G, which Adam ignores
(up to its eps). Images are clipped to the valid pixel range after every update (`project`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddjax.augment.patches import crop_resize, rrc_boxes
from ddjax.distill.base import PER_SET, Distiller, RunHooks
from ddjax.transforms.base import PerClass

Array = jax.Array
PyTree = Any

CURRICULA = ('none', 'step', 'linear', 'cosine')


class BNStat(NamedTuple):
  """One batch-norm layer as a batch sees it: the batch's per-channel mean and biased variance
  of the layer's input (C,), and the layer's running ones (C,)."""
  name: str
  mean: Array
  var: Array
  running_mean: Array
  running_var: Array


def channel_moments(h: Array) -> tuple[Array, Array]:
  """Per-channel mean and biased variance of h (..., C) over every axis but the last: (C,), (C,)
  (PyTorch's mean([0, 2, 3]) and var(unbiased=False) of an NCHW input)."""
  axes = tuple(range(h.ndim - 1))
  mean = jnp.mean(h, axis=axes)
  var = jnp.mean(jnp.square(h - mean), axis=axes)
  return mean, var


def apply_with_bn_statistics(model: nn.Module, variables: PyTree, x: Array,
                             **kwargs) -> tuple[Any, list[BNStat]]:
  """model.apply(variables, x, train=False, **kwargs) and, for every `flax.linen.BatchNorm` it
  calls (in call order), the `BNStat` of its input. Works for any Flax model: the layers are
  found by method interception, not by name."""
  stats: list[BNStat] = []

  def interceptor(next_fun, args, kw, context):
    module = context.module
    if isinstance(module, nn.BatchNorm) and context.method_name == '__call__':
      mean, var = channel_moments(args[0])
      running = module.variables['batch_stats']
      stats.append(BNStat('/'.join(str(p) for p in module.path), mean, var,
                          running['mean'], running['var']))
    return next_fun(*args, **kw)

  with nn.intercept_methods(interceptor):
    out = model.apply(variables, x, train=False, **kwargs)
  return out, stats


def bn_matching_loss(stats: Sequence[BNStat], first_multiplier: float = 10.0) -> Array:
  """R_BN (module docstring): sum_l m_l (||mu_l - mu_l^run||_2 + ||var_l - var_l^run||_2), with
  m_1 = first_multiplier and 1 for the later layers. () float32; 0 without layers."""
  total = jnp.zeros((), jnp.float32)
  for i, s in enumerate(stats):
    term = (jnp.linalg.norm(s.running_var - s.var) + jnp.linalg.norm(s.running_mean - s.mean))
    total = total + (first_multiplier if i == 0 else 1.0) * term
  return total


def crop_lower_bound(step: Array, total: int, mode: str = 'none', milestone: float = 0.0,
                     min_crop: float = 0.08, max_crop: float = 1.0) -> Array:
  """The lower bound of RandomResizedCrop's scale at iteration `step` of `total` (CDA's
  easy-to-hard curriculum, recover_cda_*.py): for step < milestone * total,
      'step':   max_crop,
      'linear': min_crop + (max_crop - min_crop) (1 - step / (milestone total)),
      'cosine': min_crop + (max_crop - min_crop) (1 + cos(pi step / (milestone total))) / 2,
  and min_crop afterwards (and always for 'none', SRe2L). () float32; jittable in `step`."""
  if mode not in CURRICULA:
    raise ValueError(f'crop curriculum {mode!r}: choose one of {CURRICULA}')
  step = jnp.asarray(step, jnp.float32)
  span = max(float(milestone) * int(total), 1e-9)
  frac = step / span
  if mode == 'none' or milestone <= 0:
    return jnp.asarray(min_crop, jnp.float32)
  if mode == 'step':
    early = jnp.asarray(max_crop, jnp.float32)
  elif mode == 'linear':
    early = min_crop + (max_crop - min_crop) * (1.0 - frac)
  else:
    early = min_crop + (max_crop - min_crop) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
  return jnp.where(step < span, early, min_crop).astype(jnp.float32)


class View(NamedTuple):
  """The random view of a batch during recovery (module docstring): crop (RandomResizedCrop with
  scale (lower bound, max_crop)), flip, jitter (roll by up to this many pixels)."""
  crop: bool = True
  max_crop: float = 1.0
  flip: bool = True
  jitter: int = 0


def recovery_view(key: Array, x: Array, view: View, min_crop: Array) -> Array:
  """One random view of a batch x (B, H, W, C), one draw for the whole batch: RandomResizedCrop
  (`ddjax.augment.patches.rrc_boxes`, scale (min_crop, view.max_crop), aspect (3/4, 4/3)) resized
  back to H x W (bilinear), a horizontal flip with probability 1/2, a roll by (u, v) pixels, u, v
  uniform in 0..jitter, with wrap-around. Returns (B, H, W, C)."""
  k_crop, k_flip, k_roll = jax.random.split(key, 3)
  _, h, w, _ = x.shape
  if view.crop:
    box = rrc_boxes(k_crop, 1, h, w, (min_crop, view.max_crop))[0]
    x = jax.vmap(lambda im: crop_resize(im, box, h, w))(x)
  if view.flip:
    x = jnp.where(jax.random.bernoulli(k_flip), x[:, :, ::-1], x)
  if view.jitter > 0:
    off = jax.random.randint(k_roll, (2,), 0, view.jitter + 1)
    x = jnp.roll(x, (off[0], off[1]), axis=(1, 2))
  return x


def batch_layout(num_classes: int, ipc: int, batch_size: int) -> tuple[int, int]:
  """(classes per batch B, batches per IPC index) of the recovery batches: B = min(batch_size,
  K). ValueError when B does not divide K."""
  b = min(int(batch_size), int(num_classes))
  if num_classes % b:
    raise ValueError(f'recover.batch_size={batch_size} must divide the number of classes '
                     f'({num_classes}) or be at least it: every recovery batch holds one image '
                     'of each of its classes.')
  return b, num_classes // b


def to_batches(x: Array, num_classes: int, ipc: int, batch_size: int) -> Array:
  """The class-sorted set x (K * ipc, ...) (row c * ipc + i: image i of class c) -> the recovery
  batches (G, B, ...), G = ipc * K / B: batch i * (K / B) + j holds image i of classes
  j B .. (j + 1) B - 1. `from_batches` inverts it."""
  b, per = batch_layout(num_classes, ipc, batch_size)
  rest = x.shape[1:]
  xi = x.reshape((num_classes, ipc) + rest).swapaxes(0, 1)          # (ipc, K, ...)
  return xi.reshape((ipc * per, b) + rest)


def from_batches(xb: Array, num_classes: int, ipc: int) -> Array:
  """Inverse of `to_batches`: (G, B, ...) -> (K * ipc, ...), class-sorted."""
  rest = xb.shape[2:]
  return xb.reshape((ipc, num_classes) + rest).swapaxes(0, 1).reshape(
      (num_classes * ipc,) + rest)


class ObserverNet(NamedTuple):
  """A trained observer as the recovery sees it: its Flax model and variables (with
  'batch_stats'). Its apply returns (logits, features)."""
  model: nn.Module
  variables: PyTree


class RecoverState(NamedTuple):
  """The recovery's state: the iteration counter (the crop curriculum reads it)."""
  step: Array


class Recovery(Distiller):
  """SRe2L's recovery as a distiller (module docstring): no real batches, one record for the set
  (`PER_SET`), the observer fixed. Subclasses change `batch_loss` (EDC, G-VBSM).

  Args:
    observer: the `ObserverNet`.
    num_classes, ipc: K and images per class; the stored set is class-sorted.
    iterations: T, the run's steps (the curriculum's horizon).
    batch_size: classes per recovery batch (official: 100; at most K).
    r_bn: the weight of R_BN. first_bn_multiplier: m_1.
    view: the random view (`View`). curriculum, milestone, min_crop: `crop_lower_bound`.
    project: the set's projection after every update (clip to the pixel range), or None.
    image_shape: (H, W, C) of the images (the dummy batch's).
  """

  record = PER_SET

  def __init__(self, observer: ObserverNet, num_classes: int, ipc: int, iterations: int,
               batch_size: int = 100, r_bn: float = 0.01, first_bn_multiplier: float = 10.0,
               view: View = View(), curriculum: str = 'none', milestone: float = 0.0,
               min_crop: float = 0.08, project: Callable[[Array], Array] | None = None,
               image_shape: tuple = ()):
    self.observer = observer
    self.num_classes, self.ipc = int(num_classes), int(ipc)
    self.iterations = int(iterations)
    self.batch_size = int(batch_size)
    batch_layout(self.num_classes, self.ipc, self.batch_size)     # its error, now
    self.r_bn, self.first_bn_multiplier = float(r_bn), float(first_bn_multiplier)
    self.view = view
    crop_lower_bound(0, 1, curriculum, milestone)                   # its error, now
    self.curriculum, self.milestone, self.min_crop = curriculum, float(milestone), float(min_crop)
    self.project_images = project
    self.image_shape = tuple(image_shape)

  def init(self, syn, key):
    del syn, key
    return RecoverState(step=jnp.zeros((), jnp.int32))

  def update(self, syn, state, key):
    del syn, key
    return RecoverState(step=state.step + 1)

  def lower_crop(self, step: Array) -> Array:
    """The crop scale's lower bound at `step` (`crop_lower_bound`)."""
    return crop_lower_bound(step, self.iterations, self.curriculum, self.milestone,
                            self.min_crop, self.view.max_crop)

  def batch_terms(self, x: Array, classes: Array, key: Array, step: Array) -> dict[str, Array]:
    """The loss terms of one recovery batch x (B, H, W, C) of classes (B,) under one random view:
    {'ce': mean cross-entropy on the classes, 'bn': R_BN}."""
    xv = recovery_view(key, x, self.view, self.lower_crop(step))
    (logits, _), stats = apply_with_bn_statistics(self.observer.model, self.observer.variables,
                                                  xv)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, classes).mean()
    return {'ce': ce, 'bn': bn_matching_loss(stats, self.first_bn_multiplier)}

  def batch_loss(self, terms: dict[str, Array]) -> Array:
    """L = CE + r_bn R_BN of one batch (module docstring)."""
    return terms['ce'] + self.r_bn * terms['bn']

  def terms(self, syn: PyTree, state: RecoverState, key: Array) -> dict[str, Array]:
    """Every recovery batch's terms, (G,) each (`to_batches` order)."""
    xb = to_batches(syn['x'], self.num_classes, self.ipc, self.batch_size)
    cb = to_batches(jnp.repeat(jnp.arange(self.num_classes), self.ipc), self.num_classes,
                    self.ipc, self.batch_size)
    keys = jax.random.split(key, xb.shape[0])
    return jax.vmap(lambda x, c, k: self.batch_terms(x, c, k, state.step))(xb, cb, keys)

  def per_class(self, syn: PyTree, state: RecoverState, batch, key: Array) -> PerClass:
    """One row: the mean over the recovery batches of their losses (the batch is unused)."""
    del batch
    t = self.terms(syn, state, key)
    return PerClass(loss=jnp.mean(self.batch_loss(t))[None])

  # -- run hooks -----------------------------------------------------------------------------------
  @property
  def hooks(self) -> RunHooks:
    return RunHooks(batch_sampler=self.batch_sampler, project=self.project)

  def project(self, syn: PyTree) -> PyTree:
    if self.project_images is None:
      return syn
    return dict(syn, x=self.project_images(syn['x']))

  def batch_sampler(self, seed: int):
    """No real data is read while recovering: every step gets the same empty batch."""
    del seed
    empty = {'x': np.zeros((1,) + self.image_shape, np.float32)}
    return lambda step: empty

  # -- reading a set -------------------------------------------------------------------------------
  def observer_reading(self, x: Array) -> dict:
    """How the observer reads a set x (K * ipc, H, W, C) as it stands (no view): the recovery's
    CE and R_BN averaged over its batches (unaugmented), and the observer's accuracy on it."""
    xb = to_batches(jnp.asarray(x), self.num_classes, self.ipc, self.batch_size)
    cb = to_batches(jnp.repeat(jnp.arange(self.num_classes), self.ipc), self.num_classes,
                    self.ipc, self.batch_size)

    def one(xg, cg):
      (logits, _), stats = apply_with_bn_statistics(self.observer.model,
                                                    self.observer.variables, xg)
      return (optax.softmax_cross_entropy_with_integer_labels(logits, cg).mean(),
              bn_matching_loss(stats, self.first_bn_multiplier),
              jnp.mean(jnp.argmax(logits, -1) == cg))

    ce, bn, acc = jax.jit(jax.vmap(one))(xb, cb)
    return {'ce': float(ce.mean()), 'bn': float(bn.mean()), 'observer_acc': float(acc.mean())}


# -- the family's config block and build ---------------------------------------------------------
def recover_block():
  """cfg.recover: the recovery's settings, shared by SRe2L, CDA, EDC and G-VBSM (each method's
  `configure` sets its own values; these defaults are SRe2L's CIFAR script's)."""
  import ml_collections
  b = ml_collections.ConfigDict()
  b.batch_size = 100            # classes per recovery batch (at most K)
  b.r_bn = 0.01                 # weight of R_BN
  b.first_bn_multiplier = 10.0  # m_1, the first BN layer's extra weight
  b.crop = False                # RandomResizedCrop each iteration (ImageNet scripts: on)
  b.min_crop = 0.08             # its scale's lower bound (after the curriculum)
  b.max_crop = 1.0
  b.flip = False                # random horizontal flip each iteration (ImageNet scripts: on)
  b.jitter = 4                  # roll by up to this many pixels (CIFAR 4, ImageNet 32)
  b.curriculum = 'none'         # CDA's crop curriculum: none | step | linear | cosine
  b.milestone = 0.0             # the fraction of the iterations it spans
  return b


def validate_recover(cfg) -> list[str]:
  from ddjax.infra.config_checks import choice_errors, fraction_errors, int_errors
  r, errors = cfg.recover, []
  errors += int_errors(cfg, 'recover.batch_size', 1) + int_errors(cfg, 'recover.jitter', 0)
  errors += choice_errors(cfg, 'recover.curriculum', CURRICULA)
  errors += fraction_errors(cfg, 'recover.milestone', closed=True)
  if not (isinstance(r.min_crop, (int, float)) and isinstance(r.max_crop, (int, float))
          and 0.0 < r.min_crop <= r.max_crop <= 1.0):
    errors.append(f'recover.min_crop={r.min_crop!r} and recover.max_crop={r.max_crop!r} must '
                  'satisfy 0 < min_crop <= max_crop <= 1 (fractions of the image area).')
  for key in ('r_bn', 'first_bn_multiplier'):
    if not isinstance(r[key], (int, float)) or r[key] < 0:
      errors.append(f'recover.{key} must be a number >= 0, got {r[key]!r}.')
  return errors


def recovery_kwargs(cfg) -> dict:
  """`Recovery`'s keyword arguments from cfg.recover and cfg.distill.steps."""
  r = cfg.recover
  return dict(iterations=int(cfg.distill.steps), batch_size=int(r.batch_size),
              r_bn=float(r.r_bn), first_bn_multiplier=float(r.first_bn_multiplier),
              view=View(crop=bool(r.crop), max_crop=float(r.max_crop), flip=bool(r.flip),
                        jitter=int(r.jitter)),
              curriculum=str(r.curriculum), milestone=float(r.milestone),
              min_crop=float(r.min_crop))


def pixel_projection(data) -> Callable[[Array], Array]:
  """x -> x clipped to the pixel range [0, 1] in the data's preprocessed space (the official
  `clip` after every update; `ddjax.data.preprocess.clip_to_pixel_range`)."""
  import functools

  from ddjax.data.preprocess import clip_to_pixel_range
  return functools.partial(clip_to_pixel_range, data.pre)


def observer_net(cfg, data) -> ObserverNet:
  """The run's observer (`ddjax.evaluate.observer.get_observer`: trained once, cached)."""
  from ddjax.evaluate.observer import get_observer
  obs = get_observer(cfg, data)
  return ObserverNet(obs.model, obs.variables)


def configure_recovery(cfg, preset: str) -> None:
  """What the family shares: SRe2L's recovery optimiser (Adam lr 0.25, betas (0.5, 0.9), cosine
  to 0 per iteration, recover_cifar.py:62-63 and recover_cifar.sh), noise initialisation, one-hot
  labels (the images are relabelled by the observer), the 'rded' protocol's students (the
  observer's architecture: ConvNet-3, batch norm, width 128 on Fashion-MNIST)."""
  d = cfg.distill
  d.steps = 1000
  d.optimizer = 'adam'
  d.lr = 0.25
  d.adam_b1, d.adam_b2 = 0.5, 0.9
  d.schedule = 'cosine'
  d.end_fraction = 0.0
  d.init = 'noise'
  d.learn_label = False
  d.label_init = 'one_hot'
  d.batch_size = 10                # unused: the recovery reads no real batches
  cfg.eval.model.norm = 'batch'
  cfg.eval.model.width = 128
  cfg.eval.num_models = 1
  cfg.eval.krr = False
  cfg.checkpoint.every = 200
  del preset
