"""The distiller interface: one class every method and every wrapper follows.

A distiller is a bundle of pure functions over the synthetic set `syn` (a pytree, at least
{'x': (n, H, W, C), 'y': (n, K)}) and its own state (`state`: FRePo's model pool, DC's network,
nothing for KIP). Argument order is the same everywhere: the synthetic set, the distiller's state,
the real batch, then the PRNG key last.

    state  = d.init(syn, key)
    state  = d.before_loss(syn, state, batch, step, key)        # hook, e.g. BiLP's selection
    record = d.per_sample(syn, state, batch, key)               # PerSample or PerClass
    loss   = mean_loss(transform(record)) + d.regularizer(syn, classes)
    state  = d.update(syn, state, key)                          # the method's inner loop

`ddjax.distill.step.make_step` drives these; subclasses override what they need and inherit the
no-ops. Declared capabilities (class attributes, read by wrappers and `make_step`, never found by
`isinstance`):

- `record`: `PER_SAMPLE` when `per_sample` returns one `PerSample` row per real example whose mean
  is the meta-loss (the KRR family; loss transforms such as ISA and BiLP's row weights apply), or
  `PER_CLASS` when it returns a `PerClass` record (matching methods: one row per class), or
  `PER_SET` for a single-row `PerClass` (trajectory matching), or `NO_META_LOSS` for a method that
  takes no distillation steps.
- `additive_form`: implemented (not None) when the meta-loss is additive-separable over real
  samples, L(G, S) with G = sum_i g(x_i) (DC, DM): BiLP's ITE works on it
  (`ddjax.scoring.ite.additive_ite_scores`).
- `batch_sampler(seed)`: None (the run draws real batches), or the method's own host-side
  sampler(step) -> batch (trajectory matching: a pair of expert snapshots); such a batch is
  replicated on every device, not split.
- `extra_metrics(syn, state, batch)`: further scalars logged with the step's metrics;
  `problem(metrics)`: a host-side check of one step's metrics that stops the run with a message
  (MTT's step size going negative); `update_gate(loss)`: None, or a boolean scalar that lets
  the step's update through (DATM skips steps whose loss exceeds a threshold).
- `decode` / `decode_classes` / `encode` / `images_per_stored`: how a stored set maps to the set
  the method trains on (identity; IDC's multi-formation overrides them); `initial_set`: the set at
  step 0 (where an optimisation-free method builds its set); `build_report()`: host-side facts
  about how the set was built, kept in results.json under 'build' (RDED's selection time).
- `host_phase(step)`: None (the default: one fused program per step, `update` traced), or, when
  implemented, a host-side schedule: the hashable phase of outer step `step` (the step that takes
  `state.step` from `step` to `step + 1`), a pure function of the step counter, so a resumed run
  takes the same phases as an uninterrupted one. The run then compiles the step as separate
  programs chosen on the host (`ddjax.distill.step.make_host_step`): `before_loss_at(phase, ...)`,
  the image update, and `update_at(phase, ...)` once per phase, with no device-side branch
  between phases (DC trains its network or draws a new one; a `lax.cond` would hold both).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Hashable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any

PER_SAMPLE = 'per_sample'
PER_CLASS = 'per_class'
NO_META_LOSS = 'none'      # a method that takes no steps (the random-subset baseline)
PER_SET = 'per_set'        # one meta-loss for the whole set, not additive over real examples
                           # (trajectory matching: a distance between parameter vectors)


def accepts_row_transforms(distiller) -> bool:
  """Whether row transforms (drop-easiest, ISA, BiLP's row weights) apply: one record per real
  example. `distiller`: an instance or a class (capabilities are class attributes)."""
  return distiller.record == PER_SAMPLE


def has_ite_form(distiller) -> bool:
  """Whether BiLP's ITE applies: per-sample meta-losses or a declared additive form."""
  return accepts_row_transforms(distiller) or distiller.additive_form is not None


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


class Distiller:
  """Base class of every distiller: the interface with default no-ops (module docstring)."""

  record: ClassVar[str] = PER_SAMPLE
  additive_form: Callable[..., AdditiveForm] | None = None
  # additive_form(syn, state, batch, key, chunk_size) -> AdditiveForm, when implemented.
  host_phase: Callable[[int], Hashable] | None = None
  # host_phase(step) -> phase, when implemented (module docstring; `before_loss_at`, `update_at`).

  @property
  def name(self) -> str:
    return type(self).__name__

  def init(self, syn: PyTree, key: Array) -> PyTree:
    """The distiller's state at step 0 (an empty tuple when it has none)."""
    del syn, key
    return ()

  def before_loss(self, syn: PyTree, state: PyTree, batch: dict[str, Array], step: Array,
                  key: Array) -> PyTree:
    """Runs first in every step with `per_sample`'s key (BiLP's adaptive selection)."""
    del syn, batch, step, key
    return state

  def per_sample(self, syn: PyTree, state: PyTree, batch: dict[str, Array], key: Array):
    """The meta-loss record of the real batch {'x': (B, H, W, C), 'y': (B, K)}, differentiable
    in `syn`: a `PerSample` (B rows) or a `PerClass` (K rows), as `record` declares."""
    raise NotImplementedError(f'{self.name} does not define per_sample.')

  def regularizer(self, syn: PyTree, classes: Array) -> Array:
    """A scalar added to the meta-loss; classes (n,) the class of each stored prototype."""
    del syn, classes
    return jnp.zeros((), jnp.float32)

  def update(self, syn: PyTree, state: PyTree, key: Array) -> PyTree:
    """The method's inner loop after the synthetic set moved (FRePo's pool, DC's network)."""
    del syn, key
    return state

  # -- host-chosen phases (`host_phase`) ----------------------------------------------------------
  def before_loss_at(self, phase: Hashable, syn: PyTree, state: PyTree, batch: dict[str, Array],
                     step: Array, key: Array) -> PyTree:
    """`before_loss` at a step of the host-chosen `phase` (static); by default `before_loss`."""
    del phase
    return self.before_loss(syn, state, batch, step, key)

  def update_at(self, phase: Hashable, syn: PyTree, state: PyTree, key: Array) -> PyTree:
    """`update` at a step of the host-chosen `phase` (static): the branch `update` would take
    there, without the device-side choice. By default `update`."""
    del phase
    return self.update(syn, state, key)

  # -- batches, metrics and guards of the run loop -------------------------------------------------
  def batch_sampler(self, seed: int) -> Callable[[int], dict] | None:
    """None: the run samples real batches. Else sampler(step) -> host batch, a pure function of
    (seed, step) (a resumed run replays it), replicated on every device."""
    del seed
    return None

  def extra_metrics(self, syn: PyTree, state: PyTree, batch: dict[str, Array]) -> dict:
    """Further () scalars to log with the step's metrics (jittable)."""
    del syn, state, batch
    return {}

  def problem(self, metrics: dict[str, float]) -> str | None:
    """A host-side check of one step's metrics (floats): a message stops the run."""
    del metrics
    return None

  def update_gate(self, loss: Array) -> Array | None:
    """None (every step updates), or a () bool: False keeps the set and its optimizer state."""
    del loss
    return None

  # -- the stored set and the set the method trains on --------------------------------------------
  images_per_stored: ClassVar[int] = 1

  def encode(self, syn: PyTree) -> PyTree:
    """Initial stored set from `images_per_stored` real images per stored image."""
    return syn

  def initial_set(self, syn: PyTree, key: Array) -> PyTree:
    """The stored set at step 0 from the default draw `syn` (class-balanced real or noise images,
    IPC x `images_per_stored` per class, and their labels): `encode(syn)` for the optimised
    methods; an optimisation-free method builds its whole set here from what `build` gave it."""
    del key
    return self.encode(syn)

  def decode(self, syn: PyTree) -> PyTree:
    """The set the method trains on and exports, from the stored one."""
    return syn

  def decode_classes(self, classes: Array) -> Array:
    return classes

  def build_report(self) -> dict:
    """JSON-able facts about how the set was built, for results.json's 'build' entry ({}: none;
    RDED: its selection's seconds and milliseconds per stored image)."""
    return {}


class Wrapper(Distiller):
  """A distiller around another (`self.wrapped`): forwards everything and the capabilities.

  A subclass that overrides `before_loss` or `update` overrides `before_loss_at` or `update_at`
  the same way (the host-phased programs call those; tests/test_host_step.py checks it)."""

  def __init__(self, wrapped: Distiller):
    self.wrapped = wrapped

  @property
  def record(self) -> str:            # type: ignore[override]
    return self.wrapped.record

  @property
  def additive_form(self):            # type: ignore[override]
    return self.wrapped.additive_form

  @property
  def host_phase(self):               # type: ignore[override]
    return self.wrapped.host_phase

  @property
  def name(self) -> str:
    return f'{type(self).__name__}({self.wrapped.name})'

  def init(self, syn, key):
    return self.wrapped.init(syn, key)

  def before_loss(self, syn, state, batch, step, key):
    return self.wrapped.before_loss(syn, state, batch, step, key)

  def per_sample(self, syn, state, batch, key):
    return self.wrapped.per_sample(syn, state, batch, key)

  def regularizer(self, syn, classes):
    return self.wrapped.regularizer(syn, classes)

  def update(self, syn, state, key):
    return self.wrapped.update(syn, state, key)

  def before_loss_at(self, phase, syn, state, batch, step, key):
    return self.wrapped.before_loss_at(phase, syn, state, batch, step, key)

  def update_at(self, phase, syn, state, key):
    return self.wrapped.update_at(phase, syn, state, key)

  def batch_sampler(self, seed):
    return self.wrapped.batch_sampler(seed)

  def extra_metrics(self, syn, state, batch):
    return self.wrapped.extra_metrics(syn, state, batch)

  def problem(self, metrics):
    return self.wrapped.problem(metrics)

  def update_gate(self, loss):
    return self.wrapped.update_gate(loss)

  @property
  def images_per_stored(self) -> int:  # type: ignore[override]
    return self.wrapped.images_per_stored

  def encode(self, syn):
    return self.wrapped.encode(syn)

  def initial_set(self, syn, key):
    return self.wrapped.initial_set(syn, key)

  def decode(self, syn):
    return self.wrapped.decode(syn)

  def decode_classes(self, classes):
    return self.wrapped.decode_classes(classes)

  def build_report(self):
    return self.wrapped.build_report()
