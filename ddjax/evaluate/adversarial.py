"""L-infinity adversarial attacks and robust accuracy of a trained network, in PIXEL space.

A network is attacked on images x in pixel space [lo, hi] (ddjax's images lie in [0, 1]) with the
data's preprocessing (standardisation, ZCA: affine maps, `ddjax.data.preprocess`) applied inside
`apply_fn`, so the budget eps is in pixel units (2/255, 4/255, 8/255: the usual budgets of
8-bit images) whatever the preprocessing, and the valid set is the pixel box, not its image in
model space. The loss is the cross-entropy of the logits against the true class,
L(x) = -log softmax(f(x))_y.

  FGSM (Goodfellow et al. 2015, "Explaining and harnessing adversarial examples"):
      x_adv = clip(x + eps sign(grad_x L(x)), lo, hi)
  PGD (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks"):
      x_0 = P(x + u), u ~ U[-eps, eps]^d (random start; x_0 = x without it)
      x_{t+1} = P(x_t + alpha sign(grad_x L(x_t))),  t < steps
      P(v) = clip(clip(v, x - eps, x + eps), lo, hi)
    P is the Euclidean projection onto the intersection of the eps-ball and the pixel box (both
    boxes, so coordinate-wise clipping to [max(x - eps, lo), min(x + eps, hi)]; non-empty for
    x in [lo, hi]). Madry's step is alpha = 2.5 eps / steps (`madry_step_size`).

Every function is pure: randomness from an explicit PRNG key. `robust_correct` / `robust_accuracy`
attack in batches inside one jitted function per (model, preprocessing, attack, steps, batch),
with eps, the step size, the network's variables and the preprocessor's arrays (a ZCA matrix) as
arguments (one compilation serves every budget and every network). The images are clipped to [lo, hi] first; the clean predictions are
those of the same clipped images through the same jitted predictor, so a budget of 0 (an attack
that moves nothing) gives exactly the clean accuracy.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.data.preprocess import Preprocessor, apply_preprocessor

ATTACKS = ('none', 'fgsm', 'pgd')
ApplyFn = Callable[[jax.Array], jax.Array]     # pixel images (B, H, W, C) -> logits (B, K)


def cross_entropy_sum(logits: jax.Array, y: jax.Array) -> jax.Array:
  """sum_i -log softmax(logits_i)_{y_i} of logits (B, K) and integer labels y (B,). Summed, so
  the gradient with respect to example i's input is that of its own loss."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=-1))


def _loss_grad(apply_fn: ApplyFn, x: jax.Array, y: jax.Array) -> jax.Array:
  return jax.grad(lambda v: cross_entropy_sum(apply_fn(v), y))(x)


def project(v: jax.Array, x: jax.Array, eps, lo, hi) -> jax.Array:
  """The projection of v onto {|v - x|_inf <= eps} intersected with [lo, hi] (x in [lo, hi])."""
  return jnp.clip(jnp.clip(v, x - eps, x + eps), lo, hi)


def fgsm(apply_fn: ApplyFn, x: jax.Array, y: jax.Array, eps, lo=0.0, hi=1.0) -> jax.Array:
  """FGSM: clip(x + eps sign(grad_x L), lo, hi) of pixel images x (B, H, W, C) with integer
  labels y (B,); eps in pixel units. Returns x_adv of x's shape."""
  g = _loss_grad(apply_fn, x, y)
  return jnp.clip(x + eps * jnp.sign(g), lo, hi)


def madry_step_size(eps: float, steps: int) -> float:
  """Madry et al.'s PGD step, 2.5 eps / steps: enough to cross the eps-ball from side to side
  (2 eps) within the steps and then some."""
  return 2.5 * float(eps) / max(1, int(steps))


def pgd(apply_fn: ApplyFn, x: jax.Array, y: jax.Array, key: jax.Array, eps, steps: int,
        step_size, lo=0.0, hi=1.0, random_start: bool = True) -> jax.Array:
  """L-infinity PGD (module docstring) of pixel images x (B, H, W, C) with integer labels y
  (B,): `steps` signed-gradient steps of `step_size`, each projected onto the eps-ball around x
  and the pixel box [lo, hi]; with `random_start` from a uniform point of the eps-ball (`key`).
  Returns x_adv of x's shape; |x_adv - x| <= eps and lo <= x_adv <= hi everywhere."""
  x0 = x
  if random_start:
    x0 = project(x + jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps, x, eps, lo, hi)

  def body(_, v):
    return project(v + step_size * jnp.sign(_loss_grad(apply_fn, v, y)), x, eps, lo, hi)

  return jax.lax.fori_loop(0, int(steps), body, x0)


def model_apply_fn(model, variables, preprocess: Callable[[jax.Array], jax.Array]) -> ApplyFn:
  """pixels -> logits of a ddjax model (`model.apply(..., train=False)` returns (logits,
  features)) with `preprocess` (pixel -> model space, e.g. `apply_preprocessor(pre, .)`)
  applied first."""
  return lambda x: model.apply(variables, preprocess(x), train=False)[0]


Preprocess = Callable[[jax.Array], jax.Array] | Preprocessor


