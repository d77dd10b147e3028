"""Multi-process runs on JAX's own distributed runtime (`jax.distributed`).

One program on every process (multi-controller SPMD): the same `python -m ddjax.main ...` runs on
every host (or every GPU), each process computes on its own devices, and jitted steps over the
global mesh communicate through JAX's collectives (NCCL on GPUs, the TPU interconnect, gloo on
CPUs). Process 0 prints and writes the workdir's files; Orbax writes checkpoints as it does for
multi-host (the replicated state once, by process 0) and every process restores them. The workdir
must therefore lie on a filesystem every process sees (NFS, a gcsfuse mount on TPU VMs).

When to initialise comes from the config's `distributed` block (ddjax.config) and the
environment (`init_kwargs`):
  initialize='auto' (default): when the block names a coordinator or more than one process, when
    JAX_COORDINATOR_ADDRESS is set, or when a cluster launcher started this step with several
    tasks (SLURM's srun: SLURM_STEP_NUM_TASKS > 1; Open MPI: OMPI_COMM_WORLD_SIZE > 1);
    otherwise never, and a one-process run is the program it always was.
  initialize='on': always; keys left unset are filled in by JAX's cluster auto-detection (Cloud
    TPU VMs, SLURM, Open MPI; mpi4py with cluster_detection='mpi4py').
  initialize='off': never (one process, even inside a SLURM or MPI job).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import Iterator, Mapping

import jax
import numpy as np

MODES = ('auto', 'on', 'off')
CPU_COLLECTIVES = ('gloo', 'mpi', 'none')


class DistributedSetupError(ValueError):
  """JAX's distributed runtime could not start with the settings given or detected."""


def _count(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ.get(name, '0'))
  except ValueError:
    return 0


def launched_tasks(environ: Mapping[str, str]) -> int:
  """Processes a cluster launcher started for this job step (0 when none is detected): srun's
  SLURM_STEP_NUM_TASKS (not SLURM_NTASKS, which the batch script's own shell also sees), Open
  MPI's OMPI_COMM_WORLD_SIZE."""
  return max(_count(environ, 'SLURM_STEP_NUM_TASKS'), _count(environ, 'OMPI_COMM_WORLD_SIZE'))


def init_kwargs(dist, environ: Mapping[str, str] | None = None) -> dict | None:
  """The keyword arguments of `jax.distributed.initialize` for the config block `dist`
  (cfg.distributed), or None when this run must not initialise (the module docstring's rules).

  Unset entries are left out, so JAX detects them: coordinator_address '' -> JAX_COORDINATOR_ADDRESS
  or the cluster's, num_processes 0 and process_id -1 -> the cluster's, local_device_ids () ->
  the cluster's (SLURM and Open MPI: one device per local task) or all.
  """
  environ = os.environ if environ is None else environ
  mode = dist.initialize
  if mode not in MODES:
    raise ValueError(f'distributed.initialize={mode!r} is not one of {MODES}.')
  if mode == 'off':
    return None
  asked = (bool(dist.coordinator_address) or dist.num_processes > 1
           or bool(environ.get('JAX_COORDINATOR_ADDRESS')) or launched_tasks(environ) > 1)
  if mode == 'auto' and not asked:
    return None
  kwargs = {'initialization_timeout': int(dist.timeout)}
  if dist.coordinator_address:
    kwargs['coordinator_address'] = dist.coordinator_address
  if dist.num_processes:
    kwargs['num_processes'] = int(dist.num_processes)
  if dist.process_id >= 0:
    kwargs['process_id'] = int(dist.process_id)
  if len(dist.local_device_ids):
    kwargs['local_device_ids'] = [int(i) for i in dist.local_device_ids]
  if dist.cluster_detection:
    kwargs['cluster_detection_method'] = dist.cluster_detection
  return kwargs


def config_errors(dist) -> list[str]:
  """What is wrong with the block cfg.distributed (for ddjax.config.validate)."""
  errors = []
  if dist.initialize not in MODES:
    errors.append(f'distributed.initialize={dist.initialize!r} is not one of {MODES}.')
  if dist.cpu_collectives not in CPU_COLLECTIVES:
    errors.append(f'distributed.cpu_collectives={dist.cpu_collectives!r} is not one of '
                  f'{CPU_COLLECTIVES}.')
  n, pid = dist.num_processes, dist.process_id
  if not isinstance(pid, int) or pid < -1 or (n and pid >= n):
    errors.append(f'distributed.process_id={pid!r} must be -1 (detected) or in [0, '
                  f'distributed.num_processes={n}).')
  if n > 1 and not dist.coordinator_address and dist.initialize != 'off' and pid >= 0:
    errors.append(f'distributed.num_processes={n} with process_id {pid} needs '
                  'distributed.coordinator_address (host:port of process 0), unless a cluster '
                  'provides it (then leave num_processes and process_id unset).')
  if dist.coordinator_address and ':' not in dist.coordinator_address:
    errors.append(f'distributed.coordinator_address={dist.coordinator_address!r} must be '
                  'host:port (process 0\'s host and a free port).')
  return errors


def _initialized() -> bool:
  if hasattr(jax.distributed, 'is_initialized'):          # newer JAX
    return jax.distributed.is_initialized()
  from jax._src import distributed as jax_distributed     # older: the runtime's own state
  return jax_distributed.global_state.client is not None


def _host_port(address: str) -> tuple[str, int]:
  """'host:port' or '[v6 address]:port' -> (host, port); DistributedSetupError when malformed."""
  host, _, port = address.rpartition(':')
  try:
    return host.strip('[]'), int(port)
  except ValueError:
    raise DistributedSetupError(f'distributed.coordinator_address={address!r} must be host:port '
                                "(process 0's host and a free port).") from None


