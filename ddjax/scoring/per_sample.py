"""Per-sample scores of a classifier over a whole dataset, and short training runs that record them.

Scores of one example (x, y) under a network f with logits z = f(x), p = softmax(z), K classes:

  loss          cross-entropy -log p_y                           (BiLP Eq. 2, the empirical loss)
  el2n          || p - onehot(y) ||_2                               (Paul et al. 2021; PAD)
  grand         || grad_theta (-log p_y) ||_2 over every parameter  (Paul et al. 2021, GraNd)
  entropy       prediction uncertainty, the Shannon entropy -sum_k p_k log p_k (nats) of the
                softmax; it ignores the label (0 = confident, log K = uniform)
  margin        z_y - max_{k != y} z_k (logit margin; negative when misclassified)
  correct       argmax_k z_k == y
  forgetting    forgetting events (Toneva et al. 2019) from a (epochs, N) correctness record:
                the number of epochs t with correct[t - 1] and not correct[t]

All scores are computed in inference mode (`train=False`: batch-norm running statistics, no
dropout). `score_dataset` runs one jitted, vmapped function over fixed-size batches (the last one is
zero-padded and trimmed, so memory is bounded by the batch and one compilation serves every batch).
`score_trials` trains `num_trials` fresh networks for `epochs` epochs each and records loss, EL2N
and correctness of every example after every epoch: the raw material of BiLP's preemptive
criterion (`ddjax.scoring.bilp.empirical_loss_score`) and of PAD's EL2N.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddjax.models import per_example_model
from ddjax.models.training import (carry_at, carry_variables, cross_entropy, default_together,
                                   epoch_batches, fresh_carry, make_train_step, stack_carries)

Array = jax.Array
PyTree = Any

SCORES = ('loss', 'el2n', 'entropy', 'margin', 'correct', 'grand')
OPTIMIZERS = ('adam', 'sgd')


# -- scores from logits ---------------------------------------------------------------------------
def cross_entropy_loss(logits: Array, labels: Array) -> Array:
  """Per-sample cross-entropy -log softmax(z)_y: logits (N, K), integer labels (N,) -> (N,)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def el2n(logits: Array, labels: Array) -> Array:
  """EL2N ||softmax(z) - onehot(y)||_2: logits (N, K), integer labels (N,) -> (N,)."""
  p = jax.nn.softmax(logits, axis=-1)
  return jnp.linalg.norm(p - jax.nn.one_hot(labels, logits.shape[-1], dtype=p.dtype), axis=-1)


