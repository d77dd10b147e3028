"""Checks of a ConfigDict's values that every layer's validation shares: each returns a list of
one-line messages naming the key and what is allowed ([] when the value is fine)."""
from __future__ import annotations


def get(cfg, key: str):
  """The value at dotted `key` of a ConfigDict (None when a part is missing)."""
  node = cfg
  for part in key.split('.'):
    node = node.get(part, None) if hasattr(node, 'get') else None
  return node


def choice_errors(cfg, key: str, allowed) -> list[str]:
  """[message] when the value at dotted `key` is not one of `allowed`, else []."""
  value = get(cfg, key)
  return [] if value in allowed else [f'{key}={value!r} is not one of {tuple(allowed)}.']


def int_errors(cfg, key: str, low: int, hint: str = '') -> list[str]:
  """[message] when the value at dotted `key` is not an integer >= low, else []."""
  v = get(cfg, key)
  if isinstance(v, bool) or not isinstance(v, int) or v < low:
    return [f'{key} must be an integer >= {low}{hint}, got {v!r}.']
  return []


def fraction_errors(cfg, key: str, closed: bool = False) -> list[str]:
  """[message] when the value at dotted `key` is outside [0, 1) ([0, 1] when closed), else []."""
  v = get(cfg, key)
  inside = isinstance(v, (int, float)) and (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0)
  return [] if inside else [f'{key} must lie in [0, 1{"]" if closed else ")"}, got {v!r}.']
