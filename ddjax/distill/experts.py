"""Expert trajectories for trajectory matching (MTT, DATM, PAD): training and the buffer on disk.

An expert is the run's network (`cfg.model`) trained from scratch on the real training set with
cross-entropy: SGD at a constant `expert.lr` (momentum, coupled L2 weight decay as PyTorch's
SGD), batches of `expert.batch_size` reshuffled every epoch (`ddjax.models.training`), DSA on
every batch (`ddjax.augment.dsa`, mode 'S', per-sample parameters; strategy
`dsa_strategy_for(dataset)`), as MTT's `buffer.py` (references section 1.1). Its parameters are
snapshotted at initialisation and after every epoch: `expert.epochs + 1` snapshots per expert.
Options: FTD's GSAM experts (DATM / PAD; `gsam_gradient`) and PAD's FIEX data schedule
(`ddjax.scoring.fiex`; every expert of a buffer trains on the same subset each epoch).

Many experts train at once: one jitted, `jax.vmap`-ed step over the experts (each its own
initialisation, batch order and DSA draws), `expert.parallel` at a time (0 = all), the experts'
axis split over the local devices when there are several. On CPU the default is mode 'loop'
(`default_mode`): XLA:CPU runs E vmapped convolutions as one grouped convolution about 2x slower
per expert than E separate ones, so experts there step one at a time (or `expert.parallel` of
them unrolled in one jitted call). Steps are driven from Python, one jitted call per mini-batch
(XLA:CPU runs convolutions inside a loop body far slower; see
`ddjax.evaluate.train.default_loop`).

Randomness (documented because tests rebuild it): root = PRNGKey(expert.seed); expert i has
k_i = fold_in(fold_in(root, 0), i) and (k_init, k_data) = split(k_i); its network is
`fresh_carry(model, k_init, ...)`; training epoch e (0-based, the epoch that ends in snapshot
e + 1) has k_ep = fold_in(k_data, e), batch positions `epoch_batches(k_ep, n_e, batch_size)` into
that epoch's data (all of it, or FIEX's subset of n_e indices) and DSA key fold_in(k_ep, b + 1)
for batch b. FIEX's scoring networks use fold_in(root, 1). So expert i's trajectory depends
only on (record, i): experts trained together, apart or resumed are the same to float
tolerance.

The buffer directory:

  record.json         what determines the trajectories (data, model, expert keys that matter;
                      see `wanted_record`), written first
  epoch_<e:04d>.npy   float32 (E, P): every expert's flat parameters after e epochs (snapshot 0 =
                      initialisation); flat order = `jax.flatten_util.ravel_pytree(params)`
  index.json          finished epochs, per-epoch mean train loss and seconds, and once the
                      record's epochs are done every expert's final test accuracy
  carry.npz           the training state after the last finished epoch (parameters, batch
                      statistics, optimizer state, history), so a killed job resumes there
  scores_*.npz        FIEX's EL2N scores (with expert.fiex), computed once

Each file is written atomically, in the order epoch file, carry, index: a killed job loses at
most the epoch in progress and ends equal to an uninterrupted one. A run reads only the rows it
samples (`ExpertBuffer.snapshot`: a memory-mapped read of one row).

Reuse rule: a buffer whose record differs from the run's in any key is refused, naming the keys
(`ExpertMismatch`), except that a buffer with MORE experts than asked is used (the first
`num_experts` are read) and one with fewer finished epochs than asked is trained on (resumed) up
to the asked number; one with more epochs is used as it is. A buffer with fewer experts is
refused. The default directory runs/buffers/<dataset>_<hash> hashes the record without
`expert.epochs`, so runs asking for more epochs extend the same buffer and runs asking for
another number of experts get their own.

This module registers no method (the registry imports it at start; heavy imports are local).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.data.prepared import cache_identity

PyTree = Any
Array = jax.Array

RECORD = 'record.json'
INDEX = 'index.json'
CARRY = 'carry.npz'
FORMAT = 1
# expert keys that always shape the trajectories; the gsam_* and fiex_* keys join when switched on
EXPERT_KEYS = ('num_experts', 'epochs', 'lr', 'momentum', 'weight_decay', 'batch_size', 'dsa',
               'seed', 'gsam', 'fiex')
GSAM_KEYS = ('gsam_rho', 'gsam_alpha', 'gsam_adaptive')
FIEX_KEYS = ('fiex_init_ratio', 'fiex_add_end_epoch', 'fiex_remove_epochs', 'fiex_remove_ratios',
             'fiex_score_models', 'fiex_score_epochs')


class ExpertMismatch(ValueError):
  """An expert buffer was made for other data, another model or other expert settings."""


def _log(line: str) -> None:
  print('[experts] ' + line, flush=True)


# -- GSAM (Zhuang et al. 2022, as FTD's experts use it) -------------------------------------------
def _tree_dot(a: PyTree, b: PyTree) -> Array:
  return sum(jnp.sum(x * y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                             jax.tree_util.tree_leaves(b)))


def _tree_norm(a: PyTree) -> Array:
  return jnp.sqrt(_tree_dot(a, a))


def gsam_perturbation(params: PyTree, grads: PyTree, rho: float, adaptive: bool = False,
                      eps: float = 1e-12) -> PyTree:
  """GSAM's weight perturbation e_w (gsam `perturb_weights`): rho g / (||g|| + eps), or with
  `adaptive` (ASAM) rho w^2 g / (|| |w| g || + eps)."""
  if adaptive:
    norm = _tree_norm(jax.tree_util.tree_map(lambda w, g: jnp.abs(w) * g, params, grads))
    scale = rho / (norm + eps)
    return jax.tree_util.tree_map(lambda w, g: g * scale * jnp.square(w), params, grads)
  scale = rho / (_tree_norm(grads) + eps)
  return jax.tree_util.tree_map(lambda g: g * scale, grads)


def gsam_direction(grads: PyTree, perturbed_grads: PyTree, alpha: float,
                   eps: float = 1e-12) -> PyTree:
  """GSAM's update direction (gsam `gradient_decompose`): g_p - alpha g_perp, where g is the
  gradient at w, g_p at the perturbed weights, and g_perp = g - (<g, g_p> / ||g_p||^2) g_p is the
  part of g orthogonal to g_p (with eps as in the official code)."""
  inner = _tree_dot(grads, perturbed_grads)
  n_p, n_g = _tree_norm(perturbed_grads), _tree_norm(grads)
  cosine = inner / (n_p * n_g + eps)
  return jax.tree_util.tree_map(
      lambda g, gp: gp - alpha * (g - cosine * n_g * gp / (n_p + eps)), grads, perturbed_grads)


def gsam_gradient(loss_fn: Callable, params: PyTree, rho: float, alpha: float,
                  adaptive: bool = False, eps: float = 1e-12):
  """One GSAM gradient: ((value, aux), direction) for loss_fn(params) -> (value, aux).

  g = grad at params; g_p = grad at params + gsam_perturbation(g); direction =
  gsam_direction(g, g_p). value and aux are those at the unperturbed params (FTD's GSAM keeps
  the first pass's batch-norm statistics: its second pass runs with momentum 0). Feed the
  direction to the base optimizer with the unperturbed params (weight decay acts on those)."""
  (value, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
  e_w = gsam_perturbation(params, g, rho, adaptive, eps)
  g_p = jax.grad(lambda p: loss_fn(p)[0])(jax.tree_util.tree_map(jnp.add, params, e_w))
  return (value, aux), gsam_direction(g, g_p, alpha, eps)


def make_gsam_train_step(model, opt, loss, augment=None, rho: float = 0.01,
                         alpha: float = 0.3, adaptive: bool = False) -> Callable:
  """`ddjax.models.training.make_train_step` with GSAM's direction in place of the gradient."""
  from ddjax.models.training import make_train_step
  gradient = lambda objective, params: gsam_gradient(objective, params, rho, alpha, adaptive)
  return make_train_step(model, opt, loss, augment, gradient=gradient)


# -- the expert step -------------------------------------------------------------------------------
def make_optimizer(lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
  """PyTorch's SGD(lr, momentum, weight_decay): coupled L2 (wd * w added to the gradient), then
  heavy-ball momentum without dampening, constant lr."""
  import optax
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  parts.append(optax.sgd(lr, momentum=momentum or None))
  return optax.chain(*parts)


def _gsam_setting(e) -> tuple | None:
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


MODES = ('vmap', 'loop')


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
def _vmapped_step(model, opt_setting: tuple, strategy: str, gsam: tuple | None,
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
def _init_fn(model, opt_setting: tuple, image_shape: tuple):
  from ddjax.models.training import fresh_carry
  opt = make_optimizer(*opt_setting)
  return lambda key: fresh_carry(model, key, image_shape, opt)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _epoch_plan(k_data: Array, epoch, n: int, batch_size: int):
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
  return jax.random.fold_in(jax.random.PRNGKey(int(seed)), 1)


# -- records ---------------------------------------------------------------------------------------
def _plain(v):
  return json.loads(json.dumps(v))


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def dsa_strategy(cfg, dataset_name: str) -> str:
  """The experts' DSA strategy: MTT's color_crop_cutout_flip_scale_rotate without flip on digit
  datasets, '' with expert.dsa off."""
  from ddjax.augment.dsa import dsa_strategy_for
  return dsa_strategy_for(dataset_name) if cfg.expert.dsa else ''


def model_record(block) -> dict:
  """The model block as a buffer records it: its compute dtype only when not float32 (the
  buffers written before mixed precision existed record none, and stay usable)."""
  model = block.to_dict()
  if model.get('dtype') == 'float32':
    del model['dtype']
  return model


def wanted_record(cfg, data) -> dict:
  """The record a buffer of this run must have: data (name, train size, image shape,
  preprocessing, classes, a CRC of the labels), the model block, the DSA strategy and the expert
  keys that shape trajectories (the gsam_* and fiex_* keys only when switched on; never dir and
  parallel)."""
  e = cfg.expert
  keys = EXPERT_KEYS + (GSAM_KEYS if e.gsam else ()) + (FIEX_KEYS if e.fiex else ())
  labels = np.ascontiguousarray(np.asarray(data.y_train, np.int64))
  return _plain({
      'format': FORMAT, 'dataset': str(data.dataset.name), 'train_size': int(len(labels)),
      'image_shape': [int(d) for d in data.x_train.shape[1:]],
      'preprocessing': str(data.pre.kind), 'num_classes': int(data.num_classes),
      'labels_crc32': int(zlib.crc32(labels.tobytes())), 'model': model_record(cfg.model),
      'dsa_strategy': dsa_strategy(cfg, str(data.dataset.name)),
      'expert': {k: e[k] for k in keys}, **cache_identity(data)})


def record_differences(have: dict, want: dict) -> list[str]:
  """'key: have -> want' for every key of either record that differs, except a buffer's larger
  num_experts / epochs (usable); a smaller num_experts is a difference."""
  h, w = _flat(_plain(have)), _flat(_plain(want))
  out = []
  for k in sorted(set(h) | set(w)):
    a, b = h.get(k, '<absent>'), w.get(k, '<absent>')
    if a == b or (k == 'expert.epochs') or (k == 'expert.num_experts' and
                                               isinstance(a, int) and a >= b):
      continue
    out.append(f'{k}: {a!r} -> {b!r}')
  return out


def buffer_dir(cfg, data) -> str:
  """expert.dir, or runs/buffers/<dataset>_<10 hex digits of the record without expert.epochs>
  (shared by every run started from the same directory)."""
  if cfg.expert.dir:
    return cfg.expert.dir
  want = wanted_record(cfg, data)
  want['expert'].pop('epochs')
  digest = hashlib.sha1(json.dumps(want, sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join('runs', 'buffers', f'{want["dataset"]}_{digest}')


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def model_of(record: dict):
  """The flax module of a buffer's record."""
  import ml_collections

  from ddjax.models import from_config
  return from_config(ml_collections.ConfigDict(record['model']), int(record['num_classes']))


def epoch_path(path: str, epoch: int) -> str:
  return os.path.join(path, f'epoch_{int(epoch):04d}.npy')


# -- reading ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class ExpertBuffer:
  """A buffer of expert trajectories on disk (read one row at a time).

  num_experts: the experts a run uses (the first ones; `stored_experts` may be more);
  num_epochs: finished epochs (snapshots 0..num_epochs exist); dim: P, parameters per snapshot;
  template: the experts' params pytree (zeros), `unravel(flat (P,))` -> params (jittable)."""
  path: str
  record: dict
  index: dict
  model: Any
  template: PyTree
  num_experts: int
  trained_now: bool = False
  _unravel: Callable | None = None
  _maps: dict = dataclasses.field(default_factory=dict)

  @property
  def num_epochs(self) -> int:
    return int(self.index['finished_epochs'])

  @property
  def stored_experts(self) -> int:
    return int(self.record['expert']['num_experts'])

  @property
  def dim(self) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(self.template)))

  def unravel(self, flat) -> PyTree:
    return self._unravel(flat)

  def _rows(self, epoch: int) -> np.ndarray:
    if epoch not in self._maps:
      self._maps[epoch] = np.load(epoch_path(self.path, epoch), mmap_mode='r')
    return self._maps[epoch]

  def snapshot(self, expert: int, epoch: int) -> np.ndarray:
    """Expert `expert`'s flat parameters after `epoch` epochs, float32 (P,) (one row read)."""
    expert, epoch = int(expert), int(epoch)
    if not 0 <= expert < self.num_experts:
      raise IndexError(f'expert {expert} outside 0..{self.num_experts - 1} of {self.path}.')
    if not 0 <= epoch <= self.num_epochs:
      raise IndexError(f'epoch {epoch} outside 0..{self.num_epochs} of {self.path}.')
    return np.array(self._rows(epoch)[expert], dtype=np.float32)

  def snapshots(self, expert: int, epochs) -> np.ndarray:
    """(len(epochs), P) float32: expert's snapshots at `epochs`."""
    return np.stack([self.snapshot(expert, e) for e in epochs])

  def trajectory(self, expert: int) -> np.ndarray:
    """(num_epochs + 1, P): every snapshot of one expert (reads num_epochs + 1 rows)."""
    return self.snapshots(expert, range(self.num_epochs + 1))

  def reference(self) -> dict:
    """What results.json keeps about the buffer."""
    acc = self.index.get('final_test_acc')
    return {'path': self.path, 'record': self.record, 'num_experts': self.num_experts,
            'num_epochs': self.num_epochs, 'trained_now': self.trained_now,
            'final_test_acc_mean': float(np.mean(acc[:self.num_experts])) if acc else None}


def open_buffer(path: str, num_experts: int | None = None,
                trained_now: bool = False) -> ExpertBuffer:
  """The buffer in `path` (record.json and index.json must exist), using its first
  `num_experts` experts (default all)."""
  from jax.flatten_util import ravel_pytree

  from ddjax.models import init_model
  record, index = _read_json(os.path.join(path, RECORD)), _read_json(os.path.join(path, INDEX))
  if record is None or index is None:
    raise ExpertMismatch(f'{path} holds no expert buffer ({RECORD} and {INDEX} are needed).')
  model = model_of(record)
  shapes = jax.eval_shape(lambda k: init_model(model, k, [1] + list(record['image_shape'])),
                          jax.random.PRNGKey(0))['params']
  template = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  stored = int(record['expert']['num_experts'])
  e = stored if num_experts is None else int(num_experts)
  if e > stored:
    raise ExpertMismatch(f'{path} holds {stored} experts, {e} asked.')
  return ExpertBuffer(path, record, index, model, template, e, trained_now,
                      ravel_pytree(template)[1])


# -- training --------------------------------------------------------------------------------------
def _save_carry(path: str, carry: PyTree, epoch: int, history: dict) -> None:
  from ddjax.infra import files
  leaves = jax.tree_util.tree_leaves(carry)
  arrays = {f'leaf_{i:04d}': np.asarray(a) for i, a in enumerate(leaves)}
  arrays.update({f'history_{k}': np.asarray(v, np.float64) for k, v in history.items()})
  files.write_atomic(os.path.join(path, CARRY),
                     lambda f: np.savez(f, epoch=np.int64(epoch), **arrays))


def _load_carry(path: str, treedef) -> tuple[PyTree, int, dict] | None:
  p = os.path.join(path, CARRY)
  if not os.path.exists(p):
    return None
  with np.load(p) as f:
    leaves = [f[k] for k in sorted(k for k in f.files if k.startswith('leaf_'))]
    history = {k[len('history_'):]: f[k].tolist() for k in f.files if k.startswith('history_')}
    epoch = int(f['epoch'])
  if len(leaves) != treedef.num_leaves:
    raise ExpertMismatch(f'{p} does not hold this buffer\'s training state; delete the '
                         'directory to train again.')
  return jax.tree_util.tree_unflatten(treedef, leaves), epoch, history


def _write_index(path: str, epoch: int, num_experts: int, history: dict,
                 final_test_acc=None) -> dict:
  from ddjax.infra import files
  index = {'finished_epochs': int(epoch), 'num_experts': int(num_experts),
           'train_loss': [float(v) for v in history.get('train_loss', [])],
           'seconds': [float(v) for v in history.get('seconds', [])]}
  if 'fiex_size' in history:
    index['fiex_size'] = [int(v) for v in history['fiex_size']]
  if final_test_acc is not None:
    index['final_test_acc'] = [float(a) for a in final_test_acc]
  files.write_json(os.path.join(path, INDEX), index)
  return index


def _write_snapshot(path: str, epoch: int, flat: np.ndarray) -> None:
  from ddjax.infra import files
  files.write_atomic(epoch_path(path, epoch),
                     lambda f: np.save(f, np.ascontiguousarray(flat, np.float32)))


def _flat_params(carry: PyTree) -> np.ndarray:
  from jax.flatten_util import ravel_pytree
  params = carry[0]
  return np.stack([np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda a: a[i], params))[0])
                   for i in range(jax.tree_util.tree_leaves(params)[0].shape[0])])


