r"""KIP: Kernel Inducing Points (Nguyen, Chen & Lee, ICLR 2021), as in the KIP notebooks.

The meta-loss regresses a class-balanced real batch on the synthetic set with an infinite-width
kernel (ISA Eq. 4 with K the NTK or NNGP of a network instead of a conjugate kernel):

    w = (K_SS + lambda I)^-1 Y_S,   P_T = K_TS w,   loss_i = 1/2 ||y_i - P_T[i]||^2,
    lambda = reg * trace(K_SS) / n_s        (KIP: reg = 1e-6)

P_T is linear in the (implicit) kernel features of the real sample, so `drop_easiest` and `isa`
apply unchanged (KIP+ISA). There is no inner loop: `update` returns its state untouched.

`kernel_fn(x1, x2, get)` is any callable with neural-tangents' signature: ddjax's own
(`ddjax.kernels.stax` / `ddjax.kernels.architectures.kernel_network`) or neural-tangents'.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ddjax.kernels.krr import krr_solve
from ddjax.transforms.base import PerSample, per_sample_mse

Array = jax.Array
PyTree = Any


class KIP:
  """KIP as a bundle of pure functions (the distiller interface of ddjax.distill.step).

  Args:
    kernel_fn: kernel_fn(x1, x2, get) -> (n1, n2).
    get: 'ntk' (KIP's default) or 'nngp'.
    reg: lambda / (trace(K_SS) / n_s).
  """

  def __init__(self, kernel_fn: Callable, get: str = 'ntk', reg: float = 1e-6):
    if get not in ('ntk', 'nngp'):
      raise ValueError(f"kip kernel get={get!r}: use 'ntk' or 'nngp'.")
    self.kernel_fn = kernel_fn
    self.get = get
    self.reg = reg

  def init(self, key: Array, syn: PyTree) -> tuple:
    del key, syn
    return ()

  def per_sample(self, syn: PyTree, state: tuple, batch: dict[str, Array], key: Array) -> PerSample:
    """batch {'x': (B, ...), 'y': (B, K)} -> PerSample(pred (B, K), target (B, K), loss (B,))."""
    del state, key
    k_ss = self.kernel_fn(syn['x'], None, self.get)
    k_ts = self.kernel_fn(batch['x'], syn['x'], self.get)
    pred = k_ts @ krr_solve(k_ss, syn['y'], self.reg)
    return per_sample_mse(pred, batch['y'])

  def regularizer(self, syn: PyTree, classes: Array) -> Array:
    del syn, classes
    return jnp.zeros((), jnp.float32)

  def update(self, syn: PyTree, state: tuple, key: Array) -> tuple:
    del syn, key
    return state
