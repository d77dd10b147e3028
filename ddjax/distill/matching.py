"""Shared pieces of the matching distillers (DC / DSA gradient matching, DM distribution matching).

- `group_by_class`: a class-balanced real batch (B, ...) -> (K, B / K, ...).
- `gradient_distance`: DC's layer-wise distance between two gradient pytrees (Zhao et al., ICLR
  2021, Eq. 5 and the official `match_loss` / `distance_wb`): per output unit (a row of the weight
  reshaped to (out, -1)), 1 - cosine similarity, summed over rows and layers; 1-D leaves (biases,
  norm scales and offsets) contribute nothing. Also DC's 'mse' and 'cos' variants over the
  concatenated gradient vector.
- `depth_mask`: PAD's "match only the deeper layers" filter (Li et al., 2024, appendix A.1): a 0/1
  mask over the parameters in PyTorch's flattening order (shallow to deep; within a conv weight
  (out, in, h, w)) that removes the first `fraction` of all parameter entries.

The real-side statistics are additive over samples (DC: G_c = mean_i grad l(x_i); DM: the class
mean of embeddings), which BiLP's ITE relies on; the distillers expose them per sample.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any

METRICS = ('ours', 'mse', 'cos')


def group_by_class(x: Array, labels: Array, num_classes: int) -> Array:
  """(B, ...) holding exactly B / K examples of every class -> (K, B / K, ...), class c in row c.

  The batch must be class-balanced (the run loop's `distill.balanced_batch`); the order within a
  class is kept (stable sort).
  """
  if x.shape[0] % num_classes:
    raise ValueError(f'a real batch of {x.shape[0]} cannot hold the same number of examples of '
                     f'each of {num_classes} classes; make distill.batch_size a multiple of it.')
  order = jnp.argsort(labels, stable=True)
  return x[order].reshape((num_classes, x.shape[0] // num_classes) + x.shape[1:])


def matching_defaults(cfg) -> None:
  """The settings DC, DSA and DM share (their official code): ConvNet-3 width 128 with instance
  norm, class-balanced real batches of 256 per class, SGD with momentum 0.5 on the images (constant
  rate), hard labels, DC's evaluation protocol on the same network."""
  cfg.model.width = 128
  cfg.model.norm = 'instance'
  cfg.distill.batch_per_class = 256
  cfg.distill.balanced_batch = True
  cfg.distill.optimizer = 'sgd'
  cfg.distill.momentum = 0.5
  cfg.distill.schedule = 'constant'
  cfg.distill.learn_label = False
  cfg.distill.label_init = 'one_hot'
  cfg.eval.protocol = 'dc'
  cfg.eval.krr = False
  cfg.eval.model.width = 128
  cfg.eval.model.norm = 'instance'
  cfg.checkpoint.every = 100
  cfg.log.every = 10


def _rows(g: Array) -> Array:
  """A Flax weight gradient with the output axis last -> (out, fan_in) rows (DC's reshape)."""
  return jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)


def gradient_distance(g_real: PyTree, g_syn: PyTree, metric: str = 'ours',
                      mask: PyTree | None = None) -> Array:
  """DC's distance between two gradient pytrees of the same network (a scalar).

  'ours' (DC Eq. 5): sum over weight leaves (ndim >= 2) and output units of
    1 - <a, b> / (|a| |b| + 1e-6), a, b the unit's incoming-weight gradients;
  1-D leaves (biases, norm parameters) are excluded. 'mse': |vec(g_r) - vec(g_s)|^2 over every
  leaf. 'cos': 1 - cosine of the concatenated vectors. `mask` (same structure, 0/1 arrays, from
  `depth_mask`) zeroes entries before the distance; a unit with no entry left is skipped.
  """
  if metric not in METRICS:
    raise ValueError(f'matching metric {metric!r} is not one of {METRICS}.')
  leaves_r = jax.tree_util.tree_leaves(g_real)
  leaves_s = jax.tree_util.tree_leaves(g_syn)
  if len(leaves_r) != len(leaves_s):
    raise ValueError('real and synthetic gradients come from different networks.')
  if not leaves_r:
    return jnp.zeros((), jnp.float32)
  masks = (jax.tree_util.tree_leaves(mask) if mask is not None else [None] * len(leaves_r))
  if metric == 'ours':
    total = jnp.zeros((), jnp.float32)
    for a, b, m in zip(leaves_r, leaves_s, masks):
      if a.ndim < 2:
        continue
      a, b = _rows(a), _rows(b)
      if m is not None:
        m = _rows(m)
        a, b = a * m, b * m
      cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
                                  + 1e-6)
      term = 1.0 - cos
      if m is not None:
        term = jnp.where(jnp.any(m > 0, axis=-1), term, 0.0)
      total = total + jnp.sum(term)
    return total
  flat = lambda leaves: jnp.concatenate([
      (x * m if m is not None else x).reshape(-1) for x, m in zip(leaves, masks)])
  a, b = flat(leaves_r), flat(leaves_s)
  if metric == 'mse':
    return jnp.sum(jnp.square(a - b))
  return 1.0 - jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-6)


