"""ddjax's XLA flag defaults: the one place they are set.

`apply_defaults()` runs when `ddjax` is imported (before JAX creates its CPU backend, which reads
`XLA_FLAGS` once) and appends each flag of `DEFAULTS` that `XLA_FLAGS` does not already name, so a
user's own setting of the same flag always wins. `DDJAX_XLA_DEFAULTS=0` in the environment turns
them all off. Importing JAX before ddjax is fine; running a JAX computation before importing ddjax
leaves the backend with its own defaults (ddjax still works, at the speeds XLA gives).

The defaults (measured by `benchmarks/xla_flags.py`, results in `benchmarks/results/xla_flags.md`):

- `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK library fusions). XLA:CPU's
  default sends dots and convolutions to YNNPACK; on the ConvNet of DC / DSA / DM / MTT its
  backward-filter convolution then runs at ~20 GFLOP/s against ~110 with Eigen, its forward and
  input-gradient convolutions at ~120 against ~160, and the DC step at IPC 1 asks for 11.5 GB of
  temporaries instead of 6.4 GB. Steps made of large matmuls (FRePo, KIP, DM's embedding) are
  within noise either way. The flag only touches the CPU backend.
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
