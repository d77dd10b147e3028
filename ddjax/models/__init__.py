"""Networks used in dataset distillation.

Every model follows one convention: `model.apply(variables, x, train=bool, mutable=...)` with NHWC
float32 input returns `(logits (N, K), features (N, D))`, features being the flattened input of the
final Dense layer. Models with batch norm keep running statistics in `variables['batch_stats']`:
train with `mutable=['batch_stats']` and carry the returned statistics; infer with `train=False`.

Mixed precision: a model block's `dtype` ('float32' or 'bfloat16', `COMPUTE_DTYPES`) is the
networks' compute dtype; parameters stay float32 and outputs come back float32 (see
`ddjax.models.convnet`), so everything downstream (losses, KRR, optimizers) is unchanged.

Architectures (`ARCHITECTURES`, a model block's `arch`): 'convnet' (`ConvNet`), 'mlp' (`MLP`),
'resnet18' (`ResNet18`), and DC's cross-architecture networks 'lenet', 'alexnet', 'vgg11'
(`ddjax.models.dc_nets`) and 'resnet18_ap' (`ResNet18AP`, DC's ResNet18BN_AP). The named
evaluation zoo (ConvNet-3, VGG-11-BN, ...) is `ddjax.models.zoo`.

Parameter order: JAX lists a params dict by sorted key; `parameter_order` gives the network's own
order, shallow to deep (`ddjax.models.order`), for anything that counts parameters by depth.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.models.convnet import (GROUP_NORM_GROUPS, NORM_PLACEMENTS, NORMS, POOLINGS, ConvNet,
                                  check_choice)
from ddjax.models.dc_nets import VGG11, AlexNet, LeNet
from ddjax.models.mlp import MLP
from ddjax.models.order import in_module_order, parameter_order
from ddjax.models.resnet import ResNet18, ResNet18AP

ARCHITECTURES = ('convnet', 'mlp', 'resnet18', 'lenet', 'alexnet', 'vgg11', 'resnet18_ap')
COMPUTE_DTYPES = ('float32', 'bfloat16')
# the classes built by name that take a `norm` (and bn_momentum): checked before building
_NORMED = {'resnet18': ResNet18, 'vgg11': VGG11, 'resnet18_ap': ResNet18AP}
_PLAIN = {'lenet': LeNet, 'alexnet': AlexNet}
# the smallest image side each architecture builds on, with its default padding (ConvNet:
# `ddjax.models.convnet.depth_error`; ResNet18 and MLP: any)
MIN_SIDES = {'lenet': LeNet(1).min_side(), 'alexnet': AlexNet(1).min_side(),
             'vgg11': VGG11(1).min_side(), 'resnet18_ap': ResNet18AP(1).min_side()}

__all__ = ['ARCHITECTURES', 'COMPUTE_DTYPES', 'GROUP_NORM_GROUPS', 'MIN_SIDES', 'NORM_PLACEMENTS',
           'NORMS', 'POOLINGS', 'AlexNet', 'ConvNet', 'LeNet', 'MLP', 'ResNet18', 'ResNet18AP',
           'VGG11', 'build_model', 'compute_dtype', 'from_config', 'image_size_error',
           'in_module_order', 'init_model', 'parameter_order', 'per_example_model']


def compute_dtype(name: str):
  """A model block's `dtype` name -> the modules' `dtype` field: None for 'float32' (the default
  modules, computing in float32), jnp.bfloat16 for 'bfloat16'. ValueError names the allowed."""
  check_choice('compute dtype', name, COMPUTE_DTYPES)
  return None if name == 'float32' else jnp.bfloat16


def per_example_model(model: nn.Module) -> nn.Module:
  """The same network (same parameters and values) set up for per-example gradients,
  `jax.vmap(jax.grad(loss))` over single images: a model that declares a `weight_grad` field
  (`ConvNet`) computes its weight gradients as im2col matmuls, which vmap turns into batched
  matmuls instead of grouped convolutions (`ddjax.models.convnet.conv2d`); other models are
  returned unchanged."""
  if 'weight_grad' in getattr(model, '__dataclass_fields__', {}):
    return model.clone(weight_grad='im2col')
  return model


def build_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Build a model by name: 'convnet' -> ConvNet(num_classes, **kwargs), 'mlp' -> MLP(...),
  'resnet18' -> ResNet18(...) and 'resnet18_ap' -> ResNet18AP(...) (`ddjax.models.resnet`: norm,
  bn_momentum, dtype), 'vgg11' -> VGG11(...) (norm, bn_momentum, pad_small, dtype), 'lenet' ->
  LeNet(...) and 'alexnet' -> AlexNet(...) (pad_small, dtype) (`ddjax.models.dc_nets`).

  Raises ValueError (naming the allowed values) for an unknown arch, norm or pooling, and
  TypeError for a keyword the architecture does not take.
  """
  check_choice('architecture', arch, ARCHITECTURES)
  if arch == 'convnet':
    if 'norm' in kwargs:
      check_choice('norm', kwargs['norm'], NORMS)
    if 'pooling' in kwargs:
      check_choice('pooling', kwargs['pooling'], POOLINGS)
    if 'norm_placement' in kwargs:
      check_choice('norm placement', kwargs['norm_placement'], NORM_PLACEMENTS)
    return ConvNet(num_classes=num_classes, **kwargs)
  if arch in _NORMED:
    if 'norm' in kwargs:
      check_choice('norm', kwargs['norm'], NORMS)
    return _NORMED[arch](num_classes=num_classes, **kwargs)
  if arch in _PLAIN:
    return _PLAIN[arch](num_classes=num_classes, **kwargs)
  if 'widths' in kwargs:
    kwargs['widths'] = tuple(kwargs['widths'])  # hashable, so jitted trainers can be cached
  return MLP(num_classes=num_classes, **kwargs)


