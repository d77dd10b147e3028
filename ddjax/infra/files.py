"""Atomic file writes: a crash or kill leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Callable

import numpy as np


def write_atomic(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
  """Write through `write(fileobj)` to a temporary file beside `path`, fsync, then rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  write_atomic(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode() + b'\n'))


def write_npz(path: str, **arrays: np.ndarray) -> None:
  write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def append_jsonl(path: str, record: dict) -> None:
  """Append one JSON line and flush (a torn last line is skipped by read_jsonl)."""
  with open(path, 'a') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')
    f.flush()


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out
