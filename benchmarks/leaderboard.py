"""The leaderboard of `python -m ddjax.bench` as a benchmark: every set made and judged by the
evaluation suite, one ranked table per IPC, written to results/<--name>.{json,md} (and .png) with
the command and the machine.

    python benchmarks/leaderboard.py --name leaderboard_fmnist --ipc 1 \\
        --methods random_subset frepo_isa+distill.steps=1000 dm+distill.steps=200 \\
                  dsa+distill.steps=100 rded --out runs/bench_fmnist
    python benchmarks/leaderboard.py --name leaderboard_fmnist --collect runs/bench_fmnist

--collect reads a finished `ddjax.bench` directory (its leaderboard.json and every judged set's
suite.json) without running anything. Extra `--suite k=v` and `--run k=v` pairs go to the
suite and to every method's config, as `ddjax.bench`'s --suite.k / --run.k.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import common

from ddjax import bench


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--name', default='leaderboard_fmnist')
  ap.add_argument('--methods', nargs='*', default=['frepo_isa', 'dm', 'dsa', 'rded'])
  ap.add_argument('--ipc', nargs='*', type=int, default=[1])
  ap.add_argument('--preset', default='quick')
  ap.add_argument('--out', default='runs/bench_fmnist')
  ap.add_argument('--suite', nargs='*', default=[], help='suite settings k=v')
  ap.add_argument('--run', nargs='*', default=[], help='config keys k=v for every method')
  ap.add_argument('--collect', default='', help='a finished ddjax.bench directory')
  args = ap.parse_args()
  if args.collect:
    out = args.collect
    with open(os.path.join(out, 'leaderboard.json')) as f:
      table = json.load(f)
  else:
    out = args.out
    table = bench.bench(args.methods, args.ipc, out, args.preset,
                        dict(kv.split('=', 1) for kv in args.run),
                        dict(kv.split('=', 1) for kv in args.suite))
  judged = {}
  judged_dir = os.path.join(out, 'judged')
  for tag in sorted(os.listdir(judged_dir)) if os.path.isdir(judged_dir) else []:
    path = os.path.join(judged_dir, tag, 'suite.json')
    if os.path.exists(path):
      with open(path) as f:
        judged[tag] = json.load(f)
  png = os.path.join(out, 'leaderboard.png')
  if os.path.exists(png):
    shutil.copyfile(png, os.path.join(common.HERE, 'results', args.name + '.png'))
  common.write(args.name, {'leaderboard': table, 'judged': judged},
               bench.leaderboard_markdown(table), 'python benchmarks/leaderboard.py '
               + ' '.join(sys.argv[1:]))


if __name__ == '__main__':
  main()
