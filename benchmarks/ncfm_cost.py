r"""What one distillation iteration of NCFM costs next to DM and MTT on the same set-up.

    nice -n 10 python benchmarks/ncfm_cost.py [--iterations 3] [--batch-per-class 256]
        [--mtt-steps 30]

Set-up, shared by the three methods: Fashion-MNIST-shaped inputs (28x28x1, padded to 32 by the
ConvNet), 10 classes, IPC 10, ConvNet-3 width 128 with instance norm, random values (neither
number depends on them). Each method as ddjax runs it (`ddjax.distill.step.make_step`, one
jitted program per iteration):

- NCFM (`ddjax.distill.ncfm`): its defaults (sampling network with T 4096 / r 16, the
  calibration term, DSA color_crop_cutout, IDC factor 2: 400 decoded images), a pool of 2 random
  networks (the pool's values do not change the cost), Adam; `--batch-per-class` real images per
  class (NCFM's own 1024; the default 256 is DM's, so both embed the same real batch).
- DM (`ddjax.distill.dm`): DSA, the same real batch, SGD.
- MTT (`ddjax.distill.mtt`): its IPC-10 row (N = `--mtt-steps` student steps, all 100 images per
  step, exact gradient with remat, ddjax's CPU loop), start / target parameters drawn at random
  in place of an expert buffer (the buffer is only read, never part of the step's arithmetic).

Every method runs in its own child process (so its peak resident memory is its own): compile,
one untimed warm-up iteration, then the median wall seconds of `--iterations` iterations, XLA's
FLOP count of the program, XLA's memory accounting of the compiled program
(`compiled.memory_analysis()`: temporary + argument + output bytes) and the child's peak RSS
(`ddjax.runtime.cost.peak_host_rss_bytes`). The float32 matmul peak (`benchmarks/common.py`) is
measured in the parent in the same run. Writes results/ncfm_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

K, SHAPE, IPC, WIDTH = 10, (28, 28, 1), 10, 128
METHODS = ('ncfm', 'dm', 'mtt')


def _model():
  from ddjax.models import build_model
  return build_model('convnet', K, depth=3, width=WIDTH, norm='instance', pooling='avg')


def build(method: str, batch_per_class: int, mtt_steps: int):
  """(distiller, optimizer, syn, batch, param) of one method."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.flatten_util import ravel_pytree

  from ddjax.distill import idc
  from ddjax.distill import step as step_lib
  from ddjax.distill.base import IDENTITY
  rng = np.random.default_rng(0)
  model = _model()
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), train=False)['params']
  flat, unravel = ravel_pytree(params)
  syn = {'x': jnp.asarray(rng.normal(size=(K * IPC,) + SHAPE), jnp.float32),
         'y': jnp.asarray(np.eye(K, dtype=np.float32).repeat(IPC, 0))}
  labels = np.repeat(np.arange(K), batch_per_class)
  real = {'x': jnp.asarray(rng.normal(size=(len(labels),) + SHAPE), jnp.float32),
          'y': jnp.asarray(np.eye(K, dtype=np.float32)[labels])}
  param = IDENTITY
  if method == 'ncfm':
    from ddjax.distill.ncfm import NCFM
    pool = np.stack([np.asarray(flat), np.asarray(flat) + 0.01 * rng.normal(size=flat.shape)])
    distiller = NCFM(model, unravel, pool, pool[::-1], SHAPE, K)
    param = idc.MultiFormation(2)
    opt = step_lib.make_syn_optimizer('adam', 1e-3, 0.0, 1000, learn_label=False,
                                      schedule='constant')
    return distiller, opt, syn, real, param
  if method == 'dm':
    from ddjax.distill.dm import DM
    distiller = DM(model, SHAPE, K, dsa_strategy='color_crop_cutout_flip_scale_rotate')
    opt = step_lib.make_syn_optimizer('sgd', 1.0, 0.0, 1000, learn_label=False,
                                      schedule='constant', momentum=0.5)
    return distiller, opt, syn, real, param
  from types import SimpleNamespace

  from ddjax.distill.mtt import TrajectoryMatching
  buffer = SimpleNamespace(model=model, unravel=unravel, template=params,
                           record={'image_shape': list(SHAPE)})
  distiller = TrajectoryMatching(buffer, syn_steps=mtt_steps, expert_epochs=2, max_start=20,
                                 dsa_strategy='color_crop_cutout_flip_scale_rotate')
  syn = {**syn, 'syn_lr': jnp.asarray(0.01, jnp.float32)}
  opt = step_lib.make_syn_optimizer('sgd', 1000.0, 0.0, 1000, learn_label=False,
                                    schedule='constant', momentum=0.5,
                                    extra_lrs={'syn_lr': 1e-5})
  batch = {'start': jnp.asarray(flat), 'target': jnp.asarray(flat + 0.01 * rng.normal(
      size=flat.shape).astype(np.float32)), 'epoch': jnp.asarray(0, jnp.int32)}
  return distiller, opt, syn, batch, param


