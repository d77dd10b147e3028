r"""Test accuracy of the shipped configs on Fashion-MNIST after a fixed CPU budget, next to the
papers' numbers (ISA Table 1).

    python benchmarks/accuracy.py --ipc 1 --steps 3000
    python benchmarks/accuracy.py --ipc 10 --steps 2000 --methods frepo_isa frepo random_subset
    python benchmarks/accuracy.py --name kernel_accuracy --ipc 1 --methods rfad rfad_isa kip kip_isa

--steps 0 keeps each config's own number of steps. --name picks the results file
(benchmarks/results/<name>.{json,md}). --set key=value overrides config keys (e.g.
--set eval.num_models=2 eval.kernel_krr_test=2000), recorded in each row.

Each (method, IPC) is one `ddjax.main` run of the shipped config (workdir benchmarks/runs/...,
resumable) with `--config.distill.steps` set to --steps; rows are merged into
benchmarks/results/accuracy.{json,md}, and each run's distilled.png / curve.png are copied next to
them.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'configs'))

from benchmarks import common  # noqa: E402
from ddjax.runtime import pipeline  # noqa: E402

# ISA Table 1 (Fashion-MNIST, test accuracy %): FRePo, FRePo + ISA ("Ours"), KIP, RFAD, DSA, DM.
PAPER = {('frepo', 1): 75.6, ('frepo', 10): 86.2, ('frepo_isa', 1): 77.1, ('frepo_isa', 10): 86.0,
         ('kip', 1): 73.5, ('kip', 10): 86.8, ('rfad', 1): 78.6, ('rfad', 10): 87.0,
         ('dsa', 1): 70.6, ('dsa', 10): 84.8, ('dm', 1): 71.5, ('dm', 10): 83.6,
         ('mtt', 1): 75.1, ('mtt', 10): 87.2}     # MTT: FRePo's runs (ISA Table 1)


def config_of(method: str, ipc: int, steps: int, seed: int, overrides=()):
  module = __import__(method)
  cfg = module.get_config()
  cfg.distill.ipc = ipc
  cfg.seed = seed
  if cfg.method != 'random_subset' and steps > 0:
    cfg.distill.steps = steps
  for item in overrides:
    key, value = item.split('=', 1)
    *path, leaf = key.split('.')
    block = cfg
    for name in path:
      block = block[name]
    if isinstance(block[leaf], bool):
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'--set {item}: {key} is a bool; give true or false.')
      block[leaf] = value.lower() in ('true', '1')
    elif isinstance(block[leaf], (tuple, list)):       # e.g. expert.fiex_remove_epochs=(40,60)
      block[leaf] = type(block[leaf])(ast.literal_eval(value))
    else:
      block[leaf] = type(block[leaf])(value)
  return cfg


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--ipc', type=int, nargs='+', default=[1])
  ap.add_argument('--steps', type=int, default=3000)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--methods', nargs='+', default=['frepo_isa', 'frepo', 'random_subset'])
  ap.add_argument('--name', default='accuracy', help='results file name under benchmarks/results')
  ap.add_argument('--set', nargs='*', default=[], help='config overrides key=value')
  ap.add_argument('--label', default=None,
                  help='row name (default: the method), to keep a variant next to the default row')
  ap.add_argument('--import-rows', nargs='*', default=[], metavar='FILE:LABEL:IPC',
                  help='copy rows (with their own commands) from results/FILE.json into this '
                       'table without running them, e.g. matching_accuracy:dc:1')
  args = ap.parse_args()
  out_dir = os.path.join(common.HERE, 'results')
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, args.name + '.json')
  rows = read_rows(json_path)
  command = 'python benchmarks/accuracy.py ' + ' '.join(sys.argv[1:])
  for item in args.import_rows:
    name, label, ipc = item.split(':')
    source = {(r.get('label', r['method']), r['ipc']): r
              for r in json.load(open(os.path.join(out_dir, name + '.json')))['rows']}
    if (label, int(ipc)) not in source:
      raise SystemExit(f'error: results/{name}.json has no row {label} at IPC {ipc}.')
    rows[(label, int(ipc))] = {**source[(label, int(ipc))], 'imported_from': name}
  if args.import_rows:
    write_table(args.name, rows, command)
    return
  for ipc in args.ipc:
    for method in args.methods:
      cfg = config_of(method, ipc, args.steps, args.seed, args.set)
      label = args.label or method
      workdir = os.path.join(common.HERE, 'runs',
                             f'{label}_ipc{ipc}_steps{cfg.distill.steps}')
      res = pipeline.run(cfg, workdir)
      for pic in ('distilled.png', 'curve.png'):
        if os.path.exists(os.path.join(workdir, pic)):
          shutil.copy(os.path.join(workdir, pic), os.path.join(out_dir, f'{label}_ipc{ipc}_{pic}'))
      rows[(label, ipc)] = {
          'method': method, 'label': label, 'ipc': ipc, 'distill_steps': res['distill']['steps'],
          'sec_per_step': res['distill']['sec_per_step'], 'wall_minutes': res['wall_seconds'] / 60,
          'acc_mean': res['eval']['acc_mean'], 'acc_std': res['eval']['acc_std'],
          'accs': res['eval']['accs'], 'krr_acc': res.get('krr_eval', {}).get('acc'),
          'kernel_krr_acc': res.get('kernel_krr_eval', {}).get('acc'),
          'kernel_krr': res.get('kernel_krr_eval'),
          'eval_protocol': res['eval']['protocol'], 'eval_steps': res['eval']['steps'],
          'paper': PAPER.get((method, ipc)), 'overrides': list(args.set), 'command': command}
      row = rows[(label, ipc)]
      rows = read_rows(json_path)          # rows another run wrote meanwhile stay
      rows[(label, ipc)] = row
      write_table(args.name, rows, command)


def read_rows(json_path: str) -> dict:
  """{(label, ipc): row} of a results file ({} when there is none yet)."""
  if not os.path.exists(json_path):
    return {}
  return {(r.get('label', r['method']), r['ipc']): r for r in json.load(open(json_path))['rows']}


def write_table(name: str, rows: dict, command: str) -> None:
  """results/<name>.{json,md}: every row, ordered by (IPC, label), with its own command."""
  ordered = sorted(rows.values(), key=lambda r: (r['ipc'], r.get('label', r['method'])))
  table = ['| method | IPC | distill steps | s/step | wall (min) | test acc % (nets) '
           '| KRR on net features % | KRR infinite kernel % | paper % | command |',
           '|---|---|---|---|---|---|---|---|---|---|']
  pct = lambda v: f'{100 * v:.1f}' if v is not None else '-'
  for r in ordered:
    kk = r.get('kernel_krr')
    kernel = (f"{pct(r['kernel_krr_acc'])} ({kk['kernel']} {kk['get']}, {kk['test_images']} "
              'test)') if kk else '-'
    paper = f"{r['paper']}" if r['paper'] is not None else '-'
    table.append(f"| {r.get('label', r['method'])} | {r['ipc']} | {r['distill_steps']} | "
                 f"{r['sec_per_step']:.3f} | {r['wall_minutes']:.1f} | "
                 f"{100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} ({len(r['accs'])}) "
                 f"| {pct(r['krr_acc'])} | {kernel} | {paper} | `{r['command']}` |")
  common.write(name, {'rows': ordered}, '\n'.join(table), command)


if __name__ == '__main__':
  main()
