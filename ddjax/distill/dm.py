"""DM: distribution matching (Zhao & Bilen, WACV 2023), as in the official `main_DM.py`.

Each iteration draws a fresh randomly initialised network psi (no training), embeds the real images
of every class and the synthetic images of that class (penultimate features, after DSA with the same
parameters on both sides) and matches the class means:

    L(S) = sum_c || 1/|B_c| sum_{x in B_c} psi(A(x)) - 1/|S_c| sum_{s in S_c} psi(A(s)) ||^2

The real side is additive over samples: G_c = sum_i g(x_i) with g(x_i) = psi(A(x_i)) / |B_c|
(`real_statistic` returns the g(x_i); `loss_from_statistic` takes G), the form BiLP's ITE needs.
`additive_form` is that form per class (BiLP's ITE). `per_class` reports a `PerClass` record
(pred = synthetic mean embedding, target = real mean, loss = K * class distance so that its mean is
DM's sum over classes); row transforms (ISA, drop-easiest) do not apply to it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax import registry
from ddjax.augment.dsa import DSAParams, dsa
from ddjax.distill.base import PER_CLASS, AdditiveForm, Distiller
from ddjax.distill.matching import group_by_class, matching_defaults
from ddjax.scoring.ite import Separable
from ddjax.transforms.base import PerClass

Array = jax.Array
PyTree = Any


class DM(Distiller):
  """DM as a bundle of pure functions (`Distiller`: no state, per-class record, additive over
  real samples).

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

  record = PER_CLASS

  def fresh_network(self, key: Array) -> PyTree:
    """Variables of a newly initialised network (DM draws one per iteration)."""
    return self.model.init(key, jnp.zeros((1,) + self.image_shape, jnp.float32), train=False)

  def network_and_keys(self, key: Array) -> tuple[PyTree, Array]:
    """The fresh network and the K per-class DSA keys that `per_class(..., key)` uses."""
    k_net, k_aug = jax.random.split(key)
    return self.fresh_network(k_net), jax.random.split(k_aug, self.num_classes)

  def augment(self, keys: Array, x: Array) -> Array:
    """x (K, n, H, W, C), keys (K,): DSA per class, the same parameters for real and synthetic."""
    if not self.dsa_strategy:
      return x
    # DSA's matching passes a seed, which turns on its batch mode: one parameter draw per class
    # batch, shared by the real and the synthetic images (DiffAugment in DC's utils.py).
    return jax.vmap(lambda k, xc: dsa(k, xc, self.dsa_strategy, params=self.dsa_params,
                                      batchmode=True))(keys, x)

  def embed(self, variables: PyTree, x: Array) -> Array:
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
      return self.embed(variables, self.augment(key[None], xc[None]))[0]

    return jax.lax.map(one_class, (keys, x_real)) / x_real.shape[1]

  def syn_statistic(self, variables: PyTree, syn_x: Array, keys: Array) -> Array:
    """Synthetic class means of the embeddings: syn_x (K, ipc, ...) -> (K, D)."""
    return self.embed(variables, self.augment(keys, syn_x)).mean(axis=1)

  @staticmethod
  def distance(g_sum: Array, fs: Array) -> Array:
    """Squared distance of mean embeddings over the last axis: (..., D), (..., D) -> (...)."""
    return jnp.sum(jnp.square(g_sum - fs), axis=-1)

  def loss_from_statistic(self, g_sum: Array, syn_x: Array, variables: PyTree,
                          keys: Array) -> Array:
    """Per-class DM distances (K,) from the real class means g_sum (K, D) and syn_x (K, ipc, ...)."""
    return self.distance(g_sum, self.syn_statistic(variables, syn_x, keys))

  def real_class_means(self, variables: PyTree, x: Array, labels: Array, keys: Array,
                       weight: Array | None = None) -> Array:
    """The real class means G (K, D) of a flat batch x (B, H, W, C) with labels (B,):
    G_c = sum_{i in c} w_i psi(A_c(x_i)) / sum_{i in c} w_i (w = 1 without `weight` (B,)),
    A_c the class's DSA draw from keys[c] (the same draw as `real_statistic` on the class batch:
    DSA's batch-mode parameters do not depend on the batch size).

    Never regroups the batch by class: a gather of the whole batch would make every device (and
    process) of a data-parallel mesh embed all B images. The batch stays in its row layout, split
    over the devices, and is embedded in K strided chunks (rows j, j + K, ...; `lax.map`, one
    class batch's worth of images at a time, as `real_statistic`); the class sums are one
    (K, B) x (B, D) product, which a sharded batch turns into an all-reduce.
    """
    b, k = x.shape[0], self.num_classes
    chunks = k if b % k == 0 else 1

    def one_chunk(args):
      xc, lc = args
      xa = jax.vmap(lambda key, xi: self.augment(key[None], xi[None, None])[0, 0])(keys[lc], xc)
      _, feats = self.model.apply(variables, xa, train=False)
      return feats

    strided = lambda a: jnp.swapaxes(a.reshape((b // chunks, chunks) + a.shape[1:]), 0, 1)
    feats = jax.lax.map(one_chunk, (strided(x), strided(labels)))        # (chunks, B / chunks, D)
    feats = jnp.swapaxes(feats, 0, 1).reshape(b, -1)
    w = jnp.ones((b,), feats.dtype) if weight is None else weight.astype(feats.dtype)
    onehot = jax.nn.one_hot(labels, k, dtype=feats.dtype) * w[:, None]     # (B, K)
    return (onehot.T @ feats) / jnp.maximum(onehot.sum(0), 1e-12)[:, None]

  def per_class(self, syn: PyTree, state: tuple, batch: dict[str, Array],
                key: Array) -> PerClass:
    """batch {'x': (B, ...), 'y': (B, K)} class-balanced -> one record per class (K rows).

    An optional batch['weight'] (B,) weights the real samples in their class mean (BiLP's
    adaptive pruning passes its 0/1 keep mask). The real side is `real_class_means`, which
    keeps a batch split over devices split."""
    del state
    variables, keys = self.network_and_keys(key)
    labels = jnp.argmax(batch['y'], -1)
    if batch['x'].shape[0] % self.num_classes:
      group_by_class(batch['x'], labels, self.num_classes)      # its error: not class-balanced
    xs = syn['x'].reshape((self.num_classes, -1) + syn['x'].shape[1:])
    g_sum = jax.lax.stop_gradient(self.real_class_means(variables, batch['x'], labels, keys,
                                                        batch.get('weight')))
    fs = self.syn_statistic(variables, xs, keys)
    return PerClass(loss=self.num_classes * self.distance(g_sum, fs), pred=fs, target=g_sum)

  # -- the additive form (BiLP's ITE) -------------------------------------------------------------
  def class_separable(self, variables: PyTree, x_real: Array, x_syn: Array,
                      key: Array) -> Separable:
    """One class of DM: g_i = psi(A(x_i)) / B (`real_statistic`), G = sum_i g_i (the real mean
    embedding), L(G, S) = ||G - mean_s psi(A(s))||^2, A the class's DSA draw from `key` on both
    sides (`per_class` uses keys = split(k_aug, K); pass keys[c]). L is quadratic in G, so the
    first-order ITE is exact here. x_real (B, H, W, C); x_syn (ipc, H, W, C)."""
    g = jax.lax.stop_gradient(self.real_statistic(variables, x_real[None], key[None])[0])
    features = lambda S: self.syn_statistic(variables, S[None], key[None])[0]
    return Separable(self.distance, features, g.sum(axis=0), x_syn, g)

  def class_additive_form(self, variables: PyTree, x_real: Array, x_syn: Array,
                          keys: Array) -> AdditiveForm:
    """Every class at once: x_real (K, B_c, ...), x_syn (K, ipc, ...), keys (K,)."""
    build = lambda xr, xs, k: self.class_separable(variables, xr, xs, k)
    return AdditiveForm(build, (x_real, x_syn), keys)

  def additive_form(self, syn: PyTree, state: tuple, batch: dict[str, Array], key: Array,
                    chunk_size: int | None = None) -> AdditiveForm:
    """The additive form of `per_class(syn, state, batch, key)`'s meta-loss, class by class,
    with the same fresh network and DSA draws. (DM embeds whole classes; chunk_size unused.)"""
    del state, chunk_size
    variables, keys = self.network_and_keys(key)
    labels = jnp.argmax(batch['y'], -1)
    xr = group_by_class(batch['x'], labels, self.num_classes)
    xs = jax.lax.stop_gradient(syn['x']).reshape((self.num_classes, -1) + syn['x'].shape[1:])
    return self.class_additive_form(variables, xr, xs, keys)


# -- registration ---------------------------------------------------------------------------------
def _configure(cfg, preset: str) -> None:
  """DM's main_DM.py: images by SGD lr 1.0 from real images, DSA on; 1000 iterations on CPU,
  20000 (`paper`)."""
  matching_defaults(cfg)
  cfg.dsa.strategy = 'auto'
  cfg.distill.lr = 1.0
  cfg.distill.init = 'real'
  cfg.distill.steps = 20000 if preset == 'paper' else 1000


def _validate(cfg) -> list[str]:
  if cfg.model.norm == 'batch':
    return ["method='dm' with model.norm='batch': DM embeds each class with a fresh network; "
            "use 'instance' (DM's default) or 'none'."]
  return []


def _build(cfg, data) -> DM:
  from ddjax.augment.dsa import strategy_from_config
  from ddjax.models import from_config
  return DM(from_config(cfg.model, data.num_classes), data.image_shape, data.num_classes,
            dsa_strategy=strategy_from_config(cfg))


registry.register(registry.Method(
    name='dm', distiller_class=DM, build=_build, configure=_configure, validate=_validate,
    protocol='dc', description='DM: distribution matching of mean embeddings'))
