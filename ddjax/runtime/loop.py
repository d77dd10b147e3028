"""The run loop: jit the pure step once, feed it sharded real batches, log, checkpoint, resume.

The loop does no math; the step does no I/O. Randomness is derived from the config seed only:
the key of step s is fold_in(key, s) and its real batch is drawn by a numpy generator seeded with
(seed, s), so a run resumed from a checkpoint at step k replays exactly the steps an uninterrupted
run takes after k.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.distill import step as step_lib
from ddjax.infra import files, sharding
from ddjax.infra.checkpoint import Checkpointer
from ddjax.runtime.progress import Progress


class DivergedError(FloatingPointError):
  """The loss became NaN/inf; the last checkpoint holds the last finite state."""


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The real examples of step `step`: batch_size distinct indices, a pure function of (seed, step)."""
  rng = np.random.default_rng([seed, 0x5eed, step])
  return np.sort(rng.choice(num_examples, size=batch_size, replace=False))


def balanced_batch_indices(seed: int, step: int, labels: np.ndarray, batch_size: int,
                           num_classes: int) -> np.ndarray:
  """A class-balanced batch (KIP's target batches): batch_size // K distinct examples per class,
  the remainder spread over classes that rotate with the step; a pure function of (seed, step)."""
  rng = np.random.default_rng([seed, 0xba1, step])
  base, extra = divmod(batch_size, num_classes)
  bonus = set(((np.arange(extra) + step * extra) % num_classes).tolist())
  picks = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    count = base + (c in bonus)
    if count > len(members):
      raise ValueError(f'a class-balanced batch of {batch_size} needs {count} examples of class '
                       f'{c}, which has {len(members)}; lower distill.batch_size.')
    picks.append(rng.choice(members, size=count, replace=False))
  return np.sort(np.concatenate(picks))


def make_sampler(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                 balanced: bool = False, hold: int = 1, rows: np.ndarray | None = None,
                 labels: np.ndarray | None = None) -> Callable[[int], dict]:
  """sampler(step) -> {'x': (B, H, W, C), 'y': (B, K)} host arrays for that step.

  balanced: draw B // K examples of every class (classes = argmax of y) instead of B uniformly.
  hold: each batch serves `hold` consecutive steps (steps k * hold ... (k + 1) * hold - 1 get batch
  k; BiLP's lazy selection keeps a selected batch for its reselection period).
  rows: the positions of the batch this process loads (`sharding.process_rows`; None = all):
  the sampler returns only those (len(rows) instead of B) of the same global batch.
  labels: (N,) integer classes for `balanced` (default: argmax of y). x and y may be streamed
  `ddjax.data.Rows` views: a batch reads only its own rows (pass labels then).
  """
  if hold < 1:
    raise ValueError(f'hold must be >= 1, got {hold}.')
  if batch_size > len(x):
    raise ValueError(f'distill.batch_size={batch_size} exceeds the {len(x)} training examples.')
  if balanced and labels is None:
    labels = np.asarray(y).argmax(-1)

  def sample(step: int) -> dict:
    step = step // hold
    if balanced:
      idx = balanced_batch_indices(seed, step, labels, batch_size, y.shape[-1])
    else:
      idx = batch_indices(seed, step, len(x), batch_size)
    if rows is not None:
      idx = idx[rows]
    return {'x': x[idx], 'y': y[idx]}

  return sample


def _diverged_message(step: int, metrics: dict, ckpt: Checkpointer,
                      what: str = 'non-finite metrics') -> str:
  shown = ', '.join(f'{k}={v:.4g}' for k, v in metrics.items())
  last = ckpt.latest_step()
  where = (f'the last good checkpoint is step {last} in {ckpt.directory}' if last is not None
           else 'no checkpoint was written before it')
  return (f'the run diverged at step {step} ({what}; metrics {shown}); {where}. Lower '
          'distill.lr / distill.label_lr or strengthen the method\'s regulariser, then rerun '
          'with --restart or a new --workdir.')


