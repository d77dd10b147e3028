"""Atomic file writes: a crash or kill leaves either the old file or the new one, never half of
one. Output directories are checked (`check_writable_dir`) before any compute and made (`make_dirs`)
with a one-line error naming the path and what to do."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np


class DirectoryError(ValueError):
  """A directory that cannot be made or written: the message names it and what to do."""


def check_writable_dir(path: str, what: str) -> None:
  """Raise DirectoryError when `path` (named `what` in the message, e.g. '--workdir') could not
  be made or written: it or a parent is a file, or the nearest existing directory above it is not
  writable. Writes nothing."""
  path = os.path.abspath(path)
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    where = 'is a file' if probe == path else f'lies below the file {probe}'
    raise DirectoryError(f'{what}={path} {where}, not a directory; name a directory (it is '
                         'created when missing).')
  if not os.access(probe, os.W_OK | os.X_OK):
    verb = 'write in' if probe == path else f'create it in {probe}'
    raise DirectoryError(f'{what}={path}: no permission to {verb}; choose a directory you can '
                         'write, or change its permissions.')


def make_dirs(path: str, what: str) -> None:
  """os.makedirs(path, exist_ok=True), with a DirectoryError naming `what` when it fails."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise DirectoryError(f'{what}={os.path.abspath(path)}: cannot create the directory ({e}); '
                         'choose a directory you can write.') from e


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


def replace_dir(path: str, write: Callable[[str], None], is_ours: Callable[[str], bool]) -> None:
  """Write the directory `path` whole: `write(tmp)` fills a fresh hidden sibling `tmp`, which then
  takes the place of `path`. A reader sees the old complete directory or the new one (or, for the
  instant between two renames, none), never a mix; a crash leaves the old one or a hidden sibling
  that the next call deletes.

  An existing `path` is replaced only when it is empty or `is_ours(path)` (e.g. it holds the
  marker file a previous `write` left); otherwise DirectoryError, so that a folder of the user's is
  never deleted.
  """
  path = os.path.abspath(path)
  parent, name = os.path.dirname(path), os.path.basename(path)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise DirectoryError(f'{path} is a file; remove it or choose another directory.')
    if os.listdir(path) and not is_ours(path):
      raise DirectoryError(f'{path} exists and was not written by this exporter; remove it or '
                           'choose another directory.')
  os.makedirs(parent, exist_ok=True)
  prefix = f'.{name}.'
  for entry in os.listdir(parent):          # leftovers of a crashed call
    if entry.startswith(prefix) and entry.endswith(('.new', '.old')):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=prefix, suffix='.new')
  try:
    write(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if os.path.exists(path):
    old = tempfile.mkdtemp(dir=parent, prefix=prefix, suffix='.old')
    os.rmdir(old)
    os.replace(path, old)
  os.replace(tmp, path)
  os.chmod(path, 0o777 & ~_umask())
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
  """The process's umask, read without changing it (Linux's /proc; else the usual 0o022)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except OSError:
    pass
  return 0o022
