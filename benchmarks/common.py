"""Shared helpers of the benchmarks: machine facts and JSON + markdown output."""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

HERE = os.path.dirname(os.path.abspath(__file__))


def method_overrides(items, method: str) -> list[str]:
  """The 'KEY=VALUE' parts of the `--set METHOD:KEY=VALUE` items that name `method`."""
  out = []
  for item in items:
    name, sep, assignment = item.partition(':')
    if not sep or '=' not in assignment:
      raise ValueError(f'--set {item!r}: write METHOD:KEY=VALUE, e.g. edc:observer.ensemble=LeNet')
    if name == method:
      out.append(assignment)
  return out


def machine() -> dict:
  return {'platform': platform.platform(), 'python': sys.version.split()[0],
          'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': [str(d) for d in jax.devices()], 'cpu_count': os.cpu_count(),
          'date': time.strftime('%Y-%m-%d %H:%M')}


def matmul_flops_per_second(n: int = 2048, repeats: int = 10) -> float:
  """Measured float32 matmul throughput (2 n^3 FLOP per product), the yardstick for step FLOP/s."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def call_times(fn, args, repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls fn(*args), each waited for, after one untimed warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return times


def xla_flops(compiled) -> float:
  """XLA's FLOP count of a compiled program (`jax.jit(f).lower(...).compile()`): nan when the
  backend gives no cost analysis, 0 for a program without arithmetic (no 'flops' entry)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if not cost:
    return float('nan')
  return float(cost.get('flops', 0.0))


def write(name: str, payload: dict, table: str, command: str) -> None:
  """benchmarks/results/<name>.json and <name>.md (the table plus the command that made it)."""
  out = os.path.join(HERE, 'results')
  os.makedirs(out, exist_ok=True)
  payload = {'command': command, 'machine': machine(), **payload}
  md = (f'Made by `{command}` on {payload["machine"]["date"]} '
        f'({payload["machine"]["backend"]}, {payload["machine"]["cpu_count"]} cores).\n\n'
        + table + '\n')
  for ext, text in (('.json', json.dumps(payload, indent=2)), ('.md', md)):
    path = os.path.join(out, name + ext)
    with open(path + '.tmp', 'w') as f:      # atomic: a concurrent reader sees old or new
      f.write(text)
    os.replace(path + '.tmp', path)
  print(table)
