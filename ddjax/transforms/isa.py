"""Infinite Semantic Augmentation (ISA: "Boosting Dataset Distillation with the Assistance of Crucial
Samples", Sec. 2.3, Eq. 5-7).

For a real sample (z, y) paired with another (z', y'), the virtual samples z + a (z' - z),
y + a (y' - y) for a in [0, eps] are all scored by the meta-model. Because a KRR prediction is linear
in the feature z, P(z + a d) = P(z) + a (P(z') - P(z)), and the mean loss over the segment is

    1/eps int_0^eps 1/2 |A + a B|^2 da = 1/2 (|A|^2 + eps <A, B> + eps^2/3 |B|^2)      (Eq. 7)

with A = P(z) - y and B = (P(z') - P(z)) - (y' - y), summed over classes. The factor 1/2 matches the
per-sample loss of Eq. 4/5, so eps = 0 gives back the plain meta-loss exactly. (Eq. 6-7 in the paper
omit the 1/2; it is a constant factor.)

Pairing rule: the rows of the record (after any selection) are put in a uniformly random order
pi drawn from the transform's key, and the sample at position k of that order is paired with the one
at position k + 1 (the last with the first). So every sample is paired with a different sample
(B >= 2), is an anchor exactly once and a partner exactly once, and pairs cross classes as often as
random pairs do, which interpolates labels as well (mixup in feature space). Gradients flow through
both P(z) and P(z').
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ddjax.transforms.base import LossTransform, PerSample, stateless

Array = jax.Array


def isa_loss(a: Array, b: Array, eps: float | Array) -> Array:
  """Closed form of Eq. 7 (with the 1/2 of Eq. 4): (B, K), (B, K) -> (B,)."""
  aa = jnp.sum(a * a, axis=-1)
  ab = jnp.sum(a * b, axis=-1)
  bb = jnp.sum(b * b, axis=-1)
  return 0.5 * (aa + eps * ab + (eps ** 2 / 3.0) * bb)


def partner_indices(key: Array, n: int) -> Array:
  """The pairing rule: partner[i] of each row i, a random single n-cycle (no fixed points for n>1)."""
  order = jax.random.permutation(key, n)
  partner = jnp.empty((n,), dtype=order.dtype)
  return partner.at[order].set(jnp.roll(order, -1))


def isa_residuals(ps: PerSample, partner: Array) -> tuple[Array, Array]:
  """A = P(z) - y and B = (P(z') - P(z)) - (y' - y) for each row and its partner."""
  a = ps.pred - ps.target
  b = (ps.pred[partner] - ps.pred) - (ps.target[partner] - ps.target)
  return a, b


def isa(eps: float = 1.0) -> LossTransform:
  """Replace each per-sample loss by its ISA closed form (Eq. 7); eps in [0, 1] (paper: 1.0)."""
  if not 0.0 <= eps <= 1.0:
    raise ValueError(f'isa: eps must lie in [0, 1] (the paper uses 1.0), got {eps}.')

  def fn(ps: PerSample, key: Array) -> PerSample:
    a, b = isa_residuals(ps, partner_indices(key, ps.batch_size))
    return ps.replace(loss=isa_loss(a, b, eps))

  return stateless(fn, name=f'isa(eps={eps})')
