"""GSAM (Zhuang et al. 2022), as FTD's experts use it: the surrogate-gap guided sharpness-aware
gradient that replaces plain SGD's gradient when `expert.gsam` is on (DATM / PAD)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any
Array = jax.Array


def _tree_dot(a: PyTree, b: PyTree) -> Array:
  return sum(jnp.sum(x * y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                             jax.tree_util.tree_leaves(b)))


def _tree_norm(a: PyTree) -> Array:
  return jnp.sqrt(_tree_dot(a, a))


def gsam_perturbation(params: PyTree, grads: PyTree, rho: float, adaptive: bool = False,
                      eps: float = 1e-12) -> PyTree:
  """GSAM's weight perturbation e_w (gsam `perturb_weights`): rho g / (||g|| + eps), or with
  `adaptive` (ASAM) rho w^2 g / (|| |w| g || + eps)."""
  if adaptive:
    norm = _tree_norm(jax.tree_util.tree_map(lambda w, g: jnp.abs(w) * g, params, grads))
    scale = rho / (norm + eps)
    return jax.tree_util.tree_map(lambda w, g: g * scale * jnp.square(w), params, grads)
  scale = rho / (_tree_norm(grads) + eps)
  return jax.tree_util.tree_map(lambda g: g * scale, grads)


def gsam_direction(grads: PyTree, perturbed_grads: PyTree, alpha: float,
                   eps: float = 1e-12) -> PyTree:
  """GSAM's update direction (gsam `gradient_decompose`): g_p - alpha g_perp, where g is the
  gradient at w, g_p at the perturbed weights, and g_perp = g - (<g, g_p> / ||g_p||^2) g_p is the
  part of g orthogonal to g_p (with eps as in the official code)."""
  inner = _tree_dot(grads, perturbed_grads)
  n_p, n_g = _tree_norm(perturbed_grads), _tree_norm(grads)
  cosine = inner / (n_p * n_g + eps)
  return jax.tree_util.tree_map(
      lambda g, gp: gp - alpha * (g - cosine * n_g * gp / (n_p + eps)), grads, perturbed_grads)


def gsam_gradient(loss_fn: Callable, params: PyTree, rho: float, alpha: float,
                  adaptive: bool = False, eps: float = 1e-12):
  """One GSAM gradient: ((value, aux), direction) for loss_fn(params) -> (value, aux).

  g = grad at params; g_p = grad at params + gsam_perturbation(g); direction =
  gsam_direction(g, g_p). value and aux are those at the unperturbed params (FTD's GSAM keeps
  the first pass's batch-norm statistics: its second pass runs with momentum 0). Feed the
  direction to the base optimizer with the unperturbed params (weight decay acts on those)."""
  (value, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
  e_w = gsam_perturbation(params, g, rho, adaptive, eps)
  g_p = jax.grad(lambda p: loss_fn(p)[0])(jax.tree_util.tree_map(jnp.add, params, e_w))
  return (value, aux), gsam_direction(g, g_p, alpha, eps)


def make_gsam_train_step(model, opt, loss, augment=None, rho: float = 0.01,
                         alpha: float = 0.3, adaptive: bool = False) -> Callable:
  """`ddjax.models.training.make_train_step` with GSAM's direction in place of the gradient."""
  from ddjax.models.training import make_train_step
  gradient = lambda objective, params: gsam_gradient(objective, params, rho, alpha, adaptive)
  return make_train_step(model, opt, loss, augment, gradient=gradient)
