r"""Cost of a distillation step and of ISA + drop-easiest on it, measured in one run.

    python benchmarks/step_cost.py [--ipc 1 10] [--repeats 5] [--steps 40]
    python benchmarks/step_cost.py --config rfad --name step_cost_rfad --ipc 1 10
    python benchmarks/step_cost.py --config frepo --preset paper --name step_cost_paper

For each IPC it builds the default CPU config's step (configs/<--config>.py; RFAD with its MSE
loss in both arms, the loss ISA's closed form integrates) twice (plain; drop_easiest(0.2) + isa(1))
and times them interleaved (A B A B ...) so that machine noise hits both alike; it reports the
median seconds per step, the ratio, the XLA FLOP count of the step and the FLOP/s it achieves next
to the measured float32 matmul peak of this machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'configs'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddjax import transforms as T  # noqa: E402
from ddjax.distill import step as step_lib  # noqa: E402
from ddjax.runtime import loop, pipeline  # noqa: E402


def build(cfg, prep, with_isa: bool):
  plan = pipeline.make_plan(cfg, prep)
  distiller = pipeline.build_distiller(cfg, plan, prep, cfg.distill.batch_size)
  optimizer = pipeline.make_optimizer(cfg, plan)
  transform = T.chain(T.drop_easiest(0.2), T.isa(1.0)) if with_isa else T.identity()
  param = pipeline.set_parameterisation(cfg)
  syn, classes = pipeline.initial_synthetic(cfg, plan, prep, distiller, param)
  state = step_lib.init_state(distiller, transform, optimizer, syn, jax.random.PRNGKey(0), param)
  step = jax.jit(step_lib.make_step(distiller, transform, optimizer, jnp.asarray(classes), param))
  return step, state


def time_steps(step, state, batches, keys):
  t = time.perf_counter()
  for b, k in zip(batches, keys):
    state, m = step(state, b, k)
  jax.block_until_ready(state)
  return (time.perf_counter() - t) / len(batches), state


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--ipc', type=int, nargs='+', default=[1, 10])
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--steps', type=int, default=40)
  ap.add_argument('--config', default='frepo', help='a config under configs/ (frepo, kip, rfad)')
  ap.add_argument('--preset', default='', help="the config's preset (e.g. paper)")
  ap.add_argument('--name', default='step_cost', help='results file under benchmarks/results')
  args = ap.parse_args()
  peak = common.matmul_flops_per_second()
  rows = []
  for ipc in args.ipc:
    cfg = __import__(args.config).get_config(args.preset)
    cfg.distill.ipc = ipc
    if cfg.method == 'rfad':
      cfg.rfad.loss = "mse"
    prep = pipeline.load_data(cfg)
    sampler = loop.make_sampler(prep.x_train, prep.targets_train, cfg.distill.batch_size, 0)
    batches = [jax.device_put(sampler(s)) for s in range(args.steps)]
    keys = [jax.random.PRNGKey(s) for s in range(args.steps)]
    built = {name: build(cfg, prep, name == 'isa') for name in ('plain', 'isa')}
    flops = {}
    for name, (step, state) in built.items():
      compiled = step.lower(state, batches[0], keys[0]).compile()
      flops[name] = common.xla_flops(compiled)
      time_steps(step, state, batches[:3], keys[:3])  # warm-up
    times = {'plain': [], 'isa': []}
    for _ in range(args.repeats):
      for name in ('plain', 'isa'):
        step, state = built[name]
        sec, state = time_steps(step, state, batches, keys)
        built[name] = (step, state)
        times[name].append(sec)
    med = {k: float(np.median(v)) for k, v in times.items()}
    rows.append({'config': args.config + (':' + args.preset if args.preset else ''), 'ipc': ipc, 'batch': cfg.distill.batch_size,
                 'width': cfg.rfad.width if cfg.method == 'rfad' else cfg.model.width,
                 'sec_per_step': med, 'all_sec_per_step': times,
                 'isa_overhead': med['isa'] / med['plain'] - 1,
                 'step_gflop': {k: v / 1e9 for k, v in flops.items()},
                 'achieved_gflops': {k: flops[k] / med[k] / 1e9 for k in med},
                 'steps_per_sec': {k: 1 / v for k, v in med.items()}})
  table = [f"{args.config}{':' + args.preset if args.preset else ''}:", '', '| IPC | plain s/step | +ISA+drop s/step | ISA overhead | steps/s (plain) | GFLOP/step '
           '| GFLOP/step +ISA+drop | achieved GFLOP/s | matmul peak GFLOP/s |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    table.append(f"| {r['ipc']} | {r['sec_per_step']['plain']:.4f} | {r['sec_per_step']['isa']:.4f} "
                 f"| {100 * r['isa_overhead']:+.1f}% | {r['steps_per_sec']['plain']:.2f} "
                 f"| {r['step_gflop']['plain']:.2f} | {r['step_gflop']['isa']:.2f} "
                 f"| {r['achieved_gflops']['plain']:.1f} "
                 f"| {peak / 1e9:.1f} |")
  common.write(args.name, {'rows': rows, 'matmul_peak_gflops': peak / 1e9}, '\n'.join(table),
               'python benchmarks/step_cost.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  main()
