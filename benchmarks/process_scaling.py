r"""Seconds per distillation step of each method as 1 process against 2 processes of 1 device each,
on the same cores, measured in one run.

    python benchmarks/process_scaling.py [--methods frepo dm dc kip] [--steps 6] [--repeats 1]
                                         [--per_class 64] [--name process_scaling]

Every arm is `launch/multiprocess.py -n N --devices_per_process=1 -- <ddjax.main flags>` (N = 1:
the plain command; N = 2: two processes joined by JAX's distributed runtime, gloo collectives,
the real batch split between them: `ddjax.infra.sharding.process_rows`), running `--steps`
distillation steps with no evaluation. Both arms share the machine's cores, so the question is
not a speed-up but whether two processes split a step's work: with the work split, the 2-process
step costs about what the 1-process step costs (each process does half the work on half the
cores, plus the collectives); a method whose real batch is not split costs about 2x, every
process computing the whole step on its share of the cores.

Three figures per method. XLA's FLOP count per device of the image-update program (the one
that reads the real batch), compiled for 1 device and for a 2-device mesh: deterministic, and
the direct answer to whether the batch is split. Wall seconds per step: the loop's own
steady-state figure (compilation excluded; `results.json` -> distill.sec_per_step). CPU
seconds per step: the CPU time of all the arm's processes in a run of `--steps` steps minus that
of a run of 2 steps, over the difference in steps (start-up and compilation cancel, up to their
noise); on a machine shared with other jobs the wall figure moves with the load.
FRePo and KIP, whose steps are cheap, run 5 x `--steps` steps.
The matching methods (DC, DM) run a smaller real batch than their default (`--per_class`
images per class instead of 256) to keep the runs short; the split is the same. The arms run
interleaved (1 2 1 2 ...) so that machine noise hits them alike; the float32 matmul peak of the
machine, measured in the same run, is reported beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402

BASE_STEPS = 2     # the short run whose CPU time (start-up, compilation, 2 steps) is subtracted
# The config of each method, the flags that keep its arm short, and its steps in units of --steps
# (the cheap steps run more of them, so that their CPU time stands out of the start-up's noise).
METHODS = {
    'frepo': ('frepo', [], 5),
    'kip': ('kip', [], 5),
    'dm': ('dm', ['batch_per_class'], 1),
    'dc': ('dc', ['batch_per_class'], 1),
}


FLOPS_SCRIPT = r'''
import json, os, sys
import jax, jax.numpy as jnp
sys.path.insert(0, {root!r})
from benchmarks import common
from ddjax import config as config_lib, transforms
from ddjax.distill import step as step_lib
from ddjax.infra import sharding
from ddjax.runtime import loop, pipeline
cfg = config_lib.method_config({config!r}, '')
if {per_class}:
  cfg.distill.batch_per_class = {per_class}
data = pipeline.load_data(cfg)
size = config_lib.real_batch_size(cfg, data.num_classes)
plan = pipeline.make_plan(cfg, data)
distiller = pipeline.build_distiller(cfg, plan, data, size)
syn, classes = pipeline.initial_synthetic(cfg, plan, data, distiller)
transform, optimizer = transforms.from_config(cfg.transform), pipeline.make_optimizer(cfg, plan)
state = step_lib.init_state(distiller, transform, optimizer, syn, jax.random.PRNGKey(0))
image = step_lib.make_host_step(distiller, transform, optimizer, jnp.asarray(classes)).image
batch = loop.make_sampler(data.x_train, data.targets_train, size, cfg.seed,
                          balanced=config_lib.balanced_batch(cfg), labels=data.y_train)(0)
out = {{}}
for n in (1, 2):
  mesh = sharding.make_mesh(jax.devices()[:n])
  rep = sharding.replicated(mesh)
  fn = jax.jit(image, in_shardings=(rep, sharding.batch_sharding(mesh), rep), out_shardings=rep)
  out[n] = common.xla_flops(fn.lower(jax.device_put(state, rep), sharding.shard_batch(batch, mesh),
                                     jax.random.PRNGKey(1)).compile())
print(json.dumps(out))
'''


def step_flops(method: str, per_class: int) -> dict:
  """XLA's FLOP count per device of the method's image-update program (the one that reads the
  real batch) on 1 device and on a 2-device mesh, compiled in a process with 2 CPU devices:
  {1: flops, 2: flops}. Half (plus the replicated synthetic side) when the batch is split."""
  config, options, _ = METHODS[method]
  script = FLOPS_SCRIPT.format(root=ROOT, config=config,
                               per_class=per_class if 'batch_per_class' in options else 0)
  flags = ' '.join(t for t in os.environ.get('XLA_FLAGS', '').split()
                   if not t.startswith('--xla_force_host_platform_device_count'))
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'{flags} --xla_force_host_platform_device_count=2'.strip()}
  out = subprocess.run([sys.executable, '-c', script], env=env, cwd=ROOT, capture_output=True,
                       text=True)
  if out.returncode != 0:
    raise RuntimeError(f'the FLOP count of {method} failed:\n{out.stderr[-3000:]}')
  return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def _cpu_seconds() -> float:
  """User + system CPU seconds of every finished child process (and their children)."""
  use = resource.getrusage(resource.RUSAGE_CHILDREN)
  return use.ru_utime + use.ru_stime


def run_arm(method: str, processes: int, steps: int, per_class: int, workdir: str) -> dict:
  """One run of `method` as `processes` processes of one CPU device: process 0's results.json,
  with 'cpu_seconds' added (the CPU time of all the run's processes together)."""
  config, options, _ = METHODS[method]
  flags = [f'--config={ROOT}/configs/{config}.py', f'--workdir={workdir}', '--restart',
           f'--config.distill.steps={steps}', '--config.eval.num_models=0',
           '--config.eval.krr=False', f'--config.checkpoint.every={steps}',
           '--config.log.every=1']
  if 'batch_per_class' in options:
    flags.append(f'--config.distill.batch_per_class={per_class}')
  cmd = [sys.executable, os.path.join(ROOT, 'launch', 'multiprocess.py'), f'-n={processes}',
         '--devices_per_process=1', '--', *flags]
  cpu = _cpu_seconds()
  out = subprocess.run(cmd, env={**os.environ, 'PYTHONPATH': ROOT}, cwd=ROOT,
                       capture_output=True, text=True)
  cpu = _cpu_seconds() - cpu
  if out.returncode != 0:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  if results['distill']['processes'] != processes:
    raise RuntimeError(f'asked for {processes} processes, the run had '
                       f'{results["distill"]["processes"]}')
  return {**results, 'cpu_seconds': cpu}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
  ap.add_argument('--steps', type=int, default=6)
  ap.add_argument('--repeats', type=int, default=1)
  ap.add_argument('--per_class', type=int, default=64,
                  help='real images per class of the matching methods (DC, DM)')
  ap.add_argument('--name', default='process_scaling')
  args = ap.parse_args()
  if args.steps < BASE_STEPS + 2:
    ap.error(f'--steps must be >= {BASE_STEPS + 2} (the CPU time per step is the difference to '
             f'a {BASE_STEPS}-step run)')

  peak = common.matmul_flops_per_second()
  rows = []
  scratch = tempfile.mkdtemp(prefix='ddjax_process_scaling_')
  try:
    for method in args.methods:
      flops = step_flops(method, args.per_class)
      print(f'{method}: {flops[1] / 1e9:.2f} GFLOP per device on 1 device, '
            f'{flops[2] / 1e9:.2f} on each of 2', flush=True)
      steps = args.steps * METHODS[method][2]
      secs, cpus = {1: [], 2: []}, {1: [], 2: []}
      for r in range(args.repeats):
        for n in (1, 2):
          res = run_arm(method, n, steps, args.per_class,
                        os.path.join(scratch, f'{method}_{n}_{r}'))
          base = run_arm(method, n, BASE_STEPS, args.per_class,
                         os.path.join(scratch, f'{method}_{n}_{r}_base'))
          secs[n].append(res['distill']['sec_per_step'])
          cpus[n].append((res['cpu_seconds'] - base['cpu_seconds'])
                         / (steps - BASE_STEPS))
          print(f'{method}, {n} process(es), repeat {r}: {secs[n][-1]:.4f} s/step, '
                f'{cpus[n][-1]:.4f} CPU s/step', flush=True)
      one, two = statistics.median(secs[1]), statistics.median(secs[2])
      cpu1, cpu2 = statistics.median(cpus[1]), statistics.median(cpus[2])
      rows.append({'method': method, 'steps': steps, 'sec_per_step_1': one, 'sec_per_step_2': two,
                   'all_1': secs[1], 'all_2': secs[2], 'ratio': two / one,
                   'cpu_sec_per_step_1': cpu1, 'cpu_sec_per_step_2': cpu2,
                   'all_cpu_1': cpus[1], 'all_cpu_2': cpus[2], 'cpu_ratio': cpu2 / cpu1,
                   'flops_per_device_1': flops[1], 'flops_per_device_2': flops[2],
                   'flops_ratio': flops[2] / flops[1]})
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  command = 'python benchmarks/' + os.path.basename(__file__) + ' ' + ' '.join(sys.argv[1:])
  table = [f'Each method\'s CPU default, {args.steps} steps per run ({5 * args.steps} for the '
           f'cheap steps of FRePo and KIP; DC, DM: {args.per_class} real images per class), '
           f'median of {args.repeats} interleaved run(s); float32 '
           f'matmul peak in the same run: {peak / 1e9:.1f} GFLOP/s ({os.cpu_count()} cores, '
           'shared with other jobs: the seconds move with the load, compare the ratios). '
           'Wall: the loop\'s s/step. CPU: CPU seconds of all processes per step (a run of '
           f'{args.steps} steps minus one of {BASE_STEPS}), which the load moves far less. Ratio '
           '= 2 processes / 1 process; CPU ratio about 1: the two processes split the step; '
           'about 2: each computes all of it.', '',
           'FLOP ratio: XLA\'s FLOP count per device of the image-update program on a 2-device '
           'mesh over that on 1 device (deterministic; about 0.5 plus the replicated synthetic '
           'side when the real batch is split, 1.0 when every device computes all of it).', '',
           '| method | GFLOP/device, 1 device | 2 devices | FLOP ratio | '
           'wall s/step, 1 process | 2 processes x 1 device | wall ratio | '
           'CPU s/step, 1 process | 2 processes | CPU ratio |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    table.append(f'| {r["method"]} | {r["flops_per_device_1"] / 1e9:.2f} | '
                 f'{r["flops_per_device_2"] / 1e9:.2f} | {r["flops_ratio"]:.2f} | '
                 f'{r["sec_per_step_1"]:.4f} | {r["sec_per_step_2"]:.4f} | '
                 f'{r["ratio"]:.2f}x | {r["cpu_sec_per_step_1"]:.3f} | '
                 f'{r["cpu_sec_per_step_2"]:.3f} | {r["cpu_ratio"]:.2f}x |')
  common.write(args.name, {'matmul_peak_flops': peak, 'steps': args.steps,
                           'per_class': args.per_class, 'rows': rows},
               '\n'.join(table), command)


if __name__ == '__main__':
  main()
