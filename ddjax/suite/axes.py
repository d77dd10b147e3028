"""The evaluation suite's axes: each a registered way of judging a set (`Axis`), like methods and
protocols are registered ways of making and training on one.

An axis is `run(ctx) -> result` (a JSON-able dict) on a `ddjax.suite.context.Context` (the set,
its data and protocol, the axis's settings, resumable network training, cached baselines), plus
`report(result) -> markdown` and optionally `plot(result, directory) -> [png paths]`. Its settings
are a block of defaults per preset ('quick', 'full'), overridable from the command line as
`--suite.<axis>.<key>=value`. `needs_method`: the axis makes sets itself (continual learning,
membership inference) and so needs the method's config, which a ddjax workdir has and an image
folder made by another tool does not.

A user's axis registers the same way from its own module (`ddjax.register_axis`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

PRESETS = ('quick', 'full')


@dataclasses.dataclass(frozen=True)
class Axis:
  """A registered axis of the evaluation suite.

  Attributes:
    name: the name in `--suite.axes`.
    run: run(ctx) -> JSON-able result dict.
    report: report(result) -> a markdown section (no heading; the suite adds one).
    settings: settings(preset) -> dict of this axis's defaults for 'quick' or 'full'.
    plot: plot(result, directory) -> list of PNG paths written, or None.
    summary: summary(result) -> {column: number} for the leaderboard (a few headline figures).
    needs_method: the axis distils sets itself and needs the config that made the judged set.
    description: one line for listings.
  """
  name: str
  run: Callable[[Any], dict]
  report: Callable[[dict], str]
  settings: Callable[[str], dict] = lambda preset: {}
  plot: Callable[[dict, str], list] | None = None
  summary: Callable[[dict], dict] = lambda result: {}
  needs_method: bool = False
  description: str = ''


_AXES: dict[str, Axis] = {}
_loaded = False


def register_axis(axis: Axis, replace: bool = False) -> Axis:
  """Add `axis` to the suite; ValueError if another axis has its name (unless `replace`)."""
  if not replace and axis.name in _AXES and _AXES[axis.name] is not axis:
    raise ValueError(f'an axis named {axis.name!r} is already registered; pass replace=True '
                     'to replace it')
  _AXES[axis.name] = axis
  return axis


def _load_builtins() -> None:
  global _loaded
  if not _loaded:
    _loaded = True
    import ddjax.suite.builtin  # noqa: F401  (registers the built-in axes)


def get_axis(name: str) -> Axis:
  """The registered axis `name`; ValueError listing the registered ones."""
  _load_builtins()
  if name not in _AXES:
    raise ValueError(f'unknown suite axis {name!r}; registered: {", ".join(axis_names())}')
  return _AXES[name]


def axis_names() -> list[str]:
  _load_builtins()
  return list(_AXES)
