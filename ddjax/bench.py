"""`python -m ddjax.bench`: make every set, judge each on the suite, write one ranked table.

    python -m ddjax.bench --methods=frepo_isa,dm,dsa,pad,rded --ipc=1,10 --preset=quick \\
        --out=runs/bench
    python -m ddjax.bench --methods=dm --ipc=1 --run.distill.steps=200 --suite.num_models=3

--methods: config names in ./configs (frepo_isa -> configs/frepo_isa.py, 'name:preset' for a
preset), config file paths, or registered method names; the random real subset is always a row.
--run.<key>=value: overrides applied to every method's config (a shorter distillation);
--suite.<key>=value: the suite's settings (`ddjax.suite.runner.suite_config`).

Each set is made by `ddjax.run` into <out>/sets/<method>_ipc<k> (resumed if interrupted, reused
if finished) and judged by `ddjax.suite.evaluate_set` into <out>/judged/<method>_ipc<k>. The
leaderboard (<out>/leaderboard.md, .json, .png) ranks the sets of each IPC by LRS when the suite
has robust scores, else by accuracy under their own protocol, with every axis's headline figures
and the time it took to make each set.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import ml_collections
import numpy as np

from ddjax.infra import files
from ddjax.suite.runner import apply_overrides

BASELINE = 'random_subset'


def load_method_config(spec: str) -> tuple[str, ml_collections.ConfigDict]:
  """(row name, config) of a --methods entry: 'frepo_isa' (configs/frepo_isa.py),
  'configs/dm.py:paper', or a registered method name ('random_subset'); '+key=value' parts set
  that method's config alone ('dm+distill.steps=200')."""
  from ddjax import config as config_lib
  spec, *own = spec.split('+')
  name, _, preset = spec.partition(':')
  path = name if name.endswith('.py') else os.path.join('configs', name + '.py')
  if os.path.isfile(path):
    module_name = 'bench_config_' + os.path.splitext(os.path.basename(path))[0]
    loader = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    loader.loader.exec_module(module)
    cfg = module.get_config(preset)
  else:
    try:
      cfg = config_lib.method_config(name, preset)
    except config_lib.ConfigError as e:
      raise ValueError(f'--methods entry {spec!r}: no config file {path} and {e}') from None
  for part in own:
    key, eq, value = part.partition('=')
    if not eq:
      raise ValueError(f'--methods entry {spec!r}: {part!r} is not key=value')
    apply_overrides(cfg, {key: value}, f'config key (in --methods entry {spec!r})')
  row = os.path.splitext(os.path.basename(name))[0] + (f':{preset}' if preset else '')
  return row, cfg


def rank_rows(rows: list[dict]) -> list[dict]:
  """Rows of one IPC sorted best first: by LRS when present, else by own-protocol accuracy."""
  key = 'lrs' if all('lrs' in r for r in rows) else 'acc_own'
  return sorted(rows, key=lambda r: -r.get(key, -np.inf))


COLUMNS = (('acc_own', 'acc own %', 100), ('random_own', 'random %', 100),
           ('hlr', 'HLR pts', 100), ('ior', 'IOR pts', 100), ('lrs', 'LRS', 1),
           ('ars', 'ARS', 1), ('cross_arch_mean', 'cross-arch %', 100),
           ('continual_final', 'CL final %', 100), ('mia_auc', 'MIA AUC', 1),
           ('mia_tpr@0.1%', 'MIA TPR@0.1%', 100), ('make_seconds', 'make s', 1),
           ('judge_seconds', 'judge s', 1))


def leaderboard_markdown(table: dict) -> str:
  lines = []
  for ipc, rows in table.items():
    extra = sorted({k for r in rows for k in r} - {c[0] for c in COLUMNS}
                   - {'method', 'protocol', 'rank'})
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)] + [(k, k, 1) for k in extra]
    lines += [f'### IPC {ipc}', '', '| rank | method | protocol | '
              + ' | '.join(c[1] for c in cols) + ' |', '|---' * (len(cols) + 3) + '|']
    for r in rows:
      cells = [f'{r[k] * s:.4g}' if isinstance(r.get(k), (int, float)) else '-'
               for k, _, s in cols]
      lines.append(f'| {r["rank"]} | {r["method"]} | {r["protocol"]} | ' + ' | '.join(cells)
                   + ' |')
    lines.append('')
  return '\n'.join(lines)


def plot_leaderboard(table: dict, path: str) -> None:
  from matplotlib.figure import Figure
  from ddjax.suite.report import save_figure
  fig = Figure(figsize=(6 * len(table), 3.8), dpi=100)
  axes = fig.subplots(1, len(table), squeeze=False)[0]
  for ax, (ipc, rows) in zip(axes, table.items()):
    names = [r['method'] for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r.get('acc_own', 0) for r in rows], 0.4, label='acc (own protocol)')
    ax.bar(x + 0.2, [100 * r.get('random_own', 0) for r in rows], 0.4, label='random subset')
    ax.set_xticks(x, names, rotation=30, ha='right')
    ax.set_ylabel('test accuracy (%)')
    ax.set_title(f'IPC {ipc}')
    if any('lrs' in r for r in rows):
      twin = ax.twinx()
      twin.plot(x, [r.get('lrs', np.nan) for r in rows], 'k^', label='LRS')
      twin.set_ylabel('LRS')
    ax.legend(fontsize=7)
  save_figure(fig, path)