def _test_accuracies(model, carry: PyTree, data) -> list[float]:
  from ddjax.evaluate.train import accuracy
  from ddjax.models.training import carry_variables
  e = jax.tree_util.tree_leaves(carry[0])[0].shape[0]
  return [accuracy(model, carry_variables(jax.tree_util.tree_map(lambda a: a[i], carry)),
                   data.x_test, data.y_test) for i in range(e)]


def _all_test_accuracies(model, carry: PyTree, data, own: np.ndarray, num: int) -> list[float]:
  """Every expert's test accuracy (num,): this process tests its experts `own` (rows of the full
  `carry`), the others theirs (`ddjax.infra.distributed.gather_members`)."""
  from ddjax.infra import distributed
  local = _test_accuracies(model, jax.tree_util.tree_map(lambda a: a[own], carry), data)
  return [float(a) for a in distributed.gather_members(np.asarray(local, np.float64), num)]


def _shardings(m: int):
  """(experts' axis split, replicated) over the local devices, or (None, None) on one device or
  when m is not a multiple of their number."""
  devices = jax.local_devices()
  if len(devices) < 2 or m % len(devices):
    return None, None
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  mesh = Mesh(np.asarray(devices), ('expert',))
  return NamedSharding(mesh, PartitionSpec('expert')), NamedSharding(mesh, PartitionSpec())


