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
computed on: BiLP "updates the data every 10 iterations". The schedule is the wrapper's
`host_phase` hook (`ddjax.distill.base.RunHooks`): the run compiles the reselection (the ITE
scores) as a program of its own that runs on reselection steps only, and the step's image update
without it (a `lax.cond` would hold the ITE in every step's program, where XLA:CPU runs its
convolution gradients far slower); `before_loss` keeps the traced form for a single-program step.

Which distillers it wraps is decided by their declared capabilities (`ddjax.distill.base`), never
by their type:
- a per-class record with an `additive_form` (DC / DSA, DM): the ITE is taken on that form
  (`ddjax.scoring.ite.additive_ite_scores`), with the base's own network and DSA draws of the step,
  and the mask reaches the base as `batch['weight']` (its real statistic becomes the mean over the
  kept samples);
- a per-sample record (the KRR family: FRePo, KIP, RFAD): L(S) is the mean of per-real-sample
  terms l_i(S), so ITE_i = grad_S l_i / B exactly (`ddjax.scoring.ite.per_sample_ite_scores`, with
  respect to the synthetic images at the step's own network / random features), and the mask
  reaches the loss as the record's row weights (`PerSample.weight`): the meta-loss is the mean over
  the kept rows. ISA's transforms still see every row (they rank by loss and carry the weights),
  so drop_easiest and the mask compose.
IDC's `MultiFormation` is the step's set parameterisation, outside the wrapper: the step hands
`AdaptivePruning(DC(...))` the decoded set.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from ddjax.distill.base import (NO_HOOKS, Distiller, RunHooks, Wrapper, accepts_row_transforms,
                                filled_hooks, has_ite_form)
from ddjax.scoring import ite as ite_lib
from ddjax.scoring import selection as selection_lib

Array = jax.Array
PyTree = Any


def form_classes(batch: dict[str, Array]) -> int:
  """K, the classes of a class-grouped batch (its one-hot width)."""
  return batch['y'].shape[-1]


@flax.struct.dataclass
class BiLPState:
  """wrapped_state: the wrapped distiller's state. selection: running ITE statistics and the keep
  mask (B,) of the current real batch, in batch order."""
  wrapped_state: PyTree
  selection: selection_lib.SelectionState


class AdaptivePruning(Wrapper):
  """BiLP's adaptive (ITE) pruning around a distiller; its `before_loss` hook reselects the batch.

  Args:
    wrapped: a distiller with per-sample records or an `additive_form` (module docstring).
    batch_size: B, the real batch (the mask's length).
    beta: pruning rate (BiLP: 0.3). mode: 'both' | 'drop_large' | 'drop_small'.
    momentum: running-statistics momentum (0.1). every: reselect every `every` steps (10).
    ite_method: 'first_order' (BiLP's Taylor approximation), 'exact' (leave-one-out) or
      'sketch' (the first-order scores estimated from `sketch_dim` random projections).
    chunk_size: real samples differentiated and scored at once (bounded memory; None or 0:
      `bilp.ite_chunk`'s 0, automatic: for an additive form `ddjax.scoring.ite.auto_chunk` of the
      class batch and the synthetic images per class, whole classes at IPC 1, 32 real images
      per chunk at IPC 10; for per-sample records `ite_lib.PER_SAMPLE_CHUNK`, 32).
  """

  def __init__(self, wrapped: Distiller, batch_size: int, beta: float = 0.3, mode: str = 'both',
               momentum: float = 0.1, every: int = 10, ite_method: str = 'first_order',
               chunk_size: int | None = None, sketch_dim: int = 64):
    if not has_ite_form(wrapped):
      raise ValueError(f'BiLP adaptive pruning needs per-sample meta-losses or an additive form '
                       f'of the meta-loss; {wrapped.name} declares neither (record '
                       f'{wrapped.record!r}, no additive_form). Set bilp.adaptive_beta=0 for it '
                       '(preemptive pruning, bilp.prune_fraction, works for every method).')
    if ite_method not in ite_lib.METHODS:
      raise ValueError(f'bilp.ite={ite_method!r} is not one of {ite_lib.METHODS}.')
    super().__init__(wrapped)
    self.batch_size = int(batch_size)
    self.selector = selection_lib.adaptive_pruning(beta=beta, momentum=momentum, every=every,
                                                   mode=mode)
    self.ite_method = ite_method
    self.chunk_size = chunk_size
    self.sketch_dim = int(sketch_dim)

  @property
  def hooks(self) -> RunHooks:
    """The wrapped distiller's hooks, with the reselection before its `before_loss` and the
    reselection schedule folded into its `host_phase`."""
    inner = self.wrapped.hooks or NO_HOOKS
    return inner._replace(before_loss=self.before_loss, host_phase=self.host_phase,
                          before_loss_at=self.before_loss_at, update_at=self.update_at)

  def init(self, syn: PyTree, key: Array) -> BiLPState:
    return BiLPState(wrapped_state=self.wrapped.init(syn, key),
                     selection=self.selector.init(self.batch_size))

  def ite_scores(self, syn: PyTree, wrapped_state: PyTree, batch: dict[str, Array],
                 key: Array) -> Array:
    """||ITE||_2 of every real sample of `batch`, (B,) in batch order, for the meta-loss that
    the wrapped distiller's record (`per_sample` or `per_class`) computes."""
    frozen = jax.lax.stop_gradient(syn)
    if accepts_row_transforms(self.wrapped):
      losses = lambda x: self.wrapped.per_sample({**frozen, 'x': x}, wrapped_state, batch,
                                                 key).loss
      probe_key = jax.random.fold_in(key, 1) if self.ite_method == 'sketch' else None
      chunk = self.chunk_size or ite_lib.PER_SAMPLE_CHUNK
      return ite_lib.per_sample_ite_scores(losses, frozen['x'], self.ite_method, probe_key,
                                           self.sketch_dim, chunk)
    chunk = self.chunk_size or ite_lib.auto_chunk(
        self.batch_size // form_classes(batch), frozen['x'].shape[0] // form_classes(batch))
    form = self.wrapped.additive_form(frozen, wrapped_state, batch, key, chunk)
    scores = ite_lib.additive_ite_scores(form, self.ite_method, chunk, self.sketch_dim)
    order = jnp.argsort(jnp.argmax(batch['y'], -1), stable=True)   # group_by_class's order
    return jnp.zeros_like(scores.reshape(-1)).at[order].set(scores.reshape(-1))

  def before_loss(self, syn: PyTree, state: BiLPState, batch: dict[str, Array], step: Array,
                  key: Array) -> BiLPState:
    """Reselect (scores, running statistics, window) when step % every == 0; else keep the mask
    (a `lax.cond` in the step's program; the run uses the host-phased `before_loss_at`)."""
    self._check_batch(batch)
    inner = filled_hooks(self.wrapped).before_loss(syn, state.wrapped_state, batch, step, key)
    selection = self.selector.update(
        state.selection, lambda: self.ite_scores(syn, inner, batch, key), step)
    return state.replace(wrapped_state=inner, selection=selection)

  # Lazy selection is a host-side schedule: the run compiles the reselection (the ITE scores)
  # as its own program, run on reselection steps only, and the step's image update without it.
  def host_phase(self, step: int) -> tuple[bool, Any]:
    """(reselect at this step, the wrapped distiller's phase or None). Reselection steps are
    step % every == 0, as `before_loss`'s (whose `count == 0` test only matters for a run that
    does not start at step 0)."""
    inner = (self.wrapped.hooks or NO_HOOKS).host_phase
    return self.selector.due(step), None if inner is None else inner(step)

  def before_loss_at(self, phase: tuple[bool, Any], syn: PyTree, state: BiLPState,
                     batch: dict[str, Array], step: Array, key: Array) -> BiLPState:
    self._check_batch(batch)
    reselect, inner_phase = phase
    inner = filled_hooks(self.wrapped).before_loss_at(inner_phase, syn, state.wrapped_state,
                                                      batch, step, key)
    selection = state.selection
    if reselect:
      selection = self.selector.reselect(selection, self.ite_scores(syn, inner, batch, key))
    return state.replace(wrapped_state=inner, selection=selection)

  def _check_batch(self, batch: dict[str, Array]) -> None:
    if batch['x'].shape[0] != self.batch_size:
      raise ValueError(f'BiLP was built for real batches of {self.batch_size}, got '
                       f'{batch["x"].shape[0]}.')

  def per_sample(self, syn: PyTree, state: BiLPState, batch: dict[str, Array], key: Array):
    """The wrapped per-sample record with the keep mask as its row weights: the meta-loss is the
    mean over the kept rows (`PerSample.weight`)."""
    weight = state.selection.mask.astype(jnp.float32)
    return self.wrapped.per_sample(syn, state.wrapped_state, batch, key).replace(weight=weight)

  def per_class(self, syn: PyTree, state: BiLPState, batch: dict[str, Array], key: Array):
    """The wrapped per-class record on the batch with the keep mask as batch['weight']."""
    weight = state.selection.mask.astype(jnp.float32)
    return self.wrapped.per_class(syn, state.wrapped_state, {**batch, 'weight': weight}, key)

  def update(self, syn: PyTree, state: BiLPState, key: Array) -> BiLPState:
    return state.replace(wrapped_state=self.wrapped.update(syn, state.wrapped_state, key))

  def update_at(self, phase: tuple[bool, Any], syn: PyTree, state: BiLPState,
                key: Array) -> BiLPState:
    inner = filled_hooks(self.wrapped).update_at(phase[1], syn, state.wrapped_state, key)
    return state.replace(wrapped_state=inner)


def from_config(distiller: Distiller, cfg: ml_collections.ConfigDict,
                batch_size: int) -> Distiller:
  """`distiller` wrapped in BiLP's adaptive pruning when bilp.adaptive_beta > 0."""
  b = cfg.bilp
  if b.adaptive_beta <= 0:
    return distiller
  return AdaptivePruning(distiller, batch_size, beta=b.adaptive_beta, mode=b.adaptive_mode,
                         momentum=b.adaptive_momentum, every=b.adaptive_every, ite_method=b.ite,
                         chunk_size=b.ite_chunk or None, sketch_dim=b.sketch_dim)


def paper_defaults(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """BiLP's two levels on any config: preemptive pruning of 50% per class by the empirical
  loss, adaptive ITE pruning at beta 0.3 (both-sided), reselected every 10 iterations."""
  cfg.bilp.prune_fraction = 0.5
  cfg.bilp.prune_by = 'drop_largest'
  cfg.bilp.adaptive_beta = 0.3
  cfg.bilp.adaptive_mode = 'both'
  cfg.bilp.adaptive_every = 10
  cfg.bilp.adaptive_momentum = 0.1
  return cfg
