"""RDED (Sun et al., CVPR 2024): optimisation-free distillation from realistic, diverse patches.

For every class c (the official synthesize/utils.py):
  1. a random pool T'_c of `rded.pool_per_class` (300) real images;
  2. `rded.crops_per_image` (5) random resized square crops of each (area fraction ~ U(0.08, 1),
     aspect 1, bilinear) resized to the patch size (H // factor, W // factor);
  3. each crop scored by its realism, -CE(observer(crop), c): the crop zero-padded (model space,
     bottom / right) to H x W as the official code; the observer is `ddjax.evaluate.observer`;
  4. each image keeps its best crop (diversity: one patch per source image), then the
     IPC x factor^2 best images of the class are kept, best first;
  5. factor x factor patches are stitched into one image, patch k of a group into cell k in
     row-major order (factor 2 at >= 64 px, 1 below, as the paper; any channel count).

The stored set is class-sorted, IPC per class, labels one-hot in the dataset's class order. RDED
is a set builder (`ddjax.distill.base.SetBuilder`): no meta-loss, no steps; `build` makes the whole
set. Its evaluation
is the 'rded' protocol (`ddjax.evaluate.soft_labels`: online soft labels of the observer), whose
students see ShufflePatches and RandomResizedCrop(scale (1 / factor, 1)) at factor > 1
(`ddjax.augment.patches`; the method's `patch_factor` hands the factor to the protocol). The
observer is ConvNet-3 (<= 32 px) or ResNet-18 with the small-image stem (larger), `observer.arch`.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddjax import registry
from ddjax.augment.patches import crop_resize
from ddjax.distill.base import SetBuilder
from ddjax.evaluate.protocols.rded import OBSERVER_BLOCK

Array = jax.Array


# -- crops -----------------------------------------------------------------------------------------
def crop_boxes(key: Array, n: int, height: int, width: int,
               scale: tuple[float, float] = (0.08, 1.0)) -> Array:
  """n square crop boxes (top, left, side) as float32 (n, 3): area fraction ~ U(scale) of the
  image, side = sqrt(fraction * H * W) clipped to min(H, W), position uniform inside the image."""
  k_s, k_t, k_l = jax.random.split(key, 3)
  frac = jax.random.uniform(k_s, (n,), minval=scale[0], maxval=scale[1])
  side = jnp.clip(jnp.sqrt(frac * height * width), 1.0, float(min(height, width)))
  top = jax.random.uniform(k_t, (n,)) * (height - side)
  left = jax.random.uniform(k_l, (n,)) * (width - side)
  return jnp.stack([top, left, side], axis=-1)


def resized_crop(image: Array, box: Array, out_h: int, out_w: int) -> Array:
  """The square box (top, left, side) of image (H, W, C) resized to (out_h, out_w, C), bilinear
  (pixel centres, edge-clamped; `ddjax.augment.patches.crop_resize`)."""
  return crop_resize(image, jnp.stack([box[0], box[1], box[2], box[2]]), out_h, out_w)


def pad_to(patches: Array, height: int, width: int) -> Array:
  """Zero-pad patches (n, h, w, C) at the bottom / right to (n, height, width, C)."""
  h, w = patches.shape[1:3]
  return jnp.pad(patches, ((0, 0), (0, height - h), (0, width - w), (0, 0)))


def make_scorer(logits_fn, patch_hw: tuple[int, int], image_hw: tuple[int, int], crops: int):
  """Jitted score(images (B, H, W, C), labels (B,), key) -> (best patches (B, h, w, C),
  best losses (B,)): `crops` random resized crops per image, each scored by the observer's
  cross-entropy on its label (zero-padded to the image size), the lowest-loss crop kept.
  logits_fn(x (N, H, W, C)) -> (N, K)."""
  ph, pw = patch_hw
  ih, iw = image_hw

  @jax.jit
  def score(images, labels, key):
    b = images.shape[0]
    boxes = crop_boxes(key, b * crops, ih, iw).reshape(b, crops, 3)
    patches = jax.vmap(jax.vmap(lambda im, bx: resized_crop(im, bx, ph, pw),
                                in_axes=(None, 0)))(images, boxes)           # (B, m, h, w, C)
    flat = patches.reshape((b * crops,) + patches.shape[2:])
    logits = logits_fn(pad_to(flat, ih, iw))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.repeat(labels, crops))
    ce = ce.reshape(b, crops)
    best = jnp.argmin(ce, axis=1)
    return patches[jnp.arange(b), best], ce[jnp.arange(b), best]

  return score


def select_patches(score, x: np.ndarray, y: np.ndarray, num_classes: int, keep: int,
                   pool_per_class: int, key: Array, chunk: int = 256,
                   progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per class: a random pool of `pool_per_class` images of x (N, H, W, C) with label c (all of
  them when fewer), each image's best crop by `score` (`make_scorer`), then the `keep` lowest-loss
  images. Returns (patches (K * keep, h, w, C), losses (K * keep,), source indices into x),
  class-sorted, best first within a class.

  Raises ValueError when a class has fewer than `keep` images in its pool."""
  rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 31 - 1)))
  pools = []
  for c in range(num_classes):
    idx = np.flatnonzero(y == c)
    pool = rng.permutation(idx)[:pool_per_class]
    if len(pool) < keep:
      raise ValueError(f'class {c} has {len(pool)} images in its pool, fewer than the '
                       f'{keep} patches RDED keeps per class (IPC x factor^2).')
    pools.append(pool)
  order = np.concatenate(pools)
  patches, losses = [], []
  t0 = time.perf_counter()
  for s in range(0, len(order), chunk):
    idx = order[s:s + chunk]
    m = len(idx)
    xb, yb = x[idx], y[idx]
    if m < chunk and len(order) > chunk:      # pad the last chunk: one compilation
      xb = np.concatenate([xb, np.repeat(xb[:1], chunk - m, 0)])
      yb = np.concatenate([yb, np.repeat(yb[:1], chunk - m, 0)])
    p, l = score(jnp.asarray(xb), jnp.asarray(yb, jnp.int32), jax.random.fold_in(key, s))
    patches.append(np.asarray(p)[:m])
    losses.append(np.asarray(l)[:m])
    if progress is not None:
      done = min(s + chunk, len(order))
      progress(f'scored {done}/{len(order)} images ({time.perf_counter() - t0:.1f} s)')
  patches, losses = np.concatenate(patches), np.concatenate(losses)
  out_p, out_l, out_i, start = [], [], [], 0
  for pool in pools:
    sl = slice(start, start + len(pool))
    best = np.argsort(losses[sl], kind='stable')[:keep]
    out_p.append(patches[sl][best])
    out_l.append(losses[sl][best])
    out_i.append(pool[best])
    start += len(pool)
  return np.concatenate(out_p), np.concatenate(out_l), np.concatenate(out_i)


