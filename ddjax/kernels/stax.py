r"""Infinite-width NNGP / NTK kernels with neural-tangents' `stax` names and conventions.

Every layer, and `serial` of layers, returns `(init_fn, apply_fn, kernel_fn)` like
`neural_tangents.stax`: `init_fn(rng, input_shape) -> (output_shape, params)` and
`apply_fn(params, x)` give the finite network (NTK parameterization:
`y = W_std / sqrt(fan_in) * x @ W + b_std * b`, W, b ~ N(0, 1)); `kernel_fn(x1, x2=None, get=None)`
its infinite-width limit. Inputs are NHWC for convolutions and
(n, d) for dense networks. Conventions (neural-tangents, NTK parameterization):

    input:  K = x1 . x2 / C  (per pair of positions; C channels, or d for dense inputs),  Theta = 0
    Dense / Conv:  K' = W_std^2 * avg_window(K) + b_std^2,   Theta' = K' + W_std^2 * avg_window(Theta)
    Relu:   K' = (sqrt(k11 k22 - k12^2) + (pi - theta) k12) / (2 pi),   theta = arccos(k12 / sqrt(k11 k22))
            Theta' = Theta * (pi - theta) / (2 pi)                      (arc-cosine kernel, Cho & Saul)
    Erf:    K' = a^2 (2/pi) arcsin(2 b^2 k12 / sqrt((1 + 2 b^2 k11)(1 + 2 b^2 k22))) + c^2
    AvgPool averages K over the pairs of positions in two windows; Flatten averages the diagonal
    over positions (the kernel of the flattened features divided by their dimension);
    GlobalAvgPool averages K over all pairs of positions.

Spatial covariances are *banded* (`ddjax.kernels.banded`): for each pixel of x1 a spatial kernel
keeps only the pixels of x2 within offsets (bh, bw), shape (..., H, W, 2bh+1, 2bw+1). The band is
worked out from the readout down: Flatten needs only the diagonal (band 0), GlobalAvgPool needs
every offset (the full covariance, stored with about 4x padding in this layout), and each pool
below widens it: ConvNet-3 with three 2x2 pools and a Flatten readout on 28x28 inputs carries
offsets up to 7 at its first layer (225 of the 784 offsets of the full covariance), and no layer
carries more than it needs. neural-tangents carries the full (H, H, W, W) covariance in both cases.

Layers are frozen records (`ddjax.kernels.layers`); a layer's `kernel_fn` is a `KernelFn` holding
its records, which is how `serial` composes networks.

Memory: the kernel of (n1, n2) inputs is computed in blocks of rows of x1 and x2 (`lax.map`, with
rematerialization so that gradients do not keep every block's intermediates) so that no block's band
array exceeds `block_bytes` (`kernel_fn(..., block_bytes=2**28)`). Variances of each input with
itself (what the nonlinearities normalise by) are computed first, per input, in the same blocks.

Any callable `kernel_fn(x1, x2, get)` with these semantics, e.g. neural-tangents' own, can be used
wherever ddjax expects a kernel (`ddjax.distill.kip`, `ddjax.evaluate.kernel_krr_accuracy`).
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ddjax.kernels.banded import Array, Band, center, shifted, valid_mask
from ddjax.kernels.layers import (AvgPoolLayer, ConvLayer, DenseLayer, ErfLayer, FlattenLayer,
                                  GlobalAvgPoolLayer, Layer, ReluLayer, is_spatial, is_zero_ntk)


def Dense(out_dim: int, W_std: float = 1.0, b_std: float | None = None):
  """Fully connected layer on the last axis (NTK parameterization). b_std=None: no bias."""
  return _network(DenseLayer(int(out_dim), float(W_std), None if b_std is None else float(b_std)))


def Conv(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None,
         padding: str = 'VALID', W_std: float = 1.0, b_std: float | None = None):
  """2-D convolution, NHWC inputs, HWIO filters (NTK parameterization, fan_in = C fh fw).

  'SAME' pads with zeros and normalises by the full filter size, as neural-tangents does.
  """
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"Conv padding={padding!r}: use 'SAME' or 'VALID' (CIRCULAR is not offered).")
  strides = tuple(strides) if strides is not None else (1, 1)
  return _network(ConvLayer(int(out_chan), tuple(int(f) for f in filter_shape), strides, padding,
                            float(W_std), None if b_std is None else float(b_std)))


def AvgPool(window_shape: Sequence[int], strides: Sequence[int] | None = None,
            padding: str = 'VALID'):
  """Average pooling (neural-tangents' normalize_edges=False: padded zeros count)."""
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"AvgPool padding={padding!r}: use 'SAME' or 'VALID'.")
  window_shape = tuple(int(w) for w in window_shape)
  return _network(AvgPoolLayer(window_shape, tuple(strides) if strides else window_shape, padding))