def from_config(block, num_classes: int) -> nn.Module:
  """The model of a config's model block (`ddjax.config.model_config`: arch, depth, width,
  double_width, norm, norm_placement, bn_momentum, pooling, mlp_widths, dtype; a block without
  dtype, e.g. an older expert buffer's record, computes in float32). 'resnet18', 'resnet18_ap'
  and 'vgg11' take norm, bn_momentum and dtype; 'lenet' and 'alexnet' take dtype; their widths and
  depths are their own (depth, width, double_width, pooling and norm_placement are the ConvNet's,
  mlp_widths the MLP's)."""
  dtype = compute_dtype(block.get('dtype', 'float32'))
  if block.arch == 'mlp':
    return build_model('mlp', num_classes, widths=tuple(block.mlp_widths), dtype=dtype)
  if block.arch in _NORMED:
    return build_model(block.arch, num_classes, norm=block.norm, bn_momentum=block.bn_momentum,
                       dtype=dtype)
  if block.arch in _PLAIN:
    return build_model(block.arch, num_classes, dtype=dtype)
  return build_model(block.arch, num_classes, depth=block.depth, width=block.width,
                     double_width=block.double_width, norm=block.norm, pooling=block.pooling,
                     norm_placement=block.norm_placement, bn_momentum=block.bn_momentum,
                     dtype=dtype)


def image_size_error(arch: str, image_shape: Sequence[int], key: str = 'model.arch') -> str:
  """'' when the architecture `arch` (not 'convnet': its depth decides, see
  `ddjax.models.convnet.depth_error`) builds on (H, W, C) images, else what is wrong and what to
  do; `key` names the config key in the message."""
  most = MIN_SIDES.get(arch, 1)
  h, w = int(image_shape[0]), int(image_shape[1])
  if min(h, w) >= most:
    return ''
  return (f'{key}={arch!r} needs images of at least {most} x {most} px (its poolings would empty '
          f'the maps), and these are {h} x {w}; pick another architecture or larger images '
          '(data.image_size resizes image folders and TFDS sets).')


def _init(model: nn.Module, key: jax.Array, input_shape: tuple, fast_rng: bool) -> dict:
  if fast_rng:
    key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl='rbg')
  variables = model.init(key, jnp.zeros(input_shape, jnp.float32), train=False)
  return dict(variables)


@functools.lru_cache(maxsize=128)
def _jitted_init(model: nn.Module, input_shape: tuple, fast_rng: bool):
  return jax.jit(functools.partial(_init, model, input_shape=input_shape, fast_rng=fast_rng))


def init_model(model: nn.Module, key: jax.Array, input_shape: Sequence[int],
               fast_rng: bool = True) -> dict:
  """Fresh variables for `model` on inputs of shape `input_shape` (N, H, W, C).

  Returns a dict with 'params' and, for batch-norm models, 'batch_stats'. Jitted and cached per
  (model, input_shape) (eagerly run if the model is not hashable). With `fast_rng` the parameters
  are drawn from an 'rbg' key seeded by `key` (threefry still splits and folds, XLA's
  RngBitGenerator makes the bits): deterministic for a given key, backend and JAX version, and it
  compiles about 4x faster on CPU than flax's threefry draws (0.7 s vs 3 s for a small ConvNet on
  the 2-core machine). `fast_rng=False` gives exactly `model.init(key, ...)`.
  """
  input_shape = tuple(int(d) for d in input_shape)
  try:
    fn = _jitted_init(model, input_shape, fast_rng)
  except TypeError:  # unhashable model (e.g. a list-valued field)
    return _init(model, key, input_shape, fast_rng)
  return fn(key)
