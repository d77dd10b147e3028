"""The distillation step shared by every distiller (DESIGN: "The functional core").

    loss(S) = mean(transform(distiller.per_sample(S, inner, batch)).loss) + distiller.regularizer(S)
    S      <- optax update of S with grad loss(S)
    inner  <- distiller.update(S, inner)          (FRePo's model pool; nothing for KIP)

`make_step` returns one pure function `step(state, batch, key) -> (state, metrics)`, jitted once by
the run loop, which also decides how the batch is sharded.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ddjax.transforms.base import LossTransform, mean_loss

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class DistillState:
  """Everything a run needs to continue: the checkpointed pytree.

  step: () int32, outer steps done. syn: the synthetic set {'x': (n,H,W,C), 'y': (n,K)}.
  opt_state: optax state of the synthetic set. inner: the distiller's own state.
  transform_state: the loss transform's state.
  """
  step: Array
  syn: PyTree
  opt_state: PyTree
  inner: PyTree
  transform_state: PyTree


OPTIMIZERS = ('lamb', 'adam', 'adabelief', 'sgd')


def make_syn_optimizer(name: str, lr: float, label_lr: float, steps: int,
                       learn_label: bool = True, schedule: str = 'cosine',
                       end_fraction: float = 0.0,
                       extra_lrs: dict[str, float] | None = None,
                       momentum: float = 0.0) -> optax.GradientTransformation:
  """Optimizer of the synthetic set: images and labels each with their own learning rate.

  name: 'lamb' (FRePo), 'adam' (KIP), 'adabelief' (RFAD; optax's eps 1e-16 as RFAD's) or 'sgd'.
  schedule: 'cosine' (decay to end_fraction * lr over `steps`) or 'constant'. Labels are frozen
  (zero update) unless learn_label. extra_lrs: learning rates of further entries of the synthetic
  pytree (e.g. RFAD's Platt temperature 'log_temp'), same optimizer and schedule. momentum: SGD's
  (DC / DSA / DM: 0.5; ignored by the adaptive optimizers).
  """
  makers = {'lamb': optax.lamb, 'adam': optax.adam, 'adabelief': optax.adabelief,
            'sgd': lambda lr: optax.sgd(lr, momentum=momentum or None)}
  if name not in makers:
    raise ValueError(f'distill.optimizer={name!r}: choose one of {sorted(makers)}.')
  if schedule not in ('cosine', 'constant'):
    raise ValueError(f"distill.schedule={schedule!r}: choose 'cosine' or 'constant'.")

  def sched(peak):
    if schedule == 'constant':
      return peak
    return optax.cosine_decay_schedule(peak, max(int(steps), 1), alpha=end_fraction)

  transforms = {'x': makers[name](sched(lr)),
                'y': makers[name](sched(label_lr)) if learn_label else optax.set_to_zero()}
  for key, key_lr in (extra_lrs or {}).items():
    transforms[key] = makers[name](sched(key_lr))
  return optax.multi_transform(transforms, lambda syn: {k: k for k in syn})


def make_step(distiller, transform: LossTransform, optimizer: optax.GradientTransformation,
              classes: Array) -> Callable:
  """Build `step(state, batch, key) -> (state, metrics)`.

  distiller: has per_sample(syn, inner, batch, key), regularizer(syn, classes) and
    update(syn, inner, key); optionally before_loss(syn, inner, batch, key, step) -> inner, run
    first with per_sample's key (BiLP's adaptive selection).
  classes: (n,) class of each prototype (for label regularizers).
  metrics: loss (the optimized scalar), meta_loss (mean over the whole batch before any transform,
  weighted by a BiLP keep mask when the record has one), kept (rows left after selection, or
  their total weight), grad_norm.
  """

  before_loss = getattr(distiller, 'before_loss', None)

  def step(state: DistillState, batch: dict[str, Array], key: Array):
    k_loss, k_transform, k_update = jax.random.split(key, 3)
    inner = state.inner
    if before_loss is not None:       # e.g. BiLP's adaptive selection of the real batch
      inner = before_loss(state.syn, inner, batch, k_loss, state.step)

    def loss_fn(syn):
      ps = distiller.per_sample(syn, inner, batch, k_loss)
      out, t_state = transform.apply(ps, state.transform_state, k_transform)
      loss = mean_loss(out) + distiller.regularizer(syn, classes)
      return loss, (mean_loss(ps), out.num_kept, t_state)

    (loss, (meta, kept, t_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.syn)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.syn)
    syn = optax.apply_updates(state.syn, updates)
    inner = distiller.update(syn, inner, k_update)
    metrics = {'loss': loss, 'meta_loss': meta, 'kept': jnp.asarray(kept, jnp.float32),
               'grad_norm': optax.tree.norm(grads)}
    new = DistillState(step=state.step + 1, syn=syn, opt_state=opt_state, inner=inner,
                       transform_state=t_state)
    return new, metrics

  return step


def init_state(distiller, transform: LossTransform, optimizer: optax.GradientTransformation,
               syn: PyTree, key: Array) -> DistillState:
  """The state at step 0."""
  return DistillState(step=jnp.zeros((), jnp.int32), syn=syn, opt_state=optimizer.init(syn),
                      inner=distiller.init(key, syn), transform_state=transform.init())
