"""ConvNet-D-W-norm-pool: the small convolutional network of DC, DSA, DM, MTT and FRePo.

`depth` blocks of

    conv(k x k, bias) -> norm -> relu -> pool(2 x 2, stride 2)

then Flatten and a Dense head. With `double_width` the channel count doubles per block
(FRePo's evaluation network: 128, 256, 512). For a 1-channel 28 x 28 input the first conv pads by
`k // 2 + 2` (3 for k = 3) instead of `k // 2`, turning 28 px into 32 px as DC and FRePo do, so
depth 3 with pooling ends on 4 x 4 features (4 * 4 * 128 = 2048 features for width 128, 8192 with
channel doubling).

Norms (`norm`):
  'none'      identity.
  'instance'  GroupNorm with one group per channel, affine: DC's 'instancenorm' (GroupNorm(C, C)).
  'layer'     LayerNorm over (H, W, C) with per-element affine (DC's 'layernorm').
  'group'     GroupNorm with 4 groups, affine, eps 1e-5: DC's 'groupnorm' (GroupNorm(4, C)); the
              channel count must be divisible by 4 (`GROUP_NORM_GROUPS`).
  'batch'     BatchNorm, momentum 0.9, running statistics in the 'batch_stats' collection; call
              `apply(..., train=True, mutable=['batch_stats'])` when training.

Placement (`norm_placement`):
  'dc'     conv -> norm -> relu -> pool in every block (DC, DSA, DM, MTT).
  'frepo'  FRePo's ConvNet (lib/models/networks.py): no norm in block 0; in blocks i >= 1 the norm
           acts on the block's input, norm -> conv -> relu -> pool; nothing after the last conv.
`bn_momentum` is flax's (running = m * running + (1 - m) * batch): 0.9 is PyTorch's 0.1 (DC);
FRePo's flax BatchNorm uses 0.1, so its running statistics are mostly the latest batch. FRePo
evaluates the same family without norm (norm='none').

First block (`fuse_first_block`, on by default): a block 0 without norm (norm 'none', or FRePo's
placement), with ReLU and average pooling, on an input of at most 4 channels (images) runs as one
op, `conv_relu_pool`, whose forward writes only the pooled output and whose backward recomputes
the cheap few-channel convolution instead of keeping its full-resolution output (the largest
activation of the network: 100 x 32 x 32 x 64 floats at IPC 10). Same parameters ('conv0' kernel
and bias), same values up to float reassociation.

Per-example gradients (`weight_grad`): 'auto' takes XLA's backward-filter convolution for the
weight gradient of inputs wider than 4 channels; 'im2col' takes im2col matmuls at every width,
which is what a `jax.vmap` of single-image gradients wants (XLA batches the backward-filter
convolution into a grouped convolution, ~3x slower on CPU). `ddjax.models.per_example_model`
picks it; the values are the same.

Mixed precision (`dtype`): None computes in the inputs' dtype (float32); `jnp.bfloat16` runs the
convolutions, matmuls, pooling and norms in bfloat16 (flax's `dtype`; norms keep their statistics
in float32) while the parameters stay float32 (`param_dtype`) and the returned logits and features
are cast back to float32, so losses, KRR solves, optimizer states and the gradients reaching the
inputs (the synthetic set) are float32.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

NORMS = ('none', 'instance', 'batch', 'layer', 'group')
GROUP_NORM_GROUPS = 4   # DC's 'groupnorm': nn.GroupNorm(4, C)
NORM_PLACEMENTS = ('dc', 'frepo')
POOLINGS = ('avg', 'max', 'none')
_EPS = 1e-5  # PyTorch's default norm epsilon, as in DC/MTT.
_NHWC = ('NHWC', 'HWIO', 'NHWC')
_DW_CHUNK_ELEMENTS = 2 ** 24   # im2col entries per weight-gradient matmul (64 MiB)
_IM2COL_MAX_CHANNELS = 4       # input channels up to which the weight gradient is im2col matmuls
WEIGHT_GRADS = ('auto', 'im2col')   # conv2d's weight-gradient algorithms (`conv2d`)


def conv2d(x: Array, w: Array, padding: tuple[tuple[int, int], tuple[int, int]],
           weight_grad: str = 'auto') -> Array:
  """Stride-1 NHWC convolution, x (N, H, W, C) * w (kh, kw, C, O) -> (N, H', W', O), the same
  values and gradients as `lax.conv_general_dilated`.

  Its weight gradient, for inputs of at most `_IM2COL_MAX_CHANNELS` channels (the ConvNet's first
  layer on grey or RGB images), is dy^T cols with cols the im2col patches of x (chunked matmuls):
  XLA's backward-filter convolution runs a 1-channel input at under 1 GFLOP/s on CPU (11.5 s
  against 0.4 s for the 32 x 32 layer of DC's ConvNet on 2560 images, one thread). Wider inputs
  use XLA's backward-filter convolution, which with ddjax's XLA flags (`ddjax.infra.xla_flags`)
  runs at about the forward convolution's speed (1.7 s against 4.0 s for im2col on the 16 x 16 x
  128 layer). The input gradient is XLA's transposed convolution.

  weight_grad: 'auto' (the rule above) or 'im2col' (im2col matmuls at every width): for
  per-example gradients, `jax.vmap(jax.grad(...))` over single images, where XLA batches the
  backward-filter convolution into a grouped convolution (feature_group_count = batch) that runs
  at ~11 GFLOP/s on CPU, and the im2col product becomes a batched matmul about 3x faster (the
  16 x 16 x 128 layer, 256 images, one thread: 1.72 s against 0.54 s).
  """
  if weight_grad not in WEIGHT_GRADS:
    raise ValueError(f'weight_grad={weight_grad!r} is not one of {WEIGHT_GRADS}')
  return _conv2d(x, w, tuple(tuple(p) for p in padding), weight_grad)


def _conv_lax(x, w, padding):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, w, padding, weight_grad):
  return _conv_lax(x, w, padding)


def _conv2d_fwd(x, w, padding, weight_grad):
  return _conv_lax(x, w, padding), (x, w)


def _conv2d_bwd(padding, weight_grad, res, dy):
  x, w = res
  # the input gradient is the transpose of the (linear in x) convolution: no forward pass
  (dx,) = jax.linear_transpose(lambda x_: _conv_lax(x_, w, padding), x)(dy)
  if weight_grad == 'auto' and x.shape[-1] > _IM2COL_MAX_CHANNELS:
    (dw,) = jax.linear_transpose(lambda w_: _conv_lax(x, w_, padding), w)(dy)
    return dx, dw
  return dx, _weight_gradient_im2col(x, dy, w.shape, padding).astype(w.dtype)


def _weight_gradient_im2col(x: Array, dy: Array, w_shape: tuple, padding) -> Array:
  """dw (kh, kw, C, O) of a stride-1 convolution as dy^T cols: cols (M, kh * kw * C) the im2col
  patches of x, M = N * H' * W', in chunks of about _DW_CHUNK_ELEMENTS patch entries.

  With few input channels the patch matrix is narrow (9 columns for a 1-channel 3 x 3 conv) and
  the product (O, M) x (M, kh * kw * C) is laid out so its long contraction streams dy once.
  """
  kh, kw, c, o = w_shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  n, h, wd, _ = dy.shape

  def chunk_dw(xp_c, dy_c):
    cols = jnp.concatenate([xp_c[:, a:a + h, b:b + wd] for a in range(kh) for b in range(kw)], -1)
    m = xp_c.shape[0] * h * wd
    return jnp.dot(dy_c.reshape(m, o).T, cols.reshape(m, kh * kw * c),
                   preferred_element_type=jnp.float32)

  size = max(1, _DW_CHUNK_ELEMENTS // (h * wd * kh * kw * c))
  dw_t = sum(chunk_dw(xp[i:i + size], dy[i:i + size]) for i in range(0, n, size))
  return dw_t.T.reshape(kh, kw, c, o)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _flax_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, precision=None,
               weight_grad: str = 'auto', **kwargs):
  """`nn.Conv`'s convolution hook: `conv2d` for what ConvNet uses (stride 1, explicit padding,
  no dilation or groups), `lax.conv_general_dilated` otherwise."""
  plain = (tuple(window_strides) == (1, 1) and not isinstance(padding, str)
           and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
           and feature_group_count == 1 and lhs.ndim == 4 and precision is None and not kwargs)
  if plain:
    return conv2d(lhs, rhs, padding, weight_grad)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, **kwargs)


def avg_pool_2x2(x: Array) -> Array:
  """2 x 2 average pooling with stride 2 of x (N, H, W, C) -> (N, H // 2, W // 2, C), as
  `nn.avg_pool(x, (2, 2), strides=(2, 2))` (an odd last row / column is dropped). A reshape and a
  mean: its backward is a broadcast that XLA fuses into the next elementwise pass, where the
  reduce-window form writes a full-size tensor of its own."""
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _pool_slices(a: Array) -> Array:
  """`avg_pool_2x2` as the mean of four strided slices (an odd last row / column dropped): an
  elementwise expression that fuses with its producer, where XLA:CPU's reduction of the reshaped
  form runs ~10x slower there (ConvNet-3 width 64, 100 x 32 x 32 x 64: 19 ms against 1.4 ms)."""
  h, w = a.shape[1] - a.shape[1] % 2, a.shape[2] - a.shape[2] % 2
  a = a[:, :h, :w]
  return 0.25 * ((a[:, 0::2, 0::2] + a[:, 1::2, 0::2]) + (a[:, 0::2, 1::2] + a[:, 1::2, 1::2]))


def _few_channel_conv(x: Array, w: Array, b: Array, padding) -> Array:
  """conv(x, w) + b for x (N, H, W, C) with few channels C as a sum of kh * kw * C broadcast
  products x_pad[:, a:a+H', b:b+W', c] * w[a, b, c] (each (N, H', W', O)): elementwise, so XLA
  fuses it with what follows, and it costs 2 kh kw C flops per output."""
  kh, kw, c, _ = w.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  h, wd = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  z = b
  for a in range(kh):
    for bb in range(kw):
      for ci in range(c):
        z = z + xp[:, a:a + h, bb:bb + wd, ci:ci + 1] * w[a, bb, ci]
  return z


def conv_relu_pool(x: Array, w: Array, b: Array,
                   padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
  """avg_pool_2x2(relu(conv(x, w) + b)) for x (N, H, W, C) with few channels, w (kh, kw, C, O),
  b (O,) -> (N, H' // 2, W' // 2, O): ConvNet's first block without norm, as one op.

  Forward: one fused elementwise pass (`_few_channel_conv`, ReLU, `_pool_slices`) that writes
  only the pooled output. Backward (a `custom_vjp`): recompute z = conv(x, w) + b, then
      g = 1[z > 0] * upsample(dp) / 4                       (N, H', W', O), dL/dz
      [dw; db] = [cols(x); 1]^T g                          one matmul, cols the im2col patches
      dx = conv^T(g)                                       XLA's transposed convolution
  (dx is dead code, removed by XLA, when x is data). The backward is itself differentiable.
  """
  return _conv_relu_pool(x, w, b, tuple(tuple(p) for p in padding))


def _conv_relu_pool_primal(x, w, b, padding):
  return _pool_slices(jax.nn.relu(_few_channel_conv(x, w, b, padding)))


_conv_relu_pool = functools.partial(jax.custom_vjp, nondiff_argnums=(3,))(_conv_relu_pool_primal)


def _conv_relu_pool_fwd(x, w, b, padding):
  # the primal itself, not the custom_vjp function: forward mode through a gradient (BiLP's ITE)
  # differentiates this
  return _conv_relu_pool_primal(x, w, b, padding), (x, w, b)


def _conv_relu_pool_bwd(padding, res, dp):
  x, w, b = res
  kh, kw, c, o = w.shape
  z = _few_channel_conv(x, w, b, padding)
  n, h, wd, _ = z.shape
  hp, wp = dp.shape[1], dp.shape[2]
  up = jnp.broadcast_to(dp[:, :, None, :, None, :], (n, hp, 2, wp, 2, o))
  up = jnp.pad(up.reshape(n, 2 * hp, 2 * wp, o), ((0, 0), (0, h - 2 * hp), (0, wd - 2 * wp), (0, 0)))
  g = jnp.where(z > 0, 0.25 * up, jnp.zeros((), z.dtype))
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  rows = [xp[:, a:a + h, bb:bb + wd, ci] for a in range(kh) for bb in range(kw) for ci in range(c)]
  cols_t = jnp.stack(rows + [jnp.ones_like(rows[0])]).reshape(len(rows) + 1, -1)  # (K + 1, M)
  gw = jax.lax.dot_general(cols_t, g.reshape(-1, o), (((1,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)                    # (K + 1, O)
  (dx,) = jax.linear_transpose(lambda x_: _conv_lax(x_, w, padding), x)(g)
  return dx, gw[:-1].reshape(kh, kw, c, o).astype(w.dtype), gw[-1].astype(b.dtype)


_conv_relu_pool.defvjp(_conv_relu_pool_fwd, _conv_relu_pool_bwd)
_FUSED_MAX_CHANNELS = 4     # input channels up to which the first block is `conv_relu_pool`


class _ConvParams(nn.Module):
  """The parameters of `nn.Conv(features, kernel_size)` ('kernel' then 'bias', the same
  initialisers, so the same values from the same key), for a block computed by hand."""
  features: int
  kernel_size: tuple[int, int]

  @nn.compact
  def __call__(self, in_channels: int) -> tuple[Array, Array]:
    kernel = self.param('kernel', nn.linear.default_kernel_init,
                        (*self.kernel_size, in_channels, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return kernel, bias


def to_float32(x: Array) -> Array:
  """A network output in float32: bfloat16 / float16 activations of a mixed-precision model cast
  up, anything else (float32, float64 under x64) unchanged."""
  return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> None:
  """Raise ValueError naming the allowed values when `value` is not one of them."""
  if value not in allowed:
    raise ValueError(f'unknown {kind} {value!r}; allowed: {", ".join(allowed)}')


def max_depth(image_shape: Sequence[int], pooling: str = 'avg', pad_1ch_28: bool = True) -> int:
  """The deepest ConvNet whose 2 x 2 poolings leave at least 1 x 1 pixels of an (H, W, C) image:
  floor(log2(min(H', W'))) with H' = H (32 for a 28 x 28 x 1 image padded by `pad_1ch_28`);
  unlimited (a large number) without pooling."""
  if pooling == 'none':
    return 2 ** 31 - 1
  h, w = int(image_shape[0]), int(image_shape[1])
  if pad_1ch_28 and tuple(image_shape) == (28, 28, 1):
    h = w = 32
  return max(0, min(h, w).bit_length() - 1)


def depth_error(depth: int, image_shape: Sequence[int], pooling: str = 'avg',
                pad_1ch_28: bool = True, key: str = 'depth') -> str:
  """'' when a ConvNet of `depth` fits (H, W, C) images, else what to set `key` to."""
  most = max_depth(image_shape, pooling, pad_1ch_28)
  if depth <= most:
    return ''
  h, w = int(image_shape[0]), int(image_shape[1])
  return (f'{key}={depth}: a ConvNet halves the image at each of its {depth} blocks (2 x 2 '
          f'pooling), and {h} x {w} images allow at most {most} blocks; set {key} <= {most} '
          "(or pooling='none').")


class ConvNet(nn.Module):
  """ConvNet returning (logits (N, num_classes), features (N, D)) for NHWC input (N, H, W, C).

  D = H' * W' * width_last where H' = H_in / 2**depth with pooling (H_in = 32 for a padded
  28 x 28 x 1 input) and width_last = width * 2**(depth - 1) with `double_width`, else width.
  """
  num_classes: int
  depth: int = 3
  width: int = 128
  double_width: bool = False
  norm: str = 'none'
  pooling: str = 'avg'
  kernel_size: int = 3
  pad_1ch_28: bool = True
  norm_placement: str = 'dc'
  bn_momentum: float = 0.9
  dtype: Any = None              # compute dtype (None: float32; jnp.bfloat16: mixed precision)
  fuse_first_block: bool = True  # block 0 as `conv_relu_pool` where it applies (module docstring)
  weight_grad: str = 'auto'      # conv2d's weight gradient: 'im2col' for per-example gradients

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    check_choice('norm', self.norm, NORMS)
    check_choice('pooling', self.pooling, POOLINGS)
    check_choice('norm placement', self.norm_placement, NORM_PLACEMENTS)
    check_choice('weight gradient', self.weight_grad, WEIGHT_GRADS)
    frepo = self.norm_placement == 'frepo'
    if x.ndim != 4:
      raise ValueError(f'ConvNet expects NHWC input, got shape {x.shape}')
    too_deep = depth_error(self.depth, x.shape[1:], self.pooling, self.pad_1ch_28,
                           key='ConvNet depth')
    if too_deep:
      raise ValueError(too_deep)
    k = self.kernel_size
    for i in range(self.depth):
      pad = k // 2
      if i == 0 and self.pad_1ch_28 and x.shape[1:] == (28, 28, 1):
        pad = k // 2 + 2
      ch = self.width * (2 ** i) if self.double_width else self.width
      if i == 0 and self._fused_first_block(x):
        kernel, bias = _ConvParams(ch, (k, k), name='conv0')(x.shape[-1])
        x = conv_relu_pool(x, kernel, bias, ((pad, pad), (pad, pad)))
        continue
      if frepo and i > 0:
        x = self._norm(x, train, i)
      x = nn.Conv(ch, (k, k), padding=((pad, pad), (pad, pad)), use_bias=True,
                  conv_general_dilated=functools.partial(_flax_conv,
                                                         weight_grad=self.weight_grad),
                  dtype=self.dtype, name=f'conv{i}')(x)
      if not frepo:
        x = self._norm(x, train, i)
      x = nn.relu(x)
      if self.pooling == 'avg':
        x = avg_pool_2x2(x)
      elif self.pooling == 'max':
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    features = x.reshape((x.shape[0], -1))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    return to_float32(logits), to_float32(features)

  def _fused_first_block(self, x: Array) -> bool:
    no_norm = self.norm == 'none' or self.norm_placement == 'frepo'
    return (self.fuse_first_block and no_norm and self.pooling == 'avg' and self.dtype is None
            and x.shape[-1] <= _FUSED_MAX_CHANNELS and x.dtype == jnp.float32)

  def _norm(self, x: Array, train: bool, i: int) -> Array:
    return apply_norm(self.norm, x, train, f'norm{i}', self.bn_momentum, self.dtype)


def apply_norm(kind: str, x: Array, train: bool, name: str, bn_momentum: float = 0.9,
               dtype: Any = None) -> Array:
  """x (N, H, W, C) through the norm `kind` (one of NORMS, see the module docstring) as a submodule
  called `name` of the module whose compact method calls this; 'none' returns x."""
  if kind == 'instance':
    return InstanceNorm(epsilon=_EPS, dtype=dtype, name=name)(x)
  if kind == 'layer':
    return nn.LayerNorm(epsilon=_EPS, reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1),
                        dtype=dtype, name=name)(x)
  if kind == 'group':
    if x.shape[-1] % GROUP_NORM_GROUPS:
      raise ValueError(f"norm 'group' splits channels into {GROUP_NORM_GROUPS} groups, but {name} "
                       f'has {x.shape[-1]} channels; use a width divisible by '
                       f'{GROUP_NORM_GROUPS} or another norm')
    return nn.GroupNorm(num_groups=GROUP_NORM_GROUPS, epsilon=_EPS, dtype=dtype, name=name)(x)
  if kind == 'batch':
    return nn.BatchNorm(use_running_average=not train, momentum=bn_momentum, epsilon=_EPS,
                        dtype=dtype, name=name)(x)
  return x


class InstanceNorm(nn.Module):
  """Per-sample, per-channel normalisation over (H, W) with a per-channel affine: DC's
  'instancenorm' (PyTorch GroupNorm(C, C)), with the parameters of flax's GroupNorm(num_groups=C)
  ('scale' (C,) ones, 'bias' (C,) zeros) and the same values. Its gradient is `instance_norm`'s
  two-pass backward."""
  epsilon: float = _EPS
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    y = instance_norm(x.astype(jnp.float32), scale, bias, self.epsilon)
    return y.astype(self.dtype or x.dtype)


def instance_norm(x: Array, scale: Array, bias: Array, eps: float = _EPS) -> Array:
  """y = (x - mu) / sqrt(var + eps) * scale + bias, mu and var over axes (1, 2) of x (N, H, W, C)
  per sample and channel (var = E[x^2] - mu^2, flax's fast variance); scale, bias (C,).

  Backward (a `custom_vjp`): with xh = (x - mu) / sigma and g = dy * scale,
      dx = (g - mean_hw(g) - xh * mean_hw(g * xh)) / sigma,
      dscale = sum_{n,hw} dy * xh,  dbias = sum_{n,hw} dy,
  one reduction pass and one elementwise pass over x and dy. Autodiff of the forward makes
  several more passes over these activations, which on the first layer of DC's ConvNet (2560 x 32
  x 32 x 128) are bound by memory bandwidth. The backward is itself differentiable (DC
  differentiates the synthetic gradient).
  """
  return _instance_norm(x, scale, bias, eps)


def _sum_hw_pair(a: Array, b: Array) -> tuple[Array, Array]:
  """(sum over axes 1, 2 of a, of b), keepdims, as ONE variadic reduction: a single pass over
  memory where two jnp.sum calls make two."""
  zero = jnp.zeros((), a.dtype)
  sa, sb = jax.lax.reduce((a, b), (zero, zero), lambda p, q: (p[0] + q[0], p[1] + q[1]), (1, 2))
  return sa[:, None, None], sb[:, None, None]


def _in_stats(x, eps):
  s1, s2 = _sum_hw_pair(x, jnp.square(x))
  hw = x.shape[1] * x.shape[2]
  mean = s1 / hw
  var = jnp.maximum(s2 / hw - jnp.square(mean), 0.0)
  return mean, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _instance_norm(x, scale, bias, eps):
  mean, inv = _in_stats(x, eps)
  return (x - mean) * inv * scale + bias


def _instance_norm_fwd(x, scale, bias, eps):
  mean, inv = _in_stats(x, eps)
  return (x - mean) * inv * scale + bias, (x, mean, inv, scale)


def _instance_norm_bwd(eps, res, dy):
  x, mean, inv, scale = res
  xh = (x - mean) * inv
  s1, s2 = _sum_hw_pair(dy, dy * xh)                     # (N, 1, 1, C) each
  hw = x.shape[1] * x.shape[2]
  dx = (dy * scale - (scale / hw) * (s1 + xh * s2)) * inv
  return dx, jnp.sum(s2, axis=(0, 1, 2)), jnp.sum(s1, axis=(0, 1, 2))


_instance_norm.defvjp(_instance_norm_fwd, _instance_norm_bwd)
