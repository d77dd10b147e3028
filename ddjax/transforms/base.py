"""Per-sample records and loss transforms, composable like optax gradient transformations.

A distiller's meta-loss is exposed per real example as a `PerSample` record. A `LossTransform`
maps a record (and its own small state) to a new record: selection transforms keep a subset of the
rows, augmentation transforms replace the per-sample loss. The scalar meta-loss is the mean of the
final record's `loss`:

    transform = chain(drop_easiest(0.2), isa(eps=1.0))      # FRePo + ISA
    state = transform.init()
    ps, state = transform.apply(ps, state, key)
    loss = ps.loss.mean()

Transforms never look inside the distiller; they rely only on `pred` and `target` and on the fact
that KRR-family predictions are linear in the (implicit) real features.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class PerSample:
  """Per-real-example meta-loss record.

  Attributes:
    pred: (B, K) the meta-model's prediction for each real example (e.g. P_T = K_TS w for KRR).
    target: (B, K) the regression/classification target of each real example.
    loss: (B,) the per-example meta-loss; the scalar meta-loss is `loss.mean()`.
    weight: optional (B,) non-negative row weights (BiLP's adaptive keep mask on the KRR family):
      the meta-loss is then the weighted mean sum_i w_i l_i / sum_i w_i (`mean_loss`). Selection
      transforms gather it with the rows; they rank rows by `loss` alone.
  """
  pred: Array
  target: Array
  loss: Array
  weight: Array | None = None

  @property
  def batch_size(self) -> int:
    return self.loss.shape[0]

  @property
  def num_kept(self) -> Array:
    """The rows that count: batch_size, or the total weight of a weighted record."""
    if self.weight is None:
      return jnp.asarray(self.batch_size, jnp.float32)
    return jnp.sum(self.weight).astype(jnp.float32)


@flax.struct.dataclass
class PerClass:
  """Per-class meta-loss record of the matching distillers (DC, DSA, DM): one row per class.

  Attributes:
    loss: (K,) the class terms; the scalar meta-loss is their mean (`mean_loss`), so a method
      whose loss is a sum over classes reports K times each class distance.
    pred, target: optional (K, D) the synthetic and the real class statistic (DM's mean
      embeddings), for monitoring.

  Row transforms (drop-easiest, ISA) rank or pair real examples and do not apply to it;
  `ddjax.distill.step.make_step` refuses them.
  """
  loss: Array
  pred: Array | None = None
  target: Array | None = None
  weight = None

  @property
  def num_kept(self) -> Array:
    return jnp.asarray(self.loss.shape[0], jnp.float32)


def squared_error(pred: Array, target: Array) -> Array:
  """Per-example 1/2 ||target - pred||^2, (B, K) -> (B,) (ISA Eq. 4/5, FRePo's MSE)."""
  return 0.5 * jnp.sum(jnp.square(pred - target), axis=-1)


def per_sample_mse(pred: Array, target: Array) -> PerSample:
  """The KRR record: predictions, targets and their per-example squared error."""
  return PerSample(pred=pred, target=target, loss=squared_error(pred, target))


def mean_loss(ps: PerSample | PerClass) -> Array:
  """The scalar meta-loss of a record: the mean of its per-example losses, weighted by
  `ps.weight` when present (0 when every weight is 0)."""
  if ps.weight is None:
    return jnp.mean(ps.loss)
  w = ps.weight.astype(ps.loss.dtype)
  return jnp.sum(w * ps.loss) / jnp.maximum(jnp.sum(w), jnp.finfo(ps.loss.dtype).tiny)


class LossTransform(NamedTuple):
  """A pure pair (init, apply), like `optax.GradientTransformation`.

  init() -> state
  apply(ps: PerSample, state, key) -> (PerSample, state)
  name: what it is called in messages. per_row: it ranks, pairs or reweights real-example rows,
  so it needs a `PerSample` record (not a per-class one).
  """
  init: Callable[[], Any]
  apply: Callable[[PerSample, Any, Array], tuple[PerSample, Any]]
  name: str = 'transform'
  per_row: bool = True


def stateless(fn: Callable[[PerSample, Array], PerSample], name: str = 'transform',
              per_row: bool = True) -> LossTransform:
  """Wrap a pure `fn(ps, key) -> ps` as a `LossTransform` with an empty state."""
  return LossTransform(init=lambda: (), apply=lambda ps, state, key: (fn(ps, key), state),
                       name=name, per_row=per_row)


def identity() -> LossTransform:
  """The transform that changes nothing (plain meta-loss); applies to any record."""
  return stateless(lambda ps, key: ps, name='identity', per_row=False)


def chain(*transforms: LossTransform) -> LossTransform:
  """Apply transforms left to right; each gets its own state and an independent key."""

  def init():
    return tuple(t.init() for t in transforms)

  def apply(ps, state, key):
    if len(state) != len(transforms):
      raise ValueError(f'chain of {len(transforms)} transforms got a state of {len(state)} '
                       'entries; pass the state returned by its init().')
    new_state = []
    for i, (t, s) in enumerate(zip(transforms, state)):
      ps, s = t.apply(ps, s, jax.random.fold_in(key, i))
      new_state.append(s)
    return ps, tuple(new_state)

  return LossTransform(init=init, apply=apply,
                       name=' -> '.join(t.name for t in transforms) or 'identity',
                       per_row=any(t.per_row for t in transforms))


def transformed_loss(transform: LossTransform, ps: PerSample, state: Any,
                     key: Array) -> tuple[Array, tuple[PerSample, Any]]:
  """Scalar loss after `transform`, with the transformed record and new state as aux."""
  out, state = transform.apply(ps, state, key)
  return mean_loss(out), (out, state)
