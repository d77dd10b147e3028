"""The 'robust_scores' axis: DD-Ranking's HLR, IOR, LRS and ARS (`ddjax.evaluate.scores`, whose
docstring states the formulas), from

  acc(real data, hard labels)   the whole training set, hard-label protocol ('dc'), cached;
  acc(set, hard labels)         the set's images with one-hot labels, same protocol;
  acc(set), acc(random)         the set and a random real subset under the set's own protocol,
                                with its augmentation and without (augment=False) for ARS.

Accuracies are fractions, final epoch; scores on DD-Ranking 0.2.0's percent scale are reported
too, labelled.
"""
from __future__ import annotations

from ddjax.evaluate import scores
from ddjax.suite.axes import Axis, register_axis
from ddjax.suite.builtin.common import (HARD_PROTOCOL, full_data_accuracy, pm, random_accuracy,
                                        set_accuracy)
from ddjax.suite.context import Context


def settings(preset: str) -> dict:
  # The full-data reference is the costly cell (a ConvNet-3 epoch of Fashion-MNIST at batch 256
  # is 235 steps, minutes on a 2-core CPU); it is computed once per data, architecture, epochs
  # and seed and cached.
  quick = preset == 'quick'
  # arch: '' = each set's own eval model; a zoo name (e.g. 'ConvNet-3') puts every set's scores,
  # and its full-data reference, on one network, so HLR and LRS compare across methods whose
  # eval models differ (DD-Ranking fixes one model per leaderboard)
  return {'weight': 0.5, 'full_data_epochs': 1 if quick else 30,
          'full_data_models': 1 if quick else 0, 'ars': True, 'arch': ''}


def run(ctx: Context) -> dict:
  s = ctx.settings
  arch = s.get('arch', '') or None
  acc = {'real_hard': full_data_accuracy(ctx, arch, s.full_data_epochs,
                                        s.full_data_models or None),
         'set_hard': set_accuracy(ctx, HARD_PROTOCOL, arch, hard=True),
         'set': set_accuracy(ctx, arch=arch), 'random': random_accuracy(ctx, arch=arch)}
  means = {k: v['acc_mean'] for k, v in acc.items()}
  out = {'accuracies': acc, 'protocol': ctx.plan.protocol, 'hard_protocol': HARD_PROTOCOL,
         'arch': arch or 'eval model',
         'full_data_epochs': int(s.full_data_epochs),
         **scores.robust_scores(means['real_hard'], means['set_hard'], means['set'],
                                means['random'], s.weight)}
  if s.ars:
    plain = {'augment': False}
    acc['set_plain'] = set_accuracy(ctx, arch=arch, overrides=plain, tag='/no_aug')
    acc['random_plain'] = random_accuracy(ctx, arch=arch, overrides=plain)
    ars = scores.augmentation_scores(means['set'], means['random'],
                                     acc['set_plain']['acc_mean'],
                                     acc['random_plain']['acc_mean'], s.weight)
    out.update(ars=ars['ars'], ars_percent_scale=ars['ars_percent_scale'])
  return out


def report(result: dict) -> str:
  a = result['accuracies']
  lines = ['| accuracy (%) | mean +- std |', '|---|---|',
           f'| real data, hard labels ({result["hard_protocol"]}, {result["full_data_epochs"]} '
           f'epochs) | {pm(a["real_hard"])} |',
           f'| set, hard labels ({result["hard_protocol"]}) | {pm(a["set_hard"])} |',
           f'| set, own protocol ({result["protocol"]}) | {pm(a["set"])} |',
           f'| random subset, own protocol | {pm(a["random"])} |']
  if 'set_plain' in a:
    lines += [f'| set, own protocol without augmentation | {pm(a["set_plain"])} |',
              f'| random subset, without augmentation | {pm(a["random_plain"])} |']
  lines += ['', '| score | value |', '|---|---|',
            f'| HLR (lower is better) | {100 * result["hlr"]:+.2f} points |',
            f'| IOR (higher is better) | {100 * result["ior"]:+.2f} points |',
            f'| LRS (0-1, accuracies as fractions) | {result["lrs"]:.4f} |']
  if 'ars' in result:
    lines.append(f'| ARS (0-1, accuracies as fractions) | {result["ars"]:.4f} |')
  lines.append(f'| LRS on DD-Ranking 0.2.0\'s percent scale | {result["lrs_percent_scale"]:.4g} |')
  if 'ars' in result:
    lines.append(f'| ARS on DD-Ranking 0.2.0\'s percent scale | '
                 f'{result["ars_percent_scale"]:.4g} |')
  return '\n'.join(lines)


def summary(result: dict) -> dict:
  out = {k: result[k] for k in ('hlr', 'ior', 'lrs')}
  if 'ars' in result:
    out['ars'] = result['ars']
  return out


register_axis(Axis(name='robust_scores', run=run, report=report, settings=settings,
                   summary=summary, description="DD-Ranking's HLR, IOR, LRS and ARS"))
