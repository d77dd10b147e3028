"""BiLP's adaptive pruning around a matching distiller (Xu et al., "Distill Gold from Massive Ores",
Sec. 4.2 and Alg. 1): drop the real samples whose individual treatment effect on the meta-gradient
is too small or too large.

Every `every` steps (lazy selection, BiLP: 10) the wrapper scores each real sample of the batch by
||ITE(x_r)||_2 (`ddjax.scoring.ite`: the first-order JVP by default, the exact leave-one-out, or
the random-projection sketch of the first-order scores),
folds the batch's scores into running statistics (momentum 0.1, Eq. 8) and keeps the samples inside
the (beta/2, 1 - beta/2) quantile window of N(mu, sigma^2) (`ddjax.scoring.selection`; one-sided
modes for BiLP Table 5). The keep mask reaches the base distiller as `batch['weight']`, so its real
statistic G is the mean over the kept samples only. The run loop holds each real batch for `every`
steps (`ddjax.runtime.loop.make_sampler(hold=every)`), so a mask always refers to the batch it was
computed on: BiLP "updates the data every 10 iterations".

Bases: `DC` (DC / DSA) and `DM`, or IDC's `MultiFormation` around either (put the wrapper inside:
`MultiFormation(AdaptivePruning(DC(...)), f)`; MultiFormation hands it the decoded set).
The ITE uses the base's own network and DSA draw of the step: DC's current network (with its
batch-norm statistics set from the real batch, as `DC.per_sample` does) and, for DM, the fresh
network and keys that `DM.per_sample` draws from the same key.

The KRR family (`FRePo`, `KIP`, `RFAD`) works through its per-sample meta-losses: L(S) is the
mean of per-real-sample terms l_i(S), so ITE_i = grad_S l_i / B exactly
(`ddjax.scoring.ite.per_sample_ite_scores`, taken with respect to the synthetic images at the
step's own network / random features), and the mask reaches the loss as the record's row weights
(`PerSample.weight`): the meta-loss is the mean over the kept rows. ISA's transforms still see every
row (they rank by loss and carry the weights), so drop_easiest and the mask compose.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from ddjax.distill.dc import DC
from ddjax.distill.dm import DM
from ddjax.distill.frepo import FRePo
from ddjax.distill.kip import KIP
from ddjax.distill.rfad import RFAD
from ddjax.distill.matching import group_by_class
from ddjax.scoring import ite as ite_lib
from ddjax.scoring import selection as selection_lib

Array = jax.Array
PyTree = Any


SEPARABLE = (DC, DM)              # G = sum_i g(x_i): `ddjax.scoring.ite.dc_/dm_ite_scores`
PER_SAMPLE = (FRePo, KIP, RFAD)   # L = mean_i l_i(S): `ddjax.scoring.ite.per_sample_ite_scores`


@flax.struct.dataclass
class BiLPState:
  """base: the wrapped distiller's state. selection: running ITE statistics and the keep mask
  (B,) of the current real batch, in batch order."""
  base: PyTree
  selection: selection_lib.SelectionState


class AdaptivePruning:
  """BiLP's adaptive (ITE) pruning as a distiller wrapper with the distiller interface plus the
  `before_loss(syn, state, batch, key, step)` hook that `ddjax.distill.step.make_step` calls.

  Args:
    base: a `DC` or `DM` instance (additive-separable matching), or `FRePo`, `KIP` or `RFAD`
      (per-sample meta-losses).
    batch_size: B, the real batch (the mask's length).
    beta: pruning rate (BiLP: 0.3). mode: 'both' | 'drop_large' | 'drop_small'.
    momentum: running-statistics momentum (0.1). every: reselect every `every` steps (10).
    ite_method: 'first_order' (BiLP's Taylor approximation), 'exact' (leave-one-out) or
      'sketch' (the first-order scores estimated from `sketch_dim` random projections).
    chunk_size: real samples differentiated and scored at once (bounded memory; None: all at
      once; `bilp.ite_chunk`).
  """

  def __init__(self, base, batch_size: int, beta: float = 0.3, mode: str = 'both',
               momentum: float = 0.1, every: int = 10, ite_method: str = 'first_order',
               chunk_size: int | None = None, sketch_dim: int = 64):
    if not isinstance(base, SEPARABLE + PER_SAMPLE):
      raise ValueError('BiLP adaptive pruning needs an additive-separable matching distiller '
                       '(DC, DSA, DM) or a per-sample KRR meta-loss (FRePo, KIP, RFAD), got '
                       f'{type(base).__name__}; set bilp.adaptive_beta=0 for it (preemptive '
                       'pruning, bilp.prune_fraction, works for every method).')
    if ite_method not in ite_lib.METHODS:
      raise ValueError(f'bilp.ite={ite_method!r} is not one of {ite_lib.METHODS}.')
    self.base = base
    self.batch_size = int(batch_size)
    self.selector = selection_lib.adaptive_pruning(beta=beta, momentum=momentum, every=every,
                                                   mode=mode)
    self.ite_method = ite_method
    self.chunk_size = chunk_size
    self.sketch_dim = int(sketch_dim)

  def init(self, key: Array, syn: PyTree) -> BiLPState:
    return BiLPState(base=self.base.init(key, syn), selection=self.selector.init(self.batch_size))

  def ite_scores(self, syn: PyTree, base_state: PyTree, batch: dict[str, Array],
                 key: Array) -> Array:
    """||ITE||_2 of every real sample of `batch`, (B,) in batch order, for the meta-loss that
    `base.per_sample(syn, base_state, batch, key)` computes."""
    if isinstance(self.base, PER_SAMPLE):
      frozen = jax.lax.stop_gradient(syn)
      losses = lambda x: self.base.per_sample({**frozen, 'x': x}, base_state, batch, key).loss
      probe_key = jax.random.fold_in(key, 1) if self.ite_method == 'sketch' else None
      return ite_lib.per_sample_ite_scores(losses, frozen['x'], self.ite_method, probe_key,
                                           self.sketch_dim, self.chunk_size)
    k = self.base.num_classes
    labels = jnp.argmax(batch['y'], -1)
    xr = group_by_class(batch['x'], labels, k)
    xs = jax.lax.stop_gradient(syn['x']).reshape((k, -1) + syn['x'].shape[1:])
    if isinstance(self.base, DC):
      variables = self.base._with_bn_stats(base_state.variables, xr)
      scores = ite_lib.dc_ite_scores(self.base, variables, xr, xs, jax.random.split(key, k),
                                     self.ite_method, self.chunk_size, self.sketch_dim)
    else:
      variables, keys = self.base.network_and_keys(key)
      scores = ite_lib.dm_ite_scores(self.base, variables, xr, xs, keys, self.ite_method,
                                     self.chunk_size, self.sketch_dim)
    order = jnp.argsort(labels, stable=True)          # group_by_class's order
    return jnp.zeros_like(scores.reshape(-1)).at[order].set(scores.reshape(-1))

  def before_loss(self, syn: PyTree, state: BiLPState, batch: dict[str, Array], key: Array,
                  step: Array) -> BiLPState:
    """Reselect (scores, running statistics, window) when step % every == 0; else keep the mask."""
    if batch['x'].shape[0] != self.batch_size:
      raise ValueError(f'BiLP was built for real batches of {self.batch_size}, got '
                       f'{batch["x"].shape[0]}.')
    selection = self.selector.update(
        state.selection, lambda: self.ite_scores(syn, state.base, batch, key), step)
    return state.replace(selection=selection)

  def per_sample(self, syn: PyTree, state: BiLPState, batch: dict[str, Array], key: Array):
    weight = state.selection.mask.astype(jnp.float32)
    if isinstance(self.base, PER_SAMPLE):      # the mean over the kept rows (PerSample.weight)
      return self.base.per_sample(syn, state.base, batch, key).replace(weight=weight)
    return self.base.per_sample(syn, state.base, {**batch, 'weight': weight}, key)

  def regularizer(self, syn: PyTree, classes: Array) -> Array:
    return self.base.regularizer(syn, classes)

  def update(self, syn: PyTree, state: BiLPState, key: Array) -> BiLPState:
    return state.replace(base=self.base.update(syn, state.base, key))
