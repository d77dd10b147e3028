"""The observer (RDED's "teacher"): a classifier trained on the real training set, cached on disk.

RDED scores its candidate patches with an observer and relabels the student's batches with its soft
labels (`ddjax.evaluate.soft_labels`). The official code downloads observers trained elsewhere
(and its users hit a label-order mismatch with them); ddjax trains its
own with the classifier-training core (`ddjax.models.training`) on the run's own prepared data, so
labels are in the dataset's order by construction.

An observer directory holds `record.json` and an Orbax checkpoint of the flax variables, a cached
artifact (`ddjax.infra.artifacts`): the checkpoint is written first and the record last, so the
record marks a complete observer, and what a killed training left is cleared before training
again. The record says what the observer was trained on and how (dataset name, train size, image
shape, preprocessing kind, architecture, seed, epochs, plus its test accuracy, which is not
checked):

    obs = get_observer(cfg, data)        # trains once, then reuses cfg.observer.dir
    logits, _ = obs.model.apply(obs.variables, x, train=False)

A cached observer whose record differs from what the run asks for is refused with the differing
keys named (`ObserverMismatch`; a nested key as 'arch.width'). `observer.checkpoint` names a
user's own observer directory (any ddjax model, its architecture read from its record): only the
data keys are checked then.

Architectures (`observer.arch`, `observer_arch`): 'convnet' is ConvNet-`observer.depth` of width
`observer.width` with batch norm (RDED's conv3 for 28-32 px), 'resnet18' the ResNet-18 with the
small-image stem and batch norm (`ddjax.models.resnet`, RDED's resnet18_modified), 'auto' the
first for images of at most 32 px and the second above. The record's 'arch' entry holds the model's
`build_model` keywords, so a cached observer of another architecture is refused.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddjax.augment.basic import augment_batch
from ddjax.data.prepared import cache_identity
from ddjax.evaluate.train import accuracy
from ddjax.models import build_model
from ddjax.models.training import (carry_variables, cross_entropy, epoch_batches, fresh_carry,
                                   make_train_step)
from ddjax.infra import artifacts, distributed
from ddjax.infra.checkpoint import Checkpointer

RECORD = artifacts.RECORD
CHECKPOINT = 'checkpoint'
DATA_KEYS = ('dataset', 'train_size', 'image_shape', 'preprocessing')
CHECKED_KEYS = DATA_KEYS + ('arch', 'seed', 'epochs')
OBSERVER_ARCHITECTURES = ('auto', 'convnet', 'resnet18')
AUTO_CONVNET_MAX_SIDE = 32          # 'auto': ConvNet up to 32 px (RDED's conv3), ResNet-18 above
IDENTITY_KEYS = ('data_crc32', 'classes')   # `ddjax.data.prepared.cache_identity`'s keys
KEY_OBSERVER = 5          # the purpose folded into the root key for observer training


class ObserverMismatch(artifacts.Mismatch):
  """A cached or given observer was made for other data, another architecture or budget."""


@dataclasses.dataclass(frozen=True)
class Observer:
  """A trained observer: model, variables, where it lives and its record."""
  model: nn.Module
  variables: Any
  path: str
  record: dict
  trained_now: bool

  def reference(self) -> dict:
    """What results.json keeps: the checkpoint path, its record and test accuracy."""
    return {'checkpoint': os.path.join(self.path, CHECKPOINT), 'record': self.record,
            'test_acc': self.record.get('test_acc'), 'trained_now': self.trained_now}


def _log(line: str) -> None:
  print('[observer] ' + line, flush=True)


def observer_arch(cfg: ml_collections.ConfigDict, image_shape) -> str:
  """observer.arch, 'auto' resolved for images of shape (H, W, C): 'convnet' when max(H, W) <=
  32, else 'resnet18'. ValueError for another name."""
  name = cfg.observer.get('arch', 'auto')
  if name not in OBSERVER_ARCHITECTURES:
    raise ValueError(f'observer.arch={name!r} is not one of {OBSERVER_ARCHITECTURES}')
  if name == 'auto':
    return 'convnet' if max(image_shape[:2]) <= AUTO_CONVNET_MAX_SIDE else 'resnet18'
  return name


def arch_of(cfg: ml_collections.ConfigDict, image_shape) -> dict:
  """The observer's architecture for images of shape (H, W, C) (`ddjax.models.build_model`
  keywords plus `arch`): ConvNet-depth-width with batch norm, or ResNet-18 with batch norm."""
  o = cfg.observer
  if observer_arch(cfg, image_shape) == 'resnet18':
    return {'arch': 'resnet18', 'norm': 'batch'}
  return {'arch': 'convnet', 'depth': int(o.depth), 'width': int(o.width),
          'double_width': False, 'norm': 'batch', 'pooling': 'avg'}


def zoo_arch(name: str) -> dict:
  """The `build_model` keywords (plus `arch`) of the evaluation zoo's network `name`
  (`ddjax.models.zoo`), as an observer record keeps them: 'ConvNet-3-BN', 'ResNet-18-BN', ...
  ValueError listing the zoo for an unknown name."""
  from ddjax.models.zoo import zoo_block
  b = zoo_block(name)
  if b.arch == 'mlp':
    return {'arch': 'mlp', 'widths': [int(w) for w in b.mlp_widths]}
  if b.arch in ('resnet18', 'resnet18_ap', 'vgg11'):
    return {'arch': b.arch, 'norm': b.norm, 'bn_momentum': float(b.bn_momentum)}
  if b.arch in ('lenet', 'alexnet'):
    return {'arch': b.arch}
  return {'arch': 'convnet', 'depth': int(b.depth), 'width': int(b.width),
          'double_width': bool(b.double_width), 'norm': b.norm, 'pooling': b.pooling,
          'norm_placement': b.norm_placement, 'bn_momentum': float(b.bn_momentum)}


def wanted_record(cfg: ml_collections.ConfigDict, data, arch: dict | None = None) -> dict:
  """The record an observer of this run must have (`arch`: another architecture's record entry,
  `zoo_arch`; default the run's observer, `arch_of`)."""
  arch = arch if arch is not None else arch_of(cfg, data.x_train.shape[1:])
  return {'dataset': str(data.dataset.name), 'train_size': int(len(data.y_train)),
          'image_shape': [int(d) for d in data.x_train.shape[1:]],
          'preprocessing': str(data.pre.kind), 'arch': arch,
          'seed': int(cfg.seed),
          'epochs': int(cfg.observer.epochs), **cache_identity(data)}


def record_differences(have: dict, want: dict, keys=CHECKED_KEYS) -> list[str]:
  """'key: have -> want' for every checked key (and the data identity's) that differs, nested
  keys named in full ('arch.width')."""
  return artifacts.differences(have, want, only=tuple(keys) + IDENTITY_KEYS)


def model_of(record: dict, num_classes: int) -> nn.Module:
  arch = dict(record['arch'])
  return build_model(arch.pop('arch'), num_classes, **arch)


def read_record(path: str) -> dict | None:
  """The observer's record.json, None when absent (artifacts.RecordError naming a damaged one)."""
  return artifacts.read_record(path, fix='delete the observer directory to train it again')


def load(path: str, num_classes: int, record: dict | None = None) -> tuple[nn.Module, Any, dict]:
  """(model, variables, record) of the observer directory `path` (`record`: its record.json,
  when the caller has read it already)."""
  record = record if record is not None else read_record(path)
  if record is None:
    raise ObserverMismatch(f'{path} holds no observer ({RECORD} is missing); give the directory '
                           'of an observer ddjax trained.')
  model = model_of(record, num_classes)
  # the variables' structure, shapes and dtypes only: no compiled init (4 s for a ResNet-18)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros([1] + list(record['image_shape'])),
                                              train=False), jax.random.PRNGKey(0))
  template = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), dict(shapes))
  ckpt = Checkpointer(os.path.join(path, CHECKPOINT), keep=1)
  try:
    restored = ckpt.restore_latest(template)
  finally:
    ckpt.close()
  if restored is None:
    raise ObserverMismatch(f'{path} has {RECORD} but no checkpoint; delete the directory to '
                           'train the observer again.')
  return model, restored[1], record


