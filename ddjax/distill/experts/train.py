"""Training an expert buffer: every expert from its initialisation to expert.epochs epochs, one
snapshot file per epoch, resumable after a kill, shared out over processes and devices."""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.distill.experts import buffer as buffer_lib
from ddjax.distill.experts import record as record_lib
from ddjax.distill.experts import schedule
from ddjax.distill.experts import step as step_lib

PyTree = Any


def _log(line: str) -> None:
  print('[experts] ' + line, flush=True)


def _flat_params(carry: PyTree) -> np.ndarray:
  """(E, P): every expert's flat parameters of a stacked carry."""
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


def _duration(s: float) -> str:
  s = int(round(s))
  return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


def _initial_state(init: Callable, k_init: np.ndarray, fiex: bool) -> tuple[PyTree, int, dict]:
  """(stacked carry of every expert at initialisation, epoch 0, empty history)."""
  carries = [init(jnp.asarray(k)) for k in k_init]
  carry = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(x) for x in a]), *carries)
  history = {'train_loss': [], 'seconds': []}
  if fiex:
    history['fiex_size'] = []
  return carry, 0, history


def _write_epoch(directory: str, carry: PyTree, epoch: int, history: dict, acc=None) -> None:
  """The files of a finished epoch, in the order that makes a kill safe: snapshot, training
  state, then the index (the progress marker)."""
  buffer_lib.write_snapshot(directory, epoch, _flat_params(carry))
  buffer_lib.save_carry(directory, carry, epoch, history)
  num = int(jax.tree_util.tree_leaves(carry[0])[0].shape[0])
  buffer_lib.write_index(directory, epoch, num, history, acc)


def _train_chunk(vstep, carry: PyTree, x_dev, y_dev, idx: np.ndarray, keys, sharded: bool,
                 tell: Callable) -> tuple[PyTree, np.ndarray]:
  """One epoch of a chunk of m experts: `carry` their stacked states (leaves (m, ...)), idx
  (m, nb, B) their batches' example indices, keys (m, nb, 2) their DSA keys; the experts' axis
  split over the local devices when `sharded` allows (`step.shardings`). Returns (their states
  as numpy, their mean loss of the epoch (m,) float64); tell(b, loss) after every batch b."""
  split, repl = step_lib.shardings(idx.shape[0]) if sharded else (None, None)
  c = jax.tree_util.tree_map(jnp.asarray, carry)
  xs, ys = x_dev, y_dev
  if split is not None:
    c, keys = jax.device_put(c, split), jax.device_put(keys, split)
    xs, ys = jax.device_put(x_dev, repl), jax.device_put(y_dev, repl)
  losses = []
  for b in range(idx.shape[1]):
    ib = idx[:, b] if split is None else jax.device_put(idx[:, b], split)
    c, loss = vstep(c, xs, ys, ib, keys[:, b])
    losses.append(loss)
    tell(b, loss)
  return (jax.tree_util.tree_map(np.asarray, c),
          np.mean(np.stack([np.asarray(v) for v in losses]), 0, np.float64))


