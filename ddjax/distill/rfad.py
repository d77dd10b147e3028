r"""RFAD: Random Feature Approximation for dataset distillation (Loo et al., NeurIPS 2022).

Per outer step, `num_models` freshly initialised networks without readout (RFAD: ConvNet-3, no
norm, average pooling, weights N(0, W_std^2 / fan_in), biases N(0, b_std^2)) map images to features
phi_m(x) in R^D. Concatenated and scaled, they give a random-feature estimate of the ConvNet NNGP,
with the readout layer added in closed form (RFAD `distillation.py`):

    Phi(x) = [phi_1(x), ..., phi_M(x)] / sqrt(M D)
    K(x, x') = W_std^2 Phi(x) . Phi(x') + b_std^2          (-> the NNGP of the same ConvNet as M D -> inf)
    w = (K_SS + lambda I)^-1 Y_S,  lambda = reg * trace(K_SS) / n_s    (RFAD: reg = 5e-3)
    P_T = K_TS w

Loss per real sample: 'mse', 1/2 ||y_i - P_T[i]||^2, or 'platt' (RFAD's Platt scaling),
cross-entropy of softmax(exp(t) P_T[i]) against the class argmax(y_i), where t (`syn['log_temp']`,
initialised 0) is learned with the synthetic set. Both are records of `PerSample`, so drop-easiest
applies to either; ISA's closed form integrates the squared loss, so ISA needs loss='mse'.

The random networks are drawn from the step's key (a pure function of (seed, step)); real-sample
features carry no gradient. Not reproduced: RFAD's learned d x d linear map of the coreset
(`transform_mat`, lr 5e-5) and its validation-based early stopping.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddjax import registry
from ddjax.distill.base import Distiller
from ddjax.kernels.krr import krr_solve
from ddjax.transforms.base import PerSample, per_sample_mse

Array = jax.Array
PyTree = Any

LOSSES = ('platt', 'mse')


class RFAD(Distiller):
  """RFAD as a bundle of pure functions (`ddjax.distill.base.Distiller`; no state).

  Args:
    features: stax triple (init_fn, apply_fn, _) of the random-feature network, without readout;
      apply_fn(params, x (N, H, W, C)) -> (N, D).
    num_models: M networks per step. input_shape: (H, W, C).
    W_std, b_std: the analytic readout's, K = W_std^2 Phi Phi^T + b_std^2.
    reg: lambda / (trace(K_SS) / n_s). loss: 'platt' or 'mse'.
  """

  def __init__(self, features, num_models: int, input_shape: tuple[int, ...],
               W_std: float = 2 ** 0.5, b_std: float = 0.1, reg: float = 5e-3,
               loss: str = 'platt'):
    if loss not in LOSSES:
      raise ValueError(f'rfad.loss={loss!r} is not one of {LOSSES}.')
    if num_models < 1:
      raise ValueError(f'rfad.num_models must be >= 1, got {num_models}.')
    self.init_fn, self.apply_fn = features[0], features[1]
    self.num_models = num_models
    self.input_shape = (1,) + tuple(input_shape)
    self.W_std, self.b_std, self.reg, self.loss = W_std, b_std, reg, loss

  def random_features(self, key: Array, x: Array) -> Array:
    """Phi(x): (N, H, W, C) -> (N, M D), the M networks of `key`, scaled by 1/sqrt(M D)."""
    # A Python loop, not vmap: vmapping a convolution over its weights becomes a grouped
    # convolution, which XLA:CPU runs several times slower than M plain ones.
    keys = jax.random.split(key, self.num_models)
    phi = [self.apply_fn(self.init_fn(k, self.input_shape)[1], x) for k in keys]
    m, (n, d) = len(phi), phi[0].shape
    return jnp.concatenate(phi, axis=1) / math.sqrt(m * d)

  def kernel(self, phi1: Array, phi2: Array) -> Array:
    """K = W_std^2 Phi1 Phi2^T + b_std^2: (n1, F), (n2, F) -> (n1, n2)."""
    return self.W_std ** 2 * (phi1 @ phi2.T) + self.b_std ** 2

  def per_sample(self, syn: PyTree, state: tuple, batch: dict[str, Array], key: Array) -> PerSample:
    """batch {'x': (B, H, W, C), 'y': (B, K)} -> PerSample(pred, target (B, K), loss (B,))."""
    del state
    phi_s = self.random_features(key, syn['x'])
    phi_t = jax.lax.stop_gradient(self.random_features(key, batch['x']))
    pred = self.kernel(phi_t, phi_s) @ krr_solve(self.kernel(phi_s, phi_s), syn['y'], self.reg)
    if self.loss == 'mse':
      return per_sample_mse(pred, batch['y'])
    logits = jnp.exp(syn['log_temp']) * pred
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.argmax(batch['y'], axis=-1))
    return PerSample(pred=pred, target=batch['y'], loss=ce)


# -- registration ---------------------------------------------------------------------------------
def config_block() -> ml_collections.ConfigDict:
  """cfg.rfad: random features of cfg.kernel's arch / depth / W_std / b_std."""
  b = ml_collections.ConfigDict()
  b.num_models = 8             # M networks drawn per step
  b.width = 256                # channels of each random network (RFAD: 256)
  b.reg = 5e-3                 # RFAD's `jit`: lambda = reg * trace(K_SS) / n
  b.loss = 'platt'             # platt | mse
  b.temp_lr = 1e-2             # learning rate of the Platt temperature
  return b


