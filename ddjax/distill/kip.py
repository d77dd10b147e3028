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
import ml_collections

from ddjax import registry
from ddjax.distill.base import Distiller
from ddjax.kernels.architectures import kernel_fn_from_config
from ddjax.kernels.krr import krr_solve
from ddjax.transforms.base import PerSample, per_sample_mse

Array = jax.Array
PyTree = Any


class KIP(Distiller):
  """KIP as a bundle of pure functions (`ddjax.distill.base.Distiller`; no state).

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

  def per_sample(self, syn: PyTree, state: tuple, batch: dict[str, Array], key: Array) -> PerSample:
    """batch {'x': (B, ...), 'y': (B, K)} -> PerSample(pred (B, K), target (B, K), loss (B,))."""
    del state, key
    k_ss = self.kernel_fn(syn['x'], None, self.get)
    k_ts = self.kernel_fn(batch['x'], syn['x'], self.get)
    pred = k_ts @ krr_solve(k_ss, syn['y'], self.reg)
    return per_sample_mse(pred, batch['y'])


# -- registration ---------------------------------------------------------------------------------
def config_block() -> ml_collections.ConfigDict:
  """cfg.kip (the kernel itself is the shared cfg.kernel block)."""
  b = ml_collections.ConfigDict()
  b.reg = 1e-6                # lambda = reg * trace(K_SS) / n
  return b


def _configure(cfg: ml_collections.ConfigDict, preset: str) -> None:
  """KIP's notebook defaults; `paper`: its ConvNet kernel (GPU scale)."""
  cfg.kernel.update(arch='fc', depth=1, kind='ntk')
  # KIP's class-balanced target batches, drawn afresh each step; Adam at 0.04, labels learned
  cfg.distill.update(steps=5000, batch_size=5000, balanced_batch=True, optimizer='adam', lr=4e-2,
                     label_lr=4e-2, learn_label=True, schedule='constant')
  cfg.eval.update(kernel_krr=True, krr=False)
  cfg.checkpoint.every = 500
  if preset == 'paper':                  # KIP's ConvNet-3 kernel
    cfg.kernel.update(arch='convnet', depth=3)
    cfg.distill.update(steps=50_000, lr=1e-2, label_lr=1e-2)
    cfg.checkpoint.every, cfg.log.every = 1000, 500


registry.register(registry.Method(
    name='kip', distiller_class=KIP, blocks=(registry.ConfigBlock('kip', config_block),),
    build=lambda cfg, data: KIP(kernel_fn_from_config(cfg.kernel), get=cfg.kernel.kind,
                                reg=cfg.kip.reg),
    configure=_configure, plan=lambda cfg, facts: {'krr_reg': cfg.kip.reg}, protocol='frepo',
    description='KIP: KRR with an infinite-width NTK / NNGP'))
