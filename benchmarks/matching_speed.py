r"""Seconds per iteration of DM and DC / DSA with their official defaults, as JSON.

    python benchmarks/matching_speed.py [--methods dm dc dsa] [--ipc 1 10] [--iterations 3]
        [--programs host fused]

Defaults of the official code (VICO-UoE/DatasetCondensation): ConvNet-3 width 128 with instance
norm and average pooling, 256 real images per class (10 classes: 2560 per iteration), DSA on for DM
and DSA ('color_crop_cutout_flip_scale_rotate'), 28x28x1 Fashion-MNIST-shaped inputs padded to 32
as DC does. One iteration: DM = one image update; DC / DSA = DC's outer_loop image updates with
inner_loop epochs of network training between them (IPC 1: 1 x 1, IPC 10: 10 x 50). Timed after
compilation (the median of --iterations), with XLA's FLOP count of one image update (for DM plus
the K - 1 class embeddings XLA's count of its per-class loop leaves out) and the FLOP/s it achieves
next to this machine's float32 matmul peak measured in the same run, and the process's CPU
seconds beside the wall-clock ones (on a shared, pinned core the CPU time is the honest figure).
--programs: 'host' times the step as the run executes it (`make_host_step` + `host_driver`: DC's
image update and its network update as separate programs chosen on the host), 'fused' the one
program with the network update under a `lax.cond` (`make_step`, the run's step before), so
both are timed back to back; DM has one program either way. Rows of earlier runs for other
(method, IPC, program) triples are kept, each with its command. Prints the JSON and writes
results/matching_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddjax import transforms as T  # noqa: E402
from ddjax.distill import step as step_lib  # noqa: E402
from ddjax.distill.dc import DC, dc_loops  # noqa: E402
from ddjax.distill.dm import DM  # noqa: E402
from ddjax.models import build_model  # noqa: E402

K, SHAPE, STRATEGY = 10, (28, 28, 1), 'color_crop_cutout_flip_scale_rotate'


def build(method: str, ipc: int, program: str = 'host'):
  model = build_model('convnet', K, depth=3, width=128, norm='instance', pooling='avg')
  if method == 'dm':
    distiller, lr, updates = DM(model, SHAPE, K, dsa_strategy=STRATEGY), 1.0, 1
  else:
    outer, inner = dc_loops(ipc)
    distiller = DC(model, SHAPE, K, outer_loop=outer, inner_loop=inner,
                   dsa_strategy=STRATEGY if method == 'dsa' else '')
    lr, updates = 0.1, outer
  opt = step_lib.make_syn_optimizer('sgd', lr, 0.0, 1000, learn_label=False,
                                    schedule='constant', momentum=0.5)
  rng = np.random.default_rng(0)
  syn = {'x': jnp.asarray(rng.normal(size=(K * ipc,) + SHAPE), jnp.float32),
         'y': jnp.asarray(np.eye(K, dtype=np.float32).repeat(ipc, 0))}
  state = step_lib.init_state(distiller, T.identity(), opt, syn, jax.random.PRNGKey(0))
  classes = jnp.repeat(jnp.arange(K), ipc)
  if program == 'fused':
    step = step_lib.make_step(distiller, T.identity(), opt, classes)
  else:
    step = step_lib.make_host_step(distiller, T.identity(), opt, classes)
  labels = np.repeat(np.arange(K), 256)
  batch = {'x': jnp.asarray(rng.normal(size=(len(labels),) + SHAPE), jnp.float32),
           'y': jnp.asarray(np.eye(K, dtype=np.float32)[labels])}
  return step, state, batch, updates


def _cost(step, state, batch, updates: int) -> tuple[float, float]:
  """(XLA's FLOPs per image update, compile seconds of the programs). Fused: XLA's count of the
  one program. Host-phased: the programs one iteration runs (image, and prepare / finish of
  each step's phase), summed over the iteration's steps and divided by them."""
  t0 = time.perf_counter()
  key = jax.random.PRNGKey(0)
  if callable(step):
    return common.xla_flops(jax.jit(step).lower(state, batch, key).compile()), time.perf_counter() - t0
  image = common.xla_flops(jax.jit(step.image).lower(state, batch, key).compile())
  if step.phase is None:
    return image, time.perf_counter() - t0
  per_phase = {}
  for phase in {step.phase(u) for u in range(updates)}:
    per_phase[phase] = sum(
        common.xla_flops(jax.jit(functools.partial(part, phase=phase)).lower(state, batch, key).compile())
        for part in (step.prepare, step.finish))
  total = sum(image + per_phase[step.phase(u)] for u in range(updates))
  return total / updates, time.perf_counter() - t0


def _key(row: dict) -> tuple:
  """Rows are kept per (method, IPC, program); rows of older runs timed the fused program."""
  return row['method'], row['ipc'], row.get('program', 'fused')


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--methods', nargs='+', default=['dm', 'dc', 'dsa'])
  ap.add_argument('--ipc', type=int, nargs='+', default=[1, 10])
  ap.add_argument('--iterations', type=int, default=3)
  ap.add_argument('--programs', nargs='+', default=['host'], choices=['host', 'fused'])
  args = ap.parse_args()
  peak = common.matmul_flops_per_second()
  command = 'python benchmarks/matching_speed.py ' + ' '.join(sys.argv[1:])
  json_path = os.path.join(common.HERE, 'results', 'matching_speed.json')
  kept = {}
  if os.path.exists(json_path):   # rows of other (method, IPC) pairs stay, with their commands
    kept = {_key(r): r for r in json.load(open(json_path))['rows']}
  rows = []
  for method, ipc, program in itertools.product(args.methods, args.ipc, args.programs):
    step, state, batch, updates = build(method, ipc, program)
    flops, compile_s = _cost(step, state, batch, updates)
    step = step_lib.host_driver(step)
    if method == 'dm':   # XLA counts the body of DM's per-class lax.map once, not K times
      model = build_model('convnet', K, depth=3, width=128, norm='instance', pooling='avg')
      v = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), train=False)
      embed = jax.jit(lambda v, x: model.apply(v, x, train=False)[1])
      flops += (K - 1) * common.xla_flops(embed.lower(v, batch['x'][:256]).compile())
    # warm-up: the iteration's last two steps (a network update and a new network), so every
    # program is compiled; the network's update count is back at 0 afterwards
    for u in range(max(0, updates - 2), updates):
      state, _ = step(u, state, batch, jax.random.PRNGKey(u))
    jax.block_until_ready(state)
    times, cpu_times = [], []
    for it in range(args.iterations):
      t, c = time.perf_counter(), time.process_time()
      for u in range(updates):
        state, metrics = step(u, state, batch, jax.random.PRNGKey(1000 * it + u))
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t)
      cpu_times.append(time.process_time() - c)
    sec = float(np.median(times))
    rows.append({'method': method, 'ipc': ipc, 'program': program,
                 'sec_per_iteration': sec, 'all': times,
                 'cpu_sec_per_iteration': float(np.median(cpu_times)), 'cpu_all': cpu_times,
                 'threads': len(os.sched_getaffinity(0)),
                 'updates_per_iteration': updates, 'compile_s': compile_s,
                 'gflop_per_update': flops / 1e9,
                 'achieved_gflops': flops * updates / sec / 1e9,
                 'matmul_peak_gflops': peak / 1e9, 'loss': float(metrics['loss']),
                 'command': command})
    print(json.dumps(rows[-1]), flush=True)
  kept.update({_key(r): r for r in rows})
  rows = sorted(kept.values(), key=_key)
  table = ['| method | IPC | program | s / iteration | CPU s / iteration | threads '
           '| image updates / iteration | GFLOP / update (XLA) '
           '| achieved GFLOP/s | matmul peak GFLOP/s (same run) | command |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  nan = float('nan')
  for r in rows:
    table.append(f"| {r['method']} | {r['ipc']} | {r.get('program', 'fused')} "
                 f"| {r['sec_per_iteration']:.3f} | {r.get('cpu_sec_per_iteration', nan):.3f} "
                 f"| {r.get('threads', '-')} "
                 f"| {r['updates_per_iteration']} | {r['gflop_per_update']:.1f} "
                 f"| {r['achieved_gflops']:.1f} | {r.get('matmul_peak_gflops', nan):.1f} "
                 f"| `{r.get('command', '')}` |")
  common.write('matching_speed', {'rows': rows}, '\n'.join(table), command)


if __name__ == '__main__':
  main()