def _preprocess_parts(preprocess: Preprocess) -> tuple[Any, dict]:
  """(what the jitted functions are cached on, arrays passed to them): a `Preprocessor`'s kind
  and arrays (so a ZCA matrix is an argument, not a compiled-in constant), or a callable and {}."""
  if isinstance(preprocess, Preprocessor):
    arrays = {k: jnp.asarray(getattr(preprocess, k)) for k in ('mean', 'std', 'zca')
              if getattr(preprocess, k) is not None}
    return ('preprocessor', preprocess.kind, tuple(sorted(arrays))), arrays
  if not callable(preprocess):
    raise TypeError(f'preprocess must be a Preprocessor or a callable, got {type(preprocess)}')
  return preprocess, {}


@functools.lru_cache(maxsize=32)
def _batch_fns(model, preprocess, attack: str, steps: int, random_start: bool, lo: float,
               hi: float):
  """Jitted predict(variables, arrays, x) -> argmax classes, and perturb(variables, arrays, x, y,
  key, eps, step_size) -> x_adv, for one model, preprocessing and attack (`arrays`: the
  preprocessor's, `_preprocess_parts`)."""

  def to_model(arrays, x):
    if callable(preprocess):
      return preprocess(x)
    full = {'zca': None, 'zca_inv': None, **arrays}
    return apply_preprocessor(Preprocessor(preprocess[1], **full), x)

  def logits_fn(variables, arrays):
    return lambda x: model.apply(variables, to_model(arrays, x), train=False)[0]

  @jax.jit
  def predict(variables, arrays, x):
    return jnp.argmax(logits_fn(variables, arrays)(x), axis=-1)

  @jax.jit
  def perturb(variables, arrays, x, y, key, eps, step_size):
    f = logits_fn(variables, arrays)
    if attack == 'fgsm':
      return fgsm(f, x, y, eps, lo, hi)
    return pgd(f, x, y, key, eps, steps, step_size, lo, hi, random_start)

  return predict, perturb


def robust_correct(model, variables: Any, preprocess: Preprocess, x_pixels, y, eps: float,
                   attack: str, *, key: jax.Array | None = None, steps: int = 10,
                   step_size: float | None = None, lo: float = 0.0, hi: float = 1.0,
                   random_start: bool = True,
                   batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
  """(clean correct, attacked correct), bool (N,) each, of `model` with `variables` on pixel
  images x_pixels (N, H, W, C) (clipped to [lo, hi] first) with integer labels y (N,).

  attack: 'none' (the attacked are the clean), 'fgsm' or 'pgd' (`steps` steps of `step_size`,
  default `madry_step_size(eps, steps)`; batch b's random start from fold_in(key, b)). eps in
  pixel units. `preprocess`: pixels -> the model's input space, applied inside the attacked
  function: the data's `Preprocessor` (its arrays are passed as arguments) or a callable (pass
  the same object each time: the jitted functions are cached on it). Batches of `batch_size`,
  the last zero-padded so one compilation serves every batch."""
  if attack not in ATTACKS:
    raise ValueError(f'unknown attack {attack!r}; choose one of {ATTACKS}')
  if not eps >= 0:
    raise ValueError(f'eps={eps} must be >= 0 (pixel units, e.g. 8/255)')
  if attack == 'pgd' and key is None:
    raise ValueError("attack='pgd' needs a PRNG key (its random start)")
  x = np.clip(np.asarray(x_pixels, np.float32), lo, hi)
  y = np.asarray(y).astype(np.int32)
  if x.ndim != 4 or y.shape != (x.shape[0],):
    raise ValueError(f'x_pixels must be (N, H, W, C) and y (N,); got {x.shape} and {y.shape}')
  n = x.shape[0]
  b = max(1, min(int(batch_size), n))
  cache_on, arrays = _preprocess_parts(preprocess)
  predict, perturb = _batch_fns(model, cache_on, 'fgsm' if attack == 'none' else attack,
                                int(steps), bool(random_start), float(lo), float(hi))
  alpha = madry_step_size(eps, steps) if step_size is None else float(step_size)
  key = jax.random.PRNGKey(0) if key is None else key
  clean, attacked = [], []
  for i, start in enumerate(range(0, n, b)):
    xb, yb = x[start:start + b], y[start:start + b]
    m = xb.shape[0]
    if m < b:
      xb = np.concatenate([xb, np.zeros((b - m,) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.zeros(b - m, yb.dtype)])
    xb_dev, yb_dev = jnp.asarray(xb), jnp.asarray(yb)
    pred = np.asarray(predict(variables, arrays, xb_dev))[:m]
    clean.append(pred == yb[:m])
    if attack == 'none':
      attacked.append(pred == yb[:m])
      continue
    adv = perturb(variables, arrays, xb_dev, yb_dev, jax.random.fold_in(key, i),
                  jnp.float32(eps), jnp.float32(alpha))
    attacked.append(np.asarray(predict(variables, arrays, adv))[:m] == yb[:m])
  return np.concatenate(clean), np.concatenate(attacked)


def robust_accuracy(model, variables: Any, preprocess: Preprocess, x_pixels, y, eps: float,
                    attack: str, **kwargs) -> float:
  """Fraction in [0, 1] of x_pixels (N, H, W, C) still classified as y (N,) under `attack`
  ('none', 'fgsm', 'pgd') at L-infinity budget eps (pixel units); `robust_correct`'s keywords
  (key, steps, step_size, lo, hi, random_start, batch_size)."""
  _, attacked = robust_correct(model, variables, preprocess, x_pixels, y, eps, attack, **kwargs)
  return float(np.mean(attacked))
