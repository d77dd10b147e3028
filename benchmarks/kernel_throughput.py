r"""Throughput and memory of ddjax's infinite-width kernels on 28x28x1 inputs.

    python benchmarks/kernel_throughput.py [--sizes 100x10 400x10 1000x100] [--archs convnet conv fc]

For each architecture (ddjax.kernels.architectures: 'convnet' = ConvNet-3 with 2x2 average pools and
a Flatten readout, the kernel of KIP's ConvNet / RFAD's evaluation; 'conv' = 3 x [Conv, ReLU] +
Flatten; 'fc' = one hidden layer) and size n1 x n2 it reports the NTK's kernel entries per second
(median of --repeats jitted calls, after compilation), the same for the gradient w.r.t. x2 (what KIP
needs; only up to --max-grad-pairs pairs), XLA's temporary memory of the compiled forward call, and the per-pair spatial entries
carried at the first layer, next to the full covariance that neural-tangents carries (784^2).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from ddjax.kernels import stax  # noqa: E402
from ddjax.kernels.architectures import kernel_network  # noqa: E402


def first_layer_entries(arch: str) -> int:
  """Spatial entries per pair at the first layer: 784 positions x band offsets."""
  _, _, kernel_fn = kernel_network(arch, 3)
  layers = kernel_fn.layers
  shapes = stax._shapes(layers, (1, 28, 28, 1))
  bands = stax._bands(layers, shapes)
  b = bands[0]
  return 784 * (2 * b[0] + 1) * (2 * b[1] + 1) if b is not None else 1


def timed(fn, *args, repeats: int) -> float:
  return float(np.median(common.call_times(fn, args, repeats)))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--sizes', nargs='+', default=['100x10', '400x10', '1000x100'])
  ap.add_argument('--max-grad-pairs', type=int, default=4000)
  ap.add_argument('--archs', nargs='+', default=['convnet', 'conv', 'fc'])
  ap.add_argument('--repeats', type=int, default=3)
  args = ap.parse_args()
  rows = []
  for arch in args.archs:
    _, _, kernel_fn = kernel_network(arch, 3)
    fwd = jax.jit(lambda a, b: kernel_fn(a, b, 'ntk'))
    grad = jax.jit(jax.grad(lambda b, a: jnp.sum(kernel_fn(a, b, 'ntk'))))
    for size in args.sizes:
      n1, n2 = (int(v) for v in size.split('x'))
      x1 = jax.random.normal(jax.random.PRNGKey(0), (n1, 28, 28, 1))
      x2 = jax.random.normal(jax.random.PRNGKey(1), (n2, 28, 28, 1))
      mem = fwd.lower(x1, x2).compile().memory_analysis()
      temp = getattr(mem, 'temp_size_in_bytes', None) if mem is not None else None
      sec = timed(fwd, x1, x2, repeats=args.repeats if n1 * n2 <= args.max_grad_pairs else 1)
      sec_grad = (timed(grad, x2, x1, repeats=args.repeats) if n1 * n2 <= args.max_grad_pairs
                  else float('nan'))
      rows.append({'arch': arch, 'n1': n1, 'n2': n2, 'seconds': sec, 'seconds_grad': sec_grad,
                   'entries_per_s': n1 * n2 / sec, 'entries_per_s_grad': n1 * n2 / sec_grad,
                   'temp_bytes': temp, 'first_layer_entries_per_pair': first_layer_entries(arch),
                   'full_covariance_entries_per_pair': 784 ** 2})
      print(rows[-1], flush=True)
  table = ['| kernel (NTK, 28x28x1) | n1 x n2 | forward s | entries/s | with grad wrt x2: s '
           '| entries/s | XLA temp memory | first-layer entries/pair (full covariance: 614656) |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    mem = f"{r['temp_bytes'] / 2 ** 20:.0f} MiB" if r['temp_bytes'] is not None else '-'
    grad = ((f"{r['seconds_grad']:.3f} | {r['entries_per_s_grad']:.0f}")
            if np.isfinite(r['seconds_grad']) else '- | -')
    table.append(f"| {r['arch']}-3 | {r['n1']} x {r['n2']} | {r['seconds']:.3f} "
                 f"| {r['entries_per_s']:.0f} | {grad} | {mem} "
                 f"| {r['first_layer_entries_per_pair']} |")
  common.write('kernel_throughput', {'rows': rows}, '\n'.join(table),
               'python benchmarks/kernel_throughput.py ' + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  main()
