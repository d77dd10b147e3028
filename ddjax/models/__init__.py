"""Networks used in dataset distillation.

Every model follows one convention: `model.apply(variables, x, train=bool, mutable=...)` with NHWC
float32 input returns `(logits (N, K), features (N, D))`, features being the flattened input of the
final Dense layer. Models with batch norm keep running statistics in `variables['batch_stats']`:
train with `mutable=['batch_stats']` and carry the returned statistics; infer with `train=False`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.models.convnet import NORMS, POOLINGS, ConvNet, check_choice
from ddjax.models.mlp import MLP

ARCHITECTURES = ('convnet', 'mlp')

__all__ = ['ARCHITECTURES', 'NORMS', 'POOLINGS', 'ConvNet', 'MLP', 'build_model', 'init_model']


def build_model(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Build a model by name: 'convnet' -> ConvNet(num_classes, **kwargs), 'mlp' -> MLP(...).

  Raises ValueError (naming the allowed values) for an unknown arch, norm or pooling, and
  TypeError for a keyword the architecture does not take.
  """
  check_choice('architecture', arch, ARCHITECTURES)
  if arch == 'convnet':
    if 'norm' in kwargs:
      check_choice('norm', kwargs['norm'], NORMS)
    if 'pooling' in kwargs:
      check_choice('pooling', kwargs['pooling'], POOLINGS)
    return ConvNet(num_classes=num_classes, **kwargs)
  if 'widths' in kwargs:
    kwargs['widths'] = tuple(kwargs['widths'])  # hashable, so jitted trainers can be cached
  return MLP(num_classes=num_classes, **kwargs)


def init_model(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
  """Fresh variables for `model` on inputs of shape `input_shape` (N, H, W, C).

  Returns a dict with 'params' and, for batch-norm models, 'batch_stats'.
  """
  variables = model.init(key, jnp.zeros(tuple(input_shape), jnp.float32), train=False)
  return dict(variables)
