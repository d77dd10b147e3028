"""The host allocator settings made on `import ddjax` (ddjax.runtime.host_memory)."""
import platform
import resource

import jax
import jax.numpy as jnp
import pytest

from ddjax.runtime import host_memory

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


@pytest.mark.skipif(not GLIBC, reason='mallopt is glibc only')
def test_settings_respect_the_opt_out_and_glibcs_own_variables():
  names = [name for name, *_ in host_memory.DEFAULTS]
  assert host_memory.apply_defaults({}) == names
  assert host_memory.apply_defaults({'DDJAX_MALLOC_DEFAULTS': '0'}) == []
  assert host_memory.apply_defaults({'MALLOC_ARENA_MAX': '4'}) == names[1:]


@pytest.mark.skipif(not GLIBC, reason='mallopt is glibc only')
def test_large_buffers_are_reused_without_page_faults():
  # A 64 MiB result, computed again and again: once the heap holds the few such buffers in flight
  # (asynchronous frees; 5-15 calls seen) their memory is reused and the calls fault in (almost)
  # no fresh pages; glibc's defaults map and unmap it every time (16,384 pages per call).
  host_memory.apply_defaults({})
  f = jax.jit(lambda x: x * 2.0)
  x = jnp.ones((1 << 24,), jnp.float32)
  for _ in range(40):
    jax.block_until_ready(f(x))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(10):
    jax.block_until_ready(f(x))
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  assert faults < 10 * 16384 // 4
