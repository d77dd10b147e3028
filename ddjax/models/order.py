"""The order of a network's parameters, shallow to deep, whatever order a params dict lists them in.

JAX flattens a dict by its sorted keys, so a parameter tree that went through a pytree map, a
`jax.grad`, a jitted function or a file comes back sorted by name: for a ConvNet
conv0, conv1, conv2, head, norm0, norm1, norm2, the norms after the head. Anything that counts
parameters "from the shallowest" (PAD's deep-layer mask, `ddjax.distill.matching.depth_mask`)
must take the order from the network itself:

  `parameter_order(model, input_shape)`  the paths of the 'params' leaves in the order the
      network calls its modules (a traced `model.init`, no computation), within a module its
      weight ('kernel', 'scale', 'embedding') before its 'bias', as PyTorch's
      `named_parameters` lists a module's parameters; for the ConvNet:
      conv0.kernel, conv0.bias, norm0.scale, norm0.bias, conv1..., head.kernel, head.bias.
  `in_module_order(tree, order)`  the same tree with every dict's keys re-inserted in that order
      (values unchanged), for code that walks a tree in its dicts' insertion order.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any
Path = tuple[str, ...]

# a module's leaves: its weight first, its bias last, anything else between (by name)
_LEAF_RANK = {'kernel': 0, 'scale': 0, 'embedding': 0, 'bias': 2}


def _leaf_paths(tree: PyTree, prefix: Path = ()) -> list[Path]:
  if hasattr(tree, 'items'):
    out = []
    for k, v in tree.items():
      out += _leaf_paths(v, prefix + (str(k),))
    return out
  return [prefix]


@functools.lru_cache(maxsize=64)
def _order(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[Path, ...]:
  calls: dict[Path, int] = {}

  def record(next_fun, args, kwargs, context):
    calls.setdefault(tuple(context.module.path), len(calls))
    return next_fun(*args, **kwargs)

  paths: list[Path] = []

  def init(key):
    with nn.intercept_methods(record):
      variables = model.init(key, jnp.zeros(input_shape, jnp.float32), train=False)
    paths.extend(_leaf_paths(variables['params']))   # inside the trace: before any re-sorting
    return variables

  jax.eval_shape(init, jax.random.PRNGKey(0))
  created = {p: i for i, p in enumerate(paths)}

  def key(path: Path):
    owner = path[:-1]
    # a module never called as a method (a bare submodule of its parent): its parent's slot
    while owner not in calls and owner:
      owner = owner[:-1]
    return calls.get(owner, 0), owner, _LEAF_RANK.get(path[-1], 1), created[path]

  return tuple(sorted(paths, key=key))


def parameter_order(model: nn.Module, input_shape: Sequence[int]) -> tuple[Path, ...]:
  """The paths (tuples of names) of `model`'s 'params' leaves, shallow to deep: modules in the
  order the forward pass first calls them on an input of shape `input_shape` ((N, H, W, C) or
  (H, W, C), N = 1 added), a module's weight before its bias. Traced, not run; cached per
  (model, shape). The answer does not depend on how any params dict is keyed."""
  shape = tuple(int(d) for d in input_shape)
  if len(shape) == 3:
    shape = (1,) + shape
  try:
    return _order(model, shape)
  except TypeError:      # an unhashable model: no cache
    return _order.__wrapped__(model, shape)


def in_module_order(tree: PyTree, order: Sequence[Path]) -> dict:
  """`tree` (nested dicts with the leaves at `order`'s paths, in any key order) as nested dicts
  whose keys are inserted in `order` (the leaves themselves unchanged). ValueError when the paths
  differ from `order`'s."""
  have = set(_leaf_paths(tree))
  if have != set(order):
    raise ValueError(f'the parameter tree has leaves {sorted(have ^ set(order))[:4]} that the '
                     'network does not (or the reverse); build the order from the same model.')
  out: dict = {}
  for path in order:
    node, src = out, tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
      src = src[name]
    node[path[-1]] = src[path[-1]]
  return out
