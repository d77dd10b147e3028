"""The distillation step shared by every distiller (docs/ARCHITECTURE.md, "The functional core").

With D = param.decode the stored set's parameterisation (the identity, or IDC's multi-formation)
and `record` the distiller's meta-loss record (`per_sample` or `per_class`,
`ddjax.distill.base.loss_record`):

    state  <- hooks.before_loss(D(S), state, batch, step)       (BiLP's selection; else nothing)
    loss(S) = mean(transform(record(D(S), state, batch)).loss) [+ distiller.regularizer(D(S))]
    S      <- optax update of S with grad loss(S)               (hooks.update_gate may refuse it)
    state  <- distiller.update(D(S), state)       (FRePo's model pool; nothing for KIP)

`make_step` returns one pure function `step(state, batch, key) -> (state, metrics)`. The run loop
takes `make_host_step`'s `HostStep`: that same function, jitted once, for most distillers; for a
distiller whose hooks declare a host-side schedule (`RunHooks.host_phase`: DC's network training
after an image update, or a new network after the last outer loop) the step's parts as separate
programs, the phase-dependent ones compiled once per phase and chosen on the host
(`host_driver`). The loop decides how the batch is sharded.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Hashable, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from ddjax.distill.base import (IDENTITY, NO_HOOKS, Distiller, SetParameterisation,
                                accepts_row_transforms, filled_hooks, loss_record)
from ddjax.transforms.base import LossTransform, mean_loss

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class DistillState:
  """Everything a run needs to continue: the checkpointed pytree.

  step: () int32, outer steps done. syn: the synthetic set {'x': (n,H,W,C), 'y': (n,K)}.
  opt_state: optax state of the synthetic set. distiller_state: the distiller's own state.
  transform_state: the loss transform's state.
  """
  step: Array
  syn: PyTree
  opt_state: PyTree
  distiller_state: PyTree
  transform_state: PyTree


OPTIMIZERS = ('lamb', 'adam', 'adabelief', 'sgd')


def make_syn_optimizer(name: str, lr: float, label_lr: float, steps: int,
                       learn_label: bool = True, schedule: str = 'cosine',
                       end_fraction: float = 0.0,
                       extra_lrs: dict[str, float] | None = None,
                       momentum: float = 0.0,
                       label_momentum: float | None = None,
                       betas: tuple[float, float] = (0.9, 0.999)) -> optax.GradientTransformation:
  """Optimizer of the synthetic set: images and labels each with their own learning rate.

  name: 'lamb' (FRePo), 'adam' (KIP), 'adabelief' (RFAD; optax's eps 1e-16 as RFAD's) or 'sgd'.
  schedule: 'cosine' (decay to end_fraction * lr over `steps`) or 'constant'. Labels are frozen
  (zero update) unless learn_label. extra_lrs: learning rates of further entries of the synthetic
  pytree (e.g. RFAD's Platt temperature 'log_temp'), same optimizer and schedule. momentum: SGD's
  (DC / DSA / DM / MTT: 0.5; ignored by the adaptive optimizers); label_momentum: the labels' SGD
  momentum when it differs (DATM: 0.9), None = momentum. betas: Adam's (b1, b2) (SRe2L's
  recovery: (0.5, 0.9)); the other optimizers keep their own.
  """
  def makers_for(m):
    return {'lamb': optax.lamb, 'adam': lambda lr: optax.adam(lr, b1=betas[0], b2=betas[1]),
            'adabelief': optax.adabelief,
            'sgd': lambda lr: optax.sgd(lr, momentum=m or None)}

  makers = makers_for(momentum)
  label_makers = makers_for(momentum if label_momentum is None else label_momentum)
  if name not in makers:
    raise ValueError(f'distill.optimizer={name!r}: choose one of {sorted(makers)}.')
  if schedule not in ('cosine', 'constant'):
    raise ValueError(f"distill.schedule={schedule!r}: choose 'cosine' or 'constant'.")

  def sched(peak):
    if schedule == 'constant':
      return peak
    return optax.cosine_decay_schedule(peak, max(int(steps), 1), alpha=end_fraction)

  transforms = {'x': makers[name](sched(lr)),
                'y': label_makers[name](sched(label_lr)) if learn_label else optax.set_to_zero()}
  for key, key_lr in (extra_lrs or {}).items():
    transforms[key] = makers[name](sched(key_lr))
  return optax.multi_transform(transforms, lambda syn: {k: k for k in syn})


def check_composable(distiller: Distiller, transform: LossTransform) -> None:
  """ValueError when `transform` works on real-example rows and `distiller` returns per-class
  records (ISA or drop-easiest on DC / DM would rank classes, not samples)."""
  if transform.per_row and not accepts_row_transforms(distiller):
    raise ValueError(f'loss transform {transform.name} ranks or pairs real examples, but '
                     f'{distiller.name} returns no per-example records ({distiller.record}); '
                     'turn the transform off (transform.drop_easiest=0, transform.isa_eps=0) '
                     'for this method.')


def _image_update(distiller: Distiller, transform: LossTransform,
                  optimizer: optax.GradientTransformation, classes: Array, state: DistillState,
                  d_state: PyTree, batch: dict[str, Array], k_loss: Array, k_transform: Array,
                  param: SetParameterisation):
  """The image update of one step, given the distiller's state after `before_loss`:
  -> (syn, opt_state, transform_state, metrics) (`make_step`'s metrics, less extra_metrics)."""
  record_fn, regularizer = loss_record(distiller), distiller.regularizer
  gate_fn = (distiller.hooks or NO_HOOKS).update_gate
  project_fn = (distiller.hooks or NO_HOOKS).project

  def loss_fn(syn):
    record = record_fn(param.decode(syn), d_state, batch, k_loss)
    out, t_state = transform.apply(record, state.transform_state, k_transform)
    loss = mean_loss(out)
    if regularizer is not None:
      loss = loss + regularizer(param.decode(syn), param.decode_classes(classes))
    return loss, (mean_loss(record), out.num_kept, t_state)

  (loss, (meta, kept, t_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.syn)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.syn)
  syn = optax.apply_updates(state.syn, updates)
  if project_fn is not None:   # a projection after the update (SRe2L's pixel-range clip)
    syn = project_fn(syn)
  metrics = {'loss': loss, 'meta_loss': meta, 'kept': jnp.asarray(kept, jnp.float32),
             'grad_norm': optax.tree.norm(grads)}
  if gate_fn is not None:   # a refused step keeps the set and the optimizer's state (DATM)
    gate = gate_fn(loss)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(gate, a, b), new, old)
    syn, opt_state = keep(syn, state.syn), keep(opt_state, state.opt_state)
    metrics['skipped'] = 1.0 - gate.astype(jnp.float32)
  return syn, opt_state, t_state, metrics


