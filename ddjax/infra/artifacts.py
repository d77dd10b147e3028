"""Cached artifacts: a thing made from data and a config, kept on disk with the record that says so.

An expert buffer, an observer, a score file and a run's workdir are each built once and reused by
every later run that asks for the same thing. Each keeps a *record*: a JSON dict of what
determines it (data identity, model, settings). A run computes the record it wants and compares it
with the stored one; a difference in any key that matters refuses the artifact with one line
naming the keys (`key: stored -> wanted`) and what to do.

    want = {'dataset': 'fashion_mnist', 'model': {'width': 128}, 'epochs': 50}
    have = artifacts.read_record(directory)            # None when there is none yet
    artifacts.check(have, want, subject=f'the cache in {directory} was made for another run',
                    fix='delete it to build again', may_differ=('epochs',))
    name = f'fashion_mnist_{artifacts.content_hash(want)}'      # a default directory name

Records are compared flat, keys joined by dots ('model.width'), values as JSON has them (a tuple
equals the list it is stored as). The rules of a comparison (`differences`):

  only        compare these keys (and the keys below them) only
  may_differ  keys that do not change the artifact (each with the keys below it: 'eval' or
              'eval.' is the whole block)
  added       keys introduced after records were written: {key: the value every older record had}
  usable      {key: usable(stored, wanted)}: a stored value that differs but serves (a buffer with
              more experts than asked)

Completion: a build that is killed must never be used half-written. A single-shot build (an
observer) writes its content first and its record last (`publish`): the record's presence marks
the artifact complete (`is_complete`), and `discard_incomplete` clears what a killed build left
before building again. A resumable build (an expert buffer) writes its record first, so a resumed
build is checked against what it was making, and keeps its progress (the epochs done) in an index
written after each step's content: the index is its completion marker. A single-file artifact
(a score file) is written atomically with its record inside it, so it is complete or absent
(`read_npz` names a torn one).

Every file is written atomically (`ddjax.infra.files`). A record that is not readable JSON is
reported naming the file and what to do (`RecordError`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ddjax.infra import files

RECORD = 'record.json'
ABSENT = '<absent>'


class RecordError(ValueError):
  """A stored record or cached file cannot be read (truncated, damaged, not what it should be)."""


class Mismatch(ValueError):
  """A cached artifact was made for other data or another config."""


# -- records ---------------------------------------------------------------------------------------
def plain(value: Any) -> Any:
  """`value` as JSON stores it (tuples become lists, keys strings)."""
  return json.loads(json.dumps(value))


def flatten(record: Mapping, prefix: str = '') -> dict:
  """{'a': {'b': 1}, 'c': 2} -> {'a.b': 1, 'c': 2}."""
  out = {}
  for k, v in record.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def content_hash(record: Mapping, length: int = 10) -> str:
  """The first `length` hex digits of SHA-1 of the record's JSON (keys sorted): a short name
  that changes with any value of the record."""
  return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()[:length]


def read_json(path: str, fix: str = 'delete it to build it again') -> Any:
  """The JSON in `path`, or None when there is no such file. A file that is not readable JSON
  (a truncated write by another tool, a hand edit) raises RecordError naming it and `fix`."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RecordError(f'{path} is not readable JSON ({type(e).__name__}: {e}); {fix}.') from None


def read_record(directory: str, name: str = RECORD,
                fix: str = 'delete the directory to build it again') -> dict | None:
  """The record `directory/name`, or None when absent; RecordError naming the file when it is
  not a JSON object."""
  path = os.path.join(directory, name)
  record = read_json(path, fix)
  if record is not None and not isinstance(record, dict):
    raise RecordError(f'{path} holds a JSON {type(record).__name__}, not a record; {fix}.')
  return record


def write_record(directory: str, record: Mapping, name: str = RECORD) -> str:
  """Write the record atomically (creating the directory); returns its path."""
  path = os.path.join(directory, name)
  files.write_json(path, plain(dict(record)))
  return path


def _matches(key: str, patterns: Iterable[str]) -> bool:
  """key is one of `patterns` or below one: 'a.b' matches 'a.b', 'a' and 'a.'."""
  return any(key == p or key.startswith(p if p.endswith('.') else p + '.') for p in patterns)


def differences(have: Mapping, want: Mapping, *, only: Iterable[str] | None = None,
                may_differ: Iterable[str] = (), added: Mapping[str, Any] | None = None,
                usable: Mapping[str, Callable[[Any, Any], bool]] | None = None) -> list[str]:
  """'key: stored -> wanted' for every flat key of either record whose values differ, sorted
  by key; a key missing on one side shows as '<absent>' (module docstring: the rules)."""
  h, w = flatten(plain(dict(have))), flatten(plain(dict(want)))
  only = None if only is None else tuple(only)
  may_differ, added, usable = tuple(may_differ), dict(added or {}), dict(usable or {})
  out = []
  for key in sorted(set(h) | set(w)):
    if (only is not None and not _matches(key, only)) or _matches(key, may_differ):
      continue
    a, b = h.get(key, added.get(key, ABSENT)), w.get(key, ABSENT)
    if a == b or (key in usable and a is not ABSENT and b is not ABSENT and usable[key](a, b)):
      continue
    out.append(f'{key}: {a!r} -> {b!r}')
  return out


def mismatch_message(subject: str, diff: list[str], fix: str) -> str:
  """'<subject> (<key: stored -> wanted>; ...); <fix>.' (one line)."""
  return f'{subject} ({"; ".join(diff)}); {fix}.'


def check(have: Mapping | None, want: Mapping, *, subject: str, fix: str,
          error: type[Exception] = Mismatch, **rules) -> None:
  """Raise `error` naming the differing keys when the stored record `have` differs from `want`
  (`differences` with `rules`); nothing when they agree or when there is no stored record."""
  if have is None:
    return
  diff = differences(have, want, **rules)
  if diff:
    raise error(mismatch_message(subject, diff, fix))


# -- completion ------------------------------------------------------------------------------------
def publish(directory: str, record: Mapping, name: str = RECORD) -> str:
  """Mark a single-shot build complete: write its record last, after all its content."""
  return write_record(directory, record, name)


def is_complete(directory: str, name: str = RECORD) -> bool:
  """Whether a single-shot build in `directory` finished (its record, written last, exists)."""
  return os.path.isfile(os.path.join(directory, name))


def discard_incomplete(directory: str, entries: Iterable[str], name: str = RECORD) -> list[str]:
  """Remove what a killed single-shot build left in `directory` (its `entries`, files or
  folders, when its record is absent), so the next build starts clean; returns the names
  removed. A complete artifact is left alone, and so is anything not in `entries` (the directory
  may be one a user named)."""
  if not os.path.isdir(directory) or is_complete(directory, name):
    return []
  removed = []
  for entry in entries:
    path = os.path.join(directory, entry)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
    else:
      continue
    removed.append(entry)
  return removed


# -- single-file artifacts -------------------------------------------------------------------------
def read_npz(path: str, what: str = 'cached file',
             fix: str = 'delete it to compute it again') -> dict[str, np.ndarray] | None:
  """Every array of the .npz at `path`, or None when absent. A torn or damaged file raises
  RecordError naming it and `fix`."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise RecordError(f'{what} {path} is unreadable ({type(e).__name__}: {e}); {fix}.') from None