def stitch(patches: Array, factor: int, height: int | None = None,
           width: int | None = None) -> Array:
  """Patches (n * factor^2, h, w, C) -> images (n, factor * h, factor * w, C): patch
  g * factor^2 + r * factor + c fills cell (r, c) of image g (row-major). Resized (nearest) to
  (height, width) when given and different (the official code's remainder fit)."""
  f = int(factor)
  p = jnp.asarray(patches)
  n = p.shape[0] // (f * f)
  h, w, ch = p.shape[1:]
  out = p[:n * f * f].reshape(n, f, f, h, w, ch).transpose(0, 1, 3, 2, 4, 5)
  out = out.reshape(n, f * h, f * w, ch)
  if height is not None and (height, width) != (f * h, f * w):
    out = jax.image.resize(out, (n, height, width, ch), 'nearest')
  return out


def factor_of(cfg: ml_collections.ConfigDict, image_shape) -> int:
  """rded.factor, or (0 = auto) 2 for images of >= 64 px, 1 below (the paper)."""
  if cfg.rded.factor:
    return int(cfg.rded.factor)
  return 2 if min(image_shape[:2]) >= 64 else 1


# -- the method ------------------------------------------------------------------------------------
class RDED(SetBuilder):
  """A set builder: the stored set is built once from the observer's best patches."""

  def __init__(self, observer, x_train: np.ndarray, y_train: np.ndarray, num_classes: int,
               ipc: int, factor: int = 1, pool_per_class: int = 300, crops_per_image: int = 5,
               chunk: int = 256, progress=None):
    self.observer = observer
    self.x_train, self.y_train = x_train, y_train
    self.num_classes, self.ipc, self.factor = num_classes, int(ipc), int(factor)
    self.pool_per_class, self.crops_per_image, self.chunk = pool_per_class, crops_per_image, chunk
    self.progress = progress
    self.selection = {}

  def build_set(self, key: Array) -> dict:
    """{'x': (K * IPC, H, W, C), 'y': one-hot (K * IPC, K)}, class-sorted, plus `self.selection`
    (source indices, losses, seconds, ms per stored image)."""
    h, w, _ = self.x_train.shape[1:]
    f = self.factor
    apply = lambda xb: self.observer.model.apply(self.observer.variables, xb, train=False)[0]
    score = make_scorer(apply, (h // f, w // f), (h, w), self.crops_per_image)
    t0 = time.perf_counter()
    patches, losses, idx = select_patches(
        score, self.x_train, self.y_train, self.num_classes, self.ipc * f * f,
        self.pool_per_class, key, self.chunk, self.progress)
    x = np.asarray(stitch(patches, f, h, w), np.float32)
    seconds = time.perf_counter() - t0
    classes = np.repeat(np.arange(self.num_classes), self.ipc)
    self.selection = {'source_indices': idx.tolist(), 'losses': losses.tolist(),
                      'patches_scored': self.crops_per_image * int(np.minimum(
                          np.bincount(self.y_train, minlength=self.num_classes),
                          self.pool_per_class).sum()), 'seconds': seconds, 'ms_per_image': 1000 * seconds / len(classes)}
    if self.progress is not None:
      self.progress(f'selected {len(classes)} images from {len(idx)} patches in {seconds:.1f} s '
                    f'({self.selection["ms_per_image"]:.1f} ms per image, compilation included)')
    return {'x': jnp.asarray(x), 'y': jax.nn.one_hot(classes, self.num_classes)}

  def build(self, syn_init, key):
    """`build_set(key)`; the default draw is not used."""
    del syn_init
    return self.build_set(key)

  def report(self) -> dict:
    """{'selection': seconds, ms per stored image (compilation included), patches scored and
    kept} once the set is built, else {}."""
    if not self.selection:
      return {}
    s = self.selection
    return {'selection': {'seconds': s['seconds'], 'ms_per_image': s['ms_per_image'],
                          'patches_scored': s['patches_scored'],
                          'patches_kept': len(s['source_indices'])}}


# -- registration ----------------------------------------------------------------------------------
def rded_block() -> ml_collections.ConfigDict:
  b = ml_collections.ConfigDict()
  b.pool_per_class = 300      # |T'_c| (paper; scripts' mipc)
  b.crops_per_image = 5       # num_crop (scripts: cr5)
  b.factor = 0                # patches per side; 0 = auto (2 at >= 64 px, 1 below)
  b.score_chunk = 256         # images scored per jitted call
  return b


def _configure(cfg: ml_collections.ConfigDict, preset: str) -> None:
  cfg.distill.steps = 0
  cfg.distill.label_init = 'one_hot'
  cfg.eval.model.norm = 'batch'       # students are the observer's architecture (conv3 -> conv3)
  cfg.eval.model.width = 128
  cfg.eval.num_models = 1             # RDED reports one seed
  cfg.eval.krr = False
  if preset in ('paper', 'cifar10', 'cifar100'):   # the official scripts (Conv3 observer)
    cfg.data.name = 'cifar100' if preset == 'cifar100' else 'cifar10'
    cfg.data.preprocessing = 'standard'
    cfg.observer.epochs = 30
    cfg.eval.num_models = 3
  if preset == 'cifar100':      # the official special case conv3 -> conv3 on CIFAR-100
    cfg.eval.lr = 2e-3          # (argument.py:276-315)
    cfg.eval.batch_size = 25
  if preset == 'image_folder':   # ImageNette-style class folders (data.dir=ROOT: train/ and val/)
    cfg.data.update(name='image_folder', image_size=64, channels=3, test_split='val',
                    preprocessing='standard')
    cfg.rded.factor = 2               # the paper's N = 4 patches at >= 64 px
    cfg.observer.arch = 'resnet18'    # RDED's resnet18_modified: the small-image stem
    cfg.observer.epochs = 30
    cfg.eval.model.update(arch='resnet18', norm='batch')   # resnet18 -> resnet18 (official)
    cfg.eval.num_models = 3


def _validate(cfg: ml_collections.ConfigDict) -> list[str]:
  from ddjax.infra.config_checks import int_errors
  r, errors = cfg.rded, []
  for k in ('pool_per_class', 'crops_per_image', 'score_chunk'):
    errors += int_errors(cfg, f'rded.{k}', 1)
  errors += int_errors(cfg, 'rded.factor', 0, ' (0: 2 at >= 64 px, 1 below)')
  if errors:
    return errors
  factor = int(r.factor) or (2 if (cfg.data.get('image_size') or 0) >= 64 else 1)
  if r.pool_per_class < cfg.distill.ipc * factor * factor:
    errors.append(f'rded.pool_per_class={r.pool_per_class} must be at least IPC x factor^2 = '
                  f'{cfg.distill.ipc * factor * factor} (one patch per source image)')
  if cfg.idc.factor > 1:
    errors.append('rded builds its own stitched images; idc.factor must be 1')
  return errors


def _build(cfg: ml_collections.ConfigDict, data) -> RDED:
  from ddjax.evaluate.observer import get_observer
  obs = get_observer(cfg, data)
  log = lambda line: print('[rded] ' + line, flush=True)
  return RDED(obs, data.x_train, data.y_train, data.num_classes, cfg.distill.ipc,
              factor_of(cfg, data.x_train.shape[1:]), cfg.rded.pool_per_class,
              cfg.rded.crops_per_image, cfg.rded.score_chunk, progress=log)


registry.register(registry.Method(
    name='rded', build=_build, distiller_class=RDED,
    blocks=(registry.ConfigBlock('rded', rded_block), OBSERVER_BLOCK),
    configure=_configure, validate=_validate,
    presets=registry.PRESETS + ('cifar10', 'cifar100', 'image_folder'),
    plan=lambda cfg, facts: {'patch_factor': factor_of(cfg, facts.image_shape)},
    protocol='rded',
    description='RDED: observer-selected realistic patches, stitched; no optimisation'))
