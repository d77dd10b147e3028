r"""Seconds per distillation step with the CPU split into N XLA devices, measured in one run.

    python benchmarks/cpu_devices.py [--config frepo_isa] [--ipc 1 10] [--devices 1 2]
                                     [--steps 300] [--repeats 2] [--name cpu_devices]

XLA:CPU makes one device per process unless `XLA_FLAGS=--xla_force_host_platform_device_count=N`
says otherwise. ddjax's loop always splits the real batch over a mesh of every device
(`ddjax.infra.sharding`), so with N devices each device computes 1/N of the real batch's
features and gradients, and the results are summed across devices. The question it answers: does
a step that barely uses a second thread on one device (FRePo's CPU default) run faster split over
two? Measured (results/cpu_devices.md): no, 0.79x at IPC 10 (0.361 s against 0.285).

Each arm is a fresh `python -m ddjax.main` process (the flag is read once, when JAX's CPU backend
starts) running `--steps` distillation steps with no evaluation; the arms run interleaved
(1 2 1 2 ...) so that machine noise hits them alike, and the seconds per step are the loop's own
steady-state figure (compilation excluded; `results.json` -> distill.sec_per_step). The matmul
peak of this machine, measured in the same run, is reported beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402

DEVICE_FLAG = '--xla_force_host_platform_device_count'


def run_arm(config: str, ipc: int, devices: int, steps: int, workdir: str) -> dict:
  """One `ddjax.main` run on `devices` CPU devices; returns its results.json."""
  flags = ' '.join(t for t in os.environ.get('XLA_FLAGS', '').split()
                   if not t.startswith(DEVICE_FLAG))
  env = dict(os.environ, XLA_FLAGS=f'{flags} {DEVICE_FLAG}={devices}'.strip(),
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  cmd = [sys.executable, '-m', 'ddjax.main', f'--config={ROOT}/configs/{config}.py',
         f'--workdir={workdir}', '--restart', f'--config.distill.ipc={ipc}',
         f'--config.distill.steps={steps}', '--config.eval.num_models=0',
         '--config.eval.krr=False', f'--config.checkpoint.every={steps}']
  out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
  if out.returncode != 0:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stderr[-3000:]}')
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  if results['distill']['devices'] != devices:
    raise RuntimeError(f'asked for {devices} devices, the run had {results["distill"]["devices"]}')
  return results


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--config', default='frepo_isa', help='a config under configs/')
  ap.add_argument('--ipc', type=int, nargs='+', default=[1, 10])
  ap.add_argument('--devices', type=int, nargs='+', default=[1, 2])
  ap.add_argument('--steps', type=int, default=300)
  ap.add_argument('--repeats', type=int, default=2)
  ap.add_argument('--name', default='cpu_devices')
  args = ap.parse_args()

  peak = common.matmul_flops_per_second()
  rows = []
  scratch = tempfile.mkdtemp(prefix='ddjax_cpu_devices_')
  try:
    for ipc in args.ipc:
      secs = {n: [] for n in args.devices}
      for r in range(args.repeats):
        for n in args.devices:
          res = run_arm(args.config, ipc, n, args.steps, os.path.join(scratch, f'{ipc}_{n}_{r}'))
          secs[n].append(res['distill']['sec_per_step'])
          print(f'IPC {ipc}, {n} device(s), repeat {r}: {secs[n][-1]:.4f} s/step', flush=True)
      base = statistics.median(secs[args.devices[0]])
      for n in args.devices:
        med = statistics.median(secs[n])
        rows.append({'ipc': ipc, 'devices': n, 'sec_per_step': med, 'all': secs[n],
                     'speedup': base / med})
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  command = 'python benchmarks/' + os.path.basename(__file__) + ' ' + ' '.join(sys.argv[1:])
  table = [f'`{args.config}` CPU default, {args.steps} steps per run, median of {args.repeats} '
           f'interleaved runs; float32 matmul peak in the same run: {peak / 1e9:.1f} GFLOP/s '
           f'({os.cpu_count()} cores).', '',
           '| IPC | CPU devices | s/step | runs | speed-up over 1 device |', '|---|---|---|---|---|']
  for r in rows:
    table.append(f'| {r["ipc"]} | {r["devices"]} | {r["sec_per_step"]:.4f} | '
                 f'{", ".join(f"{s:.4f}" for s in r["all"])} | {r["speedup"]:.2f}x |')
  common.write(args.name, {'matmul_peak_flops': peak,
                           'config': args.config, 'steps': args.steps, 'rows': rows},
               '\n'.join(table), command)


if __name__ == '__main__':
  main()
