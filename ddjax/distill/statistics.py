r"""G-VBSM's and EDC's statistic matching: the pieces `ddjax.distill.gvbsm` and `edc` share.

Official code: G = shaoshitong/G_VBSM_Dataset_Condensation (Branch_CIFAR_10/recover/), E =
shaoshitong/EDC (Branch_CIFAR_10/recover/). Citations are repo:path:line.

Hooks. Every `flax.linen.BatchNorm` and every `flax.linen.Conv` an observer calls is a hook
(method interception, in call order: `apply_with_statistics`), reading its INPUT h (B, H, W, C):

  BN:   mu(h), sigma^2(h): per-channel mean and biased variance over (B, H, W)  (C,), (C,)
        (G:utils.py:103-129, the BNFeatureHook)
  Conv: the same two, plus the 4x4-patch statistics: h resized (bilinear) to H', W' the next
        multiples of 4 (div_four_mul, G:utils.py:26-29), cut into (H'/4)(W'/4) patches; per patch
        location the mean and biased variance over (B, C, 4, 4)                 (P,), (P,)
        (G:utils.py:208-216, the ConvFeatureHook; "b c (u h) (v w) -> (u v) (b c h w)").

Matching one hook h with statistics s_1..s_J (J = 2 for BN, 4 for Conv):

  R_h = (1 - alpha) sum_j || t_j - s~_j ||_2  +  alpha sum_j || sum_c p_c t_{j,c} - s~_j ||_2,

with t_j the real target (BN: its running buffers; Conv: the real-data average of per-batch
statistics, `real_statistics`), t_{j,c} the class-c target (EDC's soft category-aware matching,
the mean over class-c images of per-image statistics), p_c the fraction of the batch's labels that
are c (E:utils.py:224-229 BN, :501-514 Conv; alpha = 0.5 hard-coded there, 0 in G-VBSM), and

  s~ = s_ema + s - stop_gradient(s),   s_ema <- a s_ema + (1 - a) s   (a = training_momentum 0.8),

the EMA straight-through statistic: its value is the EMA, its gradient the batch statistic's
(G:utils.py:116-125 BN, :218-234 Conv; s_ema starts at the first batch's value and is updated
BEFORE it is used). Norms are plain (unsquared) l2 norms. A Conv hook is skipped (R_h = 0, its EMA
not updated) with probability drop_rate per forward (G:utils.py:205-207); BN hooks never are. The
total is sum_h m_h R_h with m_1 = first_multiplier (10) for the first hook in call order
(G:data_synthesis_with_svd_with_db_with_all_statistic.py:156-158).

DD ("svd") loss of G-VBSM (G:data_synthesis_with_svd_with_db_with_all_statistic.py:160-180): for
every class c of a batch, X_c (n_c, D) its augmented images average-pooled to at most 32 x 32 and
flattened, lambda the eigenvalues of X_c X_c^T, and

  L_DD = sum_c KL( softmax(lambda / tau) [no gradient] || softmax(lambda) ),   tau = 4,

which is 0 for n_c = 1. Flatness of EDC (E:recover.py:260-271): x_ema <- beta x_ema + (1 - beta) x,
the same view A on both, L_FR = mean over B x K of KL(softmax(f(A x_ema) / 4) || softmax(f(A x) / 4))
(F.kl_div's default 'mean' reduction: divided by B K), f(A x_ema) without gradient.
"""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddjax.augment.basic import augment_batch
from ddjax.infra import artifacts, distributed, files

Array = jax.Array
PyTree = Any

BN, CONV = 'bn', 'conv'
PATCH = 4                  # the patch side of the Conv hook's patch statistics
STATS_FILE = 'statistics_{}.npz'


