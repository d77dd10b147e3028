r"""Every FRePo / FRePo + ISA configuration tried on this CPU under FRePo's evaluation, in one table
(the search record): knobs, seed, steps, wall time, network accuracy, KRR accuracy, gap.

    python benchmarks/frepo_search.py
    python benchmarks/frepo_search.py --sources frepo_steps frepo_search_label_lr

It runs nothing: it gathers the rows `benchmarks/accuracy.py` wrote (each keeps its own command)
from the results files named by --sources, keeps the FRePo-family rows evaluated with the 'frepo'
protocol (FRePo's one-op-per-batch augmentation, the current default; rows made before that fix are
in `accuracy.json` and are not comparable), and writes results/frepo_search.{json,md} sorted by IPC,
then accuracy. Knobs are the rows' config overrides against the shipped CPU default; the default
itself shows as '(default)'.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402

# Results files written under FRePo's evaluation protocol (its one-op-per-batch augmentation).
SOURCES = ('isa_effect_seeds', 'frepo_steps', 'frepo_eval_fix5', 'frepo_search_label_lr',
           'frepo_search_lr', 'frepo_search_ipc1', 'frepo_search_ipc10', 'frepo_search_ipc10_lr2',
           'frepo_search_ipc10_seed1', 'frepo_search_ipc10_seed2')
METHODS = ('frepo', 'frepo_isa', 'random_subset')


def seed_of(command: str) -> int:
  match = re.search(r'--seed (\d+)', command)
  return int(match.group(1)) if match else 0


def gather(sources) -> list[dict]:
  rows, seen = [], set()
  for name in sources:
    path = os.path.join(common.HERE, 'results', name + '.json')
    if not os.path.exists(path):
      print(f'[frepo_search] {path} not found; skipped')
      continue
    with open(path) as f:
      for row in json.load(f)['rows']:
        if row.get('method') not in METHODS or row.get('eval_protocol', 'frepo') != 'frepo':
          continue
        if row['command'] in seen:            # a row imported into several tables
          continue
        seen.add(row['command'])
        rows.append(dict(row, source=name, seed=seed_of(row['command'])))
  rows.sort(key=lambda r: (r['ipc'], r['method'] != 'random_subset', -(r['acc_mean'] or 0)))
  return rows


def table(rows) -> str:
  pct = lambda v: '-' if v is None else f'{100 * v:.1f}'
  lines = ["Knobs are the config overrides of each row's command against the CPU default of the "
           "day it ran. That default changed twice on 2026-12-03: at 07:59 (image lr 3e-3 -> "
           '1e-2; 10000 steps from IPC 10) and at 10:26 (image lr 2e-2 from IPC 10). The rows '
           "marked '(default)' ran at lr 3e-3, except frepo_isa_ipc10_default, which ran the "
           'default of 07:59 (lr 1e-2, 10000 steps). Today\'s default is distill.lr=0.01 below '
           'IPC 10 and distill.lr=0.02 with 10000 steps from IPC 10.',
           '',
           '| IPC | method | knobs (overrides of the CPU default) | seed | steps | s/step '
           '| wall (min) | test acc % (nets) | KRR % | gap | source |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    knobs = ' '.join(r.get('overrides') or []) or '(default)'
    gap = ('-' if r.get('krr_acc') is None
           else f'{100 * (r["krr_acc"] - r["acc_mean"]):.1f}')
    sps = r.get('sec_per_step')
    lines.append(
        f'| {r["ipc"]} | {r["method"]} | {knobs} | {r["seed"]} | {r["distill_steps"]} '
        f'| {"-" if not sps else f"{sps:.3f}"} | {r["wall_minutes"]:.1f} '
        f'| {pct(r["acc_mean"])} ± {100 * r["acc_std"]:.1f} ({len(r["accs"])}) '
        f'| {pct(r.get("krr_acc"))} | {gap} | {r["source"]} |')
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--sources', nargs='+', default=list(SOURCES),
                  help='results files (benchmarks/results/<name>.json) to gather rows from')
  args = ap.parse_args()
  rows = gather(args.sources)
  if not rows:
    raise SystemExit('no FRePo rows found in ' + ', '.join(args.sources))
  command = 'python benchmarks/frepo_search.py' + (
      '' if tuple(args.sources) == SOURCES else ' --sources ' + ' '.join(args.sources))
  common.write('frepo_search', {'rows': rows}, table(rows), command)


if __name__ == '__main__':
  main()
