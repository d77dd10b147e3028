r"""Test accuracy of FRePo, FRePo + ISA and the random-subset baseline on Fashion-MNIST after a
fixed CPU budget, next to the papers' numbers.

    python benchmarks/accuracy.py --ipc 1 --steps 3000
    python benchmarks/accuracy.py --ipc 10 --steps 2000 --methods frepo_isa frepo random_subset

Each (method, IPC) is one `ddjax.main` run of the shipped config (workdir benchmarks/runs/...,
resumable) with `--config.distill.steps` set to --steps; rows are merged into
benchmarks/results/accuracy.{json,md}, and each run's distilled.png / curve.png are copied next to
them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'configs'))

from benchmarks import common  # noqa: E402
from ddjax import main as main_lib  # noqa: E402

# ISA Table 1 (Fashion-MNIST, ConvNet, test accuracy %): FRePo and FRePo + ISA ("Ours").
PAPER = {('frepo', 1): 75.6, ('frepo', 10): 86.2, ('frepo_isa', 1): 77.1, ('frepo_isa', 10): 86.0}


def config_of(method: str, ipc: int, steps: int, seed: int):
  module = __import__(method)
  cfg = module.get_config()
  cfg.distill.ipc = ipc
  cfg.seed = seed
  if cfg.method != 'random_subset':
    cfg.distill.steps = steps
  return cfg


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--ipc', type=int, nargs='+', default=[1])
  ap.add_argument('--steps', type=int, default=3000)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--methods', nargs='+', default=['frepo_isa', 'frepo', 'random_subset'])
  args = ap.parse_args()
  out_dir = os.path.join(common.HERE, 'results')
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, 'accuracy.json')
  rows = {}
  if os.path.exists(json_path):
    rows = {(r['method'], r['ipc']): r for r in json.load(open(json_path))['rows']}
  command = 'python benchmarks/accuracy.py ' + ' '.join(sys.argv[1:])
  for ipc in args.ipc:
    for method in args.methods:
      cfg = config_of(method, ipc, args.steps, args.seed)
      workdir = os.path.join(common.HERE, 'runs', f'{method}_ipc{ipc}_steps{args.steps}')
      res = main_lib.run(cfg, workdir)
      for pic in ('distilled.png', 'curve.png'):
        if os.path.exists(os.path.join(workdir, pic)):
          shutil.copy(os.path.join(workdir, pic), os.path.join(out_dir, f'{method}_ipc{ipc}_{pic}'))
      rows[(method, ipc)] = {
          'method': method, 'ipc': ipc, 'distill_steps': res['distill']['steps'],
          'sec_per_step': res['distill']['sec_per_step'], 'wall_minutes': res['wall_seconds'] / 60,
          'acc_mean': res['eval']['acc_mean'], 'acc_std': res['eval']['acc_std'],
          'accs': res['eval']['accs'], 'krr_acc': res.get('krr_eval', {}).get('acc'),
          'eval_protocol': res['eval']['protocol'], 'eval_steps': res['eval']['steps'],
          'paper': PAPER.get((method, ipc)), 'command': command}
      ordered = sorted(rows.values(), key=lambda r: (r['ipc'], r['method']))
      table = ['| method | IPC | distill steps | wall (min) | test acc % (5 nets) | KRR acc % '
               '| paper % | command |', '|---|---|---|---|---|---|---|---|']
      for r in ordered:
        krr = f"{100 * r['krr_acc']:.1f}" if r['krr_acc'] is not None else '-'
        paper = f"{r['paper']}" if r['paper'] is not None else '-'
        table.append(f"| {r['method']} | {r['ipc']} | {r['distill_steps']} | "
                     f"{r['wall_minutes']:.1f} | {100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} "
                     f"| {krr} | {paper} | `{r['command']}` |")
      common.write('accuracy', {'rows': ordered}, '\n'.join(table), command)


if __name__ == '__main__':
  main()