def save(path: str, variables: Any, record: dict) -> None:
  """The checkpoint first, then the record (its presence marks a complete observer); what a
  killed earlier save left is cleared first (by process 0, the others waiting)."""
  if distributed.is_main():
    artifacts.discard_incomplete(path, (CHECKPOINT,))
  distributed.barrier('ddjax observer: cleared')
  ckpt = Checkpointer(os.path.join(path, CHECKPOINT), keep=1)
  try:
    ckpt.save(0, variables)
  finally:
    ckpt.close()
  artifacts.publish(path, record)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, key: jax.Array, epochs: int,
          batch_size: int = 256, lr: float = 1e-3, flip: bool = False,
          translate: int = 0) -> Any:
  """Variables of `model` trained with cross-entropy on (x (N,H,W,C), y (N,) ints): Adam at `lr`,
  cosine decay to 0 over `epochs` epochs of `epoch_batches`, optional translate / flip."""
  n = len(y)
  steps_per_epoch = -(-n // max(1, min(batch_size, n)))
  opt = optax.adam(optax.cosine_decay_schedule(lr, max(1, epochs * steps_per_epoch)))
  augment = None
  if flip or translate:
    augment = lambda k, xb: augment_batch(k, xb, translate=translate, flip=flip)
  step = make_train_step(model, opt, cross_entropy, augment)
  k_init, k_loop = jax.random.split(key)
  carry = fresh_carry(model, k_init, x.shape[1:], opt)
  x_dev, y_dev = jnp.asarray(x), jnp.asarray(y, jnp.int32)

  @jax.jit
  def one(carry, x_all, y_all, idx, k):   # the data as arguments, not compiled-in constants
    return step(carry, x_all[idx], y_all[idx], k)

  t0 = last = time.perf_counter()
  for epoch in range(epochs):
    k_epoch = jax.random.fold_in(k_loop, epoch)
    batches = epoch_batches(k_epoch, n, batch_size)
    losses = []
    for b in range(batches.shape[0]):
      carry, loss = one(carry, x_dev, y_dev, batches[b], jax.random.fold_in(k_epoch, b + 1))
      losses.append(loss)
      if time.perf_counter() - last > 30:        # a progress line every 30 s
        last = time.perf_counter()
        _log(f'epoch {epoch + 1}/{epochs}: batch {b + 1}/{batches.shape[0]}, loss '
             f'{float(loss):.4f} ({last - t0:.0f} s)')
    _log(f'epoch {epoch + 1}/{epochs}: loss {float(jnp.mean(jnp.stack(losses))):.4f} '
         f'({time.perf_counter() - t0:.0f} s)')
  return carry_variables(carry)


def zoo_slug(name: str) -> str:
  """A directory-safe form of a zoo name: 'ResNet-18-BN' -> 'resnet_18_bn'."""
  return ''.join(c if c.isalnum() else '_' for c in name.lower())


def default_dir(cfg: ml_collections.ConfigDict, data, zoo_name: str | None = None) -> str:
  """observer.dir, or runs/observers/<dataset>_<arch>_seed<s> (<arch>: convnet<depth>w<width>
  or resnet18; shared by every run started from the same directory: the pipeline does not hand
  its workdir to a method's build). A zoo observer (`zoo_name`) lives beside it:
  <observer.dir>_<slug>, or runs/observers/<dataset>_zoo_<slug>_seed<s>."""
  if zoo_name is not None:
    if cfg.observer.dir:
      return cfg.observer.dir.rstrip('/') + '_' + zoo_slug(zoo_name)
    return os.path.join('runs', 'observers',
                        f'{data.dataset.name}_zoo_{zoo_slug(zoo_name)}_seed{cfg.seed}')
  if cfg.observer.dir:
    return cfg.observer.dir
  a = arch_of(cfg, data.x_train.shape[1:])
  name = f'{a["arch"]}{a["depth"]}w{a["width"]}' if a['arch'] == 'convnet' else a['arch']
  return os.path.join('runs', 'observers', f'{data.dataset.name}_{name}_seed{cfg.seed}')


def get_observers(cfg: ml_collections.ConfigDict, data, names) -> list[Observer]:
  """One observer per zoo name (`ddjax.models.zoo`; G-VBSM's and EDC's several backbones), each
  trained once with cfg.observer's budget and cached in its own directory (`default_dir`)."""
  return [get_observer(cfg, data, zoo_name=name) for name in names]


def get_observer(cfg: ml_collections.ConfigDict, data, zoo_name: str | None = None) -> Observer:
  """The run's observer: the user's (`observer.checkpoint`, data keys checked), else the
  cached one in the observer directory (every key checked), else one trained now and cached.
  zoo_name: an observer of that zoo architecture instead (`zoo_arch`; observer.checkpoint is
  not used for it).

  Raises ObserverMismatch naming the keys that differ and what to do."""
  want = wanted_record(cfg, data, None if zoo_name is None else zoo_arch(zoo_name))
  if cfg.observer.checkpoint and zoo_name is None:
    path = cfg.observer.checkpoint
    model, variables, record = load(path, data.num_classes)
    diff = record_differences(record, want, DATA_KEYS)
    if diff:
      raise ObserverMismatch(artifacts.mismatch_message(
          f'observer.checkpoint={path} was trained on other data', diff,
          'give an observer of this dataset'))
    _log(f'user observer {path} (test acc {record.get("test_acc")})')
    return Observer(model, variables, path, record, False)
  path = default_dir(cfg, data, zoo_name)
  if artifacts.is_complete(path):
    have = read_record(path)
    diff = record_differences(have, want)
    if diff:
      cached = have.get('arch')
      cached = cached.get('arch') if isinstance(cached, dict) else cached
      hint = (f' (this one is a {cached!r}; observer.arch picks the architecture: '
              f'{", ".join(OBSERVER_ARCHITECTURES)})'
              if any(d.startswith('arch') for d in diff) else '')
      raise ObserverMismatch(artifacts.mismatch_message(
          f'the cached observer in {path} was made for another run', diff,
          f'set observer.dir to another directory, or delete this one to train again{hint}'))
    model, variables, record = load(path, data.num_classes, have)
    _log(f'reusing {path} (test acc {record.get("test_acc")})')
    return Observer(model, variables, path, record, False)
  model = model_of(want, data.num_classes)
  o = cfg.observer
  _log(f'training {want["arch"]} on {want["train_size"]} images for {want["epochs"]} epochs')
  t0 = time.perf_counter()
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_OBSERVER)
  variables = train(model, data.x_train, data.y_train, key, int(o.epochs),
                    int(o.batch_size), float(o.lr), bool(o.flip),
                    int(o.translate))
  seconds = time.perf_counter() - t0
  record = dict(want, test_acc=accuracy(model, variables, data.x_test, data.y_test),
                train_seconds=seconds)
  save(path, variables, record)
  _log(f'test accuracy {100 * record["test_acc"]:.2f} % after {seconds:.0f} s; cached in {path}')
  return Observer(model, variables, path, record, True)