def Relu():
  """max(x, 0); its kernel is the first-order arc-cosine kernel."""
  return _network(ReluLayer())


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0):
  """a * erf(b x) + c."""
  return _network(ErfLayer(float(a), float(b), float(c)))


def Flatten():
  """Flatten (N, H, W, C) -> (N, H W C). Its kernel needs only the diagonal spatial covariance."""
  return _network(FlattenLayer())


def GlobalAvgPool():
  """Mean over spatial positions. Its kernel needs the full spatial covariance."""
  return _network(GlobalAvgPoolLayer())


def serial(*layers):
  """Compose layers (each an (init_fn, apply_fn, kernel_fn) triple of this module)."""
  records = []
  for triple in layers:
    kernel_fn = triple[2] if isinstance(triple, tuple) and len(triple) == 3 else None
    if not isinstance(kernel_fn, KernelFn):
      raise TypeError('serial() takes layers of ddjax.kernels.stax (Dense, Conv, Relu, ...); '
                      f'got {triple!r}.')
    records.extend(kernel_fn.layers)
  return _network(*records)


def _network(*layers: Layer):
  """(init_fn, apply_fn, kernel_fn) of the layer records `layers` in sequence."""

  def init_fn(rng, input_shape):
    params = []
    shape = tuple(input_shape)
    for layer, key in zip(layers, jax.random.split(rng, max(len(layers), 1))):
      shape, p = layer.init(key, shape)
      params.append(p)
    return shape, tuple(params)

  def apply_fn(params, x, **unused):
    for layer, p in zip(layers, params):
      x = layer.apply(p, x)
    return x

  return init_fn, apply_fn, KernelFn(tuple(layers))


@dataclasses.dataclass(frozen=True, eq=False)
class KernelFn:
  """The infinite-width kernel function of the network made of the layer records `layers`."""
  layers: tuple[Layer, ...]

  def __call__(self, x1: Array, x2: Array | None = None, get=None, *,
               block_bytes: int = 2 ** 28):
    """Infinite-width kernels of the network between x1 (n1, ...) and x2 (n2, ...).

    get: 'nngp' | 'ntk' -> (n1, n2) array; a tuple -> Kernel-like namedtuple in that order;
    None -> Kernel(nngp, ntk). x2=None means x1. block_bytes bounds one block's band array
    (the largest intermediate) by choosing how many rows of x1 and x2 each block holds.
    """
    get = get if get is None or isinstance(get, str) else tuple(get)
    return _kernel_jit(self.layers, x1, x2, get, block_bytes=block_bytes)


# ------------------------------------------------------------------------------------------------
# The blocked kernel computation
# ------------------------------------------------------------------------------------------------
def _shapes(layers, in_shape):
  """The input shape of each layer, then the network output's; raises if one empties the image."""
  shapes = [tuple(in_shape)]
  for layer in layers:
    shape = tuple(layer.out_shape(shapes[-1]))
    if is_spatial(shape) and min(shape[1:3]) < 1:
      name = type(layer).__name__.removesuffix('Layer')
      raise ValueError(f'{name} maps spatial shape {shapes[-1][1:3]} '
                       f'to {shape[1:3]}: the input is too small for this network (fewer pools, '
                       "padding='SAME', or larger images).")
    shapes.append(shape)
  return shapes


