"""The experts' step: one expert's SGD (or GSAM) step on a DSA-augmented real batch, how a chunk of
experts steps together (`MODES`), and every expert's keys.

An expert is the run's network (`cfg.model`) trained from scratch on the real training set with
cross-entropy: SGD at a constant `expert.lr` (momentum, coupled L2 weight decay as PyTorch's
SGD), batches of `expert.batch_size` reshuffled every epoch (`ddjax.models.training`), DSA on
every batch (`ddjax.augment.dsa`, mode 'S', per-sample parameters), as MTT's `buffer.py`.

Many experts train at once: one jitted, `jax.vmap`-ed step over the experts (each its own
initialisation, batch order and DSA draws), `expert.parallel` at a time (0 = all), the experts'
axis split over the local devices when there are several. On CPU the default is mode 'loop'
(`default_mode`). Steps are driven from Python, one jitted call per mini-batch (XLA:CPU runs
convolutions inside a loop body far slower; see `ddjax.evaluate.train.default_loop`).

Randomness (documented because tests rebuild it): root = PRNGKey(expert.seed); expert i has
k_i = fold_in(fold_in(root, 0), i) and (k_init, k_data) = split(k_i); its network is
`fresh_carry(model, k_init, ...)`; training epoch e (0-based, the epoch that ends in snapshot
e + 1) has k_ep = fold_in(k_data, e), batch positions `epoch_batches(k_ep, n_e, batch_size)` into
that epoch's data (all of it, or FIEX's subset of n_e indices) and DSA key fold_in(k_ep, b + 1)
for batch b. FIEX's scoring networks use fold_in(root, 1) (`fiex_key`). So expert i's trajectory
depends only on (record, i): experts trained together, apart or resumed are the same to float
tolerance.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.distill.experts.gsam import make_gsam_train_step

Array = jax.Array
MODES = ('vmap', 'loop')


def make_optimizer(lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
  """PyTorch's SGD(lr, momentum, weight_decay): coupled L2 (wd * w added to the gradient), then
  heavy-ball momentum without dampening, constant lr."""
  import optax
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  parts.append(optax.sgd(lr, momentum=momentum or None))
  return optax.chain(*parts)


def gsam_setting(e) -> tuple | None:
  """(rho, alpha, adaptive) of the expert block, or None with expert.gsam off."""
  return ((float(e.gsam_rho), float(e.gsam_alpha), bool(e.gsam_adaptive)) if e.gsam else None)


def make_expert_step(model, opt, strategy: str, gsam: tuple | None = None) -> Callable:
  """One expert's pure step(carry, x_all, y_all, idx, key) -> (carry, loss): the batch
  x_all[idx], y_all[idx], DSA (mode 'S') with `key` when `strategy`, cross-entropy, SGD or GSAM
  (gsam = (rho, alpha, adaptive))."""
  from ddjax.augment.dsa import dsa
  from ddjax.models.training import cross_entropy, make_train_step
  augment = (lambda k, x: dsa(k, x, strategy)) if strategy else None
  if gsam is None:
    one = make_train_step(model, opt, cross_entropy, augment)
  else:
    one = make_gsam_train_step(model, opt, cross_entropy, augment, *gsam)

  def step(carry, x_all, y_all, idx, key):
    return one(carry, x_all[idx], y_all[idx], key)

  return step


def default_mode(backend: str | None = None) -> str:
  """How a chunk of experts steps together: 'vmap' (one vmapped step) on accelerators, 'loop'
  on CPU (each expert's own step, unrolled in one jitted call; chunks of one expert unless
  expert.parallel says otherwise). XLA:CPU lowers the vmapped convolutions of E experts to a
  grouped convolution that runs 2-2.6x slower per expert than E separate ones (2-core machine,
  ConvNet-3-IN, batch 256 with DSA, 4 experts, s per expert step vmapped / one at a time: 0.85 /
  0.32 at width 32, 2.95 / 1.37 at width 128; benchmarks/results/expert_buffer.md)."""
  backend = backend or jax.default_backend()
  return 'loop' if backend == 'cpu' else 'vmap'


@functools.lru_cache(maxsize=16)
def chunk_step(model, opt_setting: tuple, strategy: str, gsam: tuple | None,
                  mode: str = 'vmap'):
  """The jitted step of a chunk of m experts: (stacked carry, x_all, y_all, idx (m, B), keys
  (m, 2)) -> (stacked carry, loss (m,)), as one vmapped step or an unrolled loop over m."""
  step = make_expert_step(model, make_optimizer(*opt_setting), strategy, gsam)
  if mode == 'vmap':
    return jax.jit(jax.vmap(step, in_axes=(0, None, None, 0, 0)), donate_argnums=(0,))

  def loop(carry, x_all, y_all, idx, keys):
    outs = [step(jax.tree_util.tree_map(lambda a, i=i: a[i], carry), x_all, y_all, idx[i],
                 keys[i]) for i in range(idx.shape[0])]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

  return jax.jit(loop, donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def init_fn(model, opt_setting: tuple, image_shape: tuple):
  """key -> one expert's fresh training state (`ddjax.models.training.fresh_carry`)."""
  from ddjax.models.training import fresh_carry
  opt = make_optimizer(*opt_setting)
  return lambda key: fresh_carry(model, key, image_shape, opt)


@functools.partial(jax.jit, static_argnums=(2, 3))
def epoch_plan(k_data: Array, epoch, n: int, batch_size: int):
  """For experts' data keys (m, 2): batch positions (m, nb, size) and DSA keys (m, nb, 2)."""
  from ddjax.models.training import epoch_batches
  k_ep = jax.vmap(jax.random.fold_in, in_axes=(0, None))(k_data, epoch)
  pos = jax.vmap(lambda k: epoch_batches(k, n, batch_size))(k_ep)
  nb = pos.shape[1]
  keys = jax.vmap(lambda k: jax.vmap(lambda b: jax.random.fold_in(k, b))(
      jnp.arange(1, nb + 1, dtype=jnp.uint32)))(k_ep)
  return pos, keys


def expert_keys(seed: int, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
  """(k_init (E, 2), k_data (E, 2)) raw uint32 keys of experts 0..E-1 (module docstring)."""
  root = jax.random.fold_in(jax.random.PRNGKey(int(seed)), 0)
  ks = [jax.random.split(jax.random.fold_in(root, i)) for i in range(int(num_experts))]
  return (np.stack([np.asarray(k[0]) for k in ks]) if ks else np.zeros((0, 2), np.uint32),
          np.stack([np.asarray(k[1]) for k in ks]) if ks else np.zeros((0, 2), np.uint32))


def fiex_key(seed: int) -> Array:
  """The key of FIEX's scoring networks: fold_in(PRNGKey(seed), 1)."""
  return jax.random.fold_in(jax.random.PRNGKey(int(seed)), 1)


def shardings(m: int):
  """(experts' axis split, replicated) over the local devices, or (None, None) on one device or
  when m is not a multiple of their number."""
  devices = jax.local_devices()
  if len(devices) < 2 or m % len(devices):
    return None, None
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.asarray(devices), ('expert',))
  return NamedSharding(mesh, PartitionSpec('expert')), NamedSharding(mesh, PartitionSpec())