def entropy(logits: Array) -> Array:
  """Prediction uncertainty: entropy -sum_k p_k log p_k (nats) of softmax(z), (N, K) -> (N,)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def margin(logits: Array, labels: Array) -> Array:
  """Logit margin z_y - max_{k != y} z_k: (N, K), (N,) -> (N,)."""
  zy = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  other = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return zy - jnp.max(other, axis=-1)


def correct(logits: Array, labels: Array) -> Array:
  """argmax_k z_k == y: (N, K), (N,) -> bool (N,)."""
  return jnp.argmax(logits, axis=-1) == labels


def forgetting_events(correct_record) -> np.ndarray:
  """Forgetting events (Toneva et al. 2019): correct_record (..., E, N) bool, epoch axis -2 ->
  (..., N) int, the number of t in 1..E-1 with correct[t - 1] and not correct[t].

  Examples never classified correctly count 0 here (Toneva et al. rank them as unforgettable-hard,
  "infinitely forgotten"); `never_learned` finds them.
  """
  c = np.asarray(correct_record).astype(bool)
  if c.ndim < 2:
    raise ValueError(f'forgetting_events needs an (epochs, N) record, got shape {c.shape}.')
  return np.sum(c[..., :-1, :] & ~c[..., 1:, :], axis=-2).astype(np.int64)


def never_learned(correct_record) -> np.ndarray:
  """(..., E, N) bool -> (..., N) bool: examples not correct at any recorded epoch."""
  return ~np.any(np.asarray(correct_record).astype(bool), axis=-2)


# -- one jitted scoring function per (model, scores) ----------------------------------------------
def _int_labels(y, n: int) -> np.ndarray:
  y = np.asarray(y)
  labels = y.argmax(-1) if y.ndim == 2 else y
  labels = labels.astype(np.int32)
  if labels.shape != (n,):
    raise ValueError(f'labels must be (N,) integers or (N, K) with N = {n}, got {y.shape}.')
  return labels


def _check_scores(scores: Sequence[str]) -> tuple[str, ...]:
  scores = tuple(scores)
  for s in scores:
    if s not in SCORES:
      raise ValueError(f'unknown score {s!r}; allowed: {", ".join(SCORES)}')
  return scores


def _batch_scores(model: nn.Module, scores: tuple[str, ...], variables: PyTree, x: Array,
                  labels: Array) -> dict[str, Array]:
  """The requested scores of one batch x (B, H, W, C), labels (B,) -> {name: (B,)}."""
  logits, _ = model.apply(variables, x, train=False)
  out = {}
  fns = {'loss': lambda: cross_entropy_loss(logits, labels), 'el2n': lambda: el2n(logits, labels),
         'entropy': lambda: entropy(logits), 'margin': lambda: margin(logits, labels),
         'correct': lambda: correct(logits, labels)}
  for s in scores:
    if s in fns:
      out[s] = fns[s]()
  if 'grand' in scores:
    out['grand'] = grand_norms(model, variables, x, labels)
  return out


def grand_norms(model: nn.Module, variables: PyTree, x: Array, labels: Array) -> Array:
  """GraNd: per-sample ||grad_params CE(f(x_i), y_i)||_2 over every parameter leaf (vmap of
  grad over the batch; inference mode, other collections held fixed). x (B, ...) -> (B,)."""
  params = variables['params']
  rest = {k: v for k, v in variables.items() if k != 'params'}
  model = per_example_model(model)   # im2col weight gradients: batched matmuls under vmap

  def one(xi, yi):
    def loss(p):
      logits, _ = model.apply({'params': p, **rest}, xi[None], train=False)
      return cross_entropy_loss(logits, yi[None])[0]
    g = jax.grad(loss)(params)
    return jnp.sqrt(sum(jnp.sum(jnp.square(a)) for a in jax.tree_util.tree_leaves(g)))

  return jax.vmap(one)(x, labels)


@functools.lru_cache(maxsize=64)
def _jitted_scores(model: nn.Module, scores: tuple[str, ...]):
  return jax.jit(functools.partial(_batch_scores, model, scores))


def score_dataset(model: nn.Module, variables: PyTree, x, y,
                  scores: Sequence[str] = ('loss', 'el2n', 'entropy', 'correct'),
                  batch_size: int = 1000,
                  progress: Callable[[str], Any] | None = None) -> dict[str, np.ndarray]:
  """Per-sample scores of a trained classifier over a whole dataset.

  Args:
    model: a ddjax model (apply(variables, x, train=False) -> (logits, features)).
    variables: its variables ('params', and 'batch_stats' for batch norm).
    x: (N, H, W, C) images; y: (N,) integer labels or (N, K) one-hot / soft (argmax is used).
    scores: names from SCORES ('grand' costs one backward pass per example).
    batch_size: examples per jitted call; the last batch is zero-padded to it and trimmed.
    progress: optional callback receiving a line after every batch.

  Returns {name: (N,) numpy array} ('correct' is bool, the rest float32).
  """
  scores = _check_scores(scores)
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[0]
  labels = jnp.asarray(_int_labels(y, n))
  b = max(1, min(int(batch_size), n))
  fn = _jitted_scores(model, scores)
  parts: dict[str, list] = {s: [] for s in scores}
  t0 = time.perf_counter()
  for start in range(0, n, b):
    xb, lb = x[start:start + b], labels[start:start + b]
    m = xb.shape[0]
    if m < b:
      xb = jnp.concatenate([xb, jnp.zeros((b - m,) + xb.shape[1:], xb.dtype)])
      lb = jnp.concatenate([lb, jnp.zeros((b - m,), lb.dtype)])
    out = fn(variables, xb, lb)
    for s in scores:
      parts[s].append(np.asarray(out[s][:m]))
    if progress is not None:
      done = start + m
      sec = time.perf_counter() - t0
      progress(f'[score] {done}/{n} examples | {done / max(sec, 1e-9):.1f} examples/s')
  return {s: np.concatenate(parts[s]) for s in scores}


# -- short training runs that record per-epoch scores ----------------------------------------------
def make_optimizer(name: str, learning_rate: float, momentum: float = 0.9):
  """'adam' (optax.adam) or 'sgd' (SGD with `momentum`)."""
  if name not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer {name!r}; allowed: {", ".join(OPTIMIZERS)}')
  if name == 'adam':
    return optax.adam(learning_rate)
  return optax.sgd(learning_rate, momentum=momentum)


@functools.lru_cache(maxsize=32)
def _trial_fns(model: nn.Module, image_shape: tuple, optimizer: str, learning_rate: float,
               momentum: float, together: bool = False):
  """Jitted init(key) -> carry and step(carry, x, labels, idx) -> carry (one mini-batch), with
  carry = (params, batch_stats or None, opt_state) (`ddjax.models.training`). With `together`
  the step trains T networks at once: carry stacked (`stack_carries`), idx (T, B), each network
  its own mini-batch."""
  opt = make_optimizer(optimizer, learning_rate, momentum)
  init = jax.jit(lambda key: fresh_carry(model, key, image_shape, opt))
  train_step = make_train_step(model, opt, cross_entropy)
  one = lambda carry, x, labels, idx: train_step(carry, x[idx], labels[idx])[0]
  if together:
    one = jax.vmap(one, in_axes=(0, None, None, 0))
  return init, jax.jit(one, donate_argnums=(0,))


def score_trials(key: Array, model: nn.Module, x, y, num_trials: int, epochs: int,
                 batch_size: int = 512, learning_rate: float = 3e-3, optimizer: str = 'adam',
                 momentum: float = 0.9, score_batch_size: int = 1000,
                 progress: Callable[[str], Any] | None = None,
                 together: int | None = None) -> dict[str, np.ndarray]:
  """Train `num_trials` fresh networks on (x, y) and record every example's scores after every
  epoch (BiLP Sec. 4.1 / supp. 12.4: "train ... for multiple trials ... take the average loss
  curve"; PAD's EL2N over early-training models).

  Each trial: parameters from `init_model(model, fold_in(key, trial))`, then `epochs` epochs of
  mini-batch training (`ddjax.models.training`: `epoch_batches`, a fresh permutation per epoch
  cut into batches of <= batch_size, and the shared classifier step) with cross-entropy on the
  hard labels, no augmentation, one jitted train step per mini-batch; after each epoch the whole
  set is scored in inference mode (`score_dataset`). BiLP's CIFAR-10 setting is 50 trials x 100
  epochs, lr 3e-3, batch 512 (the optimizer is not stated; Adam here).

  Args:
    key: PRNG key (initialisation and batch order of every trial).
    x: (N, H, W, C) images; y: (N,) integer labels or (N, K) (argmax is used).
    num_trials, epochs: T and E.
    optimizer: 'adam' or 'sgd' (with `momentum`).
    progress: optional callback receiving a line per trained epoch.
    together: how many trials train together in one vmapped step (`ddjax.models.training`);
      0 = all, None = `default_together()` for the backend (1 on CPU). Trial t's network is the
      same whatever the grouping, up to floating-point reassociation.

  Returns numpy arrays {'loss': (T, E, N) float32, 'el2n': (T, E, N) float32,
  'correct': (T, E, N) bool, 'forgetting': (T, N) int64 (forgetting events per trial)}.
  """
  if num_trials < 1 or epochs < 1:
    raise ValueError(f'score_trials needs num_trials >= 1 and epochs >= 1, got {num_trials}, '
                     f'{epochs}.')
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[0]
  labels = jnp.asarray(_int_labels(y, n))
  image_shape = tuple(int(d) for d in x.shape[1:])
  group = default_together() if together is None else int(together)
  if group < 0:
    raise ValueError(f'together must be >= 0 (0: all trials together), got {group}')
  group = min(group or num_trials, num_trials)
  fns = functools.partial(_trial_fns, model, image_shape, optimizer, float(learning_rate),
                          float(momentum))
  init, step = fns(group > 1)
  out = {s: np.zeros((num_trials, epochs, n), np.bool_ if s == 'correct' else np.float32)
         for s in ('loss', 'el2n', 'correct')}
  t0 = time.perf_counter()
  for first in range(0, num_trials, group):
    trials = range(first, min(first + group, num_trials))
    keys = [jax.random.split(jax.random.fold_in(key, t)) for t in trials]   # (init, data) each
    carries = [init(k_init) for k_init, _ in keys]
    carry = carries[0] if group == 1 else stack_carries(carries)
    for e in range(epochs):
      batches = np.stack([np.asarray(epoch_batches(jax.random.fold_in(k_data, e), n, batch_size))
                          for _, k_data in keys], 1)                      # (nb, trials, size)
      for idx in batches:
        carry = step(carry, x, labels, idx[0] if group == 1 else idx)
      for i, t in enumerate(trials):
        variables = carry_variables(carry if group == 1 else carry_at(carry, i))
        scores = score_dataset(model, variables, x, labels, ('loss', 'el2n', 'correct'),
                               score_batch_size)
        for s, v in scores.items():
          out[s][t, e] = v
        if progress is not None:
          done = first * epochs + (e + 1) * len(trials)
          sec = time.perf_counter() - t0
          progress(f'[score_trials] trial {t + 1}/{num_trials} epoch {e + 1}/{epochs} | '
                   f'{done / max(sec, 1e-9):.2f} epochs/s | loss {scores["loss"].mean():.4g} | '
                   f'acc {scores["correct"].mean():.4f}')
  out['forgetting'] = forgetting_events(out['correct'])
  return out