def wait_for_coordinator(address: str, timeout: float, process_id: int) -> None:
  """Wait until the coordinator's TCP port `address` accepts connections, retrying for at most
  `timeout` seconds; DistributedSetupError naming the address and the timeout when it never does
  (JAX's own client would abort the process in C++ instead)."""
  host, port = _host_port(address)
  deadline = time.monotonic() + timeout
  while True:
    left = deadline - time.monotonic()
    try:
      with socket.create_connection((host, port), timeout=max(0.05, min(2.0, left))):
        return
    except OSError as e:
      error = e
    left = deadline - time.monotonic()
    if left <= 0:
      break
    time.sleep(min(0.25, left))
  raise DistributedSetupError(
      f'process {process_id} could not reach the coordinator {address} within '
      f'distributed.timeout={timeout:g} s ({error}); start process 0 first (it serves the '
      'address), check distributed.coordinator_address (host:port of process 0) and that the '
      'port is open, or raise distributed.timeout.')


# Seconds JAX's own deadline is given beyond distributed.timeout, so that `_exit_after` reports
# a peer that never joins before JAX's client aborts the process in C++.
_JAX_GRACE = 10


@contextlib.contextmanager
def _exit_after(seconds: float, message: str) -> Iterator[None]:
  """Inside the block: when it has not finished after `seconds`, print `error: message` on
  stderr and end the process with status 1 (a process whose distributed start failed cannot
  go on; JAX would abort it with a C++ stack trace)."""
  done = threading.Event()

  def watch():
    if not done.wait(seconds):
      sys.stderr.write(f'error: {message}\n')
      sys.stderr.flush()
      os._exit(1)
  threading.Thread(target=watch, name='ddjax-distributed-timeout', daemon=True).start()
  try:
    yield
  finally:
    done.set()


def initialize(dist) -> bool:
  """Start JAX's distributed runtime when `init_kwargs(dist)` asks for it (once per Python
  process; must run before any JAX computation). Returns whether this run is multi-process-aware
  (initialised now or before).

  Within distributed.timeout seconds: a process other than 0 first waits for the coordinator's
  port (`wait_for_coordinator`: DistributedSetupError when unreachable); then every process has
  the rest of the timeout to join, after which it prints one line naming the coordinator and the
  timeout and exits with status 1 (a peer that never joined)."""
  if _initialized():
    return True
  kwargs = init_kwargs(dist)
  if kwargs is None:
    return False
  timeout = float(dist.timeout)
  start = time.monotonic()
  address = kwargs.get('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS', ''))
  process = kwargs.get('process_id')
  if address and process is not None and process > 0:
    wait_for_coordinator(address, timeout, process)
  left = max(1.0, timeout - (time.monotonic() - start))
  kwargs['initialization_timeout'] = int(left) + _JAX_GRACE
  if dist.cpu_collectives != 'none':
    jax.config.update('jax_cpu_collectives_implementation', dist.cpu_collectives)
  who = f'process {process}' if process is not None else 'this process'
  count = kwargs.get('num_processes')
  peers = f'all {count} processes' if count else 'every process'
  late = (f'{who} waited distributed.timeout={timeout:g} s at the coordinator '
          f'{address or "(detected)"} for {peers} to join, and not all did; start every '
          'process with the same coordinator_address and num_processes (each with its own '
          'process_id), or raise distributed.timeout.')
  try:
    with _exit_after(left, late):
      jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError, TypeError) as e:
    raise DistributedSetupError(
        f'jax.distributed.initialize({kwargs}) failed: {e}. Set distributed.coordinator_address, '
        'num_processes and process_id, or run under a cluster JAX detects (TPU VM, srun, mpirun); '
        'start every process with the same coordinator and process count, in a fresh Python '
        'process (it must come before any JAX computation).') from None
  return True


def is_main() -> bool:
  """Whether this is process 0, the one that prints and writes files."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Wait until every process reaches the barrier `name` (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def own_members(num: int) -> range:
  """The members of a set of `num` independent ones (evaluation networks, experts) that this
  process computes: process p of P takes p, p + P, p + 2P, ... (all of them with one process)."""
  return range(jax.process_index(), int(num), jax.process_count())


def gather_members(local, num: int) -> np.ndarray:
  """Every process's rows of `own_members(num)`, gathered to every process in member order.

  local: (len(own_members(num)), ...) this process's members' values, the same trailing shape
  and dtype on every process. Returns (num, ...). Exact for any dtype: 8-byte values (float64
  accuracies, which JAX's 32-bit transfer would round) travel as pairs of uint32. Every process
  must call it the same number of times; one process returns `local` as it is (no copy made of
  a numpy array's values)."""
  local = np.asarray(local)
  count = jax.process_count()
  if count == 1:
    return local
  from jax.experimental import multihost_utils
  rows = -(-int(num) // count)                       # padded: every process sends as many rows
  padded = np.zeros((rows,) + local.shape[1:], local.dtype)
  padded[:len(local)] = local
  wire = padded.view(np.uint32) if padded.dtype.itemsize == 8 else padded
  gathered = np.asarray(multihost_utils.process_allgather(wire))       # (P, rows, ...)
  if padded.dtype.itemsize == 8:
    gathered = np.ascontiguousarray(gathered).view(padded.dtype)
  # member j * P + p is row j of process p
  return np.swapaxes(gathered, 0, 1).reshape((rows * count,) + local.shape[1:])[:int(num)]


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
  """Standard output of processes other than 0 is dropped inside the block (progress lines and
  results come from process 0 once); warnings and errors on stderr stay on every process."""
  if is_main():
    yield
    return
  with open(os.devnull, 'w') as sink, contextlib.redirect_stdout(sink):
    yield