def row_of(name: str, judged: dict, specs) -> dict:
  row = {'method': name, 'protocol': judged['set']['protocol']}
  for spec in specs:
    result = judged['axes'].get(spec.name)
    if result is not None:
      row.update(spec.summary(result))
  own = judged['set']['protocol']
  if f'acc[{own}]' in row:
    row['acc_own'] = row.pop(f'acc[{own}]')
    row['random_own'] = row.pop(f'random[{own}]', None)
  cost = judged.get('cost') or {}
  row['make_seconds'] = cost.get('seconds', cost.get('wall_seconds_with_evaluation'))
  row['judge_seconds'] = sum(r.get('seconds', 0.0) for r in judged['axes'].values())
  return row


def bench(methods: list[str], ipcs: list[int], out: str, preset: str = 'quick',
          run_overrides: dict | None = None, suite_overrides: dict | None = None) -> dict:
  """Make and judge every (method, IPC) set and write the leaderboard; returns {ipc: rows}."""
  from ddjax.runtime import pipeline
  from ddjax.suite import axes as axes_lib
  from ddjax.suite.runner import evaluate_set, suite_config
  if BASELINE not in [m.split('+')[0].partition(':')[0] for m in methods]:
    methods = [BASELINE] + list(methods)
  configs = [load_method_config(m) for m in methods]
  suite = suite_config(preset)
  specs = [axes_lib.get_axis(a.strip()) for a in
           (suite_overrides or {}).get('axes', suite.axes).split(',') if a.strip()]
  board = os.path.join(out, 'leaderboard.json')      # other IPCs of an earlier call are kept
  table = ({k: v for k, v in json.load(open(board)).items() if int(k) not in ipcs}
           if os.path.exists(board) else {})
  t0 = time.perf_counter()
  for ipc in ipcs:
    rows = []
    for name, base in configs:
      cfg = ml_collections.ConfigDict(base.to_dict())
      cfg.distill.ipc = int(ipc)
      apply_overrides(cfg, run_overrides, 'config key (--run.)')
      tag = f'{name.replace(":", "_")}_ipc{ipc}'
      workdir = os.path.join(out, 'sets', tag)
      print(f'[bench] {tag}: making the set ({time.perf_counter() - t0:.0f} s so far)',
            flush=True)
      if not os.path.exists(os.path.join(workdir, 'results.json')):
        cfg.eval.num_models = 0          # the suite evaluates
        pipeline.run(cfg, workdir)
      judged = evaluate_set(workdir, os.path.join(out, 'judged', tag), preset=preset,
                            overrides=suite_overrides)
      rows.append(row_of(name, judged, specs))
    ranked = rank_rows(rows)
    for rank, row in enumerate(ranked, 1):
      row['rank'] = rank
    table[str(ipc)] = ranked
    table = dict(sorted(table.items(), key=lambda kv: int(kv[0])))
    files.write_json(os.path.join(out, 'leaderboard.json'), table)
  text = (f'# Leaderboard ({preset} suite)\n\nRanked by LRS where the suite has robust scores, '
          f'else by accuracy under each set\'s own protocol. Accuracies and scores as in '
          f'`ddjax.suite`; "make s" is the time to make the set, "judge s" the time its axes '
          f'took.\n\n' + leaderboard_markdown(table))
  files.write_atomic(os.path.join(out, 'leaderboard.md'), lambda f: f.write(text.encode()))
  plot_leaderboard(table, os.path.join(out, 'leaderboard.png'))
  print(f'[bench] {os.path.join(out, "leaderboard.md")}', flush=True)
  return table


def main(argv=None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  from ddjax.main import fail
  opts = {'methods': '', 'ipc': '1', 'preset': 'quick', 'out': 'runs/bench'}
  run_overrides, suite_overrides = {}, {}
  for arg in argv:
    key, eq, value = arg.lstrip('-').partition('=')
    if not eq:
      fail(ValueError(f'bad argument {arg!r}: use --key=value'))
    if key.startswith('run.'):
      run_overrides[key[4:]] = value
    elif key.startswith('suite.'):
      suite_overrides[key[6:]] = value
    elif key in opts:
      opts[key] = value
    else:
      fail(ValueError(f'unknown flag --{key}; known: --methods, --ipc, --preset, --out, '
                      '--run.<config key>, --suite.<suite setting>'))
  methods = [m for m in opts['methods'].split(',') if m]
  try:
    ipcs = [int(i) for i in opts['ipc'].replace(' ', ',').split(',') if i]
    bench(methods, ipcs, opts['out'], opts['preset'], run_overrides, suite_overrides)
  except (ValueError, OSError) as e:
    fail(e)


if __name__ == '__main__':
  main()
