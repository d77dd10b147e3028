"""Crucial-sample selection: keep the hardest part of the real batch by meta-loss (ISA Sec. 2.2).

ISA's Algorithm 1, line 6: discard the p * 100% easiest real samples of each batch, i.e. those with
the smallest meta-loss. The number kept, ceil((1 - p) B), is static for a given batch size, so the
selection is a `lax.top_k` gather and the step stays jit-able with fixed shapes. The ranking uses
`stop_gradient`-ed losses and integer indices: no gradient flows through the choice itself, only
through the kept rows.
"""
from __future__ import annotations

import fractions
import math

import jax
import jax.numpy as jnp

from ddjax.transforms.base import LossTransform, PerSample, stateless


def num_kept(batch_size: int, p: float) -> int:
  """ceil((1 - p) * B), computed exactly in decimal (0.2 * 10 keeps 8, not 9)."""
  frac = fractions.Fraction(repr(float(p)))
  return max(1, math.ceil((1 - frac) * batch_size))


def _check_fraction(p: float, name: str) -> None:
  if not 0.0 <= p < 1.0:
    raise ValueError(f'{name}: the fraction to drop must lie in [0, 1), got {p}.')


def _take(ps: PerSample, idx: jax.Array) -> PerSample:
  return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), ps)


def keep_hardest_indices(loss: jax.Array, k: int) -> jax.Array:
  """Indices of the k largest losses, (B,) -> (k,), hardest first; no gradient."""
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(loss), k)
  return idx


def _drop(p: float, name: str, hardest_first: bool) -> LossTransform:
  _check_fraction(p, name)
  sign = 1.0 if hardest_first else -1.0

  def fn(ps: PerSample, key) -> PerSample:
    del key
    k = num_kept(ps.batch_size, p)
    if k == ps.batch_size:
      return ps
    return _take(ps, keep_hardest_indices(sign * ps.loss, k))

  return stateless(fn, name=f'{name}({p})')


def drop_easiest(p: float) -> LossTransform:
  """Discard the fraction p of the batch with the smallest meta-loss (ISA Alg. 1 line 6)."""
  return _drop(p, 'drop_easiest', hardest_first=True)


def drop_hardest(p: float) -> LossTransform:
  """Discard the fraction p with the largest meta-loss (the ablation of ISA Fig. 1, left)."""
  return _drop(p, 'drop_hardest', hardest_first=False)