def _fiex_order(cfg, data, path: str, model, progress) -> list[np.ndarray]:
  from ddjax import scoring
  from ddjax.scoring import fiex
  e = cfg.expert
  name = scoring.cache_name(kind='fiex_el2n', models=e.fiex_score_models,
                            epochs=e.fiex_score_epochs, **cache_identity(data))

  def compute():
    progress(f'FIEX: EL2N of {len(data.y_train)} examples from {e.fiex_score_models} networks '
             f'x {e.fiex_score_epochs} epochs')
    return {'el2n': fiex.el2n_difficulty(fiex_key(e.seed), model, data.x_train, data.y_train,
                                         e.fiex_score_models, e.fiex_score_epochs,
                                         int(e.batch_size), float(e.lr), float(e.momentum))}

  scores = scoring.cached_scores(path, name, compute)['el2n']
  return fiex.difficulty_order(scores, data.y_train, data.num_classes)


def _duration(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def train_buffer(cfg, data, directory: str, progress: Callable[[str], Any] | None = None,
                 mode: str | None = None) -> ExpertBuffer:
  """Train (or resume, or just open) the buffer of `cfg.expert` on `data` in `directory`.

  Refuses (ExpertMismatch) a directory whose record differs from the run's (module docstring's
  reuse rule); trains every expert the buffer holds (at least expert.num_experts) until
  expert.epochs epochs are finished, writing one snapshot file per epoch; a buffer with that
  many finished epochs is only opened.
  progress: receives one line per epoch (default: printed with an '[experts] ' prefix).
  mode: 'vmap' or 'loop' (default: `default_mode()` for the backend); the trajectories do not
  depend on it beyond float reassociation.

  Several processes (`ddjax.infra.distributed`; every process calls this with the same
  arguments): process p trains experts p, p + P, ... (`own_members`); after each epoch every
  expert's state is gathered to every process (`gather_members`) and process 0 alone writes the
  files, which equal the one-process run's (each expert's trajectory depends only on its keys).
  Every process reads the directory before process 0 first writes to it, and waits for its last
  write before opening the buffer."""
  from ddjax.infra import distributed, files
  progress = progress or _log
  main = distributed.is_main()
  want = wanted_record(cfg, data)
  have = _read_json(os.path.join(directory, RECORD))
  if have is not None:
    diff = record_differences(have, want)
    if diff:
      raise ExpertMismatch(
          f'the expert buffer in {directory} was made for another run ({"; ".join(diff)}); set '
          'expert.dir to another directory, or delete this one to train again.')
    record = dict(have, expert=dict(have['expert']))
  else:
    record = want
  asked = int(want['expert']['num_experts'])
  target = int(want['expert']['epochs'])
  index = _read_json(os.path.join(directory, INDEX))
  if index is not None and index['finished_epochs'] >= target:
    return open_buffer(directory, asked)
  grown = target > record['expert']['epochs']   # the record keeps the most epochs asked so far
  record['expert']['epochs'] = max(target, record['expert']['epochs'])

  e = cfg.expert
  num = int(record['expert']['num_experts'])
  model = model_of(record)
  image_shape = tuple(record['image_shape'])
  opt_setting = (float(e.lr), float(e.momentum), float(e.weight_decay))
  init = _init_fn(model, opt_setting, image_shape)
  k_init, k_data = expert_keys(e.seed, num)
  treedef = jax.tree_util.tree_structure(jax.eval_shape(init, jax.random.PRNGKey(0)))
  state = _load_carry(directory, treedef)
  distributed.barrier('ddjax experts: buffer read')     # before process 0 writes into it
  if main and (have is None or grown):
    os.makedirs(directory, exist_ok=True)
    files.write_json(os.path.join(directory, RECORD), record)
  if state is None:
    carries = [init(jnp.asarray(k)) for k in k_init]
    carry = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(x) for x in a]), *carries)
    start, history = 0, {'train_loss': [], 'seconds': []}
    if e.fiex:
      history['fiex_size'] = []
    if main:
      _write_snapshot(directory, 0, _flat_params(carry))
      _save_carry(directory, carry, 0, history)
      _write_index(directory, 0, num, history)
  else:
    carry, start, history = state
  trained = start < target
  mode = mode or default_mode()
  if mode not in MODES:
    raise ValueError(f'unknown expert step mode {mode!r}; allowed: {MODES}')
  vstep = _vmapped_step(model, opt_setting, record['dsa_strategy'], _gsam_setting(e), mode)
  order = _fiex_order(cfg, data, directory, model, progress) if e.fiex and trained else None
  n_all = len(data.y_train)
  x_dev = jnp.asarray(data.x_train, jnp.float32)
  y_dev = jnp.asarray(np.asarray(data.y_train), jnp.int32)
  own = np.asarray(distributed.own_members(num), np.int64)     # this process's experts
  processes = jax.process_count()
  parallel = max(1, int(e.parallel) or (len(own) if mode == 'vmap' else 1))
  chunks = [own[s:s + parallel] for s in range(0, len(own), parallel)]
  shared = f', shared by {processes} processes' if processes > 1 else ''
  stride = f' (one in {processes})' if processes > 1 else ''
  if trained:
    progress(f'{num} experts x {target} epochs into {directory} (from epoch {start}; '
             f'{parallel} at once ({mode}), {jax.local_device_count()} device(s){shared})')
  t_run = last = time.perf_counter()
  for epoch in range(start, target):
    t0 = time.perf_counter()
    subset = None
    if order is not None:
      from ddjax.scoring.fiex import fiex_indices, schedule_of
      subset = fiex_indices(order, epoch, **schedule_of(e))
      history['fiex_size'].append(len(subset))
    n = n_all if subset is None else len(subset)
    expert_loss, parts = [], []     # per own expert: mean loss of the epoch (float64), state
    for chunk in chunks:
      losses = []
      split, repl = _shardings(len(chunk)) if mode == 'vmap' else (None, None)
      c = jax.tree_util.tree_map(lambda a: jnp.asarray(a[chunk]), carry)
      pos, keys = _epoch_plan(jnp.asarray(k_data[chunk]), epoch, n, int(e.batch_size))
      idx = np.asarray(pos) if subset is None else subset[np.asarray(pos)].astype(np.int32)
      xs, ys = x_dev, y_dev
      if split is not None:
        c, keys = jax.device_put(c, split), jax.device_put(keys, split)
        xs, ys = jax.device_put(x_dev, repl), jax.device_put(y_dev, repl)
      for b in range(idx.shape[1]):
        ib = idx[:, b] if split is None else jax.device_put(idx[:, b], split)
        c, loss = vstep(c, xs, ys, ib, keys[:, b])
        losses.append(loss)
        if time.perf_counter() - last > 60:      # long epochs: a line a minute
          last = time.perf_counter()
          progress(f'experts {chunk[0] + 1}-{chunk[-1] + 1}{stride} of {num}, '
                   f'epoch {epoch + 1}/{target}: '
                   f'batch {b + 1}/{idx.shape[1]}, loss {float(jnp.mean(loss)):.4f} '
                   f'({last - t0:.0f} s into the epoch)')
      parts.append(jax.tree_util.tree_map(np.asarray, c))
      expert_loss.append(np.mean(np.stack([np.asarray(v) for v in losses]), 0, np.float64))
    local = (jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts) if parts else
             jax.tree_util.tree_map(lambda a: a[own], carry))   # (len(own), ...) leaves
    carry = jax.tree_util.tree_map(lambda a: distributed.gather_members(a, num), local)
    expert_loss = np.concatenate(expert_loss) if expert_loss else np.zeros(0, np.float64)
    mean_loss = float(np.mean(distributed.gather_members(expert_loss, num)))
    seconds = time.perf_counter() - t0
    history['train_loss'].append(mean_loss)
    history['seconds'].append(seconds)
    done = epoch + 1
    acc = _all_test_accuracies(model, carry, data, own, num) if done == target else None
    if main:
      _write_snapshot(directory, epoch + 1, _flat_params(carry))
      _save_carry(directory, carry, epoch + 1, history)
      _write_index(directory, done, num, history, acc)
    rate = (time.perf_counter() - t_run) / (done - start)
    line = (f'epoch {done}/{target}: {num} experts | train loss {mean_loss:.4f} | '
            f'{seconds:.1f} s/epoch | ETA {_duration(rate * (target - done))}')
    if subset is not None:
      line += f' | FIEX {n}/{n_all} examples'
    if acc is not None:
      line += f' | test acc {100 * np.mean(acc):.2f} % (mean of {num})'
    progress(line)
    last = time.perf_counter()
  if not trained:   # killed between the last epoch's carry and its index: finish the index
    acc = _all_test_accuracies(model, carry, data, own, num)
    if main:
      _write_index(directory, start, num, history, acc)
  distributed.barrier('ddjax experts: buffer written')  # process 0's files, before reading them
  return open_buffer(directory, asked, trained_now=trained)


def get_buffer(cfg, data, progress: Callable[[str], Any] | None = None,
               mode: str | None = None) -> ExpertBuffer:
  """The run's expert buffer: reused from `buffer_dir(cfg, data)` when it holds at least
  expert.num_experts experts and expert.epochs finished epochs, resumed or trained otherwise;
  a buffer made for other settings is refused (ExpertMismatch naming the keys)."""
  return train_buffer(cfg, data, buffer_dir(cfg, data), progress, mode)
