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

`ResNet18AP`: DC's ResNet18BN_AP (networks.py, ResNet_AP), the same network with every strided
downsampling replaced by a stride-1 convolution and a 2 x 2 average pooling (floor mode): in a
block that halves the image, conv1 (stride 1) -> norm -> relu -> avgpool2 -> conv2 -> norm, and
the shortcut 1 x 1 conv (stride 1) -> avgpool2 -> norm. Its head reads the flattened last maps, as
DC's (512 * 4 * 4 features at 32 px, 512 * 3 * 3 at 28 px, 512 * 8 * 8 at 64 px), not their
average. Parameters for 10 classes on 32 x 32 x 3: 11,250,762 (11,168,832 in the body, as
ResNet18's, and an 8192 x 10 head).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.models.convnet import (NORMS, _flax_conv, apply_norm, avg_pool_2x2, check_choice,
                                  to_float32)

Array = jax.Array

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))   # (channels, stride of the stage's first block)
BLOCKS_PER_STAGE = 2
AP_MIN_SIDE = 8          # ResNet18AP: three halvings of the image
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')   # kaiming_normal_


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_CONV_INIT,
                 conv_general_dilated=_flax_conv, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """conv3x3(stride) -> norm -> relu -> conv3x3 -> norm, plus the shortcut (identity, or a 1 x 1
  stride-s conv and norm when the stride or channel count changes), then relu.

  With `avg_pool_downsample` (ResNet18AP) a stride s = 2 is a stride-1 conv and a 2 x 2 average
  pooling instead: after conv1's norm and relu, and after the shortcut's conv (before its norm)."""
  features: int
  stride: int = 1
  norm: str = 'batch'
  bn_momentum: float = 0.9
  dtype: Any = None
  avg_pool_downsample: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    norm = lambda y, name: apply_norm(self.norm, y, train, name, self.bn_momentum, self.dtype)
    pool = self.avg_pool_downsample and self.stride != 1
    if pool and self.stride != 2:
      raise ValueError(f'average-pool downsampling halves the image: stride {self.stride} '
                       'is not 2')
    conv_stride = 1 if self.avg_pool_downsample else self.stride
    y = _conv(self.features, 3, conv_stride, self.dtype, 'conv1')(x)
    y = nn.relu(norm(y, 'norm1'))
    if pool:
      y = avg_pool_2x2(y)
    y = _conv(self.features, 3, 1, self.dtype, 'conv2')(y)
    y = norm(y, 'norm2')
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _conv(self.features, 1, conv_stride, self.dtype, 'shortcut_conv')(x)
      if pool:
        x = avg_pool_2x2(x)
      x = norm(x, 'shortcut_norm')
    return nn.relu(y + x)


def _body(x: Array, train: bool, norm: str, bn_momentum: float, dtype: Any,
          avg_pool_downsample: bool) -> Array:
  """The stem and the four stages (submodules of the calling module): (N, H, W, C) ->
  (N, H', W', 512)."""
  x = _conv(STAGES[0][0], 3, 1, dtype, 'stem_conv')(x)
  x = nn.relu(apply_norm(norm, x, train, 'stem_norm', bn_momentum, dtype))
  for s, (features, stride) in enumerate(STAGES):
    for b in range(BLOCKS_PER_STAGE):
      x = BasicBlock(features, stride if b == 0 else 1, norm, bn_momentum, dtype,
                     avg_pool_downsample, name=f'stage{s + 1}_block{b}')(x, train)
  return x


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
    x = _body(x, train, self.norm, self.bn_momentum, self.dtype, False)
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return to_float32(logits), to_float32(features)


class ResNet18AP(nn.Module):
  """DC's ResNet18BN_AP (norm='batch', the default; 'instance' is DC's ResNet18_AP), small-image
  stem, average-pool downsampling, on NHWC input (N, H, W, C) with H, W >= 8 (three halvings).

  Returns (logits (N, num_classes), features (N, H' * W' * 512)), H' = H // 8 (floor at each
  halving: 28 -> 14 -> 7 -> 3)."""
  num_classes: int
  norm: str = 'batch'
  bn_momentum: float = 0.9
  dtype: Any = None

  def min_side(self) -> int:
    """Smallest image side three halvings leave >= 1 px for."""
    return AP_MIN_SIDE

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    check_choice('norm', self.norm, NORMS)
    if x.ndim != 4:
      raise ValueError(f'ResNet18AP expects NHWC input, got shape {x.shape}')
    if min(x.shape[1], x.shape[2]) < AP_MIN_SIDE:
      raise ValueError(f'ResNet18AP needs images of at least {AP_MIN_SIDE} x {AP_MIN_SIDE} '
                       f'px (three halvings), got {x.shape[1]} x {x.shape[2]}')
    x = _body(x, train, self.norm, self.bn_momentum, self.dtype, True)
    features = x.reshape((x.shape[0], -1))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return to_float32(logits), to_float32(features)
