"""KRR evaluation of a synthetic set with an infinite-width kernel (how kernel-distilled sets are
reported: KIP, RFAD's `eval_distilled_set.py`).

    w = (K_SS + lambda I)^-1 Y_S,   lambda = reg * trace(K_SS) / n_s,   P = K(x_test, X_S) w

classified by argmax. `kernel_fn(x1, x2, get)` is any neural-tangents-style kernel function.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.kernels.krr import krr_solve

Array = jax.Array


def kernel_krr_accuracy(kernel_fn: Callable, x_syn: Array, y_syn: Array, x_test: Array,
                        y_test: Array, get: str = 'ntk', reg: float = 1e-6,
                        batch_size: int = 500,
                        progress: Callable[[str], Any] | None = None) -> float:
  """Test accuracy of kernel ridge regression on (x_syn (n, ...), y_syn (n, K)).

  x_test (N, ...), y_test (N,) integer labels or (N, K). The test kernel is computed in jitted
  blocks of `batch_size` rows (the last one padded), with a progress line per ~20% when given.
  """
  x_syn = jnp.asarray(x_syn, jnp.float32)
  w = jax.jit(lambda xs, ys: krr_solve(kernel_fn(xs, None, get), ys, reg))(
      x_syn, jnp.asarray(y_syn, jnp.float32))
  predict = jax.jit(lambda xb, xs, w: kernel_fn(xb, xs, get) @ w)   # no constants to fold
  x_test = np.asarray(x_test, np.float32)
  labels = np.asarray(y_test)
  if labels.ndim == 2:
    labels = labels.argmax(-1)
  n = x_test.shape[0]
  b = max(1, min(batch_size, n))
  correct, t0, next_report = 0, time.perf_counter(), 0.2
  for start in range(0, n, b):
    xb = x_test[start:start + b]
    m = xb.shape[0]
    if m < b:
      xb = np.concatenate([xb, np.zeros((b - m,) + xb.shape[1:], xb.dtype)])
    pred = np.asarray(predict(jnp.asarray(xb), x_syn, w))[:m].argmax(-1)
    correct += int(np.sum(pred == labels[start:start + m]))
    done = (start + m) / n
    if progress is not None and done >= next_report:
      elapsed = time.perf_counter() - t0
      progress(f'kernel KRR {start + m}/{n} test images, {elapsed:.0f} s, '
               f'ETA {elapsed / done * (1 - done):.0f} s')
      next_report += 0.2
  return correct / n
