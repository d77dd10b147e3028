r"""A/B of ddjax's XLA flag defaults (`ddjax/infra/xla_flags.py`) on the workloads they touch.

    python benchmarks/xla_flags.py [--rounds 2]

Each arm runs in a fresh process (XLA reads its flags once): 'ddjax' with ddjax's defaults,
'xla' with XLA's own (`DDJAX_XLA_DEFAULTS=0`), alternating for --rounds rounds so that machine
noise hits both. Each process measures the float32 matmul peak, then times: a DC step and a DM
step at IPC 1 with the official defaults (ConvNet-3 width 128, instance norm, 256 real images per
class, 28 x 28 x 1), a FRePo step of the CPU default (configs/frepo.py, IPC 1) and 100 steps of
FRePo-protocol evaluation training (ConvNet-3 width 64, IPC 10), and reports XLA's temporary
memory of the DC step. Writes results/xla_flags.{json,md} with the medians per arm.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker() -> dict:
  sys.path.insert(0, ROOT)
  sys.path.insert(0, os.path.join(ROOT, 'configs'))
  import ddjax  # noqa: F401  (applies the defaults unless DDJAX_XLA_DEFAULTS=0)
  import dataclasses

  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks import common
  from ddjax import transforms as T
  from ddjax.distill import step as step_lib
  from ddjax.distill.dc import DC
  from ddjax.distill.dm import DM
  from ddjax.evaluate.protocols import get_protocol
  from ddjax.evaluate.train import train_from_scratch
  from ddjax.models import build_model

  out = {'xla_flags': os.environ.get('XLA_FLAGS', ''),
         'matmul_peak_gflops': common.matmul_flops_per_second() / 1e9}
  k, shape = 10, (28, 28, 1)
  rng = np.random.default_rng(0)

  def timed(step, state, batch, n):
    state, _ = step(state, batch, jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    t = time.perf_counter()
    for i in range(n):
      state, _ = step(state, batch, jax.random.PRNGKey(i + 1))
    jax.block_until_ready(state)
    return (time.perf_counter() - t) / n

  model = build_model('convnet', k, depth=3, width=128, norm='instance', pooling='avg')
  labels = np.repeat(np.arange(k), 256)
  batch = {'x': jnp.asarray(rng.normal(size=(len(labels),) + shape), jnp.float32),
           'y': jnp.asarray(np.eye(k, dtype=np.float32)[labels])}
  syn = {'x': jnp.asarray(rng.normal(size=(k,) + shape), jnp.float32),
         'y': jnp.eye(k, dtype=jnp.float32)}
  for name, distiller, n in (('dc_step_s', DC(model, shape, k, 1, 1), 2),
                             ('dm_step_s', DM(model, shape, k, dsa_strategy=''), 4)):
    opt = step_lib.make_syn_optimizer('sgd', 0.1, 0.0, 1000, learn_label=False,
                                      schedule='constant', momentum=0.5)
    state = step_lib.init_state(distiller, T.identity(), opt, syn, jax.random.PRNGKey(0))
    step = jax.jit(step_lib.make_step(distiller, T.identity(), opt, jnp.arange(k)))
    if name == 'dc_step_s':
      compiled = step.lower(state, batch, jax.random.PRNGKey(0)).compile()
      out['dc_temp_gb'] = compiled.memory_analysis().temp_size_in_bytes / 1e9
    out[name] = timed(step, state, batch, n)

  import frepo as frepo_config
  from ddjax.runtime import loop, pipeline
  cfg = frepo_config.get_config()
  cfg.distill.ipc = 1
  prep = pipeline.load_data(cfg)
  sampler = loop.make_sampler(prep.x_train, prep.targets_train, cfg.distill.batch_size, 0)
  plan = pipeline.make_plan(cfg, prep)
  distiller = pipeline.build_distiller(cfg, plan, prep, cfg.distill.batch_size)
  optimizer = pipeline.make_optimizer(cfg, plan)
  fsyn, classes = pipeline.initial_synthetic(cfg, plan, prep, distiller)
  state = step_lib.init_state(distiller, T.identity(), optimizer, fsyn, jax.random.PRNGKey(0))
  step = jax.jit(step_lib.make_step(distiller, T.identity(), optimizer, jnp.asarray(classes)))
  fbatch = jax.device_put(sampler(0))
  out['frepo_step_s'] = timed(step, state, fbatch, 20)

  emodel = build_model('convnet', k, depth=3, width=64, norm='none', pooling='avg')
  proto = dataclasses.replace(get_protocol('frepo', 10 * k, k), steps=100, warmup_steps=10)
  x = jnp.asarray(rng.normal(size=(10 * k,) + shape), jnp.float32)
  y = jnp.repeat(jnp.eye(k), 10, axis=0)
  jax.block_until_ready(train_from_scratch(jax.random.PRNGKey(0), emodel, x, y, proto))
  t = time.perf_counter()
  jax.block_until_ready(train_from_scratch(jax.random.PRNGKey(1), emodel, x, y, proto))
  out['eval_step_s'] = (time.perf_counter() - t) / 100
  return out


def main():
  if '--worker' in sys.argv:
    print('RESULT ' + json.dumps(worker()), flush=True)
    return
  ap = argparse.ArgumentParser()
  ap.add_argument('--rounds', type=int, default=2)
  args = ap.parse_args()
  sys.path.insert(0, ROOT)
  import numpy as np
  from benchmarks import common
  runs = {'ddjax': [], 'xla': []}
  for _ in range(args.rounds):
    for arm in ('ddjax', 'xla'):
      env = dict(os.environ)
      env['DDJAX_XLA_DEFAULTS'] = '1' if arm == 'ddjax' else '0'
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker'], env=env,
                            capture_output=True, text=True, check=True, cwd=ROOT)
      line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
      runs[arm].append(json.loads(line[len('RESULT '):]))
      print(arm, runs[arm][-1], flush=True)
  keys = ('matmul_peak_gflops', 'dc_step_s', 'dc_temp_gb', 'dm_step_s', 'frepo_step_s',
          'eval_step_s')
  med = {arm: {k: float(np.median([r[k] for r in rs])) for k in keys} for arm, rs in runs.items()}
  table = ['| measure | ddjax defaults | XLA defaults | ratio ddjax / XLA |', '|---|---|---|---|']
  for k in keys:
    table.append(f"| {k} | {med['ddjax'][k]:.4g} | {med['xla'][k]:.4g} "
                 f"| {med['ddjax'][k] / med['xla'][k]:.2f} |")
  command = 'python benchmarks/xla_flags.py ' + ' '.join(sys.argv[1:])
  common.write('xla_flags', {'median': med, 'runs': runs,
                             'flags': runs['ddjax'][0]['xla_flags']}, '\n'.join(table), command)
  print('\n'.join(table))


if __name__ == '__main__':
  main()
