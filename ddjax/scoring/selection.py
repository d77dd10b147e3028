"""BiLP's adaptive pruning: running ITE statistics, the quantile window, lazy reselection
(Xu et al., Sec. 4.2 "Estimation of Global ITE Distribution" and "Lazy Selection", Alg. 1 l. 9-11).

Running statistics (Eq. 8), momentum eta = 0.1, mu_B and sigma_B^2 the mean and the unbiased
(ddof = 1, as batch norm's running variance) variance of the batch's scores:

    mu <- (1 - eta) mu + eta mu_B,      sigma^2 <- (1 - eta) sigma^2 + eta sigma_B^2

Initialisation: the FIRST batch sets mu = mu_B and sigma^2 = sigma_B^2 (starting at 0 / 1 would
bias the window for the first ~1 / eta batches, since ITE norms have an arbitrary scale).

Window (Alg. 1 line 11): with z_q the q-quantile of N(mu, sigma^2) (z_q = mu + sigma Phi^-1(q)),
keep the samples with
    'both'        z_{beta/2} < score < z_{1-beta/2}     (BiLP's default, beta = 0.3)
    'drop_large'  score < z_{1-beta}                    (prune only the large-ITE tail)
    'drop_small'  score > z_{beta}                      (prune only the small-ITE tail)
so that a fraction 1 - beta of N(mu, sigma^2) is kept. At least one sample is always kept (if the
window holds none, the one closest to mu), and sigma = 0 keeps everything.

Lazy selection: the statistics and the mask are recomputed only at steps with step % every == 0
(every = 10) and on the first update; in between `update` returns the state unchanged, so the run
loop must keep the SAME real batch for those steps (BiLP updates the selected batch every 10
iterations) and may skip the ITE computation altogether by passing a score function (evaluated
under `lax.cond` only when reselecting). Everything is jit-able; the state is a pytree and can be
checkpointed.

    sel = adaptive_pruning(beta=0.3, momentum=0.1, every=10)
    state = sel.init(batch_size)
    state = sel.update(state, lambda: ite_scores(...), step)     # or an array of scores
    G = masked_statistic(g, state.mask)
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

Array = jax.Array

MODES = ('both', 'drop_large', 'drop_small')


@flax.struct.dataclass
class SelectionState:
  """mean, var: () float32 running statistics of the scores; count: () int32 batches folded into
  them (0 = none yet); mask: (B,) bool, the current keep mask of the batch (all True before the
  first selection)."""
  mean: Array
  var: Array
  count: Array
  mask: Array


def init_state(batch_size: int) -> SelectionState:
  return SelectionState(mean=jnp.zeros((), jnp.float32), var=jnp.ones((), jnp.float32),
                        count=jnp.zeros((), jnp.int32), mask=jnp.ones((batch_size,), bool))


def _check(beta: float, mode: str, momentum: float | None = None) -> None:
  if mode not in MODES:
    raise ValueError(f'unknown selection mode {mode!r}; allowed: {", ".join(MODES)}')
  if not 0.0 <= beta < 1.0:
    raise ValueError(f'the adaptive pruning rate beta must lie in [0, 1), got {beta}.')
  if momentum is not None and not 0.0 < momentum <= 1.0:
    raise ValueError(f'the running-statistics momentum must lie in (0, 1], got {momentum}.')


def batch_moments(scores: Array, valid: Array | None = None) -> tuple[Array, Array]:
  """Mean and unbiased variance (ddof = 1; 0 for a single score) of scores (B,) over `valid`."""
  s = scores.astype(jnp.float32)
  w = jnp.ones_like(s) if valid is None else valid.astype(jnp.float32)
  n = w.sum()
  mean = jnp.sum(w * s) / jnp.maximum(n, 1.0)
  var = jnp.sum(w * jnp.square(s - mean)) / jnp.maximum(n - 1.0, 1.0)
  return mean, var


def update_statistics(state: SelectionState, scores: Array, momentum: float = 0.1,
                      valid: Array | None = None) -> SelectionState:
  """Fold a batch of scores (B,) into the running mean / variance (BiLP Eq. 8); the first batch
  (count == 0) initialises them. `valid` (B,) bool excludes entries (e.g. padding)."""
  mu_b, var_b = batch_moments(scores, valid)
  first = state.count == 0
  mean = jnp.where(first, mu_b, (1.0 - momentum) * state.mean + momentum * mu_b)
  var = jnp.where(first, var_b, (1.0 - momentum) * state.var + momentum * var_b)
  return state.replace(mean=mean, var=var, count=state.count + 1)


def window_bounds(mean: Array, var: Array, beta: float = 0.3,
                  mode: str = 'both') -> tuple[Array, Array]:
  """(lo, hi) of the keep window for N(mean, var): quantiles z_q = mean + sigma Phi^-1(q)
  (jax.scipy.stats.norm.ppf); an open side is -inf / +inf."""
  _check(beta, mode)
  mean = jnp.asarray(mean, jnp.float32)
  sigma = jnp.sqrt(jnp.maximum(var, 0.0))
  z = lambda q: mean + sigma * norm.ppf(jnp.float32(q))
  if beta == 0.0:
    return jnp.full_like(mean, -jnp.inf), jnp.full_like(mean, jnp.inf)
  if mode == 'both':
    return z(beta / 2), z(1 - beta / 2)
  if mode == 'drop_large':
    return jnp.full_like(mean, -jnp.inf), z(1 - beta)
  return z(beta), jnp.full_like(mean, jnp.inf)


def quantile_window(scores: Array, mean: Array, var: Array, beta: float = 0.3,
                    mode: str = 'both', valid: Array | None = None) -> Array:
  """Keep mask (B,) bool: lo < score < hi for the window of `window_bounds` (Alg. 1 line 11).

  var = 0 keeps every (valid) sample; if the window holds no valid sample, the valid one closest to
  the mean is kept, so the masked meta-loss is always defined. Invalid entries are never kept.
  """
  lo, hi = window_bounds(mean, var, beta, mode)
  s = scores.astype(jnp.float32)
  ok = jnp.ones(s.shape, bool) if valid is None else valid.astype(bool)
  mask = ((s > lo) & (s < hi)) | (var <= 0.0)
  mask = mask & ok
  nearest = jnp.argmin(jnp.where(ok, jnp.abs(s - mean), jnp.inf))
  fallback = jnp.arange(s.shape[0]) == nearest
  return jnp.where(jnp.any(mask), mask, fallback & ok)


class AdaptiveSelection(NamedTuple):
  """A pure pair, like optax's transformations:

  init(batch_size) -> SelectionState
  update(state, scores, step, valid=None) -> SelectionState: `scores` is a (B,) array or a
    zero-argument function returning it (then evaluated only on reselection steps).
  reselect(state, scores, valid=None) -> SelectionState: `update` on a reselection step, without
    the device-side test (for a caller that knows the step on the host).
  due(step) -> bool: whether `step` (a host int) is a reselection step, given a state whose
    statistics exist (every run starts at step 0, which reselects).
  """
  init: Callable[[int], SelectionState]
  update: Callable[..., SelectionState]
  reselect: Callable[..., SelectionState]
  due: Callable[[int], bool]


def adaptive_pruning(beta: float = 0.3, momentum: float = 0.1, every: int = 10,
                     mode: str = 'both') -> AdaptiveSelection:
  """BiLP's adaptive pruning with running statistics and lazy reselection (module docstring).

  On a reselection step (step % every == 0, or no statistics yet): fold the scores into the running
  statistics, then recompute the mask from the UPDATED statistics (Alg. 1 lines 10-11). Otherwise
  the state, mask included, is returned unchanged. `step` may be a traced integer.
  """
  _check(beta, mode, momentum)
  if every < 1:
    raise ValueError(f'the reselection period must be >= 1, got {every}.')

  def reselect(state: SelectionState, scores: Any,
               valid: Array | None = None) -> SelectionState:
    s = jax.lax.stop_gradient(scores() if callable(scores) else scores)
    if s.shape != state.mask.shape:
      raise ValueError(f'scores of shape {s.shape} for a selection state of batch '
                       f'{state.mask.shape}.')
    state = update_statistics(state, s, momentum, valid)
    mask = quantile_window(s, state.mean, state.var, beta, mode, valid)
    return state.replace(mask=mask)

  def update(state: SelectionState, scores: Any, step: Array,
             valid: Array | None = None) -> SelectionState:
    due = (jnp.asarray(step) % every == 0) | (state.count == 0)
    return jax.lax.cond(due, lambda st: reselect(st, scores, valid), lambda st: st, state)

  return AdaptiveSelection(init=init_state, update=update, reselect=reselect,
                           due=lambda step: int(step) % every == 0)
