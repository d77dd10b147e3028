"""DM: distribution matching (Zhao & Bilen, WACV 2023), as in the official `main_DM.py`.

Each iteration draws a fresh randomly initialised network psi (no training), embeds the real images
of every class and the synthetic images of that class (penultimate features, after DSA with the same
parameters on both sides) and matches the class means:

    L(S) = sum_c || 1/|B_c| sum_{x in B_c} psi(A(x)) - 1/|S_c| sum_{s in S_c} psi(A(s)) ||^2

The real side is additive over samples: G_c = sum_i g(x_i) with g(x_i) = psi(A(x_i)) / |B_c|
(`real_statistic` returns the g(x_i); `loss_from_statistic` takes G), the form BiLP's ITE needs.
`per_sample` reports one row per class (pred = synthetic mean embedding, target = real mean, loss =
K * class distance so that its mean is DM's sum over classes); loss transforms built for KRR
predictions (ISA, drop-easiest) do not apply to it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.augment.dsa import DSAParams, dsa
from ddjax.distill.matching import group_by_class
from ddjax.transforms.base import PerSample

Array = jax.Array
PyTree = Any


class DM:
  """DM as a bundle of pure functions (the distiller interface of ddjax.distill.step).

  Args:
    model: a Flax module returning (logits, features) (ddjax ConvNet / MLP), not batch-normed.
    image_shape: (H, W, C).
    num_classes: K. The synthetic set is class-grouped: rows c * ipc ... (c + 1) * ipc - 1.
    dsa_strategy: DSA ops ('' disables augmentation).
    dsa_params: DSA magnitudes.
  """

  def __init__(self, model: nn.Module, image_shape: tuple, num_classes: int,
               dsa_strategy: str = 'color_crop_cutout_flip_scale_rotate',
               dsa_params: DSAParams = DSAParams()):
    if getattr(model, 'norm', 'none') == 'batch':
      raise ValueError("DM embeds each class with a fresh network in train mode; batch norm would "
                       "mix classes. Use model.norm='instance' (DM's default) or 'none'.")
    self.model = model
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    self.dsa_strategy = dsa_strategy
    self.dsa_params = dsa_params

  def init(self, key: Array, syn: PyTree) -> tuple:
    del key, syn
    return ()

  def fresh_network(self, key: Array) -> PyTree:
    """Variables of a newly initialised network (DM draws one per iteration)."""
    return self.model.init(key, jnp.zeros((1,) + self.image_shape, jnp.float32), train=False)

  def network_and_keys(self, key: Array) -> tuple[PyTree, Array]:
    """The fresh network and the K per-class DSA keys that `per_sample(..., key)` uses."""
    k_net, k_aug = jax.random.split(key)
    return self.fresh_network(k_net), jax.random.split(k_aug, self.num_classes)

  def _augment(self, keys: Array, x: Array) -> Array:
    """x (K, n, H, W, C), keys (K,): DSA per class, the same parameters for real and synthetic."""
    if not self.dsa_strategy:
      return x
    # DSA's matching passes a seed, which turns on its batch mode: one parameter draw per class
    # batch, shared by the real and the synthetic images (DiffAugment in DC's utils.py).
    return jax.vmap(lambda k, xc: dsa(k, xc, self.dsa_strategy, params=self.dsa_params,
                                      batchmode=True))(keys, x)

  def _embed(self, variables: PyTree, x: Array) -> Array:
    """x (K, n, H, W, C) -> features (K, n, D)."""
    k, n = x.shape[:2]
    _, feats = self.model.apply(variables, x.reshape((k * n,) + x.shape[2:]), train=False)
    return feats.reshape(k, n, -1)

  def real_statistic(self, variables: PyTree, x_real: Array, keys: Array) -> Array:
    """Per-sample contributions g(x_i) = psi(A(x_i)) / |B_c|: x_real (K, B_c, H, W, C) ->
    (K, B_c, D); their sum over axis 1 is the real class mean.

    Embedded one class at a time (`lax.map`): the same values as one batch of K * B_c images,
    about 2x faster on CPU, where the widest activation of one class batch (256 x 32 x 32 x 128
    floats for DM's ConvNet) stays far closer to the caches than that of the whole batch.
    """
    def one_class(args):
      key, xc = args
      return self._embed(variables, self._augment(key[None], xc[None]))[0]

    return jax.lax.map(one_class, (keys, x_real)) / x_real.shape[1]

  def loss_from_statistic(self, g_sum: Array, syn_x: Array, variables: PyTree,
                          keys: Array) -> Array:
    """Per-class DM distances (K,) from the real class means g_sum (K, D) and syn_x (K, ipc, ...)."""
    fs = self._embed(variables, self._augment(keys, syn_x)).mean(axis=1)
    return jnp.sum(jnp.square(g_sum - fs), axis=-1)

  def per_sample(self, syn: PyTree, state: tuple, batch: dict[str, Array],
                 key: Array) -> PerSample:
    """batch {'x': (B, ...), 'y': (B, K)} class-balanced -> one record per class (K rows).

    An optional batch['weight'] (B,) weights the real samples in their class mean (BiLP's
    adaptive pruning passes its 0/1 keep mask)."""
    del state
    variables, keys = self.network_and_keys(key)
    labels = jnp.argmax(batch['y'], -1)
    xr = group_by_class(batch['x'], labels, self.num_classes)
    xs = syn['x'].reshape((self.num_classes, -1) + syn['x'].shape[1:])
    g = self.real_statistic(variables, xr, keys)
    if 'weight' in batch:     # weighted class means: sum_i w_i psi_i / sum_i w_i
      wr = group_by_class(batch['weight'], labels, self.num_classes).astype(g.dtype)
      g = g * (wr * (wr.shape[1] / jnp.maximum(wr.sum(1, keepdims=True), 1e-12)))[..., None]
    g_sum = jax.lax.stop_gradient(g.sum(axis=1))
    fs = self._embed(variables, self._augment(keys, xs)).mean(axis=1)
    per_class = jnp.sum(jnp.square(g_sum - fs), axis=-1)
    return PerSample(pred=fs, target=g_sum, loss=self.num_classes * per_class)

  def regularizer(self, syn: PyTree, classes: Array) -> Array:
    del syn, classes
    return jnp.zeros((), jnp.float32)

  def update(self, syn: PyTree, state: tuple, key: Array) -> tuple:
    del syn, key
    return state
