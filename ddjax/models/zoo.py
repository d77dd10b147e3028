"""The evaluation architecture zoo: named networks for the cross-architecture axis (networks
trained from scratch on a distilled set, then tested), as DC's `utils.get_network` and DC-BENCH
name them.

`ZOO` maps a display name to the model-block keys that define it (`ddjax.config.model_config`'s
keys: arch, depth, norm, pooling, ...); `zoo_model(name, num_classes, base_block)` lays them over
a base block and builds the network with `ddjax.models.from_config`. The base block (e.g. the
run's `eval.model`) gives what a name leaves open: the ConvNets' width, `bn_momentum`, `dtype`;
without one the base is `ZOO_DEFAULTS`, DC's default ConvNet (width 128, instance norm, average
pooling, depth 3, DC's norm placement).

  ConvNet-3            DC's ConvNet: depth 3, instance norm, average pooling ('ConvNet')
  ConvNet-3-BN / -NN / -LN / -GN   the same with batch / no / layer / group norm (4 groups)
                       ('ConvNetBN', 'ConvNetNN', 'ConvNetLN', 'ConvNetGN')
  ConvNet-3-MaxPool    max pooling ('ConvNetMP')
  ConvNet-1 / -2 / -4  depth 1, 2, 4 ('ConvNetD1', 'ConvNetD2', 'ConvNetD4')
  LeNet, AlexNet       DC's small-image LeNet and AlexNet (`ddjax.models.dc_nets`)
  VGG-11-BN            DC's VGG11BN (global average pooling before the head)
  ResNet-18-BN         ResNet-18 with batch norm and the small-image stem ('ResNet18BN')
  ResNet-18-IN         the same with instance norm (DC's 'ResNet18')
  ResNet-18-AP         DC's ResNet18BN_AP: average-pool downsampling, batch norm
  MLP                  DC's MLP: two hidden layers of 128

The ConvNet entries fix the ConvNet's placement ('dc') and constant width (no doubling), so a
base block from another method (FRePo's doubling, its norm placement) does not change them.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import ml_collections

from ddjax.models import from_config

# DC's default ConvNet (utils.get_default_convnet_setting) and the other keys a model block has
ZOO_DEFAULTS: dict[str, Any] = {
    'arch': 'convnet', 'depth': 3, 'width': 128, 'double_width': False, 'norm': 'instance',
    'norm_placement': 'dc', 'bn_momentum': 0.9, 'pooling': 'avg', 'mlp_widths': (128, 128),
    'dtype': 'float32',
}

_CONVNET = {'arch': 'convnet', 'depth': 3, 'norm': 'instance', 'pooling': 'avg',
            'norm_placement': 'dc', 'double_width': False}

ZOO: dict[str, dict[str, Any]] = {
    'ConvNet-3': dict(_CONVNET),
    'ConvNet-3-BN': dict(_CONVNET, norm='batch'),
    'ConvNet-3-NN': dict(_CONVNET, norm='none'),
    'ConvNet-3-LN': dict(_CONVNET, norm='layer'),
    'ConvNet-3-GN': dict(_CONVNET, norm='group'),
    'ConvNet-3-MaxPool': dict(_CONVNET, pooling='max'),
    'ConvNet-1': dict(_CONVNET, depth=1),
    'ConvNet-2': dict(_CONVNET, depth=2),
    'ConvNet-4': dict(_CONVNET, depth=4),
    'LeNet': {'arch': 'lenet'},
    'AlexNet': {'arch': 'alexnet'},
    'VGG-11-BN': {'arch': 'vgg11', 'norm': 'batch'},
    'ResNet-18-BN': {'arch': 'resnet18', 'norm': 'batch'},
    'ResNet-18-IN': {'arch': 'resnet18', 'norm': 'instance'},
    'ResNet-18-AP': {'arch': 'resnet18_ap', 'norm': 'batch'},
    'MLP': {'arch': 'mlp', 'mlp_widths': (128, 128)},
}


def zoo_names() -> tuple[str, ...]:
  """The zoo's display names, in `ZOO`'s order."""
  return tuple(ZOO)


def zoo_block(name: str,
              base_block: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
  """The model block of the zoo network `name`: `ZOO_DEFAULTS`, then `base_block`'s keys (a
  ConfigDict or dict), then `ZOO[name]`. ValueError listing the names for an unknown one."""
  if name not in ZOO:
    raise ValueError(f'unknown zoo architecture {name!r}; the zoo has: {", ".join(ZOO)}')
  block = dict(ZOO_DEFAULTS)
  if base_block is not None:
    block.update(base_block.to_dict() if hasattr(base_block, 'to_dict') else dict(base_block))
  block.update(ZOO[name])
  return ml_collections.ConfigDict(block)


def zoo_model(name: str, num_classes: int,
              base_block: Optional[Mapping[str, Any]] = None) -> nn.Module:
  """The zoo network `name` for `num_classes` classes (`zoo_block`, built by
  `ddjax.models.from_config`): `model.apply(variables, x, train=..., mutable=...)` on NHWC input
  returns (logits (N, num_classes), features (N, D)). ValueError listing the names for an
  unknown one."""
  return from_config(zoo_block(name, base_block), num_classes)
