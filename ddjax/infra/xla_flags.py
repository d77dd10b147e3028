"""ddjax's XLA flag defaults: the one place they are set.

`apply_defaults()` runs when `ddjax` is imported (before JAX creates its CPU backend, which reads
`XLA_FLAGS` once) and appends each flag of `DEFAULTS` that `XLA_FLAGS` does not already name, so a
user's own setting of the same flag always wins. `DDJAX_XLA_DEFAULTS=0` in the environment turns
them all off. Importing JAX before ddjax is fine; running a JAX computation before importing ddjax
leaves the backend with its own defaults (ddjax still works, at the speeds XLA gives).

The defaults (measured by `benchmarks/xla_flags.py`, results in `benchmarks/results/xla_flags.md`):

- `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK library fusions). XLA:CPU's
  default sends dots and convolutions to YNNPACK; on the ConvNet of DC / DSA / DM / MTT its
  backward-filter convolution then runs at ~20 GFLOP/s against ~110 with Eigen (16 x 16 x 128
  layer, 2560 images), and its forward and input-gradient convolutions at ~120 against ~160.
  Measured on one core of the AMD EPYC machine (2026-12-02, results/xla_flags.md): DC step at
  IPC 1 7.9 s against 12.8 s, DM step 2.3 s against 3.6 s, FRePo's CPU step 0.20 s against
  0.26 s, an evaluation training step 0.089 s against 0.102 s; the matmul peak is the same.
  The flag only touches the CPU backend.
"""
from __future__ import annotations

import os

DEFAULTS: dict[str, str] = {
    '--xla_cpu_experimental_ynn_fusion_type': '',
}
OPT_OUT = 'DDJAX_XLA_DEFAULTS'


def apply_defaults(environ=None) -> list[str]:
  """Append the `DEFAULTS` missing from environ['XLA_FLAGS'] (default: os.environ); return the
  flags added ('--name=value'). Nothing is added when environ[OPT_OUT] is '0'."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT, '1') == '0':
    return []
  current = environ.get('XLA_FLAGS', '')
  named = {token.split('=', 1)[0] for token in current.split()}
  added = [f'{name}={value}' for name, value in DEFAULTS.items() if name not in named]
  if added:
    environ['XLA_FLAGS'] = ' '.join([current] + added).strip()
  return added
