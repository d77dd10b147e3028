"""What making a set cost: wall time, device time, the devices, peak memory (results.json 'cost').

    with cost.stopwatch() as clock:
      ...                                   # build or distill the set, decode it to the host
    results['cost'] = cost.record(clock.seconds, steps=..., sec_per_step=..., resumed_from=...)

The clock covers what the pipeline times with it (`ddjax.runtime.pipeline`: preemptive pruning
when on, building the distiller, including expert buffers or an observer trained or read from
their caches, the distillation or set building, and the decode to host arrays; not the data
loading, the export or the evaluation). Wall time counts this process only: a run resumed from a
checkpoint records `resumed_from` (the step it started at) and the seconds it spent itself, not
those of the runs before it.

device_seconds = seconds x the number of devices (all processes'), the usual accounting of a
machine held for that long. Peak memory is the backend's own number where it keeps one
(`Device.memory_stats()['peak_bytes_in_use']`: GPU, TPU), the largest over this process's
devices, counted from the start of the process (JAX cannot reset it), so it also holds anything
the process ran before; CPU reports none (None). `peak_host_rss_bytes`, the process's peak
resident host memory (`resource.getrusage`), is recorded too, always: host memory, the only memory
figure on CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Any, Iterator, Mapping, Sequence

import jax


def peak_device_bytes(stats: Mapping[str, Any] | None) -> int | None:
  """stats: one device's `memory_stats()` (a dict, or None where the backend keeps none) ->
  its 'peak_bytes_in_use' as int, or None when absent."""
  if not stats:
    return None
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else int(peak)


def devices_peak_bytes(devices: Sequence[Any]) -> int | None:
  """The largest `peak_device_bytes` over `devices` (None when none reports one). A device whose
  memory_stats is missing or raises counts as reporting none."""
  peaks = []
  for device in devices:
    stats_fn = getattr(device, 'memory_stats', None)
    try:
      stats = stats_fn() if stats_fn is not None else None
    except Exception:                        # a backend without the call
      stats = None
    peaks.append(peak_device_bytes(stats))
  known = [p for p in peaks if p is not None]
  return max(known) if known else None


def peak_host_rss_bytes(max_rss: int | None = None, platform: str = sys.platform) -> int | None:
  """The process's peak resident set size in bytes: getrusage's ru_maxrss (kilobytes on Linux,
  bytes on macOS); `max_rss` overrides the reading (for tests). None where getrusage is missing."""
  if max_rss is None:
    try:
      import resource
    except ImportError:                      # Windows
      return None
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(max_rss) if platform == 'darwin' else int(max_rss) * 1024


def device_info() -> dict:
  """{'kind', 'platform', 'count' (all processes' devices), 'local_count', 'processes'}."""
  device = jax.devices()[0]
  return {'kind': device.device_kind, 'platform': device.platform, 'count': jax.device_count(),
          'local_count': jax.local_device_count(), 'processes': jax.process_count()}


@dataclasses.dataclass
class Stopwatch:
  """Wall seconds between entering and leaving `stopwatch()` (None while it runs)."""
  seconds: float | None = None


@contextlib.contextmanager
def stopwatch(clock=time.perf_counter) -> Iterator[Stopwatch]:
  """Times the block (also when it raises): `.seconds` is set on leaving it."""
  watch = Stopwatch()
  start = clock()
  try:
    yield watch
  finally:
    watch.seconds = clock() - start


def record(seconds: float, *, steps: int, sec_per_step: float, resumed_from: int,
           pruning_seconds: float | None = None) -> dict:
  """The 'cost' entry of results.json (module docstring for what each number covers):

  seconds, device_seconds (seconds x devices), pruning_seconds (the part of seconds spent in
  preemptive pruning; None when off), steps (the run's distillation steps; 0 for a set builder),
  steps_this_process (steps - resumed_from), resumed_from, sec_per_step (the run loop's mean,
  compilation excluded), device (`device_info`), peak_device_bytes (None where the backend keeps
  no count), peak_host_rss_bytes (the process's peak host memory, recorded always: the only
  memory figure on CPU).
  Read after the set is on the host, so the device work it times has finished.
  """
  info = device_info()
  out = {'seconds': float(seconds), 'device_seconds': float(seconds) * info['count'],
         'pruning_seconds': None if pruning_seconds is None else float(pruning_seconds),
         'steps': int(steps), 'steps_this_process': int(steps) - int(resumed_from),
         'resumed_from': int(resumed_from), 'sec_per_step': float(sec_per_step),
         'device': info, 'peak_device_bytes': devices_peak_bytes(jax.local_devices()),
         'peak_host_rss_bytes': peak_host_rss_bytes()}
  return out
