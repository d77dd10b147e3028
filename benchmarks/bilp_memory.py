r"""Peak memory and time of BiLP's ITE scores of one DC batch, with and without chunking the
per-sample gradients (`bilp.ite_chunk`), one fresh process per setting (peak RSS is per process).

    python benchmarks/bilp_memory.py --settings 64:0 64:32 256:32 [--ite first_order]

A setting is PER_CLASS:CHUNK (CHUNK 0 = everything vmapped at once). Setting: DC's ConvNet-3
(width 128, instance norm) on 28x28x1 inputs, 10 classes, IPC 1; `AdaptivePruning.ite_scores`
jitted, timed on its second call. Output: benchmarks/results/bilp_memory.{json,md}.
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
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
from ddjax.distill.bilp import AdaptivePruning
from ddjax.distill.dc import DC, dc_loops
from ddjax.models import build_model
per, chunk, method = int(sys.argv[1]), int(sys.argv[2]) or None, sys.argv[3]
K, SHAPE = 10, (28, 28, 1)
outer, inner = dc_loops(1)
dc = DC(build_model('convnet', K, depth=3, width=128, norm='instance'), SHAPE, K,
        outer_loop=outer, inner_loop=inner)
bilp = AdaptivePruning(dc, K * per, ite_method=method, chunk_size=chunk)
rng = np.random.default_rng(0)
batch = {'x': jnp.asarray(rng.normal(size=(K * per,) + SHAPE), jnp.float32),
         'y': jnp.eye(K)[np.repeat(np.arange(K), per)]}
syn = {'x': jnp.asarray(rng.normal(size=(K,) + SHAPE), jnp.float32), 'y': jnp.eye(K)}
state = bilp.init(syn, jax.random.PRNGKey(0))
f = jax.jit(bilp.ite_scores)
t0 = time.perf_counter(); f(syn, state.wrapped_state, batch, jax.random.PRNGKey(1)).block_until_ready()
t1 = time.perf_counter(); f(syn, state.wrapped_state, batch, jax.random.PRNGKey(2)).block_until_ready()
t2 = time.perf_counter()
print(json.dumps({'first_call_s': t1 - t0, 'seconds': t2 - t1,
                  'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))
'''


def main():
  from benchmarks import common
  ap = argparse.ArgumentParser()
  ap.add_argument('--settings', nargs='+', default=['64:0', '64:32', '256:32'])
  ap.add_argument('--ite', default='first_order')
  args = ap.parse_args()
  rows = []
  for setting in args.settings:
    per, chunk = (int(v) for v in setting.split(':'))
    proc = subprocess.run([sys.executable, '-c', PROBE, str(per), str(chunk), args.ite],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
      row = {'per_class': per, 'chunk': chunk, 'error': f'exit {proc.returncode} '
             f'(-9: killed, out of memory)', 'stderr': proc.stderr[-500:]}
    else:
      row = {'per_class': per, 'chunk': chunk, **json.loads(proc.stdout.strip().splitlines()[-1])}
    print(row, flush=True)
    rows.append(row)
  table = ['| real batch | ite_chunk | ITE of the batch (s) | first call incl. compile (s) '
           '| peak RSS (GB) |', '|---|---|---|---|---|']
  for r in rows:
    chunk = r['chunk'] or 'none (all vmapped)'
    if 'error' in r:
      table.append(f"| 10 x {r['per_class']} | {chunk} | {r['error']} | | |")
    else:
      table.append(f"| 10 x {r['per_class']} | {chunk} | {r['seconds']:.1f} | "
                   f"{r['first_call_s']:.1f} | {r['peak_rss_gb']:.2f} |")
  common.write('bilp_memory', {'ite': args.ite, 'rows': rows}, '\n'.join(table),
               'python benchmarks/bilp_memory.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  main()
