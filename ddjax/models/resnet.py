"""ResNet-18 with the small-image stem: RDED's 'resnet18_modified' observer and student.

torchvision's resnet18 (BasicBlock, [2, 2, 2, 2] blocks of 64, 128, 256, 512 channels, a 1 x 1
stride-2 projection with its norm on the shortcut where the shape changes, global average pooling
and a Dense head) with the CIFAR stem that RDED's observers use (synthesize/utils.py:193-198): the
first conv is 3 x 3, stride 1, padding 1, and there is no max-pool, so a 32 px image reaches the
last stage at 4 x 4 and a 64 px one at 8 x 8. Convolutions have no bias; padding is PyTorch's
(1 on each side for 3 x 3, also at stride 2), not flax's 'SAME'. Convolutions are initialised as
torchvision's (He-normal over fan-out: kaiming_normal_, mode='fan_out'); norms (scale 1, bias 0)
and the head (LeCun-normal, bias 0) keep flax's defaults, as `ConvNet`.

Parameters for 10 classes on 3 channels: 11,173,962 (torchvision's 11,689,512 with the 7 x 7 stem
conv replaced by a 3 x 3 one and a 10-class head); the count does not depend on the image size.

`norm` is one of `ddjax.models.convnet.NORMS` ('batch' = BatchNorm, RDED's and torchvision's; the
observer always uses it), `bn_momentum` flax's convention (0.9 = PyTorch's 0.1). Returns
(logits (N, K), features (N, 512)), features being the pooled input of the head; `dtype` is the
compute dtype as for `ConvNet` (float32 parameters and outputs).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.models.convnet import NORMS, _flax_conv, apply_norm, check_choice, to_float32

Array = jax.Array

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))   # (channels, stride of the stage's first block)
BLOCKS_PER_STAGE = 2
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')   # kaiming_normal_


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_CONV_INIT,
                 conv_general_dilated=_flax_conv, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """conv3x3(stride) -> norm -> relu -> conv3x3 -> norm, plus the shortcut (identity, or a 1 x 1
  stride-s conv and norm when the stride or channel count changes), then relu."""
  features: int
  stride: int = 1
  norm: str = 'batch'
  bn_momentum: float = 0.9
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    norm = lambda y, name: apply_norm(self.norm, y, train, name, self.bn_momentum, self.dtype)
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv1')(x)
    y = nn.relu(norm(y, 'norm1'))
    y = _conv(self.features, 3, 1, self.dtype, 'conv2')(y)
    y = norm(y, 'norm2')
    if self.stride != 1 or x.shape[-1] != self.features:
      x = norm(_conv(self.features, 1, self.stride, self.dtype, 'shortcut_conv')(x),
               'shortcut_norm')
    return nn.relu(y + x)


class ResNet18(nn.Module):
  """ResNet-18, small-image stem, on NHWC input (N, H, W, C) of any size >= 1 px and channels.

  Returns (logits (N, num_classes), features (N, 512))."""
  num_classes: int
  norm: str = 'batch'
  bn_momentum: float = 0.9
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    check_choice('norm', self.norm, NORMS)
    if x.ndim != 4:
      raise ValueError(f'ResNet18 expects NHWC input, got shape {x.shape}')
    x = _conv(STAGES[0][0], 3, 1, self.dtype, 'stem_conv')(x)
    x = nn.relu(apply_norm(self.norm, x, train, 'stem_norm', self.bn_momentum, self.dtype))
    for s, (features, stride) in enumerate(STAGES):
      for b in range(BLOCKS_PER_STAGE):
        x = BasicBlock(features, stride if b == 0 else 1, self.norm, self.bn_momentum,
                       self.dtype, name=f'stage{s + 1}_block{b}')(x, train)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return to_float32(logits), to_float32(features)
