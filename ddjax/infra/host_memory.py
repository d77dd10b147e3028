"""ddjax's host allocator settings: keep freed memory for reuse instead of handing it back.

`apply_defaults()` runs when `ddjax` is imported, before JAX starts its CPU backend and the
backend's worker threads, and sets three glibc malloc parameters (`mallopt`) for the process:

  M_ARENA_MAX 1          every thread allocates from the main heap (a worker thread's own arena
                         is an mmap'd region that glibc shrinks with MADV_DONTNEED, so its pages
                         come back as page faults on the next use)
  M_MMAP_MAX 0           large blocks come from that heap too instead of one mmap each (glibc
                         maps every block above its 32 MiB threshold afresh and unmaps it on
                         free)
  M_TRIM_THRESHOLD 2 GiB the heap keeps up to this much free memory at its top

Why: XLA:CPU allocates the buffers of every execution anew (ConvNet activations at IPC 10 are
26 MB per network, 131 MB for 5 networks; DC's first layer 1.3 GB), and without these settings
each call touches fresh pages. On the 2-core virtual machine of this project a page fault costs
a few microseconds: an evaluation training step (ConvNet-3 width 64, batch 100) made ~11,000
minor faults (~44 MB of fresh pages) per step and ran 18 % slower (226 ms against 186 ms per
step on one shared core; zero faults with the settings; benchmarks/results/eval_speed.md).
The cost: the process keeps its peak heap (up to 2 GiB free at the top) instead of returning it.

Only glibc (Linux) has these parameters; elsewhere nothing is done. `DDJAX_MALLOC_DEFAULTS=0` in
the environment turns them off; glibc's own `MALLOC_ARENA_MAX`, `MALLOC_MMAP_MAX_` and
`MALLOC_TRIM_THRESHOLD_` variables, when set, win over the corresponding setting. Settings made
after the backend has started still apply to large blocks, but the worker threads keep the arenas
they already have.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers (glibc malloc.h) and the values set, with glibc's own variables.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
DEFAULTS = (('M_ARENA_MAX', M_ARENA_MAX, 1, 'MALLOC_ARENA_MAX'),
            ('M_MMAP_MAX', M_MMAP_MAX, 0, 'MALLOC_MMAP_MAX_'),
            ('M_TRIM_THRESHOLD', M_TRIM_THRESHOLD, 2 ** 31 - 1, 'MALLOC_TRIM_THRESHOLD_'))
OPT_OUT = 'DDJAX_MALLOC_DEFAULTS'


def apply_defaults(environ=None) -> list[str]:
  """Set the `DEFAULTS` (name, mallopt parameter, value, glibc variable) whose glibc variable is
  not in environ (default os.environ); return the names set ([] off glibc, or when
  environ[OPT_OUT] is '0')."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT, '1') == '0' or platform.system() != 'Linux':
    return []
  if platform.libc_ver()[0] != 'glibc':
    return []
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
  except (OSError, AttributeError):
    return []
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return [name for name, param, value, variable in DEFAULTS
          if variable not in environ and mallopt(param, value) == 1]
