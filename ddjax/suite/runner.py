"""Judge one set on the axes a user picks: `evaluate_set`, behind `python -m ddjax.evaluate` and
`ddjax.evaluate_set(...)`.

The suite's settings are one ConfigDict (`suite_config(preset)`): shared keys (axes, num_models,
seed, max_steps, protocol, cache_dir) and one block per registered axis with that axis's defaults
for the preset. The output directory gets suite.json (every axis's result, the set, the settings,
the cost of making the set), report.md and each axis's plots. It is resumable: each finished
network is a unit file, each finished axis a result file, and a directory made for another set or
other settings is refused naming what differs (restart=True starts it afresh).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time

import jax
import ml_collections
import numpy as np

from ddjax import config as config_lib
from ddjax.infra import artifacts, distributed, files
from ddjax.runtime import pipeline
from ddjax.suite import axes as axes_lib
from ddjax.suite import report as report_lib
from ddjax.suite.context import Context, log
from ddjax.suite.sets import JudgedSet, load_set

QUICK_AXES = 'accuracy,cross_arch,robust_scores'
FULL_AXES = 'accuracy,cross_arch,robust_scores,continual,privacy,adversarial'
KEY_SUITE = 11          # the purpose folded into the root key for the suite


def suite_config(preset: str = 'quick') -> ml_collections.ConfigDict:
  """The suite's settings for `preset` ('quick': a few minutes per set on a CPU; 'full': the
  protocols' own budgets and every axis)."""
  if preset not in axes_lib.PRESETS:
    raise ValueError(f'unknown suite preset {preset!r}; choose one of {axes_lib.PRESETS}')
  quick = preset == 'quick'
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.axes = QUICK_AXES if quick else FULL_AXES
  c.num_models = 2 if quick else 5     # networks per cell (per set, architecture, protocol)
  c.seed = 0
  c.max_steps = 600 if quick else 0    # cap on any network's training steps (0: the protocol's)
  c.protocol = ''                      # '' = the set's own (workdir); foreign sets: dc for hard
                                       # labels, rded for soft ones
  c.cache_dir = ''                     # '' = runs/suite_cache (full-data / random baselines)
  for name in axes_lib.axis_names():
    c[name] = ml_collections.ConfigDict(axes_lib.get_axis(name).settings(preset))
  return c


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict | None,
                    what: str = 'suite setting') -> None:
  """Set dotted keys ('num_models', 'cross_arch.archs') on a config, a string value parsed to the
  existing value's type; ValueError naming a key that does not exist (as a `what`)."""
  for dotted, value in (overrides or {}).items():
    node, parts = cfg, dotted.split('.')
    for p in parts[:-1]:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise ValueError(f'unknown {what} {dotted!r}')
      node = node[p]
    if parts[-1] not in node:
      known = ', '.join(sorted(k for k in node.keys()))
      raise ValueError(f'unknown {what} {dotted!r}; known here: {known}')
    old = node[parts[-1]]
    if isinstance(old, bool) and isinstance(value, str):
      value = value.lower() in ('1', 'true', 'yes')
    elif old is not None and not isinstance(value, type(old)):
      value = type(old)(value)
    node[parts[-1]] = value


def _merge(base: dict, own: dict) -> dict:
  out = dict(base)
  for k, v in own.items():
    out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
  return out


def _with_defaults(own: dict) -> ml_collections.ConfigDict:
  """A stored config completed with today's defaults: blocks registered since it was written
  (a user protocol's) and keys added since."""
  return ml_collections.ConfigDict(_merge(config_lib.base_config().to_dict(), own))


