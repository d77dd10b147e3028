"""Training a classifier: the one core behind every train-from-scratch loop in ddjax.

Evaluation (`ddjax.evaluate.train`), scoring trials (`ddjax.scoring.per_sample`), DC's inner loop
(`ddjax.distill.dc`) and FRePo's online pool models (`ddjax.distill.frepo`) all train a ddjax model
(`model.apply(variables, x, train=bool) -> (logits (B, K), features (B, D))`) with an optax
optimizer. They share three pieces and differ only in how they drive them (which keys, which
batches, how many steps per jitted scan):

  carry          `(params, batch_stats or None, opt_state)`: the training state of one network.
                 `fresh_carry` draws a new network, `init_carry` starts from given variables,
                 `carry_variables` turns a carry back into flax variables.
  make_train_step  a pure `step(carry, x, y, key) -> (carry, loss)`: optional augmentation of
                 x, `value_and_grad` of a loss on (logits, labels), one optimizer update. Batch
                 norm is functional: the model runs in train mode with `mutable=['batch_stats']`
                 and the new running statistics travel in the carry.
  epoch_batches  one epoch's mini-batch indices: a fresh permutation cut into equal batches.

Several networks train together by stacking their carries (`stack_carries`, `carry_at`) and
`jax.vmap`-ing the step over them; `default_together` says how many by backend.

Everything here is jittable and holds no state; callers jit and scan it as suits their backend
(see `ddjax.evaluate.train.default_loop` on unrolling for CPU).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ddjax.models import init_model

Array = jax.Array
PyTree = Any
Carry = tuple  # (params, batch_stats or None, opt_state)
LossFn = Callable[[Array, Array], Array]
AugmentFn = Callable[[Array, Array], Array]

COLLECTIONS = ('params', 'batch_stats')


# -- losses on (logits, labels) --------------------------------------------------------------------
def mse_loss(logits: Array, y: Array) -> Array:
  """Mean over the batch of 0.5 * sum_k (logits - y)^2: logits (B, K), real-valued y (B, K) -> ()
  (FRePo's online and evaluation loss)."""
  return jnp.mean(0.5 * jnp.sum(jnp.square(logits - y), axis=-1))


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy: logits (B, K), integer labels (B,) -> ()."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


# -- the carry -------------------------------------------------------------------------------------
def split_variables(variables: PyTree) -> tuple[PyTree, PyTree | None]:
  """Flax variables {'params', optional 'batch_stats'} -> (params, batch_stats or None).

  Raises ValueError for any other collection (the step would not carry it)."""
  extra = sorted(set(variables) - set(COLLECTIONS))
  if 'params' not in variables or extra:
    raise ValueError(f'expected variables with collections {COLLECTIONS} (batch_stats optional), '
                     f'got {sorted(variables)}')
  return variables['params'], variables.get('batch_stats')


def merge_variables(params: PyTree, batch_stats: PyTree | None) -> dict:
  """(params, batch_stats or None) -> flax variables {'params'[, 'batch_stats']}."""
  variables = {'params': params}
  if batch_stats is not None:
    variables['batch_stats'] = batch_stats
  return variables


def init_carry(variables: PyTree, opt: optax.GradientTransformation) -> Carry:
  """The carry (params, batch_stats or None, opt.init(params)) that starts training `variables`."""
  params, batch_stats = split_variables(variables)
  return params, batch_stats, opt.init(params)


def fresh_carry(model: nn.Module, key: Array, image_shape: Sequence[int],
                opt: optax.GradientTransformation, fast_rng: bool = True) -> Carry:
  """The carry of a freshly initialised network: `init_model(model, key, (1, *image_shape),
  fast_rng)` for one input of shape image_shape (H, W, C), and a fresh optimizer state.

  fast_rng=False draws exactly `model.init(key, ...)` (see `ddjax.models.init_model`)."""
  variables = init_model(model, key, (1,) + tuple(image_shape), fast_rng=fast_rng)
  return init_carry(variables, opt)


def carry_variables(carry: Carry) -> dict:
  """The flax variables {'params'[, 'batch_stats']} of a carry (the optimizer state dropped)."""
  params, batch_stats, _ = carry
  return merge_variables(params, batch_stats)


def stack_carries(carries: Sequence[Carry]) -> Carry:
  """M carries of the same structure -> one carry whose leaves have a leading axis of size M (the
  carry of M networks trained together by a `jax.vmap`-ed step)."""
  return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *carries)