def one(method: str, iterations: int, batch_per_class: int, mtt_steps: int) -> dict:
  """Child process: measure one method (module docstring) -> a JSON-able row."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks import common
  from ddjax import transforms as T
  from ddjax.distill import step as step_lib
  from ddjax.runtime.cost import peak_host_rss_bytes
  distiller, opt, syn, batch, param = build(method, batch_per_class, mtt_steps)
  classes = jnp.argmax(syn['y'], -1)       # IPC stored images per class (IDC: x4 decoded)
  state = step_lib.init_state(distiller, T.identity(), opt, syn, jax.random.PRNGKey(0), param)
  step = jax.jit(step_lib.make_step(distiller, T.identity(), opt, classes, param))
  t0 = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.PRNGKey(0)).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  xla_bytes = None
  if mem is not None:
    xla_bytes = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                    + mem.output_size_in_bytes)
  flops = common.xla_flops(compiled)
  state, metrics = compiled(state, batch, jax.random.PRNGKey(1))          # warm-up
  jax.block_until_ready(state)
  times = []
  for i in range(iterations):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, jax.random.PRNGKey(2 + i))
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  decoded = param.decode(state.syn)['x'].shape[0]
  return {'method': method, 'sec_per_iteration': float(np.median(times)), 'all': times,
          'compile_s': compile_s, 'gflop_per_iteration_xla': flops / 1e9,
          'xla_program_bytes': xla_bytes,
          'xla_temp_bytes': None if mem is None else int(mem.temp_size_in_bytes),
          'peak_rss_bytes': peak_host_rss_bytes(), 'loss': float(metrics['loss']),
          'decoded_images': int(decoded), 'stored_images': int(state.syn['x'].shape[0]),
          'real_per_iteration': (0 if method == 'mtt' else K * batch_per_class),
          'mtt_steps': mtt_steps if method == 'mtt' else None}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--iterations', type=int, default=3)
  ap.add_argument('--batch-per-class', type=int, default=256)
  ap.add_argument('--mtt-steps', type=int, default=30)
  ap.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
  ap.add_argument('--one', default='', help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.one:
    print('ROW ' + json.dumps(one(args.one, args.iterations, args.batch_per_class,
                                  args.mtt_steps)), flush=True)
    return
  from benchmarks import common
  command = 'nice -n 10 python benchmarks/ncfm_cost.py ' + ' '.join(sys.argv[1:])
  peak = common.matmul_flops_per_second()
  rows = []
  for method in args.methods:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), '--one', method,
                          '--iterations', str(args.iterations), '--batch-per-class',
                          str(args.batch_per_class), '--mtt-steps', str(args.mtt_steps)],
                         capture_output=True, text=True, check=False)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith('ROW ')]
    if out.returncode or not line:
      raise SystemExit(f'{method} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}')
    row = json.loads(line[-1][4:])
    row['achieved_gflops'] = row['gflop_per_iteration_xla'] / row['sec_per_iteration']
    row['matmul_peak_gflops'] = peak / 1e9
    rows.append(row)
    print(json.dumps(row), flush=True)
  mib = lambda b: '-' if b is None else f'{b / 2 ** 20:.0f}'
  table = ['| method | s / iteration | GFLOP / iteration (XLA) | achieved GFLOP/s '
           '| matmul peak GFLOP/s (same run) | XLA program MiB (temp) | peak RSS MiB '
           '| compile s | images trained on |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    what = (f"{r['decoded_images']} decoded from {r['stored_images']}"
            if r['decoded_images'] != r['stored_images'] else f"{r['stored_images']}")
    if r['method'] == 'mtt':
      what += f", N = {r['mtt_steps']} student steps"
    else:
      what += f", {r['real_per_iteration']} real"
    table.append(f"| {r['method']} | {r['sec_per_iteration']:.3f} "
                 f"| {r['gflop_per_iteration_xla']:.1f} | {r['achieved_gflops']:.1f} "
                 f"| {r['matmul_peak_gflops']:.1f} | {mib(r['xla_program_bytes'])} "
                 f"({mib(r['xla_temp_bytes'])}) | {mib(r['peak_rss_bytes'])} "
                 f"| {r['compile_s']:.1f} | {what} |")
  table.append('')
  table.append('Fashion-MNIST shapes, ConvNet-3 width 128 instance norm, IPC 10, one jitted step '
               'per iteration, each method in its own process. XLA counts the body of a '
               '`lax.map` / `lax.scan` once (DM and NCFM embed the real batch class by class '
               'in one), so their GFLOP column is a lower bound and so is the achieved rate.')
  common.write('ncfm_cost', {'rows': rows, 'args': vars(args)}, '\n'.join(table), command)


if __name__ == '__main__':
  main()
