r"""Memory of BiLP + DC: XLA's temporaries of each program of the BiLP step (the reselection with
its ITE scores, the image update, the network update) and, when run, the process's peak RSS and
the ITE's time, one fresh process per setting (peak RSS is per process).

    python benchmarks/bilp_memory.py --settings 1:256:0 10:256:0 10:256:64 [--compile-only]

A setting is IPC:PER_CLASS:CHUNK (CHUNK = `bilp.ite_chunk`, 0 = automatic,
`ddjax.scoring.ite.auto_chunk`). Setting: DC's ConvNet-3 (width 128, instance norm) on 28x28x1
inputs, 10 classes, DC's loops for the IPC (IPC 10: 10 x 50), first-order ITE. The programs are
those the run compiles (`make_host_step`): the reselection (`before_loss_at` on a reselection
step), the image update, the network training (`update_at('train')`, IPC >= 10). XLA's
`memory_analysis().temp_size_in_bytes` of each is read after compilation; without
--compile-only the ITE is also run twice (timed on its second call) and the peak RSS recorded.
Output: benchmarks/results/bilp_memory.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROBE = r'''
import functools, json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
from ddjax import transforms as T
from ddjax.distill import step as step_lib
from ddjax.distill.bilp import AdaptivePruning
from ddjax.distill.dc import DC, dc_loops
from ddjax.models import build_model
ipc, per, chunk, run = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == '1'
K, SHAPE = 10, (28, 28, 1)
outer, inner = dc_loops(ipc)
dc = DC(build_model('convnet', K, depth=3, width=128, norm='instance'), SHAPE, K,
        outer_loop=outer, inner_loop=inner)
bilp = AdaptivePruning(dc, K * per, chunk_size=chunk or None)
rng = np.random.default_rng(0)
batch = {'x': jnp.asarray(rng.normal(size=(K * per,) + SHAPE), jnp.float32),
         'y': jnp.eye(K)[np.repeat(np.arange(K), per)]}
syn = {'x': jnp.asarray(rng.normal(size=(K * ipc,) + SHAPE), jnp.float32),
       'y': jnp.eye(K).repeat(ipc, 0)}
opt = step_lib.make_syn_optimizer('sgd', 0.1, 0.0, 100, learn_label=False, momentum=0.5)
state = step_lib.init_state(bilp, T.identity(), opt, syn, jax.random.PRNGKey(0))
parts = step_lib.make_host_step(bilp, T.identity(), opt, jnp.repeat(jnp.arange(K), ipc))
key = jax.random.PRNGKey(1)
programs = {'reselection (ITE)': functools.partial(parts.prepare, phase=parts.phase(0)),
            'image update': parts.image}
if outer > 1:
  programs['network training'] = functools.partial(parts.finish, phase=parts.phase(1))
out = {}
for name, fn in programs.items():
  t = time.perf_counter()
  compiled = jax.jit(fn).lower(state, batch, key).compile()
  out[name] = {'temp_gb': compiled.memory_analysis().temp_size_in_bytes / 1e9,
               'compile_s': time.perf_counter() - t}
if run:
  f = jax.jit(bilp.ite_scores)
  t0 = time.perf_counter(); f(syn, state.distiller_state.wrapped_state, batch, key).block_until_ready()
  t1 = time.perf_counter(); f(syn, state.distiller_state.wrapped_state, batch, key).block_until_ready()
  t2 = time.perf_counter()
  out['ite'] = {'first_call_s': t1 - t0, 'seconds': t2 - t1,
                'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
print(json.dumps(out))
'''


def main():
  from benchmarks import common
  ap = argparse.ArgumentParser()
  ap.add_argument('--settings', nargs='+', default=['1:256:0', '10:256:0'])
  ap.add_argument('--compile-only', action='store_true')
  args = ap.parse_args()
  rows = []
  for setting in args.settings:
    ipc, per, chunk = (int(v) for v in setting.split(':'))
    proc = subprocess.run([sys.executable, '-c', PROBE, str(ipc), str(per), str(chunk),
                           '0' if args.compile_only else '1'],
                          cwd=ROOT, capture_output=True, text=True)
    row = {'ipc': ipc, 'per_class': per, 'chunk': chunk}
    if proc.returncode != 0:
      row.update(error=f'exit {proc.returncode} (-9: killed, out of memory)',
                 stderr=proc.stderr[-500:])
    else:
      row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(row, flush=True)
    rows.append(row)
  table = ['| IPC | real batch | ite_chunk | program | XLA temporaries (GB) | compile (s) '
           '| ITE run (s) | peak RSS (GB) |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    chunk = r['chunk'] or '0 (auto)'
    if 'error' in r:
      table.append(f"| {r['ipc']} | 10 x {r['per_class']} | {chunk} | - | {r['error']} | | | |")
      continue
    ite = r.get('ite', {})
    for name, p in r.items():
      if isinstance(p, dict) and 'temp_gb' in p:
        run = (f"{ite['seconds']:.1f} | {ite['peak_rss_gb']:.2f}"
               if ite and name.startswith('reselection') else '- | -')
        table.append(f"| {r['ipc']} | 10 x {r['per_class']} | {chunk} | {name} "
                     f"| {p['temp_gb']:.2f} | {p['compile_s']:.1f} | {run} |")
  command = 'python benchmarks/bilp_memory.py ' + ' '.join(sys.argv[1:])
  common.write('bilp_memory', {'rows': rows, 'threads': len(os.sched_getaffinity(0))},
               '\n'.join(table), command)


if __name__ == '__main__':
  main()