def carry_at(carry: Carry, i: int) -> Carry:
  """Network i's carry (or variables) out of a stacked one (`stack_carries`)."""
  return jax.tree_util.tree_map(lambda leaf: leaf[i], carry)


def default_together(backend: str | None = None) -> int:
  """How many networks to train together (one vmapped step) by default; 0 = all of them.

  CPU: 1. Under `jax.vmap` over networks XLA:CPU runs every convolution as one grouped
  convolution (feature_group_count = networks), slower per network than separate convolutions:
  ConvNet-3 width 64 at IPC 10, 5 networks together took 1.8x the time per network of one at a
  time (218 against 122 ms per step and network on one shared core; benchmarks/eval_speed.py).
  Convolutions batched as an unrolled loop over the networks (a `custom_vmap` rule, tried and
  not kept) only reach parity: the rest of the step gains nothing measurable from batching on
  CPU. Accelerators: all networks in one vmapped step.
  """
  backend = backend or jax.default_backend()
  return 1 if backend == 'cpu' else 0


# -- one training step -----------------------------------------------------------------------------
def make_train_step(model: nn.Module, opt: optax.GradientTransformation, loss: LossFn,
                    augment: AugmentFn | None = None,
                    gradient: Callable | None = None) -> Callable:
  """A pure step(carry, x, y, key=None) -> (carry, loss ()) of `model` under `opt`.

  Args:
    model: a ddjax model; applied in train mode (`mutable=['batch_stats']` when the carry has
      batch statistics, whose updated values replace the old ones in the returned carry).
    opt: the optax optimizer whose state is the carry's third element.
    loss: loss(logits (B, K), y) -> () scalar, e.g. `mse_loss` on (B, K) targets or
      `cross_entropy` on (B,) integer labels.
    augment: optional augment(key, x) -> x of the same shape, applied to the batch before the
      forward pass (`key` is then required; without augmentation it is unused).
    gradient: optional gradient(objective, params) -> ((value, aux), direction) for
      objective(params) -> (value, aux), the direction fed to `opt`; default
      `jax.value_and_grad(objective, has_aux=True)(params)` (GSAM's experts pass theirs,
      `ddjax.distill.experts.gsam_gradient`).

  The step takes the mini-batch itself: x (B, ...) inputs (B, H, W, C) images for a ConvNet, y
  (B, ...) labels or targets with the same leading axis; it draws nothing but the augmentation.
  """

  def step(carry: Carry, x: Array, y: Array, key: Array | None = None) -> tuple[Carry, Array]:
    chex.assert_equal_shape_prefix((x, y), 1)   # static: checked once per trace
    params, batch_stats, opt_state = carry
    if augment is not None:
      x = augment(key, x)

    def objective(p):
      if batch_stats is None:
        logits, _ = model.apply({'params': p}, x, train=True)
        return loss(logits, y), None
      (logits, _), new = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                     mutable=['batch_stats'])
      return loss(logits, y), new['batch_stats']

    if gradient is None:
      (value, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
    else:
      (value, new_stats), grads = gradient(objective, params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, new_stats, opt_state), value

  return step


# -- epochs ----------------------------------------------------------------------------------------
def epoch_batches(key: Array, n: int, batch_size: int) -> Array:
  """One epoch's mini-batch indices, int32 (nb, size): a permutation of range(n) drawn from `key`,
  cut into nb = ceil(n / B) equal batches of size ceil(n / nb) <= B (B = min(batch_size, n)),
  the last one wrapping around to the permutation's start (every example is seen at least once
  per epoch; one step shape). n and batch_size are static; jittable."""
  b = max(1, min(int(batch_size), n))
  nb = -(-n // b)
  size = -(-n // nb)
  perm = jax.random.permutation(key, n)
  return jnp.concatenate([perm, perm])[:nb * size].reshape(nb, size)
