r"""BiLP's stratified analysis (Sec. 5.4, Fig. 3) on Fashion-MNIST: sort every class by the
empirical-loss criterion from large to small, cut it into 10 strata S1..S10 (S1 the largest
losses), distil on each stratum alone, and plot test accuracy against the stratum. "An ideal
stratification yields a monotonously increasing performance curve": if large-loss samples are the
least useful for distillation (BiLP's claim), accuracy rises from S1 to S10.

    python benchmarks/bilp_strata.py --config dm --ipc 1 --steps 50 --criteria t2e5 t1e1 \
        --set eval.num_models=2

Each criterion `t<T>e<E>` is BiLP's score from the first T trials and first E epochs of one cached
scoring run (`ddjax.runtime.pruning.loss_scores`, `bilp.score_trials` x `bilp.score_epochs`; BiLP Fig. 3
compares 1-50 trials and 1-100 epochs the same way): the trial-mean loss curve, Gaussian-smoothed
(sigma `bilp.score_sigma`), read at epoch E. References on the same plot: distilling on a random
class-balanced tenth of the data, and on all of it, with the same config and steps.

Every run is one `ddjax.run` (workdir benchmarks/runs/strata/..., reused when its
results.json exists). Output: benchmarks/results/bilp_strata.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'configs'))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.accuracy import config_of  # noqa: E402
from ddjax.runtime import pipeline, pruning  # noqa: E402
from ddjax import scoring  # noqa: E402


def parse_criterion(name: str) -> tuple[int, int]:
  m = re.fullmatch(r't(\d+)e(\d+)', name)
  if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
    raise SystemExit(f'error: criterion {name!r} is not t<trials>e<epochs>, e.g. t2e5.')
  return int(m.group(1)), int(m.group(2))


def run_cached(cfg, workdir: str, prep) -> dict:
  path = os.path.join(workdir, 'results.json')
  if os.path.exists(path):
    return json.load(open(path))
  return pipeline.run(cfg, workdir, data=prep)


def plot(path: str, rows: list[dict], refs: dict, title: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for crit in dict.fromkeys(r['criterion'] for r in rows):
    rs = sorted((r for r in rows if r['criterion'] == crit), key=lambda r: r['stratum'])
    ax.errorbar([r['stratum'] for r in rs], [100 * r['acc_mean'] for r in rs],
                yerr=[100 * r['acc_std'] for r in rs], marker='o', capsize=3, label=crit)
  for (name, ref), style in zip(refs.items(), ('--', ':')):
    ax.axhline(100 * ref['acc_mean'], color='gray', linestyle=style, label=name)
  ax.set_xticks(range(1, 1 + max(r['stratum'] for r in rows)))
  ax.set_xticklabels([f'S{k}' for k in range(1, 1 + max(r['stratum'] for r in rows))])
  ax.set_xlabel('stratum (S1: largest loss)')
  ax.set_ylabel('test accuracy %')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--config', default='dm', help='config module under configs/ (the distiller)')
  ap.add_argument('--ipc', type=int, default=1)
  ap.add_argument('--steps', type=int, default=50)
  ap.add_argument('--strata', type=int, default=10)
  ap.add_argument('--criteria', nargs='+', default=['t2e5', 't1e1'])
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--set', nargs='*', default=[], help='config overrides key=value')
  ap.add_argument('--score-dir', default=os.path.join(common.HERE, 'runs', 'scores'))
  ap.add_argument('--name', default='bilp_strata')
  args = ap.parse_args()
  criteria = [(c, *parse_criterion(c)) for c in args.criteria]
  cfg = config_of(args.config, args.ipc, args.steps, args.seed, args.set)
  cfg.bilp.score_dir = args.score_dir
  if cfg.bilp.prune_fraction > 0 or cfg.bilp.adaptive_beta > 0:
    raise SystemExit('error: the stratified analysis distils each stratum as it is; use a config '
                     'without BiLP pruning (e.g. dm or dc).')
  need_t = max(t for _, t, _ in criteria)
  need_e = max(e for _, _, e in criteria)
  cfg.bilp.score_trials = max(cfg.bilp.score_trials, need_t)
  cfg.bilp.score_epochs = max(cfg.bilp.score_epochs, need_e)
  prep = pipeline.load_data(cfg)
  scores = pruning.loss_scores(cfg, prep, args.score_dir)
  base = os.path.join(common.HERE, 'runs', 'strata',
                      f'{args.config}_ipc{args.ipc}_steps{args.steps}_seed{args.seed}')
  command = 'python benchmarks/bilp_strata.py ' + ' '.join(sys.argv[1:])
  rows, refs = [], {}

  def record(res):
    return {'acc_mean': res['eval']['acc_mean'], 'acc_std': res['eval']['acc_std'],
            'accs': res['eval']['accs']}

  key = jax.random.fold_in(jax.random.PRNGKey(args.seed), 7)
  tenth = scoring.prune_classwise(None, prep.y_train, keep_fraction=1.0 / args.strata,
                                  direction='random', key=key)
  refs['random 1/%d' % args.strata] = record(run_cached(cfg, os.path.join(base, 'random'),
                                                        prep.subset(tenth)))
  refs['all data'] = record(run_cached(cfg, os.path.join(base, 'all'), prep))
  for name, t, e in criteria:
    score = scoring.empirical_loss_score(scores['loss'][:t, :e], sigma=cfg.bilp.score_sigma)
    for k, idx in enumerate(scoring.stratify_classwise(score, prep.y_train, args.strata), 1):
      print(f'[strata] {name} S{k}: {len(idx)} examples, mean score {score[idx].mean():.4f}',
            flush=True)
      res = run_cached(cfg, os.path.join(base, f'{name}_S{k}'), prep.subset(idx))
      rows.append({'criterion': name, 'trials': t, 'epochs': e, 'stratum': k,
                   'examples': int(len(idx)), 'mean_score': float(score[idx].mean()),
                   **record(res)})
      write(args, rows, refs, scores['name'], command)


def write(args, rows: list[dict], refs: dict, scores_name: str, command: str) -> None:
  """results/<name>.{json,md,png} from the strata distilled so far (rewritten after each)."""
  from scipy.stats import spearmanr
  title = (f'{args.config} IPC {args.ipc}, {args.steps} steps, Fashion-MNIST: '
           f'distilling on one loss stratum')
  plot(os.path.join(common.HERE, 'results', args.name + '.png'), rows, refs, title)
  strata_cols = ' | '.join(f'S{k}' for k in range(1, args.strata + 1))
  table = [f'| criterion | {strata_cols} | Spearman(stratum, acc) |',
           '|---|' + '---|' * args.strata + '---|']
  for name in dict.fromkeys(r['criterion'] for r in rows):
    rs = sorted((r for r in rows if r['criterion'] == name), key=lambda r: r['stratum'])
    rho = spearmanr([r['stratum'] for r in rs], [r['acc_mean'] for r in rs]).statistic \
        if len(rs) > 2 else float('nan')
    for r in rs:
      r['spearman'] = float(rho)
    cells = [f"{100 * r['acc_mean']:.1f}" for r in rs] + [''] * (args.strata - len(rs))
    table.append(f'| {name} | ' + ' | '.join(cells) + f' | {rho:+.2f} |')
  for ref_name, ref in refs.items():
    table.append(f'| {ref_name} (reference) | {100 * ref["acc_mean"]:.1f} ± '
                 f'{100 * ref["acc_std"]:.1f} |' + ' |' * args.strata)
  table += ['', f'![strata]({args.name}.png)']
  common.write(args.name, {'config': args.config, 'ipc': args.ipc, 'steps': args.steps,
                           'overrides': list(args.set), 'rows': rows, 'references': refs,
                           'scores': scores_name}, '\n'.join(table), command)


if __name__ == '__main__':
  main()
