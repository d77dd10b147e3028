"""The host allocator settings made on `import ddjax` (ddjax.infra.host_memory)."""
import os
import platform
import subprocess
import sys

import pytest

from ddjax.infra import host_memory

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


@pytest.mark.skipif(not GLIBC, reason='mallopt is glibc only')
def test_settings_respect_the_opt_out_and_glibcs_own_variables():
  names = [name for name, *_ in host_memory.DEFAULTS]
  assert host_memory.apply_defaults({}) == names
  assert host_memory.apply_defaults({'DDJAX_MALLOC_DEFAULTS': '0'}) == []
  assert host_memory.apply_defaults({'MALLOC_ARENA_MAX': '4'}) == names[1:]


_REUSE_SCRIPT = """
import resource
import ddjax  # noqa: F401  (sets the allocator defaults before JAX starts its backend)
import jax
import jax.numpy as jnp
f = jax.jit(lambda x: x * 2.0)
x = jnp.ones((1 << 24,), jnp.float32)
for _ in range(40):
  jax.block_until_ready(f(x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  jax.block_until_ready(f(x))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason='mallopt is glibc only')
@pytest.mark.parametrize('opt_out', ['1', '0'])
def test_large_buffers_are_reused_without_page_faults(opt_out):
  # A 64 MiB result, computed again and again: once the heap holds the few such buffers in flight
  # (asynchronous frees; 5-15 calls seen) their memory is reused and the calls fault in (almost)
  # no fresh pages; glibc's defaults map and unmap it every time (16,384 pages per call). In a
  # fresh process, as a user's run starts: the settings hold for threads started after `import
  # ddjax` (a test runner's own threads, e.g. pytest-xdist's, may already have arenas).
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  env[host_memory.OPT_OUT] = opt_out
  out = subprocess.run([sys.executable, '-c', _REUSE_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
  faults = int(out.stdout.split()[-1])
  if opt_out == '1':
    assert faults < 10 * 16384 // 4
  else:   # glibc's defaults: the test can tell the two apart
    assert faults > 10 * 16384 // 2