def _configure(cfg: ml_collections.ConfigDict, preset: str) -> None:
  """CPU default: 4 networks of width 64 on a real batch of 500 (~40x less compute per step than
  RFAD's); `paper`: RFAD's sizes for a GPU."""
  cfg.kernel.update(arch='convnet', depth=3, kind='nngp')
  cfg.rfad.update(num_models=4, width=64)
  # RFAD's README command: AdaBelief at 1e-3, labels learned
  cfg.distill.update(steps=2000, batch_size=500, optimizer='adabelief', lr=1e-3, label_lr=1e-3,
                     learn_label=True, schedule='constant')
  cfg.eval.update(kernel_krr=True, krr=False)
  cfg.checkpoint.every = 500
  if preset == 'paper':                  # RFAD's sizes: 8 networks of width 256, batch 5120
    cfg.rfad.update(num_models=8, width=256)
    cfg.distill.update(batch_size=5120, steps=20_000)
    cfg.checkpoint.every, cfg.log.every = 1000, 200


def _validate(cfg: ml_collections.ConfigDict) -> list[str]:
  from ddjax.infra.config_checks import choice_errors, int_errors
  errors = (choice_errors(cfg, 'rfad.loss', LOSSES) + int_errors(cfg, 'rfad.num_models', 1)
            + int_errors(cfg, 'rfad.width', 1))
  if cfg.rfad.loss == 'platt' and cfg.transform.isa_eps > 0:
    errors.append("transform.isa_eps > 0 with rfad.loss='platt': ISA's closed form integrates "
                  "the squared loss; set rfad.loss='mse' (configs/rfad_isa.py does).")
  return errors


def _build(cfg: ml_collections.ConfigDict, data) -> RFAD:
  from ddjax.kernels.architectures import kernel_network
  k = cfg.kernel
  features = kernel_network(k.arch, k.depth, k.W_std, k.b_std, width=cfg.rfad.width,
                            readout=False)
  return RFAD(features, cfg.rfad.num_models, data.image_shape, W_std=k.W_std, b_std=k.b_std,
              reg=cfg.rfad.reg, loss=cfg.rfad.loss)


def _extra_params(cfg: ml_collections.ConfigDict) -> dict:
  """RFAD's Platt temperature, learned with the set: log t = 0 (t = 1) at rate rfad.temp_lr."""
  if cfg.rfad.loss != 'platt':
    return {}
  return {'log_temp': (jnp.zeros((), jnp.float32), cfg.rfad.temp_lr)}


registry.register(registry.Method(
    name='rfad', distiller_class=RFAD, blocks=(registry.ConfigBlock('rfad', config_block),),
    build=_build, configure=_configure, validate=_validate,
    plan=lambda cfg, facts: {'extra_params': _extra_params(cfg), 'krr_reg': cfg.rfad.reg},
    protocol='frepo',
    description='RFAD: KRR with random features of the ConvNet NNGP, Platt loss'))