def _torch_order(x: np.ndarray) -> np.ndarray:
  """Flax layout -> PyTorch layout: conv (h, w, in, out) -> (out, in, h, w); dense (in, out) ->
  (out, in); 1-D unchanged."""
  if x.ndim == 4:
    return x.transpose(3, 2, 0, 1)
  if x.ndim == 2:
    return x.T
  return x


def _from_torch_order(x: np.ndarray) -> np.ndarray:
  if x.ndim == 4:
    return x.transpose(2, 3, 1, 0)
  if x.ndim == 2:
    return x.T
  return x


def _ordered_leaves(tree: PyTree, prefix: tuple = ()) -> list[tuple[tuple, Array]]:
  """Leaves in module-creation (insertion) order, shallow to deep; within a module its weight
  ('kernel' / 'scale') before its 'bias', as PyTorch's named_parameters lists them."""
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    items = list(tree.items())
    rank = {'kernel': 0, 'scale': 0, 'embedding': 0, 'bias': 1}
    if all(k in rank for k, _ in items):
      items.sort(key=lambda kv: rank[kv[0]])
    out = []
    for k, v in items:
      out += _ordered_leaves(v, prefix + (k,))
    return out
  return [(prefix, tree)]


def depth_mask(params: PyTree, fraction: float, per_layer: bool = False) -> PyTree:
  """PAD's deep-layer filter: a 0/1 float mask shaped like `params` that removes the first
  `fraction` of all parameter entries, counted shallow to deep in PyTorch's flattening order
  (PAD masks the flattened parameter vector of the PyTorch network: the cut falls mid-tensor,
  conv kernels counted in OIHW order). fraction 0 keeps everything. per_layer: round the cut
  down to the start of the tensor it falls in (whole tensors dropped; ddjax's variant).
  Serves DC's layer_fraction and trajectory matching's FIEM (`ddjax.distill.mtt`). Shallow to
  deep is `params`' dict insertion order: pass `ddjax.models.in_module_order(tree, order)` (a tree
  that went through JAX lists its keys sorted by name, the norms after the head).
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'matching.layer_fraction={fraction} must lie in [0, 1).')
  leaves = _ordered_leaves(params)
  total = sum(int(np.prod(np.shape(v))) for _, v in leaves)
  cut = int(fraction * total)       # PAD: keep = arange(L)[int(depth_ratio * L):]
  if per_layer:
    starts = np.cumsum([0] + [int(np.prod(np.shape(v))) for _, v in leaves])
    cut = int(starts[np.searchsorted(starts, cut, side='right') - 1])
  masks = {}
  seen = 0
  for path, v in leaves:
    shape = np.shape(v)
    size = int(np.prod(shape))
    flat = (np.arange(size) + seen >= cut).astype(np.float32)
    torch_shape = _torch_order(np.zeros(shape, np.float32)).shape
    masks[path] = _from_torch_order(flat.reshape(torch_shape))
    seen += size

  def build(tree, prefix=()):
    if isinstance(tree, dict) or hasattr(tree, 'items'):
      return {k: build(v, prefix + (k,)) for k, v in tree.items()}
    return jnp.asarray(masks[prefix])

  return build(params)
