r"""Evaluation training speed under FRePo's protocol at IPC 10 (ConvNet-3 width 64, no norm, the
CPU default eval model; 2000 steps, batch 100, FRePo's augmentation) and accuracy unchanged.

    taskset -c 1 python benchmarks/eval_speed.py            # one core: 1-thread numbers
    python benchmarks/eval_speed.py --arms before after     # both cores (an idle machine)

Arms, each in a fresh process (the allocator settings must precede JAX's backend), in this order:
  before        the path before issue 16's evaluation work: glibc's allocator defaults
                (DDJAX_MALLOC_DEFAULTS=0), ConvNet's first block as conv -> relu -> pool
                (fuse_first_block=False), one network at a time
  malloc        + ddjax's allocator settings (ddjax/runtime/host_memory.py)
  after         + the fused first block (`conv_relu_pool`): ddjax's default on CPU
  together      after, with the 5 networks in one vmapped step (eval.vmap_models=5)
Timing (`--timing-steps`, default 200): a first call of that many steps (compiles), then a second
one timed; seconds per network = compile + 2000 steps at the measured rate, per network of the
group. The compiled chunk's XLA FLOP count per step and network, the achieved GFLOP/s and the
float32 matmul peak (measured in the same process) come with it.
Accuracy (same networks, same keys, all arms that ran): a random real IPC 10 subset of
Fashion-MNIST (seed 0, centred one-hot labels), `--accuracy-networks` networks trained the full
2000 steps, and every arm's 5 networks on a distilled IPC 1 set (`--distilled`, default the
FRePo + ISA 5000-step run in benchmarks/runs; 1000 steps, batch 10).
Writes results/eval_speed.{json,md}.
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
ARMS = {
    'before': dict(env={'DDJAX_MALLOC_DEFAULTS': '0'}, fuse=False, together=1),
    'malloc': dict(env={}, fuse=False, together=1),
    'after': dict(env={}, fuse=True, together=1),
    'together': dict(env={}, fuse=True, together=5),
}
DISTILLED = os.path.join(HERE, 'runs', 'frepo_isa_5000_ipc1_steps5000', 'distilled.npz')
NUM_MODELS = 5


def worker(arm: str, timing_steps: int, accuracy_networks: int, distilled: str) -> dict:
  sys.path.insert(0, ROOT)
  import ddjax  # noqa: F401  (applies the allocator and XLA defaults unless opted out)

  import dataclasses

  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks import common
  from ddjax.augment.frepo import frepo_strategy_for
  from ddjax.config import base_config
  from ddjax.evaluate import evaluate_synthetic, get_protocol
  from ddjax.evaluate.train import _train_fns, train_networks
  from ddjax.models import ConvNet
  from ddjax.runtime import pipeline

  spec = ARMS[arm]
  cfg = base_config()
  data = pipeline.load_data(cfg)
  k = data.num_classes
  labels = np.asarray(data.y_train)
  rng = np.random.default_rng(0)
  idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), 10, replace=False)
                        for c in range(k)])
  x = jnp.asarray(data.x_train[idx])
  y = jnp.asarray(np.eye(k, dtype=np.float32)[labels[idx]] - 1.0 / k)   # centred one-hot
  m = cfg.eval.model
  model = ConvNet(k, depth=m.depth, width=m.width, double_width=m.double_width, norm=m.norm,
                  pooling=m.pooling, fuse_first_block=spec['fuse'])
  protocol = get_protocol('frepo', x.shape[0], augment_ops=frepo_strategy_for(cfg.data.name))
  key = jax.random.PRNGKey(0)
  keys = list(jax.random.split(key, NUM_MODELS))
  out = {'arm': arm, 'malloc_defaults': spec['env'].get('DDJAX_MALLOC_DEFAULTS', '1') != '0',
         'fuse_first_block': spec['fuse'], 'networks_together': spec['together'],
         'protocol_steps': protocol.steps, 'batch': protocol.batch_size,
         'cpus': sorted(os.sched_getaffinity(0)), 'load_before': os.getloadavg()[0],
         'matmul_peak_gflops': common.matmul_flops_per_second() / 1e9}

  # FLOPs of one step of one network, from the compiled chunk the training runs
  group = spec['together']
  _, chunk = _train_fns(model, protocol, tuple(x.shape[1:]), x.shape[0], 'full', group > 1)
  init, _ = _train_fns(model, protocol, tuple(x.shape[1:]), x.shape[0], 'full')
  carry = init(jax.random.PRNGKey(0))
  step_keys = jnp.zeros((2, 2), jnp.uint32)
  if group > 1:
    carry = jax.tree_util.tree_map(lambda a: jnp.stack([a] * group), carry)
    step_keys = jnp.zeros((group, 2, 2), jnp.uint32)
  cost = chunk.lower(carry, x, y, step_keys).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  out['gflop_per_step_network'] = cost['flops'] / 2 / group / 1e9

  short = dataclasses.replace(protocol, steps=timing_steps,
                              warmup_steps=min(protocol.warmup_steps, timing_steps // 2))
  for label in ('first_call_s', 'timed_call_s'):
    t = time.perf_counter()
    jax.block_until_ready(train_networks(keys[:group], model, x, y, short))
    out[label] = time.perf_counter() - t
  per_step = out['timed_call_s'] / timing_steps / group          # seconds per step per network
  out['compile_s'] = max(0.0, out['first_call_s'] - out['timed_call_s'])
  out['s_per_step_network'] = per_step
  out['s_per_network'] = (out['compile_s'] + protocol.steps * group * per_step) / group
  out['gflops'] = out['gflop_per_step_network'] / per_step
  out['fraction_of_peak'] = out['gflops'] / out['matmul_peak_gflops']
  out['load_after_timing'] = os.getloadavg()[0]
  print(json.dumps({k_: v for k_, v in out.items() if k_ != 'cpus'}), file=sys.stderr, flush=True)

  log = lambda line: print(f'[{arm}] {line}', file=sys.stderr, flush=True)
  if accuracy_networks:
    t = time.perf_counter()
    ev = evaluate_synthetic(key, model, x, y, data.x_test, data.y_test, protocol,
                            num_models=NUM_MODELS, krr=True, progress=log,
                            members=list(range(accuracy_networks)), vmap_models=group)
    out['random_ipc10'] = {'accs': ev['accs'], 'krr_accs': ev['krr_accs'],
                           'wall_s': time.perf_counter() - t}
  if distilled and os.path.exists(distilled):
    syn = np.load(distilled)
    p1 = get_protocol('frepo', syn['x'].shape[0], augment_ops=frepo_strategy_for(cfg.data.name))
    t = time.perf_counter()
    ev = evaluate_synthetic(key, model, jnp.asarray(syn['x']), jnp.asarray(syn['y']),
                            data.x_test, data.y_test, p1, num_models=NUM_MODELS, krr=True,
                            progress=log, vmap_models=group)
    out['distilled_ipc1'] = {'accs': ev['accs'], 'krr_accs': ev['krr_accs'],
                             'acc_mean': ev['acc_mean'], 'acc_std': ev['acc_std'],
                             'steps': p1.steps, 'wall_s': time.perf_counter() - t}
  return out


def _table(rows: list[dict], base: str) -> str:
  ref = next((r for r in rows if r['arm'] == base), rows[0])
  lines = ['| arm | allocator | first block | networks together | threads | GFLOP / step / network '
           '| s / step / network | GFLOP/s (of matmul peak) | compile s | s / network (2000 steps) '
           '| speed-up vs before |', '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['arm']} | {'ddjax' if r['malloc_defaults'] else 'glibc'} | "
        f"{'fused' if r['fuse_first_block'] else 'conv, relu, pool'} | {r['networks_together']} | "
        f"{len(r['cpus'])} | {r['gflop_per_step_network']:.2f} | {r['s_per_step_network']:.4f} | "
        f"{r['gflops']:.1f} ({100 * r['fraction_of_peak']:.0f} % of {r['matmul_peak_gflops']:.0f}) | "
        f"{r['compile_s']:.1f} | {r['s_per_network']:.0f} | "
        f"{ref['s_per_network'] / r['s_per_network']:.2f}x |")
  acc = [r for r in rows if 'random_ipc10' in r or 'distilled_ipc1' in r]
  if acc:
    lines += ['', '| arm | random real IPC 10: acc % per network (KRR %) | distilled IPC 1 (FRePo + '
              'ISA): acc % per network | mean ± std (KRR mean) |', '|---|---|---|---|']
    pct = lambda v: ' / '.join(f'{100 * a:.2f}' for a in v)
    for r in acc:
      rnd = r.get('random_ipc10')
      dis = r.get('distilled_ipc1')
      lines.append(
          f"| {r['arm']} | {pct(rnd['accs']) + ' (' + pct(rnd['krr_accs']) + ')' if rnd else '-'} | "
          f"{pct(dis['accs']) if dis else '-'} | "
          + (f"{100 * dis['acc_mean']:.2f} ± {100 * dis['acc_std']:.2f} "
             f"({100 * sum(dis['krr_accs']) / len(dis['krr_accs']):.2f})" if dis else '-') + ' |')
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--arms', nargs='+', default=list(ARMS), choices=list(ARMS))
  ap.add_argument('--timing-steps', type=int, default=200)
  ap.add_argument('--accuracy-networks', type=int, default=2,
                  help='networks of the random IPC 10 set trained the full 2000 steps per arm')
  ap.add_argument('--accuracy-arms', nargs='*', default=['before', 'after', 'together'])
  ap.add_argument('--distilled', default=DISTILLED)
  ap.add_argument('--name', default='eval_speed')
  ap.add_argument('--worker', default='')
  args = ap.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.timing_steps, args.accuracy_networks,
                            args.distilled)))
    return
  sys.path.insert(0, ROOT)
  from benchmarks import common
  rows = []
  for arm in args.arms:
    accuracy = arm in args.accuracy_arms
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', arm,
           '--timing-steps', str(args.timing_steps),
           '--accuracy-networks', str(args.accuracy_networks if accuracy else 0),
           '--distilled', args.distilled if accuracy else '']
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **ARMS[arm]['env']}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
      raise SystemExit(f'arm {arm} failed:\n{done.stderr[-4000:]}')
    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, dict)}), flush=True)
  threads = sorted({len(r['cpus']) for r in rows})
  loads = ', '.join(f"{r['load_before']:.1f}" for r in rows)
  kind = '1-thread numbers, pinned to one core' if threads == [1] else 'unpinned'
  table = _table(rows, 'before') + (
      f"\n\nThreads: {', '.join(map(str, threads))} ({kind}); load average before each arm: "
      f"{loads} (the machine is shared: other sessions' jobs run beside it).")
  command = 'python benchmarks/eval_speed.py ' + ' '.join(sys.argv[1:])
  if threads == [1]:
    command = 'taskset -c 1 ' + command
  common.write(args.name, {'rows': rows, 'timing_steps': args.timing_steps}, table, command)


if __name__ == '__main__':
  main()