def _bands(layers, shapes) -> list:
  """The band each layer's input must carry (None where not spatial), worked from the readout down.

  bands[i] is the band of the input of layer i (bands[len] = the network output's).
  """
  bands = [None] * (len(layers) + 1)
  out = shapes[-1]
  bands[-1] = (0, 0) if is_spatial(out) else None
  for i in range(len(layers) - 1, -1, -1):
    shape = shapes[i]
    if not is_spatial(shape):
      bands[i] = None
      continue
    b = layers[i].band_in(bands[i + 1] if bands[i + 1] is not None else (0, 0), shape)
    bands[i] = (min(b[0], shape[1] - 1), min(b[1], shape[2] - 1))
  return bands


def _input_kernel(x1: Array, x2: Array, band: Band | None, pairwise: bool) -> Array:
  """K of the inputs: x1 . x2 / C, per pair of rows (pairwise) or per row (x1 with itself).

  Dense inputs (n, d): (n1, n2) or (n,). Images (n, H, W, C): banded (n1, n2, H, W, Bh, Bw) or
  (n, H, W, Bh, Bw).
  """
  c = x1.shape[-1]
  if band is None:
    if pairwise:
      return x1 @ x2.T / c
    return jnp.sum(x1 * x2, axis=-1) / c
  x2s = shifted(jnp.moveaxis(x2, -1, 1), band)          # (n2, C, H, W, Bh, Bw)
  if pairwise:
    return jnp.einsum('ahwc,bchwij->abhwij', x1, x2s) / c
  return jnp.einsum('ahwc,achwij->ahwij', x1, x2s) / c


def _forward(layers, shapes, bands, k, ntk, variances1=None, variances2=None):
  """Push kernel arrays through the layers.

  Self mode (variances None): k holds each input with itself, (n, ...); the offset-0 variances
  before each nonlinearity are read off k and returned. Cross mode: k is (n1, n2, ...) and the
  variances of x1 and x2 at each nonlinearity come from the self pass.
  """
  recorded = []
  j = 0
  for i, layer in enumerate(layers):
    if layer.nonlinear:
      spatial = is_spatial(shapes[i])
      if variances1 is None:
        v = center(k) if spatial else k
        recorded.append(v)
        v1 = v[..., None, None] if spatial else v
        v2 = shifted(v, bands[i]) if spatial else v
      else:
        a, b = variances1[j], variances2[j]
        j += 1
        if spatial:
          v1 = a[:, None, :, :, None, None]
          v2 = shifted(b, bands[i])[None]
        else:
          v1, v2 = a[:, None], b[None, :]
      k, ntk = layer.kernel_nl(k, ntk, v1, v2)
      if spatial:
        mask = valid_mask(shapes[i][1], shapes[i][2], bands[i])
        k = k * mask
        ntk = ntk if ntk is None or is_zero_ntk(ntk) else ntk * mask
    else:
      k, ntk = layer.kernel(k, ntk, shapes[i], bands[i + 1])
  return k, ntk, recorded


