r"""Trajectory unroll: peak memory and s/iteration of MTT's meta-gradient against N.

    python benchmarks/trajectory_unroll.py [--mem-steps 10 20 40 80] [--mem-widths 128 32]
        [--time-steps 10 20 40 80] [--time-width 32] [--rounds 5] [--max-compile-s 180]

The measured function is MTT's meta-gradient (`ddjax.distill.mtt`, as `TrajectoryMatching.
student_final` + `matching_loss`): value_and_grad, w.r.t. the synthetic images and the learned
step size, of the normalized distance ||theta_N - theta*||^2 / ||theta_0 - theta*||^2 after N
student SGD steps on Fashion-MNIST-shaped synthetic data (28x28x1, 10 classes, IPC 1 = 10
images, all 10 per inner step: `minibatch_indices` + `inner_batches` with DSA
color_crop_cutout_scale_rotate drawn per step), ConvNet-3 with instance norm, flat parameters
(`ravel_pytree`). The values of theta_0, theta* and the images do not matter for either number
(random; the shapes and the program are MTT's).

1. Memory (deterministic, no execution): for each width in --mem-widths and N in --mem-steps,
   the three gradients {exact + remat, exact without remat, tesla} with loop='scan', jitted,
   lowered and compiled; XLA's own buffer accounting `compiled.memory_analysis()` (temporary,
   argument and output bytes). The slope of temp bytes against N (least squares) is compared
   with N x |theta| x 4 bytes, the N stored parameter carries that remat should leave. A
   control row, exact + remat with the identity instead of DSA, separates what the unroll
   stores per step from what the (vmapped, outside the loop) augmentation's backward stores.
2. Time (--time-width only): s/iteration of exact + remat and exact without remat with
   loop='python' (the CPU default, `default_loop`), compiled first (compile seconds recorded),
   then timed interleaved round by round over every (N, variant), median of --rounds. An N whose
   compile time, extrapolated from the two largest N compiled so far, exceeds --max-compile-s
   is skipped and listed as such. The memory of these python-loop programs is recorded too.

Writes results/trajectory_unroll.{json,md,png}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from benchmarks import common  # noqa: E402
from ddjax.augment.dsa import dsa  # noqa: E402
from ddjax.distill import mtt  # noqa: E402
from ddjax.models.convnet import ConvNet  # noqa: E402

K, SHAPE, IPC, STRATEGY = 10, (28, 28, 1), 1, 'color_crop_cutout_scale_rotate'
VARIANTS = ('remat', 'no_remat', 'tesla')
NAMES = {'remat': 'exact + remat', 'no_remat': 'exact, no remat', 'tesla': 'tesla',
         'remat_no_dsa': 'exact + remat, no DSA (control)'}
MB = 1e6


def _cpu_model() -> str:
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
      if line.startswith('Model name:'):
        return line.split(':', 1)[1].strip()
  except Exception:  # noqa: BLE001 - lscpu missing: leave the field empty
    pass
  return ''


def _problem(width: int, steps: int):
  """(make, its arguments, |theta|): make(variant, loop) is the jitted fn(x, lr, y, start,
  target, key) -> (loss, (d loss / d x, d loss / d lr)); variant 'remat_no_dsa' is 'remat'
  with the identity instead of DSA (a control: what the unroll alone stores per step)."""
  model = ConvNet(K, width=width, norm='instance')
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE), train=True)['params']
  theta0, unravel = ravel_pytree(params)
  grad_fn = mtt.make_student_grad(model, unravel, soft=False)
  augment = lambda key, x: dsa(key, x, STRATEGY)
  n = K * IPC
  rng = np.random.default_rng(width)
  args = (jnp.asarray(rng.normal(size=(n,) + SHAPE), jnp.float32),          # x
          jnp.asarray(0.01, jnp.float32),                                     # lr
          jax.nn.one_hot(jnp.arange(n) % K, K),                               # y
          theta0,                                                             # start
          theta0 + 0.01 * jnp.asarray(rng.normal(size=theta0.shape), jnp.float32),  # target
          jax.random.PRNGKey(1))

  def make(variant: str, loop: str):
    aug = (lambda key, x: x) if variant == 'remat_no_dsa' else augment
    if variant == 'tesla':
      run = mtt.tesla_unroll(grad_fn, loop)
    else:
      run = lambda *a: mtt.unroll(grad_fn, *a, remat=(variant != 'no_remat'), loop=loop)

    def loss(x, lr, y, start, target, key):
      k_idx, k_aug = jax.random.split(key)
      idx = mtt.minibatch_indices(k_idx, n, n, steps)
      xs, ys = mtt.inner_batches(x, y, idx, jax.random.split(k_aug, steps), aug)
      return mtt.normalized_distance(run(start, xs, ys, lr), start, target)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

  return make, args, int(theta0.size)


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  return {'temp_mb': m.temp_size_in_bytes / MB, 'argument_mb': m.argument_size_in_bytes / MB,
          'output_mb': m.output_size_in_bytes / MB, 'alias_mb': m.alias_size_in_bytes / MB,
          'peak_mb': (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
                      - m.alias_size_in_bytes) / MB}


def _slope(ns, ys) -> tuple[float, float]:
  """Least-squares (slope, intercept) of ys against ns."""
  a, b = np.polyfit(np.asarray(ns, float), np.asarray(ys, float), 1)
  return float(a), float(b)


def memory_rows(widths, steps_list) -> tuple[list, dict]:
  rows, fits = [], {}
  for width in widths:
    for steps in steps_list:
      make, args, p = _problem(width, steps)
      for variant in VARIANTS + ('remat_no_dsa',):
        t = time.perf_counter()
        compiled = make(variant, 'scan').lower(*args).compile()
        row = {'width': width, 'params': p, 'steps': steps, 'variant': variant, 'loop': 'scan',
               'compile_s': time.perf_counter() - t, **_memory(compiled),
               'carries_mb': steps * p * 4 / MB}
        rows.append(row)
        print(row, flush=True)
    for variant in VARIANTS + ('remat_no_dsa',):
      sel = [r for r in rows if r['width'] == width and r['variant'] == variant]
      slope, icpt = _slope([r['steps'] for r in sel], [r['temp_mb'] for r in sel])
      fits[f'{width}/{variant}'] = {'width': width, 'variant': variant,
                                    'temp_mb_per_step': slope, 'temp_mb_at_0': icpt,
                                    'theta_mb': sel[0]['params'] * 4 / MB}
  return rows, fits


def time_rows(width, steps_list, rounds, max_compile_s) -> tuple[list, list]:
  compiled, rows, skipped = {}, {}, []
  done = []                          # (N, max compile s of the variants)
  for steps in sorted(steps_list):
    if len(done) >= 2:               # power-law extrapolation from the two largest N so far
      (n1, c1), (n2, c2) = done[-2:]
      est = c2 * (steps / n2) ** (np.log(c2 / c1) / np.log(n2 / n1))
      if est > max_compile_s:
        skipped.append({'steps': steps, 'estimated_compile_s': float(est)})
        print(f'N={steps}: skipped, estimated compile {est:.0f} s > {max_compile_s} s',
              flush=True)
        continue
    make, args, p = _problem(width, steps)
    worst = 0.0
    for variant in ('remat', 'no_remat'):
      t = time.perf_counter()
      c = make(variant, 'python').lower(*args).compile()
      compile_s = time.perf_counter() - t
      t = time.perf_counter()
      jax.block_until_ready(c(*args))            # warm-up call
      first_s = time.perf_counter() - t
      compiled[(steps, variant)] = (c, args)
      rows[(steps, variant)] = {'width': width, 'params': p, 'steps': steps,
                                'variant': variant, 'loop': 'python', 'compile_s': compile_s,
                                'first_call_s': first_s, **_memory(c), 'times': []}
      worst = max(worst, compile_s)
      print(f'N={steps} {variant}: compile {compile_s:.1f} s', flush=True)
    done.append((steps, worst))
  for _ in range(rounds):            # interleaved: every (N, variant) sees the same machine
    for key, (c, args) in compiled.items():
      t = time.perf_counter()
      jax.block_until_ready(c(*args))
      rows[key]['times'].append(time.perf_counter() - t)
  out = []
  for key, r in rows.items():
    r['sec_per_iter'] = statistics.median(r['times'])
    r['sec_per_inner_step'] = r['sec_per_iter'] / r['steps']
    out.append(r)
    print({k: v for k, v in r.items() if k != 'times'}, flush=True)
  for r in out:
    if r['variant'] == 'remat':
      base = rows[(r['steps'], 'no_remat')]['sec_per_iter']
      r['remat_over_no_remat'] = r['sec_per_iter'] / base
  return out, skipped


def plot(path, mem, fits, timed) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  widths = sorted({r['width'] for r in mem}, reverse=True)
  fig, axes = plt.subplots(1, len(widths) + 1, figsize=(5 * (len(widths) + 1), 4))
  style = {'remat': ('C0', 'o'), 'no_remat': ('C3', 's'), 'tesla': ('C2', '^'),
           'remat_no_dsa': ('C1', 'x')}
  for ax, width in zip(axes, widths):
    p = None
    for v in VARIANTS + ('remat_no_dsa',):
      sel = [r for r in mem if r['width'] == width and r['variant'] == v]
      p = sel[0]['params']
      ax.plot([r['steps'] for r in sel], [r['temp_mb'] for r in sel], marker=style[v][1],
              color=style[v][0], label=NAMES[v])
    sel = [r for r in mem if r['width'] == width and r['variant'] == 'remat']
    n0, t0 = sel[0]['steps'], sel[0]['temp_mb']
    ns = [r['steps'] for r in sel]
    ax.plot(ns, [t0 + (n - n0) * p * 4 / MB for n in ns], ls='--', color='gray',
            label='remat expected: + N |theta| 4 B')
    ax.set_yscale('log')
    ax.set_xlabel('unroll length N')
    ax.set_ylabel('XLA temp memory (MB), loop=scan')
    ax.set_title(f'ConvNet-3 width {width} ({p:,} params)')
    ax.set_xticks(ns)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  ax = axes[-1]
  for v in ('remat', 'no_remat'):
    sel = sorted([r for r in timed if r['variant'] == v], key=lambda r: r['steps'])
    if sel:
      ax.plot([r['steps'] for r in sel], [r['sec_per_iter'] for r in sel], marker=style[v][1],
              color=style[v][0], label=NAMES[v])
  if timed:
    ax.set_title(f"s / iteration, width {timed[0]['width']}, loop=python (CPU)")
    ax.set_xticks(sorted({r['steps'] for r in timed}))
  ax.set_xlabel('unroll length N')
  ax.set_ylabel('s / iteration')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--mem-steps', type=int, nargs='+', default=[10, 20, 40, 80])
  ap.add_argument('--mem-widths', type=int, nargs='+', default=[128, 32])
  ap.add_argument('--time-steps', type=int, nargs='*', default=[10, 20, 40, 80])
  ap.add_argument('--time-width', type=int, default=32)
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--max-compile-s', type=float, default=180.0)
  args = ap.parse_args()
  command = 'python benchmarks/trajectory_unroll.py ' + ' '.join(sys.argv[1:])
  peak = common.matmul_flops_per_second()
  print(f'matmul peak {peak / 1e9:.1f} GFLOP/s', flush=True)
  mem, fits = memory_rows(args.mem_widths, args.mem_steps)
  timed, skipped = time_rows(args.time_width, args.time_steps, args.rounds,
                             args.max_compile_s) if args.time_steps else ([], [])
  plot(os.path.join(common.HERE, 'results', 'trajectory_unroll.png'), mem, fits, timed)

  t = ['Memory: XLA `memory_analysis()` of the jitted meta-gradient, loop=scan (MB = 1e6 B; '
       'peak = temp + arguments + outputs - aliased):', '',
       '| width | params | N | exact + remat temp | exact, no remat temp | tesla temp '
       '| remat, no DSA temp | N x theta x 4 B | no remat / remat | peak MB '
       '(remat / no remat / tesla) |',
       '|---|---|---|---|---|---|---|---|---|---|']
  for width in args.mem_widths:
    for steps in args.mem_steps:
      r = {v: next(x for x in mem if x['width'] == width and x['steps'] == steps
                   and x['variant'] == v) for v in VARIANTS + ('remat_no_dsa',)}
      t.append(f"| {width} | {r['remat']['params']} | {steps} | {r['remat']['temp_mb']:.1f} "
               f"| {r['no_remat']['temp_mb']:.1f} | {r['tesla']['temp_mb']:.1f} "
               f"| {r['remat_no_dsa']['temp_mb']:.1f} | {r['remat']['carries_mb']:.1f} "
               f"| {r['no_remat']['temp_mb'] / r['remat']['temp_mb']:.1f}x "
               f"| {r['remat']['peak_mb']:.1f} / {r['no_remat']['peak_mb']:.1f} / "
               f"{r['tesla']['peak_mb']:.1f} |")
  t += ['', 'Growth of temp memory per inner step (least-squares slope over N):', '',
        '| width | variant | MB per step | |theta| x 4 B (MB) | slope / (|theta| x 4 B) |',
        '|---|---|---|---|---|']
  for f in fits.values():
    t.append(f"| {f['width']} | {NAMES[f['variant']]} | {f['temp_mb_per_step']:.3f} "
             f"| {f['theta_mb']:.3f} | {f['temp_mb_per_step'] / f['theta_mb']:.2f} |")
  if timed or skipped:
    t += ['', f'Time: width {args.time_width}, loop=python (the CPU default), median of '
          f'{args.rounds} interleaved rounds; matmul peak {peak / 1e9:.1f} GFLOP/s in the same '
          'run:', '',
          '| N | remat s/iter | no remat s/iter | remat / no remat | compile s (remat / no '
          'remat) | temp MB, python loop (remat / no remat) |',
          '|---|---|---|---|---|---|']
    for steps in sorted({r['steps'] for r in timed}):
      a = next(r for r in timed if r['steps'] == steps and r['variant'] == 'remat')
      b = next(r for r in timed if r['steps'] == steps and r['variant'] == 'no_remat')
      t.append(f"| {steps} | {a['sec_per_iter']:.3f} | {b['sec_per_iter']:.3f} "
               f"| {a['remat_over_no_remat']:.2f} | {a['compile_s']:.0f} / {b['compile_s']:.0f} "
               f"| {a['temp_mb']:.1f} / {b['temp_mb']:.1f} |")
    for s in skipped:
      t.append(f"| {s['steps']} | skipped | skipped | - | estimated {s['estimated_compile_s']:.0f}"
               f" (> {args.max_compile_s:.0f}) | - |")
  cpu = _cpu_model()
  t += ['', f'CPU: {cpu}; matmul peak {peak / 1e9:.1f} GFLOP/s (measured in this run).']
  common.write('trajectory_unroll',
               {'cpu_model': cpu, 'matmul_peak_gflops': peak / 1e9, 'memory': mem,
                'memory_fits': fits, 'time': timed, 'time_skipped': skipped,
                'setting': {'shape': SHAPE, 'classes': K, 'ipc': IPC, 'batch_syn': K * IPC,
                            'dsa': STRATEGY, 'model': 'ConvNet-3 instance norm'}},
               '\n'.join(t), command)


if __name__ == '__main__':
  main()
