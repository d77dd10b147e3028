"""The networks whose infinite-width kernels (and random features) the kernel distillers use.

`kernel_network(arch, ...)` returns a `ddjax.kernels.stax` triple (init_fn, apply_fn, kernel_fn):

- 'fc':      Flatten, depth x [Dense(width), Relu], Dense readout            (KIP notebook 'FC')
- 'conv':    depth x [Conv 3x3 SAME, Relu], Flatten, Dense readout           (KIP notebook 'Conv')
- 'convnet': depth x [Conv 3x3 SAME, Relu, AvgPool 2x2], Flatten, Dense     (ConvNet-D, no norm: the
             network of KIP's released ConvNet sets, of RFAD's random features and of RFAD's
             KRR evaluation, `kernels.DCConvNetKernel`)
- 'convnet_gap': as 'convnet' with GlobalAvgPool instead of Flatten (Myrtle-style readout).

All layers use (W_std, b_std) (KIP and RFAD: sqrt(2), 0.1) in the NTK parameterization. Cost on
28x28 inputs: the Flatten readouts need only the diagonal spatial covariance after the last layer,
so 'conv' carries one entry per pixel; 'convnet' carries offsets up to 2^depth - 1 at its first
layer (225 per pixel for depth 3) and is ~60x costlier per kernel entry (see benchmarks/README.md).
`readout=False` drops the final Dense layer (random-feature networks: the readout is added
analytically, K = W_std^2 Phi Phi^T / D + b_std^2).
"""
from __future__ import annotations

from ddjax.kernels import stax

KERNEL_ARCHITECTURES = ('fc', 'conv', 'convnet', 'convnet_gap')


def kernel_network(arch: str, depth: int = 3, W_std: float = 2 ** 0.5, b_std: float = 0.1,
                   width: int = 1, readout: bool = True, out_dim: int = 1):
  """stax triple of a named architecture. `width` only matters for the finite network."""
  if arch not in KERNEL_ARCHITECTURES:
    raise ValueError(f'kernel.arch={arch!r} is not one of {KERNEL_ARCHITECTURES}.')
  if depth < 1:
    raise ValueError(f'kernel.depth must be >= 1, got {depth}.')
  layers = []
  if arch == 'fc':
    layers.append(stax.Flatten())
    for _ in range(depth):
      layers += [stax.Dense(width, W_std, b_std), stax.Relu()]
  else:
    for _ in range(depth):
      layers += [stax.Conv(width, (3, 3), padding='SAME', W_std=W_std, b_std=b_std), stax.Relu()]
      if arch != 'conv':
        layers.append(stax.AvgPool((2, 2)))
    layers.append(stax.GlobalAvgPool() if arch == 'convnet_gap' else stax.Flatten())
  if readout:
    layers.append(stax.Dense(out_dim, W_std, b_std))
  return stax.serial(*layers)


def kernel_fn_from_config(block):
  """kernel_fn(x1, x2, get) of a config's kernel block (arch, depth, W_std, b_std; infinite
  width), computed in blocks whose largest band array has at most block.block_bytes bytes."""
  _, _, kernel_fn = kernel_network(block.arch, block.depth, block.W_std, block.b_std)
  block_bytes = int(block.block_bytes)
  return lambda x1, x2=None, get=None: kernel_fn(x1, x2, get, block_bytes=block_bytes)
