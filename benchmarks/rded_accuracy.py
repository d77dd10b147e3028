r"""RDED on Fashion-MNIST next to other sets under the same soft-label protocol.

    python benchmarks/rded_accuracy.py --ipc 1 10 50 --methods rded random_subset
    python benchmarks/rded_accuracy.py --ipc 1 10 --methods frepo_isa dm

Every row uses one observer (ConvNet-3, batch norm, width 128, `--observer-epochs` epochs, trained
once and cached in benchmarks/runs/observers/, its test accuracy and training time in the row) and
one student protocol: RDED's 'rded' protocol (`ddjax.evaluate.soft_labels`: the observer's soft
labels on cutmix batches, T = 20, AdamW, 300 epochs, `--students` students of RDED's own student
architecture). RDED's row is one `ddjax.main` run of configs/rded.py. Any other method is first run
as its shipped config with its own protocol (its own evaluation, `--own-models` networks), then
the same workdir is run again with the 'rded' protocol: the distilled set is reused (a workdir
accepts eval.* changes) and only the evaluation differs, so the two columns say what the protocol
adds to each set.

`--clip` sets eval.clip_pixels for both protocols: 'auto' (the default: the 'rded' protocol sees
the set clipped to the data's pixel range [0, 1], as RDED's code reads sets from image files; a
method's own protocol sees it as learned), 'on' (both clipped; rows labelled '<method> clipped')
or 'off' (neither; '<method> unclipped'). Each row also says how far the set's pixels
leave [0, 1] and how the observer reads the set (the fraction of its images the observer puts in
their labels' classes, and the classes it reads): the 'rded' protocol learns from that reading
only.

Each set is made (and, for a method with another protocol, evaluated by it) in a fresh child
process, so the row's cost is that set's alone: the seconds the pipeline spent making it (its
'cost'; the cached observer is not retrained) and the child's peak host memory (RSS, which
includes the evaluation that ran in the same process).

Rows are merged into benchmarks/results/<name>.{json,md} (default rded_accuracy); workdirs are
benchmarks/runs/<name>_<method>_ipc<k> (resumable).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'configs'))

from benchmarks import common  # noqa: E402
from benchmarks.accuracy import config_of, read_rows  # noqa: E402
from ddjax import registry  # noqa: E402
from ddjax.runtime import pipeline  # noqa: E402

# RDED Table 1 has no Fashion-MNIST column; its CIFAR-10 Conv3 row, for scale.
PAPER_CIFAR10_CONV3 = {1: 23.5, 10: 50.2, 50: 68.4}


def rded_protocol(rded_cfg, cfg, students: int):
  """cfg evaluated like rded_cfg's sets: the 'rded' protocol, RDED's student architecture and
  epochs, `students` students, the same observer."""
  cfg.eval.protocol = 'rded'
  cfg.eval.model = copy.deepcopy(rded_cfg.eval.model)
  cfg.eval.soft_label_epochs = rded_cfg.eval.soft_label_epochs
  cfg.eval.num_models = students
  cfg.eval.krr = False
  return cfg


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--ipc', type=int, nargs='+', default=[1, 10, 50])
  ap.add_argument('--methods', nargs='+', default=['rded', 'random_subset'])
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--observer-epochs', type=int, default=5)
  ap.add_argument('--students', type=int, default=3, help="students per set, 'rded' protocol")
  ap.add_argument('--own-models', type=int, default=2,
                  help='networks of a method\'s own protocol (its shipped evaluation); 0: skip '
                       'it, the rded protocol only')
  ap.add_argument('--steps', type=int, default=0, help='distillation steps (0: config default)')
  ap.add_argument('--clip', choices=('auto', 'on', 'off'), default='auto',
                  help="eval.clip_pixels of both protocols (the sets clipped to [0, 1] in pixel "
                       "space); auto: clipped under 'rded' only")
  ap.add_argument('--name', default='rded_accuracy')
  ap.add_argument('--set', nargs='*', default=[], metavar='METHOD:KEY=VALUE',
                  help="a config override for one method's runs, e.g. "
                       "gvbsm:observer.ensemble=LeNet,ConvNet-1")
  ap.add_argument('--child', nargs=2, metavar=('METHOD', 'IPC'), default=None,
                  help=argparse.SUPPRESS)    # internal: make one set in this process, then exit
  args = ap.parse_args()
  out_dir = os.path.join(common.HERE, 'results')
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, args.name + '.json')
  command = 'python benchmarks/rded_accuracy.py ' + ' '.join(sys.argv[1:])
  observer_dir = os.path.join(common.HERE, 'runs', 'observers',
                              f'fashion_mnist_convnet3w128_e{args.observer_epochs}_seed{args.seed}')
  observer = [f'observer.epochs={args.observer_epochs}', f'observer.dir={observer_dir}']
  def method_cfg(method, ipc):
    own = common.method_overrides(args.set, method)
    cfg = config_of(method, ipc, args.steps, args.seed, observer + own)
    cfg.eval.clip_pixels = args.clip
    native = registry.protocol_name(cfg) == 'rded'      # RDED's own sets
    cfg.eval.num_models = 0 if native else args.own_models
    return cfg, native

  if args.child:                                  # make (and own-evaluate) one set, then exit
    method, ipc = args.child[0], int(args.child[1])
    pipeline.run(method_cfg(method, ipc)[0],
                 os.path.join(common.HERE, 'runs', f'{args.name}_{method}_ipc{ipc}'))
    return
  for ipc in args.ipc:
    for method in args.methods:
      rded_cfg = config_of('rded', ipc, 0, args.seed, observer)
      workdir = os.path.join(common.HERE, 'runs', f'{args.name}_{method}_ipc{ipc}')
      cfg, native = method_cfg(method, ipc)
      label = method + {'auto': '', 'on': ' clipped', 'off': ' unclipped'}[args.clip]
      subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                      '--child', method, str(ipc)], check=True)
      made = json.load(open(os.path.join(workdir, 'results.json')))
      own = made if not native and args.own_models > 0 else None
      res = pipeline.run(rded_protocol(rded_cfg, cfg, args.students), workdir)
      ev, obs = res['eval'], res['observer']
      picture = os.path.join(workdir, 'distilled.png')
      if os.path.exists(picture):
        shutil.copy(picture, os.path.join(out_dir, f'{args.name}_{method}_ipc{ipc}_distilled.png'))
      row = {
          'method': method, 'label': label, 'ipc': ipc, 'seed': args.seed,
          'set_pixels': res['set_pixels'],
          'observer_agreement': obs['set_agreement'],
          'observer_class_counts': obs['set_class_counts'],
          'distill_steps': res['distill']['steps'],
          'distill_sec_per_step': res['distill']['sec_per_step'],
          'selection': res.get('build', {}).get('selection'),
          'rded_acc_mean': ev['acc_mean'], 'rded_acc_std': ev['acc_std'], 'rded_accs': ev['accs'],
          'rded_best_last20_mean': ev['best_last20_mean'],
          'rded_best_last20_std': ev['best_last20_std'],
          'students': len(ev['accs']), 'student_epochs': ev.get('epochs'),
          'own_protocol': None if own is None else own['eval']['protocol'],
          'own_acc_mean': None if own is None else own['eval']['acc_mean'],
          'own_acc_std': None if own is None else own['eval']['acc_std'],
          'own_models': None if own is None else len(own['eval']['accs']),
          'observer_test_acc': obs['test_acc'],
          'observer_train_seconds': obs['record'].get('train_seconds'),
          'observer_epochs': obs['record']['epochs'],
          'own_wall_minutes': None if own is None else own['wall_seconds'] / 60,
          'rded_wall_minutes': res['wall_seconds'] / 60,
          'make_seconds': made['cost']['seconds'],
          'make_peak_rss_bytes': made['cost'].get('peak_host_rss_bytes'),
          'paper_cifar10_conv3': PAPER_CIFAR10_CONV3.get(ipc) if native else None,
          'command': command}
      rows = read_rows(json_path)          # rows another run wrote meanwhile stay
      rows[(label, ipc)] = row
      write_table(args.name, rows, command)


def write_table(name: str, rows: dict, command: str) -> None:
  ordered = sorted(rows.values(), key=lambda r: (r['ipc'], r['label']))
  pct = lambda v: f'{100 * v:.1f}' if v is not None else '-'
  table = ['| set | IPC | own protocol: test acc % (nets) | rded protocol: final % (students) '
           '| rded: best of last 20 % epochs | set pixels: range, % outside [0, 1] '
           '| observer reads the set: % in its classes, images per class '
           '| observer % (epochs, train s) | selection '
           '(s, ms/image) | make: s, peak RSS GB | wall (min): own run, rded run | command |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in ordered:
    own = (f"{r['own_protocol']}: {pct(r['own_acc_mean'])} ± {pct(r['own_acc_std'])} "
           f"({r['own_models']})" if r['own_protocol'] else '-')
    sel = r.get('selection')
    sel = f"{sel['seconds']:.1f} s, {sel['ms_per_image']:.1f}" if sel else '-'
    train_s = r['observer_train_seconds']
    own_wall = f"{r['own_wall_minutes']:.1f}, " if r['own_wall_minutes'] is not None else ''
    px = r.get('set_pixels')
    px = (f"[{px['pixel_min']:.2f}, {px['pixel_max']:.2f}], {100 * px['outside_fraction']:.1f}"
          + (' (clipped)' if px['clipped'] else '') if px else '-')
    reads = (f"{pct(r['observer_agreement'])}, {r['observer_class_counts']}"
             if r.get('observer_agreement') is not None else '-')
    table.append(
        f"| {r['label']} | {r['ipc']} | {own} | {pct(r['rded_acc_mean'])} ± "
        f"{pct(r['rded_acc_std'])} ({r['students']}) | {pct(r['rded_best_last20_mean'])} | "
        f"{px} | {reads} | "
        f"{pct(r['observer_test_acc'])} ({r['observer_epochs']}, "
        f"{'-' if train_s is None else f'{train_s:.0f}'}) | {sel} | {make(r)} | {own_wall}"
        f"{r['rded_wall_minutes']:.1f} | "
        f"`{r['command']}` |")
  common.write(name, {'rows': ordered}, '\n'.join(table), command)


def make(row: dict) -> str:
  """'seconds, peak RSS GB' of making the row's set ('-' for rows made before these were kept)."""
  if row.get('make_seconds') is None:
    return '-'
  rss = row.get('make_peak_rss_bytes')
  return f"{row['make_seconds']:.0f}, " + ('-' if rss is None else f'{rss / 2 ** 30:.2f}')


if __name__ == '__main__':
  main()
