r"""Evaluation training speed under FRePo's protocol at IPC 10 (ConvNet-3 width 64, no norm, the
CPU default eval model; 2000 steps, batch 100, FRePo's augmentation) and accuracy unchanged.

    taskset -c 1 python benchmarks/eval_speed.py            # one core: 1-thread numbers
    python benchmarks/eval_speed.py --arms before after     # both cores (an idle machine)

Arms, each in a fresh process (the allocator settings must precede JAX's backend), in this order:
  before        the path before the evaluation speed work: glibc's allocator defaults
                (DDJAX_MALLOC_DEFAULTS=0), ConvNet's first block as conv -> relu -> pool
                (fuse_first_block=False), one network at a time
  malloc        + ddjax's allocator settings (ddjax/infra/host_memory.py)
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
Interleaved (`--interleaved-rounds`, default 5; 0 = off): one more process with ddjax's allocator
settings times chunks of 10 steps of the first block plain, fused, and fused with 5 networks
together, in turn for that many rounds with the matmul peak measured between them; best and
median per variant. Same process, same moment: the honest ratio on a shared machine, where the
per-arm processes above see different loads.
With `--rounds R` the arms run R times in turn (before, malloc, ..., before, malloc, ...) and each
timing is the median over rounds (the machine is shared; interleaving spreads its noise over the
arms). `--accuracy-from FILE` takes the accuracy entries of an earlier run's JSON instead of
training them again (timing-only reruns). Writes results/eval_speed.{json,md}.
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
  flops = common.xla_flops(chunk.lower(carry, x, y, step_keys).compile())
  out['gflop_per_step_network'] = flops / 2 / group / 1e9

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


def interleaved(rounds: int, steps: int = 10) -> dict:
  """Times of the three ConvNet variants' training chunks, interleaved in this process."""
  sys.path.insert(0, ROOT)
  import ddjax  # noqa: F401

  import jax
  import jax.numpy as jnp
  import numpy as np

  from benchmarks import common
  from ddjax.augment.frepo import frepo_strategy_for
  from ddjax.config import base_config
  from ddjax.evaluate import get_protocol
  from ddjax.evaluate.train import _train_fns
  from ddjax.models import ConvNet
  from ddjax.models.training import stack_carries

  cfg = base_config()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(100, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(np.eye(10, dtype=np.float32)[np.arange(100) % 10] - 0.1)
  protocol = get_protocol('frepo', 100, augment_ops=frepo_strategy_for(cfg.data.name))
  m = cfg.eval.model
  variants = {}
  for name, fuse, group in (('plain first block, 1 network', False, 1),
                            ('fused first block, 1 network', True, 1),
                            ('fused first block, 5 networks together', True, 5)):
    model = ConvNet(10, depth=m.depth, width=m.width, norm=m.norm, fuse_first_block=fuse)
    init, _ = _train_fns(model, protocol, (28, 28, 1), 100, 'full')
    _, chunk = _train_fns(model, protocol, (28, 28, 1), 100, 'full', group > 1)
    keys = jax.random.split(jax.random.PRNGKey(1), group * 2).reshape(group, 2, 2)
    carry = stack_carries([init(k) for k in jax.random.split(jax.random.PRNGKey(0), group)])
    if group == 1:
      carry, keys = jax.tree_util.tree_map(lambda a: a[0], carry), keys[0]
    flops = common.xla_flops(chunk.lower(carry, x, y, keys).compile())
    carry, _ = chunk(carry, x, y, keys)
    jax.block_until_ready(carry)
    variants[name] = dict(chunk=chunk, carry=carry, keys=keys, group=group, times=[],
                          gflop=flops / 2 / group / 1e9)
  peaks = []
  for _ in range(rounds):
    for v in variants.values():
      t = time.perf_counter()
      for _ in range(steps // 2):
        v['carry'], _ = v['chunk'](v['carry'], x, y, v['keys'])
      jax.block_until_ready(v['carry'])
      v['times'].append((time.perf_counter() - t) / (steps // 2 * 2) / v['group'])
    peaks.append(common.matmul_flops_per_second(repeats=3) / 1e9)
  out = {'rounds': rounds, 'steps_per_timing': steps, 'matmul_peak_gflops': max(peaks),
         'matmul_peaks': peaks, 'cpus': sorted(os.sched_getaffinity(0)),
         'load': os.getloadavg()[0], 'variants': {}}
  for name, v in variants.items():
    out['variants'][name] = {'s_per_step_network_best': min(v['times']),
                             's_per_step_network_median': float(np.median(v['times'])),
                             'times': v['times'], 'gflop_per_step_network': v['gflop']}
  return out


def _interleaved_table(res: dict) -> str:
  base = res['variants']['plain first block, 1 network']['s_per_step_network_median']
  lines = [f"Interleaved in one process ({len(res['cpus'])} thread(s), {res['rounds']} rounds of "
           f"{res['steps_per_timing']} steps each, ddjax's allocator settings; matmul peak best "
           f"{res['matmul_peak_gflops']:.0f} GFLOP/s, {', '.join(f'{p:.0f}' for p in res['matmul_peaks'])}"
           ' per round):', '',
           '| variant | s / step / network: median (best) | GFLOP/s at the median (of the best '
           'peak) | s / network for 2000 steps at the median | vs plain |', '|---|---|---|---|---|']
  for name, v in res['variants'].items():
    med = v['s_per_step_network_median']
    gflops = v['gflop_per_step_network'] / med
    lines.append(f"| {name} | {med:.4f} ({v['s_per_step_network_best']:.4f}) | {gflops:.1f} "
                 f"({100 * gflops / res['matmul_peak_gflops']:.0f} %) | {2000 * med:.0f} | "
                 f"{base / med:.2f}x |")
  return '\n'.join(lines)


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
  ap.add_argument('--rounds', type=int, default=1)
  ap.add_argument('--accuracy-from', default='',
                  help="an earlier run's JSON whose accuracy entries are kept (no accuracy runs)")
  ap.add_argument('--name', default='eval_speed')
  ap.add_argument('--interleaved-rounds', type=int, default=5)
  ap.add_argument('--worker', default='')
  args = ap.parse_args()
  if args.worker == 'interleaved':
    print(json.dumps(interleaved(args.interleaved_rounds)))
    return
  if args.worker:
    print(json.dumps(worker(args.worker, args.timing_steps, args.accuracy_networks,
                            args.distilled)))
    return
  sys.path.insert(0, ROOT)
  from benchmarks import common
  import numpy as np
  earlier = {}
  if args.accuracy_from:
    with open(args.accuracy_from) as f:
      earlier = {r['arm']: r for r in json.load(f)['rows']}
  runs = {arm: [] for arm in args.arms}
  for r in range(args.rounds):
    for arm in args.arms:
      accuracy = r == 0 and arm in args.accuracy_arms and not args.accuracy_from
      cmd = [sys.executable, os.path.abspath(__file__), '--worker', arm,
             '--timing-steps', str(args.timing_steps),
             '--accuracy-networks', str(args.accuracy_networks if accuracy else 0),
             '--distilled', args.distilled if accuracy else '']
      env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **ARMS[arm]['env']}
      done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
      if done.returncode:
        raise SystemExit(f'arm {arm} failed:\n{done.stderr[-4000:]}')
      runs[arm].append(json.loads(done.stdout.strip().splitlines()[-1]))
      print(json.dumps({k: v for k, v in runs[arm][-1].items() if not isinstance(v, dict)}),
            flush=True)
  rows = []
  for arm, done in runs.items():
    row = dict(done[0])
    for key in ('s_per_step_network', 'compile_s', 's_per_network', 'matmul_peak_gflops',
                'load_before'):
      row[key] = float(np.median([d[key] for d in done]))
    row['gflops'] = row['gflop_per_step_network'] / row['s_per_step_network']
    row['fraction_of_peak'] = row['gflops'] / row['matmul_peak_gflops']
    row['rounds'] = done
    for key in ('random_ipc10', 'distilled_ipc1'):
      if key in earlier.get(arm, {}):
        row[key] = earlier[arm][key]
    rows.append(row)
  inter = None
  if args.interleaved_rounds:
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', 'interleaved',
           '--interleaved-rounds', str(args.interleaved_rounds)]
    done = subprocess.run(cmd, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode:
      raise SystemExit(f'interleaved timing failed:\n{done.stderr[-4000:]}')
    inter = json.loads(done.stdout.strip().splitlines()[-1])
  threads = sorted({len(r['cpus']) for r in rows})
  loads = ', '.join(f"{d['load_before']:.1f}" for r in rows for d in r['rounds'])
  kind = '1-thread numbers, pinned to one core' if threads == [1] else 'unpinned'
  table = _table(rows, 'before') + (
      f"\n\nThreads: {', '.join(map(str, threads))} ({kind}); timings the median of "
      f"{args.rounds} round(s) of the arms in turn; load average before each run: {loads} (the "
      "machine is shared: other jobs run beside it)."
      + (f' Accuracies from `{args.accuracy_from}`.' if args.accuracy_from else ''))
  if inter is not None:
    table += '\n\n' + _interleaved_table(inter)
  command = 'python benchmarks/eval_speed.py ' + ' '.join(sys.argv[1:])
  if threads == [1]:
    command = 'taskset -c 1 ' + command
  common.write(args.name, {'rows': rows, 'timing_steps': args.timing_steps,
                           'interleaved': inter}, table, command)


if __name__ == '__main__':
  main()
