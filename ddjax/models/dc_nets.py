"""DC's small-image LeNet, AlexNet and VGG-11: the cross-architecture networks of DC / DSA / DM and
DC-BENCH (Zhao et al., "Dataset Condensation with Gradient Matching", ICLR 2021, networks.py).

  LeNet    conv 6@5x5 -> relu -> maxpool2, conv 16@5x5 (no padding) -> relu -> maxpool2, Flatten,
           Dense 120 -> relu, Dense 84 -> relu, head. Features: the 84 activations.
  AlexNet  conv 128@5x5 -> relu -> maxpool2, conv 192@5x5 pad 2 -> relu -> maxpool2,
           conv 256@3x3 -> relu, conv 192@3x3 -> relu, conv 192@3x3 -> relu -> maxpool2 (3 x 3
           convs pad 1), Flatten, head. Features: the flattened maps (4 * 4 * 192 = 3072 at 32 px).
  VGG11    cfg [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]: each number a 3 x 3 conv
           (pad 1, with bias) -> norm -> relu, each M a 2 x 2 max pool; then one Dense head on the
           512 channels. DC's VGG ends on 1 x 1 maps and flattens them; here the maps are averaged
           over (H, W) (global average pooling), which is the same at 1 x 1 and keeps 512
           features on larger images (64 px ends on 2 x 2). `norm`: DC's VGG11BN is 'batch' (the
           default), DC's VGG11 'instance'; any of `ddjax.models.convnet.NORMS`.

First-conv padding (`pad_small`): DC pads the first convolution more for 1-channel images (LeNet
2 instead of 0, AlexNet 4 instead of 2, VGG 3 instead of 1), which in DC are the 28 px MNIST
sets: it makes a 28 px image behave as the 32 px one the layer sizes were designed for. Here the
larger padding applies to images under 32 px on their shorter side, whatever their channel count,
so 28 and 32 px inputs, grey or RGB, reach DC's feature sizes (LeNet 5 x 5 x 16, AlexNet
4 x 4 x 192, VGG 1 x 1 x 512); a 28 px RGB image could not go through VGG's five halvings
otherwise. Images of 32 px and more take DC's 3-channel padding. Flatten then Dense infers its
input size, so the networks build on any image at least `min_side` px wide (64 px: LeNet
13 x 13 x 16, AlexNet 8 x 8 x 192).

Pooling is PyTorch's floor mode (an odd last row / column is dropped). Convolutions and Dense
layers keep flax's initialisers, as `ConvNet`. `dtype` is the compute dtype as for `ConvNet`
(float32 parameters and outputs). Parameters for 10 classes on 32 x 32 x 3 (PyTorch's counts):
LeNet 62,006; AlexNet 1,872,202; VGG11 (batch norm) 9,231,114.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.models.convnet import NORMS, _flax_conv, apply_norm, check_choice, to_float32

Array = jax.Array

VGG11_CFG = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M')
SMALL_SIDE = 32     # images with a shorter side under this take DC's larger first-conv padding


def first_padding(x: Array, pad: int, small_pad: int, pad_small: bool) -> int:
  """The first convolution's padding for x (N, H, W, C): `small_pad` when `pad_small` and
  min(H, W) < SMALL_SIDE (DC's 1-channel padding), else `pad`."""
  return small_pad if pad_small and min(x.shape[1], x.shape[2]) < SMALL_SIDE else pad


def check_image(name: str, x: Array, min_side: int) -> None:
  """ValueError unless x is NHWC with H, W >= min_side."""
  if x.ndim != 4:
    raise ValueError(f'{name} expects NHWC input, got shape {x.shape}')
  if min(x.shape[1], x.shape[2]) < min_side:
    raise ValueError(f'{name} needs images of at least {min_side} x {min_side} px (its poolings '
                     f'would empty the maps), got {x.shape[1]} x {x.shape[2]}')


def _conv(features: int, kernel: int, pad: int, dtype: Any, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=True,
                 conv_general_dilated=_flax_conv, dtype=dtype, name=name)


def _max_pool(x: Array) -> Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class LeNet(nn.Module):
  """DC's LeNet on NHWC input (N, H, W, C), H, W >= `min_side()`.

  Returns (logits (N, num_classes), features (N, 84))."""
  num_classes: int
  pad_small: bool = True
  dtype: Any = None

  def min_side(self) -> int:
    """Smallest image side the poolings leave >= 1 px for (12 with `pad_small`, else 16)."""
    return 12 if self.pad_small else 16

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    del train
    check_image('LeNet', x, self.min_side())
    pad = first_padding(x, 0, 2, self.pad_small)
    x = _max_pool(nn.relu(_conv(6, 5, pad, self.dtype, 'conv0')(x)))
    x = _max_pool(nn.relu(_conv(16, 5, 0, self.dtype, 'conv1')(x)))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(120, dtype=self.dtype, name='dense0')(x))
    features = nn.relu(nn.Dense(84, dtype=self.dtype, name='dense1')(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return to_float32(logits), to_float32(features)


class AlexNet(nn.Module):
  """DC's small-image AlexNet on NHWC input (N, H, W, C), H, W >= `min_side()`.

  Returns (logits (N, num_classes), features (N, H' * W' * 192)), H' = H_p // 8 with H_p the
  padded first-conv output (H + 4 with `pad_small` under 32 px, else H)."""
  num_classes: int
  pad_small: bool = True
  dtype: Any = None

  def min_side(self) -> int:
    """Smallest image side the three poolings leave >= 1 px for (4 with `pad_small`, else 8)."""
    return 4 if self.pad_small else 8

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    del train
    check_image('AlexNet', x, self.min_side())
    pad = first_padding(x, 2, 4, self.pad_small)
    x = _max_pool(nn.relu(_conv(128, 5, pad, self.dtype, 'conv0')(x)))
    x = _max_pool(nn.relu(_conv(192, 5, 2, self.dtype, 'conv1')(x)))
    x = nn.relu(_conv(256, 3, 1, self.dtype, 'conv2')(x))
    x = nn.relu(_conv(192, 3, 1, self.dtype, 'conv3')(x))
    x = _max_pool(nn.relu(_conv(192, 3, 1, self.dtype, 'conv4')(x)))
    features = x.reshape((x.shape[0], -1))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return to_float32(logits), to_float32(features)


class VGG11(nn.Module):
  """DC's VGG-11 (VGG11BN with the default norm='batch') on NHWC input (N, H, W, C),
  H, W >= `min_side()`. Batch norm keeps running statistics in 'batch_stats' (`bn_momentum`
  flax's convention, 0.9 = PyTorch's 0.1).

  Returns (logits (N, num_classes), features (N, 512)): the last maps averaged over (H, W)."""
  num_classes: int
  norm: str = 'batch'
  bn_momentum: float = 0.9
  pad_small: bool = True
  dtype: Any = None

  def min_side(self) -> int:
    """Smallest image side five halvings leave >= 1 px for (28 with `pad_small`: 28 + 2 * 3 - 2
    = 32; else 32)."""
    return 28 if self.pad_small else 32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    check_choice('norm', self.norm, NORMS)
    check_image('VGG11', x, self.min_side())
    pad = first_padding(x, 1, 3, self.pad_small)
    i = 0
    for item in VGG11_CFG:
      if item == 'M':
        x = _max_pool(x)
        continue
      x = _conv(item, 3, pad if i == 0 else 1, self.dtype, f'conv{i}')(x)
      x = nn.relu(apply_norm(self.norm, x, train, f'norm{i}', self.bn_momentum, self.dtype))
      i += 1
    features = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return to_float32(logits), to_float32(features)