# -- statistics of one hook's input ----------------------------------------------------------------
def div_four_mul(v: int) -> int:
  """The smallest multiple of 4 that is >= v (G:utils.py:26-29)."""
  return -(-int(v) // PATCH) * PATCH


def resize_to_patches(h: Array) -> Array:
  """h (B, H, W, C) resized bilinearly (half-pixel centres, as F.interpolate(mode='bilinear')
  upsampling) to (B, div_four_mul(H), div_four_mul(W), C); h itself when both are multiples
  of 4."""
  b, hh, ww, c = h.shape
  th, tw = div_four_mul(hh), div_four_mul(ww)
  if (th, tw) == (hh, ww):
    return h
  return jax.image.resize(h, (b, th, tw, c), 'bilinear')


def _patches(h: Array) -> Array:
  """(B, H, W, C) -> (B, U, 4, V, 4, C) after `resize_to_patches`, U = H'/4, V = W'/4."""
  h = resize_to_patches(h)
  b, hh, ww, c = h.shape
  return h.reshape(b, hh // PATCH, PATCH, ww // PATCH, PATCH, c)


def _moments(h: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
  mean = jnp.mean(h, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(h - mean), axis=axes)
  return jnp.squeeze(mean, axis=axes), var


def channel_stats(h: Array) -> tuple[Array, Array]:
  """Per-channel mean and biased variance of h (B, H, W, C) over (B, H, W): (C,), (C,)."""
  return _moments(h, (0, 1, 2))


def patch_stats(h: Array) -> tuple[Array, Array]:
  """Per 4x4-patch-location mean and biased variance of h (B, H, W, C) over (B, C, 4, 4), after
  `resize_to_patches`: (P,), (P,), P = (H'/4)(W'/4), row-major over (u, v) as einops' (u v)."""
  m, v = _moments(_patches(h), (0, 2, 4, 5))
  return m.reshape(-1), v.reshape(-1)


def conv_stats(h: Array) -> tuple[Array, Array, Array, Array]:
  """The Conv hook's statistics of its input h (B, H, W, C): (channel mean (C,), channel var (C,),
  patch mean (P,), patch var (P,)) (module docstring)."""
  return channel_stats(h) + patch_stats(h)


def image_channel_stats(h: Array) -> tuple[Array, Array]:
  """Per image, per channel mean and biased variance over (H, W): (B, C), (B, C) (EDC's class
  statistics of a BN or Conv input, E:utils.py:194-206, :402-414)."""
  return _moments(h, (1, 2))


def image_patch_stats(h: Array) -> tuple[Array, Array]:
  """Per image, per patch location mean and biased variance over (C, 4, 4): (B, P), (B, P)
  (E:utils.py:402-414, "b c (u h) (v w) -> b (u v) (c h w)")."""
  p = _patches(h)
  m, v = _moments(p, (2, 4, 5))
  return m.reshape(p.shape[0], -1), v.reshape(p.shape[0], -1)


def image_stats(kind: str, h: Array) -> tuple[Array, ...]:
  """Per-image statistics of a hook's input (B, ...) each: 2 for BN, 4 for Conv."""
  return image_channel_stats(h) + (image_patch_stats(h) if kind == CONV else ())


class Hook(NamedTuple):
  """One hooked layer as a batch sees it: kind ('bn' | 'conv'), name (its Flax path), stats (the
  batch statistics of its input: 2 for BN, 4 for Conv), running (BN: its running mean and var;
  Conv: ()), per_image (`image_stats`, when asked; else ())."""
  kind: str
  name: str
  stats: tuple
  running: tuple
  per_image: tuple = ()


def apply_with_statistics(model: nn.Module, variables: PyTree, x: Array, per_image: bool = False,
                          **kwargs) -> tuple[Any, list[Hook]]:
  """model.apply(variables, x, train=False, **kwargs) and the `Hook` of every `nn.BatchNorm` and
  `nn.Conv` it calls, in call order (method interception: any Flax model). per_image: also each
  hook's per-image statistics (for the real class targets)."""
  hooks: list[Hook] = []

  def interceptor(next_fun, args, kw, context):
    module = context.module
    if context.method_name == '__call__' and isinstance(module, (nn.BatchNorm, nn.Conv)):
      h = jnp.asarray(args[0], jnp.float32)
      name = '/'.join(str(p) for p in module.path)
      if isinstance(module, nn.BatchNorm):
        running = module.variables['batch_stats']
        hooks.append(Hook(BN, name, channel_stats(h), (running['mean'], running['var']),
                          image_stats(BN, h) if per_image else ()))
      else:
        hooks.append(Hook(CONV, name, conv_stats(h), (),
                          image_stats(CONV, h) if per_image else ()))
    return next_fun(*args, **kw)

  with nn.intercept_methods(interceptor):
    out = model.apply(variables, x, train=False, **kwargs)
  return out, hooks


def hookable(model: nn.Module) -> nn.Module:
  """The model with every convolution a `nn.Conv` call: ddjax's ConvNet computes a norm-free
  first block by hand (`fuse_first_block`), which interception would not see; the same
  parameters serve both forms."""
  if getattr(model, 'fuse_first_block', False):
    return model.clone(fuse_first_block=False)
  return model


# -- matching --------------------------------------------------------------------------------------
def straight_through(s: Array, s_ema: Array) -> Array:
  """s_ema + s - stop_gradient(s): the value of the EMA s_ema, the gradient of s."""
  return s_ema + s - jax.lax.stop_gradient(s)


def ema_update(old: Array, new: Array, momentum: float, seen: Array, keep: Array) -> Array:
  """The EMA of a statistic after a forward that computed `new`: `new` when not `seen` before
  (the first value), a old + (1 - a) stop_gradient(new) when seen, `old` when the hook was dropped
  (keep False)."""
  new = jax.lax.stop_gradient(new)
  upd = jnp.where(seen, momentum * old + (1.0 - momentum) * new, new)
  return jnp.where(keep, upd, old)


def hook_term(stats: Sequence[Array], ema: Sequence[Array], targets: Sequence[Array],
              class_targets: Sequence[Array] | None, class_weights: Array | None,
              alpha: float) -> Array:
  """R_h of one hook (module docstring): (1 - alpha) sum_j ||t_j - s~_j|| + alpha sum_j
  ||p . T_j - s~_j||, s~_j = `straight_through`(stats[j], ema[j]); class_targets T_j (K, d_j)
  and class_weights p (K,) (the batch's label fractions) used when alpha > 0. ()"""
  total = jnp.zeros((), jnp.float32)
  for j, (s, e) in enumerate(zip(stats, ema)):
    st = straight_through(s, e)
    if alpha < 1.0:
      total = total + (1.0 - alpha) * jnp.linalg.norm(targets[j] - st)
    if alpha > 0.0:
      mixed = class_weights @ class_targets[j]
      total = total + alpha * jnp.linalg.norm(mixed - st)
  return total


def dd_loss(x: Array, groups: int, tau: float = 4.0, pool: int = 32) -> Array:
  """G-VBSM's DD loss of a batch x (B, H, W, C) made of `groups` classes of B / groups
  consecutive images each (module docstring): per class, KL(softmax(lambda / tau) [detached] ||
  softmax(lambda)), lambda = eigvalsh(X X^T), X the class's images pooled to at most pool x pool
  (block mean when the side is a multiple, else antialiased resize) and flattened; summed over
  the classes. () float32; 0 when each class has one image."""
  b, h, w, c = x.shape
  if max(h, w) > pool:
    if h % pool == 0 and w % pool == 0:
      x = x.reshape(b, pool, h // pool, pool, w // pool, c).mean(axis=(2, 4))
    else:
      x = jax.image.resize(x, (b, min(h, pool), min(w, pool), c), 'linear', antialias=True)
  m = b // groups
  if m <= 1:
    return jnp.zeros((), jnp.float32)
  xs = x.reshape(groups, m, -1).astype(jnp.float32)
  gram = jnp.einsum('gid,gjd->gij', xs, xs)
  lam = jnp.linalg.eigvalsh(gram)                                          # (groups, m)
  # KL from log-probabilities on both sides: eigenvalues of pixel Gram matrices spread by
  # hundreds, softmax(lambda / tau) underflows to 0, and 0 * log 0 taken literally is NaN
  log_teacher = jax.lax.stop_gradient(jax.nn.log_softmax(lam / tau, axis=-1))
  log_student = jax.nn.log_softmax(lam, axis=-1)
  return jnp.sum(optax.losses.kl_divergence_with_log_targets(log_student, log_teacher))


def flatness_kl(logits: Array, ema_logits: Array, tau: float = 4.0) -> Array:
  """EDC's L_FR: F.kl_div(log_softmax(logits / tau), softmax(ema_logits / tau)) with the 'mean'
  reduction (the sum over B x K divided by B K), the EMA side without gradient. ()"""
  p = jax.lax.stop_gradient(jax.nn.softmax(ema_logits / tau, axis=-1))
  logp = jax.lax.stop_gradient(jax.nn.log_softmax(ema_logits / tau, axis=-1))
  return jnp.mean(p * (logp - jax.nn.log_softmax(logits / tau, axis=-1)))


# -- the real targets ------------------------------------------------------------------------------
class HookTargets(NamedTuple):
  """The real-data targets of one hook: kind, name, glob (Conv: the 4 statistics' dataset
  averages of per-batch values; BN: () as its running buffers are the targets), classwise (the
  per-class means of per-image statistics, (K, d) each: 2 for BN, 4 for Conv)."""
  kind: str
  name: str
  glob: tuple
  classwise: tuple


def real_statistics(model: nn.Module, variables: PyTree, x: np.ndarray, y: np.ndarray,
                    num_classes: int, key: Array, batch_size: int = 64, max_images: int = 0,
                    translate: int = 4, flip: bool = True) -> list[HookTargets]:
  """The targets of every hook of an observer from the real set x (N, H, W, C), y (N,): one pass
  in a random order (at most `max_images` images, 0 = all) in batches of `batch_size`, each image
  randomly translated by up to `translate` pixels (zero padding: RandomCrop(pad 4)) and flipped
  (G:data_synthesis_with_svd_with_db_with_all_statistic.py:70-93; E:recover.py:155-181).
  Conv: sum_b stat_b * |b| / N, the average of per-batch statistics (G:utils.py:187-202); per
  class: the mean over the class's images of per-image statistics (E:utils.py:194-206, :402-414).
  A class with no image gets zeros."""
  model = hookable(model)
  k_perm, k_aug = jax.random.split(key)
  order = np.asarray(jax.random.permutation(k_perm, len(y)))
  if max_images:
    order = order[:int(max_images)]
  n = len(order)

  names: list[tuple[str, str]] = []        # filled when `one` is traced

  @jax.jit
  def one(xb, yb, k):
    xb = augment_batch(k, xb, translate=translate, flip=flip)
    _, hooks = apply_with_statistics(model, variables, xb, per_image=True)
    names[:] = [(h.kind, h.name) for h in hooks]
    onehot = jax.nn.one_hot(yb, num_classes, dtype=jnp.float32)
    return ([h.stats for h in hooks], [tuple(onehot.T @ s for s in h.per_image) for h in hooks],
            onehot.sum(0))

  glob = cls = counts = None
  for i, s in enumerate(range(0, n, batch_size)):
    idx = order[s:s + batch_size]
    stats, sums, cnt = one(jnp.asarray(x[idx]), jnp.asarray(y[idx], jnp.int32),
                           jax.random.fold_in(k_aug, i))
    w = len(idx) / n
    stats = [[np.asarray(a, np.float64) * w for a in st] for st in stats]
    sums = [[np.asarray(a, np.float64) for a in sm] for sm in sums]
    if glob is None:
      glob, cls, counts = stats, sums, np.asarray(cnt, np.float64)
    else:
      glob = [[a + b for a, b in zip(g, st)] for g, st in zip(glob, stats)]
      cls = [[a + b for a, b in zip(c, sm)] for c, sm in zip(cls, sums)]
      counts = counts + np.asarray(cnt, np.float64)
  denom = np.maximum(counts, 1.0)[:, None]
  return [HookTargets(kind, name,
                      tuple(np.float32(a) for a in g) if kind == CONV else (),
                      tuple(np.float32(c / denom) for c in cs))
          for (kind, name), g, cs in zip(names, glob, cls)]


class StatisticsMismatch(artifacts.Mismatch):
  """Cached real statistics were computed for another observer or with other settings."""


def _pack(targets: Sequence[HookTargets]) -> dict[str, np.ndarray]:
  out = {}
  for i, t in enumerate(targets):
    for j, a in enumerate(t.glob):
      out[f'h{i}_g{j}'] = a
    for j, a in enumerate(t.classwise):
      out[f'h{i}_c{j}'] = a
  return out


def _unpack(arrays: dict, hooks: Sequence[Sequence[str]]) -> list[HookTargets]:
  out = []
  for i, (kind, name) in enumerate(hooks):
    nglob = 4 if kind == CONV else 0
    ncls = 4 if kind == CONV else 2
    out.append(HookTargets(kind, name, tuple(arrays[f'h{i}_g{j}'] for j in range(nglob)),
                           tuple(arrays[f'h{i}_c{j}'] for j in range(ncls))))
  return out


def cached_real_statistics(observer_path: str, observer_record: dict, model: nn.Module,
                           variables: PyTree, x: np.ndarray, y: np.ndarray, num_classes: int,
                           seed: int, batch_size: int = 64, max_images: int = 0,
                           translate: int = 4, flip: bool = True,
                           log=None) -> list[HookTargets]:
  """`real_statistics` of an observer, cached beside it: `<observer_path>/statistics_<hash>.npz`,
  one file written atomically with its record inside (the settings and the observer's record), the
  hash naming the settings. A cached file whose record differs (the observer was trained again)
  is refused (`StatisticsMismatch`) naming the keys; a damaged one raises
  `artifacts.RecordError`."""
  settings = {'kind': 'gsm_statistics', 'batch_size': int(batch_size),
              'max_images': int(max_images), 'translate': int(translate), 'flip': bool(flip),
              'seed': int(seed), 'num_classes': int(num_classes)}
  want = dict(settings, observer=observer_record)
  path = os.path.join(observer_path, STATS_FILE.format(artifacts.content_hash(settings)))
  arrays = artifacts.read_npz(path, 'cached real statistics', fix='delete it to compute again')
  if arrays is not None:
    have = json.loads(str(arrays.pop('record')))
    hooks = have.pop('hooks')
    artifacts.check(have, want, subject=f'the real statistics in {path} were made for another '
                    'observer or settings', fix='delete the file to compute them again',
                    error=StatisticsMismatch)
    if log:
      log(f'reusing real statistics {path}')
    return _unpack(arrays, hooks)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x57A7)
  targets = real_statistics(model, variables, x, y, num_classes, key, batch_size, max_images,
                            translate, flip)
  if distributed.is_main():
    record = dict(artifacts.plain(want), hooks=[[t.kind, t.name] for t in targets])
    files.write_npz(path, record=np.asarray(json.dumps(record)), **_pack(targets))
  if log:
    log(f'real statistics of {len(targets)} hooks cached in {path}')
  return targets