def run_config(judged: JudgedSet, config: ml_collections.ConfigDict | None,
               protocol: str) -> ml_collections.ConfigDict:
  """The ddjax config the protocols read: the workdir's own, else `config` (a ddjax config file's
  for the data), else the base config of the random-subset builder on the default dataset; with
  eval.protocol = `protocol` when given (a foreign set with neither config nor protocol: 'dc'
  for hard labels, 'rded' for soft)."""
  if config is not None:
    cfg = _with_defaults(config.to_dict())
  elif judged.run_cfg is not None:
    cfg = _with_defaults(judged.run_cfg.to_dict())
  else:
    cfg = config_lib.method_config('random_subset')
  if judged.run_cfg is None and config is None and not protocol:
    protocol = 'dc' if judged.hard_labels else 'rded'
  if protocol:
    cfg.eval.protocol = protocol
  cfg.distill.ipc = judged.ipc
  return cfg


def _settings_record(judged: JudgedSet, cfg: ml_collections.ConfigDict) -> dict:
  digest = hashlib.sha256()
  for a in (judged.x_pixels, judged.y):
    digest.update(np.ascontiguousarray(a, np.float32).tobytes())
  shared = {k: v for k, v in cfg.to_dict().items() if not isinstance(v, dict) and k != 'axes'}
  return {'set': {'path': os.path.abspath(judged.path), 'content': digest.hexdigest()[:16]},
          'suite': shared}


FIX = 'pass --restart (restart=True) to judge afresh, or another --out'


def _check_record(directory: str, name: str, record: dict, subject: str,
                  added: dict | None = None) -> None:
  """Refuse `directory` when its stored record `name` differs from `record` (naming the keys),
  then store `record` there. Only the keys `record` has are compared; a key the stored record
  lacks counts as `added[key]` (a setting added since, at its default)."""
  have = artifacts.read_record(directory, name) if os.path.isdir(directory) else None
  if have is not None:
    only = tuple(artifacts.flatten(artifacts.plain(record)))
    artifacts.check(have, record, subject=subject, fix=FIX, only=only, added=added)
  files.make_dirs(directory, '--out')
  if distributed.is_main():
    artifacts.write_record(directory, record, name)


def _check_out_dir(out_dir: str, record: dict, restart: bool) -> None:
  """The suite directory holds one set judged with one choice of the shared settings; each
  axis's directory records that axis's own settings (`_check_record`), so an axis added later
  joins a finished suite."""
  if restart and os.path.isdir(out_dir) and distributed.is_main():
    shutil.rmtree(out_dir)
  _check_record(out_dir, 'suite_record.json', record, f'suite directory {out_dir}')


def cost_of(judged: JudgedSet) -> dict | None:
  """What making the set cost, from its run's results.json (None for a foreign set)."""
  r = judged.results
  if not r:
    return None
  if 'cost' in r:
    return r['cost']
  out = {'wall_seconds_with_evaluation': r.get('wall_seconds')}
  if 'distill' in r:
    out.update(steps=r['distill'].get('steps'), sec_per_step=r['distill'].get('sec_per_step'),
               devices=r['distill'].get('devices'))
  return out


def evaluate_set(source: str, out_dir: str, *, preset: str = 'quick', axes: str | None = None,
                 config: ml_collections.ConfigDict | None = None,
                 overrides: dict | None = None, restart: bool = False, data=None) -> dict:
  """Judge the set at `source` (a ddjax workdir, a distilled.npz, an image folder) on `axes`
  (comma-separated registered axes; default the preset's) and write suite.json, report.md and
  plots to `out_dir`. Returns the suite's results dict (what suite.json holds).

  config: the ddjax config of a foreign set's data (and method, for the axes that distil), or
  of a workdir's set run as several processes (its distributed.* block; `launch/multiprocess.py
  --entry="-m ddjax.evaluate"`); overrides: dotted suite settings; data: the PreparedData when
  the caller has it. Several processes share every cell's networks (`Context.networks`) and
  end with the one-process results."""
  t0 = time.perf_counter()
  cfg = suite_config(preset)
  if axes:
    cfg.axes = axes
  apply_overrides(cfg, overrides)
  names = [a.strip() for a in cfg.axes.split(',') if a.strip()]
  specs = [axes_lib.get_axis(n) for n in names]
  judged = load_set(source)
  run_cfg = run_config(judged, config, cfg.protocol)
  config_lib.validate(run_cfg)
  distributed.initialize(run_cfg.distributed)     # several processes: --config's distributed.*
  with distributed.quiet_unless_main():
    return _evaluate(judged, run_cfg, cfg, specs, out_dir, preset, config, restart, data, t0)