def run(step_fn: Callable | step_lib.HostStep, state: Any, sampler: Callable[[int], dict], *,
        num_steps: int, key: jax.Array, workdir: str, checkpoint_every: int, keep: int = 2,
        log_every: int = 100, mesh=None, name: str = 'distill', batch_sharded: bool = True,
        problem: Callable[[dict], str | None] | None = None,
        batch_size: int | None = None, summaries=None,
        summary_image: Callable[[Any], np.ndarray] | None = None) -> tuple[Any, dict]:
  """Drive `step_fn(state, batch, key) -> (state, metrics)` from the last checkpoint to num_steps.

  step_fn may also be a `ddjax.distill.step.HostStep` (`make_host_step`): its programs are jitted
  with the same shardings and chosen per step on the host (`step_lib.host_driver`) from the step
  counter alone, so a resumed run runs the same programs as an uninterrupted one.

  Writes `workdir/checkpoints/<step>` every `checkpoint_every` steps and at the end,
  `workdir/metrics.jsonl` every `log_every` steps (each metric averaged over the steps since the
  previous line), and prints progress lines.
  batch_sharded: split the batch's leading axis over the devices (real batches); False
  replicates it (a method's own batches, e.g. expert snapshots).
  Several processes (ddjax.infra.distributed): every process runs this with the same
  arguments; a batch-sharded sampler returns this process's rows of the step's batch
  (`sharding.process_rows`), assembled into the global batch of `batch_size` rows (None: the
  rows times the process count); only process 0 prints and writes metrics.jsonl; Orbax
  checkpoints the replicated state once and every process restores it.
  problem: problem(metrics of one step, floats) -> message or None, checked for every step at
  each log / checkpoint point, like finiteness: a message stops the run before the state is
  saved (`DivergedError`, naming the step, the metrics and the last good checkpoint).
  summaries: a `ddjax.runtime.summaries.Summaries` (process 0's, else None) that gets the
  metrics of every log point and, when it wants one, summary_image(state) -> (H, W, 3) uint8.
  Returns (final state, summary) where summary has 'steps', 'resumed_from', 'sec_per_step'
  (mean over the steps this process ran, compilation excluded).
  """
  mesh = mesh or sharding.make_mesh()
  rep = sharding.replicated(mesh)
  main = jax.process_index() == 0
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=keep)
  state = jax.device_put(state, rep)       # the template: restored arrays come back replicated
  restored = ckpt.restore_latest(state)
  start = 0
  if restored is not None:
    start, state = restored
    if main:
      print(f'[{name}] resumed from checkpoint at step {start}', flush=True)
  if summaries is not None:
    summaries.begin(start)
  batch_layout = sharding.batch_sharding(mesh) if batch_sharded else rep
  jitted = step_lib.host_driver(step_fn, lambda f: jax.jit(
      f, in_shardings=(rep, batch_layout, rep), out_shardings=rep, donate_argnums=(0,)))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  progress = Progress(name, num_steps, start)
  timed_steps, timed_secs, t_last = 0, 0.0, None
  interval = []     # the metrics of the steps since the last log point, on device (no sync)
  for s in range(start, num_steps):
    batch = sampler(s)
    batch = (sharding.global_batch(batch, mesh, batch_size) if batch_sharded
             else jax.device_put(batch, rep))
    state, metrics = jitted(s, state, batch, jax.random.fold_in(key, s))
    interval.append(metrics)
    done = s + 1
    log_now = done % log_every == 0 or done == num_steps
    save_now = done % checkpoint_every == 0 or done == num_steps
    if log_now or save_now:   # never checkpoint a state whose interval went non-finite
      steps = [{k: float(v) for k, v in m.items()} for m in jax.device_get(interval)]
      for i, m in enumerate(steps):
        bad = 'non-finite metrics' if not all(math.isfinite(v) for v in m.values()) else (
            problem(m) if problem is not None else None)
        if bad:
          ckpt.close()
          raise DivergedError(_diverged_message(done - len(steps) + i + 1, m, ckpt, bad))
      metrics = {k: sum(m[k] for m in steps) / len(steps) for k in steps[0]}
    if log_now:
      interval = []
      now = time.perf_counter()
      if t_last is not None:
        timed_secs += now - t_last
        timed_steps += done - last_logged
      t_last, last_logged = now, done
      if main:
        files.append_jsonl(metrics_path, {'step': done, **metrics})
        progress.update(done, metrics)
        if summaries is not None:
          summaries.scalars(done, metrics)
    if (summaries is not None and summary_image is not None
        and summaries.wants_image(done, done == num_steps)):
      summaries.image(done, summary_image(state))
    if save_now:
      ckpt.save(done, state)
  ckpt.close()
  if timed_steps:
    sec = timed_secs / timed_steps
  else:  # fewer than two log points: the estimate includes compilation
    sec = progress.elapsed() / max(num_steps - start, 1)
  return state, {'steps': num_steps, 'resumed_from': start, 'sec_per_step': sec}
