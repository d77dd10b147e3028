"""Console progress for long loops: step, steps/s, ETA and the current metrics."""
from __future__ import annotations

import sys
import time


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f'{h}h{m:02d}m{sec:02d}s' if h else f'{m}m{sec:02d}s'


class Progress:
  """Prints `[name] step k/n | x steps/s | ETA | metrics` lines (rate over the last interval)."""

  def __init__(self, name: str, total: int, start: int = 0, stream=None):
    self.name, self.total = name, total
    self.stream = stream or sys.stdout
    self._t0 = self._t = time.perf_counter()
    self._s0 = self._s = start

  def update(self, step: int, metrics: dict | None = None) -> float:
    """Print a line for `step`; returns the steps/s since the previous update."""
    now = time.perf_counter()
    rate = (step - self._s) / max(now - self._t, 1e-9)
    overall = (step - self._s0) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / max(overall, 1e-9)
    parts = [f'[{self.name}] step {step}/{self.total}', f'{rate:.2f} steps/s',
             f'ETA {format_seconds(eta)}']
    for k, v in (metrics or {}).items():
      parts.append(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}')
    print(' | '.join(parts), file=self.stream, flush=True)
    self._t, self._s = now, step
    return rate

  def elapsed(self) -> float:
    return time.perf_counter() - self._t0
