"""RDED's evaluation protocol: students trained on an observer's soft labels, computed online.

Per step (RDED validation/main.py:206-228): a mini-batch of the set
(one epoch = a fresh permutation, `ddjax.models.training.epoch_batches`), for a set stitched from
`protocol.patch_factor` > 1 patches per side ShufflePatches and RandomResizedCrop(scale
(1 / factor, 1)) (`ddjax.augment.patches.student_augment`), a random horizontal flip, cutmix
with lambda ~ Beta(1, 1) and a random box (validation/utils.py:119-144), the observer's soft labels
softmax(teacher(mix) / T) on the mixed images, and the student's loss
KL(soft || softmax(student(mix) / T)) averaged over the batch ('batchmean'), without a T^2
factor, as the official code. The student trains with the shared classifier step
(`make_train_step`) under the 'rded' protocol of `ddjax.evaluate.protocols` (AdamW, weights-only
decay, quarter cosine per epoch). Any set can be evaluated so (eval.protocol='rded'); its labels
are not used, only its images.

Reported: the final accuracy, and separately RDED's own number, the best test accuracy over the
validations in the last 20 % of epochs (validation/main.py:176-192: every 10 epochs of 300 when
epoch > 0.8 E; here every max(1, E // 30) epochs), which selects on the test set.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddjax.augment.basic import random_flip
from ddjax.augment.patches import student_augment
from ddjax.evaluate.protocols import EvalProtocol, make_optimizer
from ddjax.models.training import (carry_variables, epoch_batches, fresh_carry, make_train_step)

Array = jax.Array
KEY_PATCHES = 2      # folded into a step's key for the patch augmentation (factor > 1 only)


def soft_kl(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
  """KL(softmax(t / T) || softmax(s / T)) summed over classes, mean over the batch (PyTorch's
  KLDivLoss(reduction='batchmean') on log_softmax(s / T) against softmax(t / T)); no T^2."""
  log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def cutmix(key: Array, x: Array) -> Array:
  """CutMix of x (B, H, W, C) with a permutation of itself: lambda ~ Beta(1, 1), a box of side
  ratio sqrt(1 - lambda) centred uniformly, clipped to the image (RDED's rand_bbox); the box of
  every image is filled from its partner. The labels follow from the teacher, so only images."""
  k_lam, k_cy, k_cx, k_perm = jax.random.split(key, 4)
  b, h, w = x.shape[:3]
  lam = jax.random.beta(k_lam, 1.0, 1.0)
  cut = jnp.sqrt(1.0 - lam)
  ch, cw = (cut * h).astype(jnp.int32), (cut * w).astype(jnp.int32)
  cy = jax.random.randint(k_cy, (), 0, h)
  cx = jax.random.randint(k_cx, (), 0, w)
  y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  partner = x[jax.random.permutation(k_perm, b)]
  return jnp.where(box[None, :, :, None], partner, x)


@functools.lru_cache(maxsize=16)
def _student_step(student: nn.Module, teacher: nn.Module, protocol: EvalProtocol):
  """Jitted step(carry, teacher_vars, x_all, idx, key) -> (carry, loss)."""
  opt = make_optimizer(protocol)
  temperature = float(protocol.temperature)
  train_step = make_train_step(student, opt, lambda s, t: soft_kl(s, t, temperature))

  @jax.jit
  def step(carry, teacher_vars, x_all, idx, key):
    k_flip, k_mix = jax.random.split(key)
    xb = x_all[idx]
    if protocol.augment and protocol.patch_factor > 1:
      xb = student_augment(jax.random.fold_in(key, KEY_PATCHES), xb, protocol.patch_factor)
    if protocol.augment and protocol.flip:
      xb = random_flip(k_flip, xb)
    if protocol.augment:
      xb = cutmix(k_mix, xb)
    teacher_logits = jax.lax.stop_gradient(teacher.apply(teacher_vars, xb, train=False)[0])
    return train_step(carry, xb, teacher_logits)

  return step


def validation_epochs(epochs: int) -> list[int]:
  """Epochs (1-based, after which the student is tested) of RDED's 'best over the last 20 %':
  every max(1, E // 30) epochs when epoch > 0.8 E, and always the last."""
  every = max(1, epochs // 30)
  out = [e for e in range(1, epochs + 1) if e > 0.8 * epochs and e % every == 0]
  return sorted(set(out) | {epochs})


def train_student(key: Array, student: nn.Module, teacher: nn.Module, teacher_vars: Any,
                  x: Array, protocol: EvalProtocol,
                  test: Callable[[Any], float] | None = None,
                  progress: Callable[[str], Any] | None = None) -> tuple[Any, dict]:
  """Train a fresh `student` on images x (n, H, W, C) with `teacher`'s online soft labels under
  `protocol` ('rded'); returns (variables, {'final_acc', 'best_last20_acc', 'val_accs'}) where the
  accuracies come from test(variables) (absent without `test`); progress gets a line every 30 s."""
  x = jnp.asarray(x, jnp.float32)
  n = int(x.shape[0])
  epochs = max(1, protocol.steps // max(1, protocol.steps_per_epoch))
  step = _student_step(student, teacher, protocol)
  k_init, k_loop = jax.random.split(key)
  carry = fresh_carry(student, k_init, x.shape[1:], make_optimizer(protocol))
  checks = set(validation_epochs(epochs)) if test is not None else set()
  val = {}
  t0 = last = time.perf_counter()
  for epoch in range(epochs):
    k_epoch = jax.random.fold_in(k_loop, epoch)
    batches = epoch_batches(k_epoch, n, protocol.batch_size)
    for b in range(batches.shape[0]):
      carry, loss = step(carry, teacher_vars, x, batches[b], jax.random.fold_in(k_epoch, b + 1))
    if progress is not None and time.perf_counter() - last > 30:   # a line every 30 s
      last = time.perf_counter()
      progress(f'epoch {epoch + 1}/{epochs}: KL {float(loss):.4f} ({last - t0:.0f} s)')
    if epoch + 1 in checks:
      val[epoch + 1] = test(carry_variables(carry))
  variables = carry_variables(carry)
  out = {}
  if test is not None:
    out = {'final_acc': val[epochs], 'best_last20_acc': max(val.values()),
           'val_accs': {str(k): v for k, v in val.items()}}
  return variables, out


def observer_agreement(observer, x_syn: Array, y_syn: Array, num_classes: int) -> dict:
  """How the observer reads a set: the fraction of its images (x_syn (n, H, W, C)) that the
  observer classifies as their label's class (argmax of y_syn (n, K), so the top class of a
  learned label), and how many images it puts in each class. The 'rded' protocol trains students
  on the observer's labels of the images alone, so a set the observer misreads teaches the wrong
  classes whatever its own labels say."""
  from ddjax.evaluate.train import predict
  logits, _ = predict(observer.model, observer.variables, x_syn)
  read = logits.argmax(-1)
  return {'agreement': float(np.mean(read == np.asarray(y_syn).argmax(-1))),
          'class_counts': np.bincount(read, minlength=num_classes).tolist()}


def evaluate_soft_label(key: Array, student: nn.Module, observer, x_syn: Array, x_test, y_test,
                        protocol: EvalProtocol, num_models: int = 1,
                        progress: Callable[[str], Any] | None = None,
                        members: Sequence[int] | None = None,
                        gather: Callable[[np.ndarray, int], np.ndarray] | None = None) -> dict:
  """`num_models` students under the 'rded' protocol on x_syn, each tested on (x_test, y_test).

  Student i trains with the i-th of split(key, num_models). members, gather: as in
  `ddjax.evaluate.train.evaluate_synthetic` (this caller trains students `members`, default
  all; gather collects the final and best accuracies of every student in student order).

  Returns {'accs', 'acc_mean', 'acc_std'} (final accuracies) and, labelled as RDED's selection on
  the test set, {'best_last20_accs', 'best_last20_mean', 'best_last20_std'}."""
  from ddjax.evaluate.train import accuracy
  test = lambda variables: accuracy(student, variables, x_test, y_test)
  keys = jax.random.split(key, num_models)
  finals, bests = [], []
  for i in (range(num_models) if members is None else members):
    k = keys[i]
    t0 = time.perf_counter()
    _, res = train_student(k, student, observer.model, observer.variables, x_syn, protocol, test,
                           progress)
    finals.append(res['final_acc'])
    bests.append(res['best_last20_acc'])
    if progress is not None:
      progress(f'student {i + 1}/{num_models}: {protocol.steps} steps in '
               f'{time.perf_counter() - t0:.1f} s, final acc {res["final_acc"]:.4f}, best over '
               f'the last 20 % of epochs {res["best_last20_acc"]:.4f}')
  if gather is not None:
    finals = [float(a) for a in gather(np.asarray(finals, np.float64), num_models)]
    bests = [float(a) for a in gather(np.asarray(bests, np.float64), num_models)]
  return {'accs': finals, 'acc_mean': float(np.mean(finals)), 'acc_std': float(np.std(finals)),
          'best_last20_accs': bests, 'best_last20_mean': float(np.mean(bests)),
          'best_last20_std': float(np.std(bests))}
