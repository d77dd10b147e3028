"""Train evaluation networks from scratch on a (synthetic) set and measure test accuracy.

The training loop is `jax.lax.scan` over chunks of steps inside one jitted function per
(model, protocol, data shape); the compiled chunk is cached, so training several networks with
different keys compiles once. On CPU the chunks are short and fully unrolled (`default_loop`).
Each step draws its mini-batch and runs the shared classifier step of `ddjax.models.training`
(batch norm functional: train mode with `mutable=['batch_stats']`, the new statistics carried);
inference uses `train=False`.

Several networks can train together (`train_networks`): their carries are stacked and one jitted
chunk runs `jax.vmap` of the same step over them, network i with exactly the keys it has when
trained alone. `evaluate_synthetic` trains its networks in groups of `vmap_models`
(`default_vmap_models`: one at a time on CPU, where XLA turns the vmapped convolutions into grouped
convolutions that run slower per network than separate ones (benchmarks/eval_speed.py), all
together on accelerators).

Also the KRR predictor of FRePo / ISA appendix E: a trained network's features f give
P = f(X_test) f(X_syn)^T (f(X_syn) f(X_syn)^T + lambda I)^-1 Y_syn, classified by argmax.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddjax.augment.basic import augment_batch
from ddjax.augment.dsa import dsa
from ddjax.augment.frepo import frepo_augment
from ddjax.evaluate.protocols import EvalProtocol, augment_pixels, make_optimizer
from ddjax.kernels.krr import krr_predict_from_features
from ddjax.models.training import (carry_at, carry_variables, cross_entropy, default_together,
                                   fresh_carry, make_train_step, mse_loss, stack_carries)

Array = jax.Array


def protocol_loss(protocol: EvalProtocol, logits: Array, y: Array) -> Array:
  """Scalar loss of logits (B, K) against labels y (B, K) under `protocol`.

  'mse': mean over the batch of 0.5 * sum_k (logits - y)^2 (FRePo); 'ce': cross-entropy against
  the hard labels argmax(y) (DC); 'soft_ce': against the soft targets softmax(y) (DATM).
  """
  if protocol.loss == 'mse':
    return mse_loss(logits, y)
  if protocol.loss == 'soft_ce':
    return -jnp.mean(jnp.sum(jax.nn.softmax(y) * jax.nn.log_softmax(logits), axis=-1))
  return cross_entropy(logits, jnp.argmax(y, axis=-1))


@functools.lru_cache(maxsize=64)
def _train_fns(model: nn.Module, protocol: EvalProtocol, image_shape: tuple, n: int,
               unroll: int | str, together: bool = False):
  """Jitted init(key) -> carry and chunk(carry, x, y, keys) -> (carry, losses).

  carry = (params, batch_stats or None, opt_state) (`ddjax.models.training`); keys (S, 2) are the
  S steps' keys, losses (S,). With `together`, chunk trains M networks at once: carry is M
  carries stacked on a leading axis, keys (M, S, 2) (network m's steps), losses (S, M); init
  stays one network's. unroll: an int or 'full' (never True/False: lru_cache would equate True
  with 1).
  """
  opt = make_optimizer(protocol)
  batch = min(protocol.batch_size, n)
  translate, cutout, flip = augment_pixels(protocol, image_shape)
  if protocol.dsa_strategy and protocol.augment:
    augment = lambda k, xb: dsa(k, xb, protocol.dsa_strategy)
  elif protocol.augment_ops and protocol.augment:
    augment = lambda k, xb: frepo_augment(k, xb, protocol.augment_ops)
  else:
    augment = lambda k, xb: augment_batch(k, xb, translate=translate, cutout=cutout, flip=flip)
  train_step = make_train_step(model, opt, functools.partial(protocol_loss, protocol), augment)
  init = jax.jit(lambda key: fresh_carry(model, key, image_shape, opt))

  def step(carry, key, x, y):
    k_idx, k_aug = jax.random.split(key)
    idx = jax.random.choice(k_idx, n, (batch,), replace=False)
    return train_step(carry, x[idx], y[idx], k_aug)

  if together:
    one = jax.vmap(step, in_axes=(0, 0, None, None))
    order = lambda keys: jnp.swapaxes(keys, 0, 1)        # (M, S, 2) -> scan over S
  else:
    one, order = step, lambda keys: keys

  @functools.partial(jax.jit, donate_argnums=(0,))
  def chunk(carry, x, y, keys):
    return jax.lax.scan(lambda c, k: one(c, k, x, y), carry, order(keys),
                        unroll=True if unroll == 'full' else unroll)

  return init, chunk


def default_loop(backend: str | None = None) -> tuple[int, int | bool]:
  """(chunk_size, unroll) used when train_from_scratch is not told.

  CPU: chunks of 2 fully unrolled steps. XLA's CPU backend runs convolutions inside a loop body far
  slower than outside (jax issue #12868). Measured on the 2-core machine, ConvNet-3 width 32 with
  channel doubling, batch 10, 28 x 28 x 1, 100 steps: rolled scan (any chunk, even 1) 10.8 s;
  unrolled chunks of 2: 1.2 s, of 5: 1.0-1.2 s, of 10: 1.2 s; compile time grows with the unrolled
  length (about 4 s, 6-8 s and 14 s), so 2 is the default. Accelerators: rolled `lax.scan` over
  chunks of 500 steps.
  """
  backend = backend or jax.default_backend()
  return (2, True) if backend == 'cpu' else (500, 1)


def default_vmap_models(backend: str | None = None) -> int:
  """How many networks `evaluate_synthetic` trains together by default (0 = all of them): 1 on
  CPU, all on accelerators (`ddjax.models.training.default_together`, which says why)."""
  return default_together(backend)


def _prepare(x, y):
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if y.shape[0] != x.shape[0] or y.ndim != 2:
    raise ValueError(f'y must be (n, K) with n = {x.shape[0]}, got {y.shape}')
  return x, y


def _loop(chunk_size, unroll, steps):
  default_chunk, default_unroll = default_loop()
  chunk_size = default_chunk if chunk_size is None else chunk_size
  unroll = default_unroll if unroll is None else unroll
  unroll_key = 'full' if unroll is True else max(1, int(unroll))
  return max(1, min(chunk_size, steps)), unroll_key


def train_from_scratch(key: Array, model: nn.Module, x: Array, y: Array, protocol: EvalProtocol,
                       chunk_size: int | None = None, unroll: int | bool | None = None) -> dict:
  """Train a freshly initialised `model` on (x, y) under `protocol`; return its variables.

  Args:
    key: PRNG key (initialisation, minibatches, augmentation).
    model: a ddjax model (apply returns (logits, features)).
    x: (n, H, W, C) training images (e.g. the synthetic set).
    y: (n, K) real-valued labels (one-hot, centred one-hot or learned).
    protocol: an EvalProtocol. Each step draws min(batch_size, n) distinct examples (a fresh
      random subset per step, sampled without replacement within the step).
    chunk_size: steps per jitted `lax.scan` call; unroll: its `unroll` argument (True = no loop).
      Both default by backend (`default_loop`); the result does not depend on them beyond
      floating-point reassociation.

  Returns a dict with 'params' (and 'batch_stats' for batch-norm models).
  """
  x, y = _prepare(x, y)
  chunk_size, unroll_key = _loop(chunk_size, unroll, protocol.steps)
  init_key, loop_key = jax.random.split(key)
  init, chunk = _train_fns(model, protocol, tuple(x.shape[1:]), x.shape[0], unroll_key)
  carry = init(init_key)
  step_keys = jax.random.split(loop_key, protocol.steps)
  for start in range(0, protocol.steps, chunk_size):
    carry, _ = chunk(carry, x, y, step_keys[start:start + chunk_size])
  return carry_variables(carry)


def train_networks(keys: Sequence[Array], model: nn.Module, x: Array, y: Array,
                   protocol: EvalProtocol, chunk_size: int | None = None,
                   unroll: int | bool | None = None) -> list[dict]:
  """Train len(keys) fresh networks TOGETHER on (x, y): one jitted, vmapped step for all.

  Network i gets exactly what `train_from_scratch(keys[i], ...)` gives it (its initialisation,
  mini-batches and augmentation come from keys[i] alone), equal up to floating-point
  reassociation of the batched operations. One key: `train_from_scratch` itself. Memory: the
  activations of a step are held for every network at once (M times one network's).

  Returns [variables of network i] in the order of keys.
  """
  keys = list(keys)
  if len(keys) == 1:
    return [train_from_scratch(keys[0], model, x, y, protocol, chunk_size, unroll)]
  x, y = _prepare(x, y)
  chunk_size, unroll_key = _loop(chunk_size, unroll, protocol.steps)
  init, _ = _train_fns(model, protocol, tuple(x.shape[1:]), x.shape[0], unroll_key)
  _, chunk = _train_fns(model, protocol, tuple(x.shape[1:]), x.shape[0], unroll_key, True)
  split = [jax.random.split(k) for k in keys]
  carry = stack_carries([init(init_key) for init_key, _ in split])   # each network's own init
  step_keys = jnp.stack([jax.random.split(loop_key, protocol.steps) for _, loop_key in split])
  for start in range(0, protocol.steps, chunk_size):
    carry, _ = chunk(carry, x, y, step_keys[:, start:start + chunk_size])
  stacked = carry_variables(carry)
  return [carry_at(stacked, i) for i in range(len(keys))]


@functools.lru_cache(maxsize=64)
def _apply_fn(model: nn.Module):
  return jax.jit(lambda variables, xb: model.apply(variables, xb, train=False))


def predict(model: nn.Module, variables: dict, x: Array,
            batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """Inference-mode (logits (N, K), features (N, D)) in batches, as numpy arrays.

  The last batch is zero-padded to batch_size, so one compilation serves every batch.
  """
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[0]
  b = max(1, min(batch_size, n))
  apply = _apply_fn(model)
  logits, feats = [], []
  for start in range(0, n, b):
    xb = x[start:start + b]
    m = xb.shape[0]
    if m < b:
      xb = jnp.concatenate([xb, jnp.zeros((b - m,) + xb.shape[1:], xb.dtype)])
    lo, fe = apply(variables, xb)
    logits.append(np.asarray(lo[:m]))
    feats.append(np.asarray(fe[:m]))
  return np.concatenate(logits), np.concatenate(feats)


def _int_labels(y) -> np.ndarray:
  y = np.asarray(y)
  return y.argmax(-1) if y.ndim == 2 else y.astype(np.int64)


def accuracy(model: nn.Module, variables: dict, x_test: Array, y_test: Array,
             batch_size: int = 1000) -> float:
  """Fraction in [0, 1] of x_test (N, H, W, C) classified as y_test ((N,) ints or (N, K))."""
  logits, _ = predict(model, variables, x_test, batch_size)
  return float(np.mean(logits.argmax(-1) == _int_labels(y_test)))


_krr_predict = jax.jit(krr_predict_from_features)


def krr_accuracy(model: nn.Module, variables: dict, x_syn: Array, y_syn: Array, x_test: Array,
                 y_test: Array, reg: float = 1e-6, batch_size: int = 1000) -> float:
  """Accuracy of the KRR predictor on the trained network's features (FRePo/ISA appendix E).

  P = krr_predict_from_features(f(x_test), f(x_syn), y_syn, reg), classified by argmax;
  x_syn (n, H, W, C), y_syn (n, K); computed in test batches of `batch_size`.
  """
  _, f_s = predict(model, variables, x_syn, batch_size)
  _, f_t = predict(model, variables, x_test, batch_size)
  f_s = jnp.asarray(f_s)
  y_s = jnp.asarray(y_syn, jnp.float32)
  b = max(1, min(batch_size, f_t.shape[0]))
  preds = []
  for start in range(0, f_t.shape[0], b):
    fb = f_t[start:start + b]
    m = fb.shape[0]
    if m < b:  # pad so one compilation serves every batch
      fb = np.concatenate([fb, np.zeros((b - m, fb.shape[1]), fb.dtype)])
    preds.append(np.asarray(_krr_predict(jnp.asarray(fb), f_s, y_s, reg))[:m].argmax(-1))
  return float(np.mean(np.concatenate(preds) == _int_labels(y_test)))


def evaluate_synthetic(key: Array, model: nn.Module, x_syn: Array, y_syn: Array, x_test: Array,
                       y_test: Array, protocol: EvalProtocol, num_models: int = 5,
                       krr: bool = True, krr_reg: float = 1e-6, batch_size: int = 1000,
                       progress: Callable[[str], Any] | None = None,
                       members: Sequence[int] | None = None,
                       gather: Callable[[np.ndarray, int], np.ndarray] | None = None,
                       vmap_models: int | None = None) -> dict:
  """Train `num_models` networks on (x_syn, y_syn) and test them on (x_test, y_test).

  Args:
    key: PRNG key, split into one key per network (network i always trains with keys[i]).
    x_syn: (n, H, W, C), y_syn: (n, K) synthetic set; x_test (N, H, W, C), y_test (N,) or (N, K).
    protocol: the EvalProtocol used by every network.
    krr: also report the KRR-predictor accuracy on each network's features.
    progress: optional callback receiving one line per trained network (a group's networks
      report the group's wall time and steps/s, and its seconds per network).
    members, gather: to share the networks between processes (ddjax.infra.distributed's
      own_members / gather_members): this caller trains only networks `members` (default all,
      in order), and gather(local float64 (len(members),), num_models) -> (num_models,) returns
      every network's accuracy in network order (called once for the accuracies and once more
      for the KRR ones, by every process). Results equal the one-process run's exactly.
    vmap_models: how many of this caller's networks train together (`train_networks`), in
      member order; 0 = all; None = `default_vmap_models()` for the backend. Network i trains
      with keys[i] whatever the grouping, so results do not depend on it beyond floating-point
      reassociation.

  Returns {'accs': [float]*num_models, 'acc_mean', 'acc_std'} (std with ddof = 0, like numpy and
  FRePo), plus {'krr_accs', 'krr_acc' (mean), 'krr_acc_std'} when krr.
  """
  keys = jax.random.split(key, num_models)
  members = list(range(num_models) if members is None else members)
  group = default_vmap_models() if vmap_models is None else int(vmap_models)
  if group < 0:
    raise ValueError(f'vmap_models must be >= 0 (0: all networks together), got {group}')
  group = group or max(1, len(members))
  accs, krr_accs = [], []
  for start in range(0, len(members), group):
    together = members[start:start + group]
    t0 = time.perf_counter()
    trained = train_networks([keys[i] for i in together], model, x_syn, y_syn, protocol)
    jax.block_until_ready(trained)
    seconds = time.perf_counter() - t0
    for i, variables in zip(together, trained):
      accs.append(accuracy(model, variables, x_test, y_test, batch_size))
      if len(together) == 1:
        line = (f'model {i + 1}/{num_models}: {protocol.steps} steps in {seconds:.1f} s '
                f'({protocol.steps / max(seconds, 1e-9):.1f} steps/s), acc {accs[-1]:.4f}')
      else:
        line = (f'model {i + 1}/{num_models}: {protocol.steps} steps with {len(together)} '
                f'networks together in {seconds:.1f} s ({protocol.steps / max(seconds, 1e-9):.1f}'
                f' steps/s, {seconds / len(together):.1f} s per network), acc {accs[-1]:.4f}')
      if krr:
        krr_accs.append(krr_accuracy(model, variables, x_syn, y_syn, x_test, y_test, krr_reg,
                                     batch_size))
        line += f', krr acc {krr_accs[-1]:.4f}'
      if progress is not None:
        progress(line)
  if gather is not None:
    accs = [float(a) for a in gather(np.asarray(accs, np.float64), num_models)]
    if krr:
      krr_accs = [float(a) for a in gather(np.asarray(krr_accs, np.float64), num_models)]
  out = {'accs': accs, 'acc_mean': float(np.mean(accs)), 'acc_std': float(np.std(accs))}
  if krr:
    out.update(krr_accs=krr_accs, krr_acc=float(np.mean(krr_accs)),
               krr_acc_std=float(np.std(krr_accs)))
  return out
