r"""BiLP Table 6 on this machine: the cost of each level of BiLP's ITE computation on top of a DC
step, measured in one run, as JSON + markdown.

    python benchmarks/bilp_overhead.py [--ipc 10] [--per-class 256] [--steps 10] [--chunk 0]

Setting: DC's ConvNet-3 (width 128, instance norm), Fashion-MNIST-shaped 28x28x1 inputs, 10
classes, `--per-class` real images per class (DC: 256), DC's loops for the IPC; one ddjax step =
one outer-loop image update (plus the inner network training when the loop says so). Rows:

- base step: the DC step alone (median over --steps steps).
- exact ITE, batch only (with running statistics): leave-one-out ITE of every real sample of the
  batch (`ddjax.scoring.ite`, method 'exact'), timed once. Without running statistics BiLP would
  score the whole dataset every iteration: that row is this one x (dataset size / batch), an
  extrapolation, not a run.
- + first-order (Taylor / JVP) ITE: the same scores by one linearization and vmapped JVPs.
- sketch of the first-order scores (`--sketch-dim` random projections; ddjax's addition).
- + lazy selection: the whole BiLP step (`AdaptivePruning`, reselection every 10 steps, held batch)
  over --steps consecutive steps, against as many base steps, interleaved. Both run as the run
  loop runs them (`make_host_step` + `host_driver`: BiLP's reselection is its own program, run
  on reselection steps only; DC's network update too).
The ratios are what to quote on a shared machine; the process's CPU seconds are recorded beside
the wall-clock ones (on a shared, pinned core the CPU time is the honest figure).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
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
from ddjax.distill.bilp import AdaptivePruning  # noqa: E402
from ddjax.distill.dc import DC, dc_loops  # noqa: E402
from ddjax.distill.matching import group_by_class  # noqa: E402
from ddjax.models import build_model  # noqa: E402
from ddjax.scoring import ite as ite_lib  # noqa: E402

K, SHAPE, DATASET_SIZE = 10, (28, 28, 1), 60000


def timed(fn, *args):
  t, c = time.perf_counter(), time.process_time()
  out = fn(*args)
  jax.block_until_ready(out)
  timed.cpu = time.process_time() - c
  return time.perf_counter() - t, out


def release_programs() -> None:
  """Drop JAX's compiled programs and give freed host memory back to the system."""
  jax.clear_caches()
  gc.collect()
  try:                                  # glibc only; elsewhere the allocator keeps its pages
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--ipc', type=int, default=10)
  ap.add_argument('--per-class', type=int, default=256)
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--chunk', type=int, default=0,
                  help='real samples of a class per ITE chunk (bilp.ite_chunk; 0: automatic)')
  ap.add_argument('--sketch-dim', type=int, default=64)
  ap.add_argument('--ite', default='first_order', help="the BiLP arm's ITE method")
  ap.add_argument('--name', default='bilp_overhead', help='results file under benchmarks/results')
  args = ap.parse_args()
  command = 'python benchmarks/bilp_overhead.py ' + ' '.join(sys.argv[1:])
  peak = common.matmul_flops_per_second()
  outer, inner = dc_loops(args.ipc)
  model = build_model('convnet', K, depth=3, width=128, norm='instance', pooling='avg')
  dc = DC(model, SHAPE, K, outer_loop=outer, inner_loop=inner)
  bilp = AdaptivePruning(dc, K * args.per_class, beta=0.3, every=10, chunk_size=args.chunk,
                         ite_method=args.ite, sketch_dim=args.sketch_dim)
  rng = np.random.default_rng(0)
  syn = {'x': jnp.asarray(rng.normal(size=(K * args.ipc,) + SHAPE), jnp.float32),
         'y': jnp.asarray(np.eye(K, dtype=np.float32).repeat(args.ipc, 0))}
  labels = np.repeat(np.arange(K), args.per_class)
  batch = {'x': jnp.asarray(rng.normal(size=(len(labels),) + SHAPE), jnp.float32),
           'y': jnp.asarray(np.eye(K, dtype=np.float32)[labels])}
  opt = step_lib.make_syn_optimizer('sgd', 0.1, 0.0, 1000, learn_label=False,
                                    schedule='constant', momentum=0.5)
  classes = jnp.repeat(jnp.arange(K), args.ipc)
  steps = {}
  states = {}
  for name, distiller in (('base', dc), ('bilp', bilp)):
    states[name] = step_lib.init_state(distiller, T.identity(), opt, syn, jax.random.PRNGKey(0))
    steps[name] = step_lib.host_driver(step_lib.make_host_step(distiller, T.identity(), opt,
                                                               classes))
    for warm in range(2):     # compile (step 0 reselects, step 1 does not), untimed
      states[name], _ = steps[name](warm, states[name], batch, jax.random.PRNGKey(1000 + warm))
      jax.block_until_ready(states[name])
  times = {'base': [], 'bilp': []}
  cpu = {'base': [], 'bilp': []}
  for s in range(2, args.steps + 2):          # interleaved; BiLP reselects at step 10
    for name in ('base', 'bilp'):
      t, (states[name], _) = timed(steps[name], s, states[name], batch, jax.random.PRNGKey(s))
      times[name].append(t)
      cpu[name].append(timed.cpu)
  print('steps', {k: np.round(v, 3).tolist() for k, v in times.items()}, flush=True)
  print('steps cpu', {k: np.round(v, 3).tolist() for k, v in cpu.items()}, flush=True)

  xr = group_by_class(batch['x'], jnp.asarray(labels), K)
  xs = syn['x'].reshape((K, args.ipc) + SHAPE)
  keys = jax.random.split(jax.random.PRNGKey(1), K)
  variables = jax.device_get(states['base'].distiller_state.variables)
  # the step programs and states go before the ITE rows compile: with both resident the sketch
  # arm's run was OOM-killed on a 24 GB machine
  del states, steps
  release_programs()
  ite = {}
  chunk = args.chunk or ite_lib.auto_chunk(args.per_class, args.ipc)   # BiLP's own choice
  for method in ('sketch', 'first_order', 'exact'):
    fn = jax.jit(lambda v, xr, xs, k, m=method: ite_lib.additive_ite_scores(
        dc.class_additive_form(v, xr, xs, k, chunk), m, chunk, args.sketch_dim))
    fn(variables, xr, xs, keys).block_until_ready()              # compile
    t, scores = timed(fn, variables, xr, xs, keys)
    ite[method] = (t, np.asarray(scores), timed.cpu)
    print(method, f'{t:.2f} s (cpu {timed.cpu:.2f} s)', flush=True)
    del fn, scores
    release_programs()
  rank_err = float(np.mean([ite_lib.rank_error(ite['exact'][1][c], ite['first_order'][1][c])
                            for c in range(K)]))
  rank_err_sketch = float(np.mean([ite_lib.rank_error(ite['first_order'][1][c],
                                                      ite['sketch'][1][c]) for c in range(K)]))
  base = float(np.median(times['base']))
  bilp_mean = float(np.mean(times['bilp']))
  base_mean = float(np.mean(times['base']))
  cpu_ratio = float(np.mean(cpu['bilp']) / np.mean(cpu['base']))
  batch_size = K * args.per_class
  rows = [
      ('ITE on the whole dataset every step (extrapolated: exact x dataset / batch)',
       ite['exact'][0] * DATASET_SIZE / batch_size),
      ('exact ITE on the batch (+ running statistics)', ite['exact'][0]),
      ('first-order (JVP) ITE on the batch (+ Taylor approximation)', ite['first_order'][0]),
      (f'sketched first-order ITE on the batch ({args.sketch_dim} projections)',
       ite['sketch'][0]),
      (f'BiLP overhead per step, {args.ite} ITE, lazy selection every 10 (+ lazy selection)',
       bilp_mean - base_mean),
  ]
  table = [f'DC, IPC {args.ipc} (loops {outer} x {inner}), real batch {args.per_class} per class '
           f'({batch_size}), ConvNet-3 width 128 instance norm, 28x28x1.', '',
           '| ITE computation | s per step | total s per step | overhead vs base step |',
           '|---|---|---|---|']
  for label, sec in rows:
    table.append(f'| {label} | {sec:.3f} | {base + sec:.3f} | {100 * sec / base:.1f}% |')
  table.append(f'| base step alone (median of {args.steps}) | - | {base:.3f} | - |')
  table += ['', f"exact / first-order ITE time: {ite['exact'][0] / ite['first_order'][0]:.1f}x; "
                f'rank error of first-order vs exact (BiLP supp. 8 metric, mean over classes): '
                f'{100 * rank_err:.2f}%; of the sketch vs first-order: {100 * rank_err_sketch:.2f}%; '
                f'full BiLP step ({args.ite} ITE) / base step over {args.steps} interleaved '
                f'steps: {bilp_mean / base_mean:.3f} wall-clock, {cpu_ratio:.3f} in CPU time '
                f'({len(os.sched_getaffinity(0))} thread(s)); matmul peak in the same run '
                f'{peak / 1e9:.1f} GFLOP/s.']
  payload = {'ipc': args.ipc, 'per_class': args.per_class, 'loops': [outer, inner],
             'step_seconds': times, 'base_step_median': base,
             'ite_exact_seconds': ite['exact'][0], 'ite_first_order_seconds': ite['first_order'][0],
             'exact_over_first_order': ite['exact'][0] / ite['first_order'][0],
             'ite_sketch_seconds': ite['sketch'][0], 'sketch_dim': args.sketch_dim,
             'rank_error': rank_err, 'rank_error_sketch_vs_first_order': rank_err_sketch,
             'bilp_ite': args.ite, 'bilp_over_base': bilp_mean / base_mean,
             'step_cpu_seconds': cpu, 'bilp_over_base_cpu': cpu_ratio,
             'ite_cpu_seconds': {m: v[2] for m, v in ite.items()}, 'chunk': args.chunk,
             'chunk_used': chunk,
             'threads': len(os.sched_getaffinity(0)), 'matmul_peak_gflops': peak / 1e9,
             'rows': [{'what': label, 'seconds': sec} for label, sec in rows]}
  common.write(args.name, payload, '\n'.join(table), command)


if __name__ == '__main__':
  main()
