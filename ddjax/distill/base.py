"""The distiller interface: a small core, and optional pieces that compose with it.

A distiller is a bundle of pure functions over the synthetic set `syn` (a pytree, at least
{'x': (n, H, W, C), 'y': (n, K)}) and its own state (`state`: FRePo's model pool, DC's network,
nothing for KIP). Argument order is the same everywhere: the synthetic set, the distiller's state,
the real batch, then the PRNG key last. The core, driven by `ddjax.distill.step.make_step`:

    state  = d.init(syn, key)
    record = d.per_sample(syn, state, batch, key)   # -> PerSample, when d.record == PER_SAMPLE
    record = d.per_class(syn, state, batch, key)    # -> PerClass, when PER_CLASS or PER_SET
    loss   = mean_loss(transform(record)) [+ d.regularizer(syn, classes), when declared]
    state  = d.update(syn, state, key)              # the method's inner loop

Declared capabilities (class attributes, read by wrappers, the config and the step, never found
by `isinstance`):

- `record`: `PER_SAMPLE` (one `PerSample` row per real example whose mean is the meta-loss: the
  KRR family; row transforms such as ISA and BiLP's row weights apply), `PER_CLASS` (a `PerClass`
  record, one row per class: the matching methods) or `PER_SET` (a one-row `PerClass`: trajectory
  matching's distance between parameter vectors). `loss_record(d)` is the method it names.
- `additive_form`: implemented (not None) when the meta-loss is additive-separable over real
  samples, L(G, S) with G = sum_i g(x_i) (DC, DM): BiLP's ITE works on it
  (`ddjax.scoring.ite.additive_ite_scores`).
- `regularizer(syn, classes) -> ()`: None, or a scalar on the set added to the meta-loss outside
  the record (FRePo's label margin; `classes` (n,) the class of each image). It stays out of the
  record so that row transforms (ISA, drop-easiest, BiLP's weights) never see it.
- `hooks`: None, or a `RunHooks` of the run-loop's optional pieces (BiLP's selection, DC's
  host-side phases, MTT's expert batches and metrics, DATM's gate and initial set).

Two further kinds of piece sit beside the core. A `SetParameterisation` maps the stored set (what
the optimizer updates) to the set the distiller trains on and exports (identity by default; IDC's
multi-formation), and is passed to the step. A `SetBuilder` (RDED, the random subset) is a method
of its own kind, `kind = SET_BUILDER`: it builds the set once, with no meta-loss and no steps.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Hashable, NamedTuple

import jax

Array = jax.Array
PyTree = Any

PER_SAMPLE = 'per_sample'
PER_CLASS = 'per_class'
NO_META_LOSS = 'none'      # a set builder: no meta-loss, no steps
PER_SET = 'per_set'        # one meta-loss for the whole set, not additive over real examples
                           # (trajectory matching: a distance between parameter vectors)
DISTILLER = 'distiller'    # `kind`: a method that optimises its set against a meta-loss
SET_BUILDER = 'set_builder'  # `kind`: a method that builds its set once (`SetBuilder`)


def accepts_row_transforms(distiller) -> bool:
  """Whether row transforms (drop-easiest, ISA, BiLP's row weights) apply: one record per real
  example. `distiller`: an instance or a class (capabilities are class attributes)."""
  return distiller.record == PER_SAMPLE


def has_ite_form(distiller) -> bool:
  """Whether BiLP's ITE applies: per-sample meta-losses or a declared additive form."""
  return accepts_row_transforms(distiller) or distiller.additive_form is not None


def loss_record(distiller) -> Callable:
  """The distiller's meta-loss record function, (syn, state, batch, key) -> record: `per_sample`
  when it declares `record = PER_SAMPLE`, else `per_class`."""
  if distiller.kind != DISTILLER:
    raise TypeError(f'{distiller.name} is a {distiller.kind}: it builds its set once (`build`) '
                    'and takes no distillation steps.')
  method = 'per_sample' if distiller.record == PER_SAMPLE else 'per_class'
  fn = getattr(distiller, method, None)
  if fn is None:
    raise TypeError(f'{distiller.name} declares record {distiller.record!r} but defines no '
                    f'{method}(syn, state, batch, key); define it or change `record`.')
  return fn


class AdditiveForm(NamedTuple):
  """A meta-loss that is additive over real samples, class by class (BiLP's Eq. 6-7 setting).

  `build(*args_c, keys[c])` returns, for one class c, a `ddjax.scoring.ite.Separable` (distance,
  features, G, S, g); `args` are arrays with a leading class axis K and `keys` (K,) the per-class
  keys of the meta-loss (its DSA draws), so `jax.vmap` over the class axis scores every class at
  once (`ddjax.scoring.ite.additive_ite_scores`). The scores come back class-grouped (K, B / K), in
  the order of `ddjax.distill.matching.group_by_class`.
  """
  build: Callable[..., Any]
  args: tuple
  keys: Array


class RunHooks(NamedTuple):
  """Optional pieces of a run that only some methods have; None: the default (in brackets).

  before_loss(syn, state, batch, step, key) -> state: runs first in every step, with the meta-loss
    key (BiLP's adaptive selection) [state unchanged].
  host_phase(step) -> hashable: a host-side schedule, a pure function of the outer step counter
    (the step that takes `state.step` from `step` to `step + 1`), so a resumed run takes the same
    phases. The run then compiles the step as separate programs chosen on the host
    (`ddjax.distill.step.make_host_step`), with no device-side branch between phases (DC trains
    its network or draws a new one) [one fused program per step].
  before_loss_at(phase, syn, state, batch, step, key) -> state, update_at(phase, syn, state, key)
    -> state: `before_loss` and the core's `update` at a step of the static `phase` [those two].
  batch_sampler(seed) -> sampler(step) -> host batch: the method's own batches, a pure function of
    (seed, step), replicated on every device (MTT's expert snapshots) [the run's real batches].
  extra_metrics(syn, state, batch) -> {name: ()}: scalars logged with the step's [none].
  problem(metrics) -> message or None: a host-side check of one step's metrics (floats) that stops
    the run (MTT's step size going negative) [none].
  update_gate(loss) -> () bool: False keeps the set and its optimizer state (DATM) [always True].
  initial_set(syn, key) -> syn: the step-0 set from the default draw (class-balanced real or noise
    images and their labels; DATM's expert-checked images and soft labels) [the draw].
  project(syn) -> syn: a projection of the stored set after every update (projected gradient
    descent: SRe2L's recovery clips its images to the pixel range) [none].
  """
  before_loss: Callable | None = None
  host_phase: Callable[[int], Hashable] | None = None
  before_loss_at: Callable | None = None
  update_at: Callable | None = None
  batch_sampler: Callable[[int], Callable[[int], dict]] | None = None
  extra_metrics: Callable | None = None
  problem: Callable[[dict], str | None] | None = None
  update_gate: Callable | None = None
  initial_set: Callable | None = None
  project: Callable | None = None


NO_HOOKS = RunHooks()


def filled_hooks(distiller) -> RunHooks:
  """The distiller's hooks with `before_loss`, `before_loss_at`, `update_at` and `extra_metrics`
  filled in by their defaults (the other entries stay None when absent)."""
  hooks = distiller.hooks or NO_HOOKS
  before = hooks.before_loss or (lambda syn, state, batch, step, key: state)
  return hooks._replace(
      before_loss=before,
      before_loss_at=hooks.before_loss_at or (lambda phase, *args: before(*args)),
      update_at=hooks.update_at or (lambda phase, *args: distiller.update(*args)),
      extra_metrics=hooks.extra_metrics or (lambda syn, state, batch: {}))


class Distiller:
  """Base class of every distiller (module docstring): `init`, the meta-loss record named by
  `record` (`per_sample` or `per_class`, defined by the subclass), `update`."""

  kind: ClassVar[str] = DISTILLER
  record: ClassVar[str] = PER_SAMPLE
  additive_form: Callable[..., AdditiveForm] | None = None
  # additive_form(syn, state, batch, key, chunk_size) -> AdditiveForm, when implemented.
  regularizer: Callable[[PyTree, Array], Array] | None = None
  hooks: RunHooks | None = None

  @property
  def name(self) -> str:
    return type(self).__name__

  def init(self, syn: PyTree, key: Array) -> PyTree:
    """The distiller's state at step 0 (an empty tuple when it has none)."""
    del syn, key
    return ()

  def update(self, syn: PyTree, state: PyTree, key: Array) -> PyTree:
    """The method's inner loop after the synthetic set moved (FRePo's pool, DC's network)."""
    del syn, key
    return state


class Wrapper(Distiller):
  """A distiller around another (`self.wrapped`): forwards the core, the capabilities and the
  hooks. A subclass that changes `update` (or has a `before_loss`) exposes hooks whose `update_at`
  (`before_loss_at`) does the same, or host-phased programs skip it (tests/test_host_step.py)."""

  def __init__(self, wrapped: Distiller):
    self.wrapped = wrapped

  record = property(lambda self: self.wrapped.record)                # type: ignore[assignment]
  additive_form = property(lambda self: self.wrapped.additive_form)  # type: ignore[assignment]
  regularizer = property(lambda self: self.wrapped.regularizer)      # type: ignore[assignment]
  hooks = property(lambda self: self.wrapped.hooks)                  # type: ignore[assignment]

  @property
  def name(self) -> str:
    return f'{type(self).__name__}({self.wrapped.name})'

  def init(self, syn, key):
    return self.wrapped.init(syn, key)

  def per_sample(self, syn, state, batch, key):
    return self.wrapped.per_sample(syn, state, batch, key)

  def per_class(self, syn, state, batch, key):
    return self.wrapped.per_class(syn, state, batch, key)

  def update(self, syn, state, key):
    return self.wrapped.update(syn, state, key)


class SetParameterisation:
  """How the stored set (what the optimizer updates) maps to the set the distiller trains on and
  the run exports: the identity. IDC's multi-formation (`ddjax.distill.idc.MultiFormation`) stores
  `images_per_stored` images in each stored one."""

  images_per_stored: int = 1

  def encode(self, syn: PyTree) -> PyTree:
    """The initial stored set from `images_per_stored` real images per stored image."""
    return syn

  def decode(self, syn: PyTree) -> PyTree:
    """The set the distiller trains on and the run exports, from the stored one."""
    return syn

  def decode_classes(self, classes: Array) -> Array:
    """Class (n,) of every stored image -> that of every decoded image."""
    return classes


IDENTITY = SetParameterisation()


class SetBuilder:
  """A method that builds its set once, with no meta-loss and no steps (RDED, the random subset;
  any selection or generative method): `kind = SET_BUILDER`. It declares no meta-loss (`record`,
  `additive_form`), so the config refuses the transforms and wrappers that need one."""

  kind: ClassVar[str] = SET_BUILDER
  record: ClassVar[str] = NO_META_LOSS
  additive_form: ClassVar[None] = None

  @property
  def name(self) -> str:
    return type(self).__name__

  def build(self, syn_init: PyTree, key: Array) -> PyTree:
    """The stored set from the default draw `syn_init` (IPC class-balanced real or noise images
    per class and their labels)."""
    raise NotImplementedError(f'{self.name} does not define build(syn_init, key).')

  def report(self) -> dict:
    """JSON-able facts about how the set was built, kept in results.json under 'build' ({}:
    none; RDED: its selection's seconds and milliseconds per stored image)."""
    return {}