def _step_keys(key: Array) -> tuple[Array, Array, Array]:
  """(k_loss, k_transform, k_update) of one step: the same in the fused and the host-phased
  programs, so both draw the same bits."""
  k_loss, k_transform, k_update = jax.random.split(key, 3)
  return k_loss, k_transform, k_update


def make_step(distiller: Distiller, transform: LossTransform,
              optimizer: optax.GradientTransformation, classes: Array,
              param: SetParameterisation = IDENTITY) -> Callable:
  """Build `step(state, batch, key) -> (state, metrics)` (module docstring): one program with
  the traced `before_loss` hook and `update`. The run loop uses `make_host_step`, which is this
  for every distiller without a `host_phase` hook.

  distiller: a `ddjax.distill.base.Distiller`. transform: a `LossTransform`, checked against the
  distiller's record kind (`check_composable`).
  classes: (n,) class of each stored prototype (for label regularizers).
  param: the stored set's parameterisation (`ddjax.distill.base.SetParameterisation`); the
  distiller sees `param.decode(state.syn)`.
  metrics: loss (the optimized scalar), meta_loss (mean over the whole batch before any transform,
  weighted by a BiLP keep mask when the record has one), kept (rows left after selection, or
  their total weight), grad_norm; 'skipped' (1 when the `update_gate` hook refused the step) and
  the `extra_metrics` hook's.
  """
  check_composable(distiller, transform)
  hooks = filled_hooks(distiller)

  def step(state: DistillState, batch: dict[str, Array], key: Array):
    k_loss, k_transform, k_update = _step_keys(key)
    d_state = hooks.before_loss(param.decode(state.syn), state.distiller_state, batch,
                                state.step, k_loss)
    syn, opt_state, t_state, metrics = _image_update(distiller, transform, optimizer, classes,
                                                     state, d_state, batch, k_loss, k_transform,
                                                     param)
    decoded = param.decode(syn)
    d_state = distiller.update(decoded, d_state, k_update)
    metrics.update(hooks.extra_metrics(decoded, d_state, batch))
    new = DistillState(step=state.step + 1, syn=syn, opt_state=opt_state,
                       distiller_state=d_state, transform_state=t_state)
    return new, metrics

  return step