def train_buffer(cfg, data, directory: str, progress: Callable[[str], Any] | None = None,
                 mode: str | None = None) -> buffer_lib.ExpertBuffer:
  """Train (or resume, or just open) the buffer of `cfg.expert` on `data` in `directory`.

  Refuses (ExpertMismatch) a directory whose record differs from the run's (the reuse rule of
  `ddjax.distill.experts.record`); trains every expert the buffer holds (at least
  expert.num_experts) until expert.epochs epochs are finished, writing one snapshot file per
  epoch; a buffer with that many finished epochs is only opened.
  progress: receives one line per epoch (default: printed with an '[experts] ' prefix).
  mode: 'vmap' or 'loop' (default: `default_mode()` for the backend); the trajectories do not
  depend on it beyond float reassociation.

  Several processes (`ddjax.infra.distributed`; every process calls this with the same
  arguments): process p trains experts p, p + P, ... (`own_members`); after each epoch every
  expert's state is gathered to every process (`gather_members`) and process 0 alone writes the
  files, which equal the one-process run's (each expert's trajectory depends only on its keys).
  Every process reads the directory before process 0 first writes to it, and waits for its last
  write before opening the buffer."""
  from ddjax.infra import artifacts, distributed
  progress = progress or _log
  main = distributed.is_main()
  want = record_lib.wanted_record(cfg, data)
  have = record_lib.read_record(directory)
  record_lib.check_record(have, want, directory)
  record = want if have is None else dict(have, expert=dict(have['expert']))
  asked = int(want['expert']['num_experts'])
  target = int(want['expert']['epochs'])
  index = buffer_lib.read_index(directory)
  if index is not None and index['finished_epochs'] >= target:
    return buffer_lib.open_buffer(directory, asked)
  grown = target > record['expert']['epochs']   # the record keeps the most epochs asked so far
  record['expert']['epochs'] = max(target, record['expert']['epochs'])

  e = cfg.expert
  num = int(record['expert']['num_experts'])
  model = record_lib.model_of(record)
  image_shape = tuple(record['image_shape'])
  opt_setting = (float(e.lr), float(e.momentum), float(e.weight_decay))
  init = step_lib.init_fn(model, opt_setting, image_shape)
  k_init, k_data = step_lib.expert_keys(e.seed, num)
  treedef = jax.tree_util.tree_structure(jax.eval_shape(init, jax.random.PRNGKey(0)))
  state = buffer_lib.load_carry(directory, treedef)
  distributed.barrier('ddjax experts: buffer read')     # before process 0 writes into it
  if main and (have is None or grown):
    artifacts.write_record(directory, record)    # first: a resumed build checks against it
  if state is None:
    carry, start, history = _initial_state(init, k_init, bool(e.fiex))
    if main:
      _write_epoch(directory, carry, 0, history)
  else:
    carry, start, history = state
  trained = start < target
  mode = mode or step_lib.default_mode()
  if mode not in step_lib.MODES:
    raise ValueError(f'unknown expert step mode {mode!r}; allowed: {step_lib.MODES}')
  vstep = step_lib.chunk_step(model, opt_setting, record['dsa_strategy'],
                              step_lib.gsam_setting(e), mode)
  order = (schedule.fiex_order(cfg, data, directory, model, progress) if e.fiex and trained
           else None)
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
    subset = schedule.epoch_subset(order, epoch, e)
    if subset is not None:
      history['fiex_size'].append(len(subset))
    n = n_all if subset is None else len(subset)
    expert_loss, parts = [], []     # per own expert: mean loss of the epoch (float64), state
    for chunk in chunks:
      pos, keys = step_lib.epoch_plan(jnp.asarray(k_data[chunk]), epoch, n, int(e.batch_size))
      idx = np.asarray(pos) if subset is None else subset[np.asarray(pos)].astype(np.int32)

      def tell(b, loss, chunk=chunk):     # long epochs: a line a minute
        nonlocal last
        if time.perf_counter() - last > 60:
          last = time.perf_counter()
          progress(f'experts {chunk[0] + 1}-{chunk[-1] + 1}{stride} of {num}, '
                   f'epoch {epoch + 1}/{target}: '
                   f'batch {b + 1}/{idx.shape[1]}, loss {float(jnp.mean(loss)):.4f} '
                   f'({last - t0:.0f} s into the epoch)')

      c = jax.tree_util.tree_map(lambda a: a[chunk], carry)
      c, loss = _train_chunk(vstep, c, x_dev, y_dev, idx, keys, mode == 'vmap', tell)
      parts.append(c)
      expert_loss.append(loss)
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
      _write_epoch(directory, carry, done, history, acc)
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
      buffer_lib.write_index(directory, start, num, history, acc)
  distributed.barrier('ddjax experts: buffer written')  # process 0's files, before reading them
  return buffer_lib.open_buffer(directory, asked, trained_now=trained)


def get_buffer(cfg, data, progress: Callable[[str], Any] | None = None,
               mode: str | None = None) -> buffer_lib.ExpertBuffer:
  """The run's expert buffer: reused from `buffer_dir(cfg, data)` when it holds at least
  expert.num_experts experts and expert.epochs finished epochs, resumed or trained otherwise;
  a buffer made for other settings is refused (ExpertMismatch naming the keys)."""
  return train_buffer(cfg, data, record_lib.buffer_dir(cfg, data), progress, mode)
