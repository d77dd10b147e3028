r"""Expert-trajectory buffer throughput: E experts in one vmapped step vs one expert at a time.

    python benchmarks/expert_buffer.py [--widths 32 128] [--experts 4] [--steps 5]

One expert step is MTT's (`ddjax.distill.experts`): a batch of 256 Fashion-MNIST-shaped images
(28x28x1, the real training set when it is installed, else random), DSA
color_crop_cutout_flip_scale_rotate (mode 'S'), ConvNet-3 with instance norm at each width,
cross-entropy, SGD lr 0.01. Per width, after compilation and interleaved round by round, the
seconds of one step of each of E experts in three ways (`ddjax.distill.experts` modes): one
jitted vmapped step of E experts ('vmap', the accelerator default), E experts' steps unrolled in
one jitted call ('loop' with expert.parallel=E) and one jitted call per expert ('loop' with
chunks of 1, the CPU default), each the median of --steps rounds, with XLA's FLOP count and the
FLOP/s reached next to this machine's float32 matmul peak measured in the same run. Experts per
hour are EXTRAPOLATED from the step time: a full Fashion-MNIST epoch is 235 steps (60000 / 256),
and an expert is 8 epochs (the CPU default) or 50 (MTT's); file writes and the final test
accuracy are left out (the end-to-end row below measures them on a --subset of the data).
Writes results/expert_buffer.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddjax.distill import experts  # noqa: E402
from ddjax.models import build_model  # noqa: E402

K, SHAPE, BATCH, STRATEGY = 10, (28, 28, 1), 256, 'color_crop_cutout_flip_scale_rotate'
FULL_STEPS = -(-60000 // BATCH)       # one Fashion-MNIST epoch of epoch_batches


def _data():
  """(PreparedData or None, x (N, 28, 28, 1), y (N,)): the real training set when installed."""
  try:
    from ddjax.config import method_config
    from ddjax.runtime.pipeline import load_data
    cfg = method_config('mtt')
    data = load_data(cfg)
    return data, data.x_train, data.y_train
  except Exception as e:  # noqa: BLE001 - any missing dataset: time on random images
    print(f'Fashion-MNIST unavailable ({e}); timing on random images', flush=True)
    rng = np.random.default_rng(0)
    return None, rng.normal(size=(4096,) + SHAPE).astype(np.float32), rng.integers(0, K, 4096)


def _time_width(width: int, num: int, rounds: int, x, y, peak: float) -> dict:
  model = build_model('convnet', K, depth=3, width=width, norm='instance', pooling='avg')
  setting = (0.01, 0.0, 0.0)
  steps = {'vmap': experts.chunk_step(model, setting, STRATEGY, None, 'vmap'),
           'loop': experts.chunk_step(model, setting, STRATEGY, None, 'loop')}
  init = experts.init_fn(model, setting, SHAPE)
  k_init, k_data = experts.expert_keys(0, num)
  carries = [init(jnp.asarray(k)) for k in k_init]
  stack = lambda cs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *cs)
  xs, ys = jnp.asarray(x), jnp.asarray(y, jnp.int32)
  rng = np.random.default_rng(width)
  idx = lambda m: jnp.asarray(rng.integers(0, len(y), size=(m, BATCH)), jnp.int32)
  keys = jnp.asarray(k_data)
  # modes: E experts in one vmapped step; E unrolled in one call; one call per expert
  state = {'vmap': stack(carries), 'loop': stack(carries), 'one': [stack([c]) for c in carries]}
  t = time.perf_counter()
  cost = lambda mode, st, n, k: common.xla_flops(steps[mode].lower(st, xs, ys, idx(n), k).compile())
  flops = {'vmap': cost('vmap', state['vmap'], num, keys),
           'loop': cost('loop', state['loop'], num, keys),
           'one': num * cost('loop', state['one'][0], 1, keys[:1])}

  def run(mode):
    if mode == 'one':
      ins = [idx(1) for _ in range(num)]
      t = time.perf_counter()
      for i in range(num):
        state['one'][i], _ = steps['loop'](state['one'][i], xs, ys, ins[i], keys[i:i + 1])
    else:
      ii = idx(num)
      t = time.perf_counter()
      state[mode], _ = steps[mode](state[mode], xs, ys, ii, keys)
    jax.block_until_ready(state[mode])
    return time.perf_counter() - t

  for mode in flops:                # compile + warm up
    run(mode)
  compile_s = time.perf_counter() - t
  times = {m: [] for m in flops}
  for _ in range(rounds):          # interleaved: every mode sees the same machine state
    for mode in flops:
      times[mode].append(run(mode))
  sec = {m: statistics.median(v) for m, v in times.items()}
  return {
      'width': width, 'experts': num,
      'params': int(sum(np.prod(a.shape[1:]) for a in jax.tree_util.tree_leaves(
          state['vmap'][0]))),
      'sec_E_steps': sec, 'sec_per_expert_step': {m: v / num for m, v in sec.items()},
      'speedup_vs_one_at_a_time': {m: sec['one'] / v for m, v in sec.items()},
      'gflop_E_steps': {m: f / 1e9 for m, f in flops.items()},
      'achieved_gflops': {m: flops[m] / sec[m] / 1e9 for m in sec},
      'matmul_peak_gflops': peak / 1e9, 'compile_and_warmup_s': compile_s,
      'experts_per_hour_extrapolated': {
          f'{m}_{epochs}ep': 3600 / (v / num * FULL_STEPS * epochs)
          for m, v in sec.items() for epochs in (8, 50)},
  }


def _end_to_end(data, width: int, num: int, subset: int) -> dict | None:
  """get_buffer on the first `subset` training images for 1 epoch: wall seconds with compile,
  file writes and the final test accuracy (on 1000 test images)."""
  if data is None:
    return None
  import dataclasses

  from ddjax.config import method_config
  small = dataclasses.replace(data.subset(np.arange(subset)), x_test=data.x_test[:1000],
                              y_test=data.y_test[:1000])
  directory = tempfile.mkdtemp(prefix='expert_buffer_bench_')
  try:
    cfg = method_config('mtt')
    cfg.model.width = width
    cfg.expert.update(dict(dir=directory, num_experts=num, epochs=1))
    t = time.perf_counter()
    buf = experts.get_buffer(cfg, small, progress=lambda line: print('  ' + line, flush=True))
    wall = time.perf_counter() - t
    return {'width': width, 'experts': num, 'subset': subset, 'epochs': 1,
            'steps': -(-subset // BATCH), 'wall_s_with_compile': wall,
            'sec_epoch': buf.index['seconds'][0], 'dim': buf.dim}
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--widths', type=int, nargs='+', default=[32, 128])
  ap.add_argument('--experts', type=int, default=4)
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument('--subset', type=int, default=2560)
  args = ap.parse_args()
  command = 'python benchmarks/expert_buffer.py ' + ' '.join(sys.argv[1:])
  peak = common.matmul_flops_per_second()
  data, x, y = _data()
  rows = []
  for w in args.widths:
    print(f'width {w}: {args.experts} experts ...', flush=True)
    rows.append(_time_width(w, args.experts, args.steps, x, y, peak))
    print(rows[-1], flush=True)
  e2e = _end_to_end(data, min(args.widths), args.experts, args.subset)
  table = ['| width | params | E | mode | s per E steps | speedup vs one at a time | GFLOP/s '
           '| matmul peak GFLOP/s | experts/h (8 ep) * | experts/h (50 ep) * |',
           '|---|---|---|---|---|---|---|---|---|---|']
  names = {'vmap': 'E in one vmapped step', 'loop': 'E unrolled in one call',
           'one': 'one at a time'}
  for r in rows:
    eph = r['experts_per_hour_extrapolated']
    for m in ('vmap', 'loop', 'one'):
      table.append(f"| {r['width']} | {r['params']} | {r['experts']} | {names[m]} "
                   f"| {r['sec_E_steps'][m]:.3f} | {r['speedup_vs_one_at_a_time'][m]:.2f}x "
                   f"| {r['achieved_gflops'][m]:.1f} | {r['matmul_peak_gflops']:.1f} "
                   f"| {eph[m + '_8ep']:.1f} | {eph[m + '_50ep']:.2f} |")
  table.append('')
  table.append(f'\\* extrapolated from the step time: {FULL_STEPS} steps per Fashion-MNIST epoch '
               '(batch 256), no file writes or test accuracy.')
  if e2e:
    table.append('')
    table.append(f"End to end (`get_buffer`, width {e2e['width']}, {e2e['experts']} experts, 1 "
                 f"epoch on {e2e['subset']} images = {e2e['steps']} steps): "
                 f"{e2e['wall_s_with_compile']:.1f} s wall with compilation, "
                 f"{e2e['sec_epoch']:.1f} s for the epoch (its first step compiles).")
  common.write('expert_buffer', {'rows': rows, 'end_to_end': e2e,
                                 'data': 'fashion_mnist' if data is not None else 'random'},
               '\n'.join(table), command)


if __name__ == '__main__':
  main()