class HostStep(NamedTuple):
  """One outer step as jittable programs that the host chooses between (`make_host_step`).

  image(state, batch, key) -> (state, metrics): the step's image update (with `before_loss` and
    `update` when `phase` is None: then it is `make_step`'s fused step and the other two are None).
  prepare(state, batch, key, phase) -> state: `before_loss_at(phase, ...)`, run before `image`.
  finish(state, batch, key, phase) -> (state, metrics): `update_at(phase, ...)` and the
    distiller's extra metrics, run after `image`.
  phase(step) -> hashable: the distiller's `host_phase` hook (host-side, a pure function of the step
    counter), static in prepare / finish: compile them once per phase (`host_driver`).
  """
  image: Callable
  prepare: Callable | None = None
  finish: Callable | None = None
  phase: Callable[[int], Hashable] | None = None


def make_host_step(distiller: Distiller, transform: LossTransform,
                   optimizer: optax.GradientTransformation, classes: Array,
                   param: SetParameterisation = IDENTITY) -> HostStep:
  """The step of `make_step` as host-chosen programs (`HostStep`) when the distiller's hooks
  declare a `host_phase`, else `make_step`'s single program. The programs compute what
  `make_step` computes (same keys, same order: before_loss, image update, update), so a
  host-phased run equals a fused one up to floating-point reassociation across program
  boundaries; what they drop is the device-side branch between phases (DC's `lax.cond` over a
  network training that would otherwise sit in every step's program)."""
  host_phase = (distiller.hooks or NO_HOOKS).host_phase
  if host_phase is None:
    return HostStep(image=make_step(distiller, transform, optimizer, classes, param))
  check_composable(distiller, transform)
  hooks = filled_hooks(distiller)

  def prepare(state: DistillState, batch: dict[str, Array], key: Array, phase: Hashable):
    k_loss = _step_keys(key)[0]
    return state.replace(distiller_state=hooks.before_loss_at(
        phase, param.decode(state.syn), state.distiller_state, batch, state.step, k_loss))

  def image(state: DistillState, batch: dict[str, Array], key: Array):
    k_loss, k_transform, _ = _step_keys(key)
    syn, opt_state, t_state, metrics = _image_update(
        distiller, transform, optimizer, classes, state, state.distiller_state, batch, k_loss,
        k_transform, param)
    return state.replace(step=state.step + 1, syn=syn, opt_state=opt_state,
                         transform_state=t_state), metrics

  def finish(state: DistillState, batch: dict[str, Array], key: Array, phase: Hashable):
    k_update = _step_keys(key)[2]
    decoded = param.decode(state.syn)
    d_state = hooks.update_at(phase, decoded, state.distiller_state, k_update)
    return (state.replace(distiller_state=d_state),
            hooks.extra_metrics(decoded, d_state, batch))

  return HostStep(image=image, prepare=prepare, finish=finish, phase=host_phase)


def host_driver(parts: HostStep | Callable, jit: Callable = jax.jit) -> Callable:
  """`run(s, state, batch, key) -> (state, metrics)`: outer step s (the host's step counter,
  == state.step) through `parts`, each program jitted by `jit(fn)` once (prepare / finish once
  per phase, on first use). `parts` may also be a plain fused step function."""
  if callable(parts):
    parts = HostStep(image=parts)
  image = jit(parts.image)
  if parts.phase is None:
    return lambda s, state, batch, key: image(state, batch, key)
  programs: dict = {}

  def run(s: int, state: DistillState, batch: dict[str, Array], key: Array):
    phase = parts.phase(s)
    if phase not in programs:
      programs[phase] = (jit(functools.partial(parts.prepare, phase=phase)),
                         jit(functools.partial(parts.finish, phase=phase)))
    prepare, finish = programs[phase]
    state = prepare(state, batch, key)
    state, metrics = image(state, batch, key)
    state, extra = finish(state, batch, key)
    return state, {**metrics, **extra}

  return run


def init_state(distiller: Distiller, transform: LossTransform,
               optimizer: optax.GradientTransformation,
               syn: PyTree, key: Array,
               param: SetParameterisation = IDENTITY) -> DistillState:
  """The state at step 0: `syn` the stored set, the distiller initialised on `param.decode(syn)`."""
  chex.assert_rank(syn['x'], 4)
  chex.assert_equal_shape_prefix([syn['x'], syn['y']], 1)
  return DistillState(step=jnp.zeros((), jnp.int32), syn=syn, opt_state=optimizer.init(syn),
                      distiller_state=distiller.init(param.decode(syn), key),
                      transform_state=transform.init())