def _map_rows(fn: Callable, args, rows: int):
  """fn over blocks of `rows` leading rows of every array in `args`; outputs concatenated.

  The last block is padded with zero rows (sliced off again). Several blocks run under `lax.map`
  with `jax.checkpoint`, so reverse-mode keeps one block's intermediates at a time.
  """
  n = jax.tree_util.tree_leaves(args)[0].shape[0]
  if rows >= n:
    return fn(args)
  nb = -(-n // rows)
  pad = lambda a: jnp.pad(a, [(0, nb * rows - n)] + [(0, 0)] * (a.ndim - 1)).reshape(
      (nb, rows) + a.shape[1:])
  out = lax.map(jax.checkpoint(fn), jax.tree_util.tree_map(pad, args))
  return jax.tree_util.tree_map(lambda a: a.reshape((nb * rows,) + a.shape[2:])[:n], out)


def _kernel(layers: tuple[Layer, ...], x1: Array, x2: Array | None = None, get=None, *,
            block_bytes: int = 2 ** 28):
  """KernelFn.__call__ of the network `layers`, un-jitted."""
  if get is None:
    names = ('nngp', 'ntk')
  elif isinstance(get, str):
    names = (get,)
  else:
    names = tuple(get)
  for name in names:
    if name not in ('nngp', 'ntk'):
      raise ValueError(f"get={get!r}: ask for 'nngp', 'ntk' or a tuple of them.")
  want_ntk = 'ntk' in names
  x1 = jnp.asarray(x1, jnp.float32)
  x2 = x1 if x2 is None else jnp.asarray(x2, jnp.float32)
  if x1.shape[1:] != x2.shape[1:]:
    raise ValueError(f'x1 {x1.shape} and x2 {x2.shape} must agree except in the batch axis.')
  shape = (1,) + tuple(x1.shape[1:])
  if len(shape) not in (2, 4):
    raise ValueError(f'inputs must be (n, d) or NHWC (n, H, W, C); got {x1.shape}.')
  net = layers
  if len(shape) == 4 and net and isinstance(net[0], FlattenLayer):
    # Flatten first (FC networks on images): the kernel of the flat vectors is the same
    # (mean over positions of x1 . x2 / C = x1 . x2 / (H W C)) and is one matmul.
    same = x2 is x1
    x1 = x1.reshape(x1.shape[0], -1)
    x2 = x1 if same else x2.reshape(x2.shape[0], -1)
    shape, net = (1, x1.shape[1]), net[1:]
  shapes = _shapes(net, shape)
  if len(shapes[-1]) != 2:
    raise ValueError(f'the network output {shapes[-1]} is spatial: end it with Flatten() or '
                     'GlobalAvgPool() (and a Dense readout) to get an (n1, n2) kernel.')
  bands = _bands(net, shapes)
  # Largest per-pair band array over the layers (floats), for the block size.
  per_pair = max(
      (s[1] * s[2] * (2 * b[0] + 1) * (2 * b[1] + 1) if b is not None else 1)
      for s, b in zip(shapes, bands))
  per_pair = max(per_pair, int(np.prod(shape[1:])) // max(shape[-1], 1))
  budget = max(int(block_bytes) // (4 * per_pair * (3 if want_ntk else 2)), 1)

  def self_pass(xb):
    k = _input_kernel(xb, xb, bands[0], pairwise=False)
    _, _, var = _forward(net, shapes, bands, k, None)
    return var

  var1 = _map_rows(self_pass, x1, budget)
  var2 = var1 if x2 is x1 else _map_rows(self_pass, x2, budget)

  r2 = min(x2.shape[0], max(int(math.isqrt(budget)), 1))
  r1 = max(budget // r2, 1)

  def cross_block(args):
    x1b, v1b = args

    def inner(args2):
      x2b, v2b = args2
      k = _input_kernel(x1b, x2b, bands[0], pairwise=True)
      k, ntk, _ = _forward(net, shapes, bands, k, 0.0 if want_ntk else None, v1b, v2b)
      if want_ntk and is_zero_ntk(ntk):
        ntk = jnp.zeros_like(k)
      return tuple(a.T for a in ((k, ntk) if want_ntk else (k,)))   # (rows of x2, r1)

    return tuple(a.T for a in _map_rows(inner, (x2, var2), r2))      # (r1, n2)

  out = _map_rows(cross_block, (x1, var1), r1)
  values = {'nngp': out[0]}
  if want_ntk:
    values['ntk'] = out[1]
  if isinstance(get, str):
    return values[get]
  return collections.namedtuple('Kernel', names)(*(values[n] for n in names))


_kernel_jit = jax.jit(_kernel, static_argnames=('layers', 'get', 'block_bytes'))