def _evaluate(judged, run_cfg, cfg, specs, out_dir, preset, config, restart, data,
              t0) -> dict:
  for spec in specs:
    if spec.needs_method and judged.run_cfg is None and config is None:
      raise ValueError(f'axis {spec.name!r} distils sets itself and needs the method that made '
                       f'this one: judge a ddjax workdir, or pass --config=<method config>, or '
                       f'leave {spec.name} out of --suite.axes')
  data = data or pipeline.load_data(run_cfg)
  if judged.num_classes != data.num_classes or judged.x_pixels.shape[1:] != data.image_shape:
    raise ValueError(f'the set ({judged.x_pixels.shape[1:]} images, {judged.num_classes} '
                     f'classes) does not match the data {run_cfg.data.name!r} '
                     f'({data.image_shape}, {data.num_classes} classes); pass --config with '
                     'the data it was made from')
  plan = pipeline.make_plan(run_cfg, data)
  _check_out_dir(out_dir, _settings_record(judged, cfg), restart)
  cache_dir = cfg.cache_dir or os.path.join('runs', 'suite_cache')
  root = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_SUITE)
  ctx_base = dict(data=data, judged=judged, run_cfg=run_cfg, plan=plan, suite=cfg,
                  cache_dir=cache_dir)
  syn = {'x': None, 'y': judged.y, **judged.extras}
  results = {'set': {'name': judged.name, 'path': judged.path, 'source': judged.source,
                     'images': int(len(judged.y)), 'ipc': judged.ipc,
                     'classes': judged.num_classes, 'hard_labels': judged.hard_labels,
                     'method': run_cfg.method if judged.run_cfg is not None else None,
                     'dataset': run_cfg.data.name, 'protocol': plan.protocol},
             'settings': cfg.to_dict(), 'cost': cost_of(judged), 'axes': {}}
  log(f'judging {judged.name} ({judged.source}, {len(judged.y)} images, IPC {judged.ipc}) on '
      f'{", ".join(spec.name for spec in specs)}; protocol {plan.protocol}; preset {preset}')
  for n, spec in enumerate(specs):
    axis_dir = os.path.join(out_dir, spec.name)
    result_path = os.path.join(axis_dir, 'result.json')
    settings = cfg[spec.name] if spec.name in cfg else ml_collections.ConfigDict()
    defaults = artifacts.flatten({'settings': spec.settings(preset)})
    _check_record(axis_dir, 'settings.json', {'settings': settings.to_dict()},
                  f'axis directory {axis_dir}', added=defaults)
    if os.path.exists(result_path):
      result = artifacts.read_json(result_path, 'delete it to judge that axis again')
      log(f'axis {spec.name}: finished before, read from {result_path}')
    else:
      t_axis = time.perf_counter()
      log(f'axis {n + 1}/{len(specs)}: {spec.name} (elapsed {time.perf_counter() - t0:.0f} s)')
      ctx = Context(**ctx_base, syn=None, settings=settings, key=root, out_dir=axis_dir)
      ctx.syn = {**syn, 'x': ctx.model_space(judged.x_pixels)}
      result = artifacts.plain(spec.run(ctx))
      result['seconds'] = time.perf_counter() - t_axis
      if distributed.is_main():
        files.write_json(result_path, result)
    if spec.plot is not None and distributed.is_main():
      result['plots'] = [os.path.relpath(p, out_dir) for p in spec.plot(result, axis_dir)]
    results['axes'][spec.name] = result
  results['seconds'] = time.perf_counter() - t0
  if distributed.is_main():
    files.write_json(os.path.join(out_dir, 'suite.json'), results)
    report_lib.write_report(out_dir, results, specs)
  log(f'done in {results["seconds"]:.0f} s: {os.path.join(out_dir, "report.md")}')
  return results
