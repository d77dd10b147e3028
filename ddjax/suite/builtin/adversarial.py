"""The 'adversarial' axis: how robust networks trained on the set are to L-infinity attacks
(FGSM, PGD; `ddjax.evaluate.adversarial`), beside networks trained on a random real subset of the
same IPC (same protocol) and on the full real data (hard labels, the hard-label protocol 'dc' for
a few epochs).

Attacks run in PIXEL space with the data's preprocessing inside the attacked function, so the
budgets eps are pixel units of [0, 1] images (2/255, 4/255, 8/255, ...) whatever the
preprocessing (standardisation, ZCA), and every adversarial image stays a valid image. PGD takes
`pgd_steps` steps of Madry's 2.5 eps / steps from a random start in the eps-ball; FGSM one step
of eps. They attack a fixed seeded subset of `test_images` test images (the same for every
network), in the order of the test split. Accuracies are fractions; eps 0 is the clean accuracy
(no attack runs there: both attacks at budget 0 return the images unchanged).

Settings (`--suite.adversarial.<key>`): eps (comma-separated, floats or p/q fractions),
pgd_steps, test_images, full_data_epochs (0: no full-data networks).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from ddjax.data.preprocess import invert_preprocessor
from ddjax.evaluate import adversarial
from ddjax.suite.axes import Axis, register_axis
from ddjax.suite.report import save_figure
from ddjax.suite.builtin.common import (HARD_PROTOCOL, full_data_budget, full_data_set,
                                        random_draw, random_record)
from ddjax.suite.context import Context

KEY_ATTACK = 7            # the purpose folded into the axis key for PGD's random starts
ROWS = (('set', 'set'), ('random', 'random subset'), ('full_data', 'full data, hard labels'))


def settings(preset: str) -> dict:
  quick = preset == 'quick'
  return {'eps': '0,2/255,4/255,8/255' if quick else '0,2/255,4/255,8/255,16/255',
          'pgd_steps': 10 if quick else 20,
          'test_images': 500 if quick else 2000,
          'full_data_epochs': 2 if quick else 10}


def parse_eps(text: str) -> list[float]:
  """'0,2/255,0.0314' -> [0.0, 0.00784..., 0.0314]: floats or p/q fractions, ascending,
  non-negative; ValueError naming the bad entry."""
  out = []
  for item in (t.strip() for t in str(text).split(',')):
    if not item:
      continue
    try:
      num, _, den = item.partition('/')
      value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
      raise ValueError(f'adversarial.eps: {item!r} is not a number or p/q fraction; give e.g. '
                       "'0,2/255,4/255,8/255'") from None
    if not value >= 0:
      raise ValueError(f'adversarial.eps: {item!r} is negative')
    out.append(value)
  if not out:
    raise ValueError('adversarial.eps is empty; give e.g. 0,2/255,4/255,8/255')
  return sorted(set(out))


def eps_label(eps: float) -> str:
  """2/255 for eps = 2/255 (a whole number of 8-bit levels), else the number."""
  levels = eps * 255
  if abs(levels - round(levels)) < 1e-6:
    return '0' if round(levels) == 0 else f'{round(levels)}/255'
  return f'{eps:.4g}'


def test_subset(ctx: Context, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(indices, pixel images (n, H, W, C) in [0, 1], labels (n,)): a fixed seeded subset (suite
  seed) of the test split, in the split's order; pixels from the loaded data when it has them,
  else the model-space test images inverted and clipped to [0, 1]."""
  total = len(ctx.data.y_test)
  n = min(int(n), total)
  rng = np.random.default_rng(int(ctx.suite.seed))
  idx = np.sort(rng.choice(total, n, replace=False))
  raw = getattr(ctx.data.dataset, 'x_test', None)
  if raw is not None and np.shape(raw)[0] == total:
    x = np.asarray(raw[idx], np.float32)
  else:
    x = np.asarray(invert_preprocessor(ctx.data.pre, ctx.data.x_test[idx]), np.float32)
  return idx, np.clip(x, 0.0, 1.0), np.asarray(ctx.data.y_test)[idx].astype(np.int64)


def attack_settings(ctx: Context) -> dict:
  s = ctx.settings
  return {'eps': parse_eps(s.eps), 'pgd_steps': int(s.pgd_steps),
          'test_images': int(s.test_images), 'step_size': '2.5 eps / steps',
          'random_start': True, 'seed': int(ctx.suite.seed)}


def make_measure(ctx: Context):
  """measure(model, variables) -> {'clean': (), 'fgsm': (E,), 'pgd': (E,)} accuracies on the
  test subset, one per eps (eps 0: the clean accuracy)."""
  a = attack_settings(ctx)
  _, x, y = test_subset(ctx, a['test_images'])
  key = jax.random.fold_in(ctx.key, KEY_ATTACK)

  def measure(model, variables) -> dict:
    clean, _ = adversarial.robust_correct(model, variables, ctx.data.pre, x, y, 0.0, 'none')
    out = {'clean': float(np.mean(clean)), 'fgsm': [], 'pgd': []}
    for j, eps in enumerate(a['eps']):
      if eps == 0:
        out['fgsm'].append(out['clean'])
        out['pgd'].append(out['clean'])
        continue
      out['fgsm'].append(adversarial.robust_accuracy(model, variables, ctx.data.pre, x, y, eps,
                                                     'fgsm'))
      out['pgd'].append(adversarial.robust_accuracy(
          model, variables, ctx.data.pre, x, y, eps, 'pgd', key=jax.random.fold_in(key, j),
          steps=a['pgd_steps']))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}

  return measure


def summarise(measures: list[dict]) -> dict:
  """Per attack: every network's accuracies, their mean and std (ddof 0) per eps."""
  out = {}
  for k in ('clean', 'fgsm', 'pgd'):
    accs = np.stack([np.asarray(m[k], np.float64) for m in measures])
    out[k] = {'accs': accs.tolist(), 'acc_mean': accs.mean(0).tolist(),
              'acc_std': accs.std(0).tolist()}
  return out


def _random(ctx: Context, measure) -> dict:
  """The random real subset (the draws of `common.random_accuracy`), cached per data, protocol,
  IPC, labels, seed and attack settings."""
  record = {**random_record(ctx), 'attack': attack_settings(ctx)}
  subset = lambda i: random_draw(ctx, i)
  return ctx.cached('adversarial_random', record, lambda d: summarise(
      ctx.networks('adversarial_random', subset, measure=measure, root=d)))


def _full_data(ctx: Context, measure, epochs: int) -> dict:
  """The whole training set, one-hot labels, protocol 'dc' for `epochs` epochs; cached per data,
  architecture, epochs, seed and attack settings."""
  record = {'data': ctx.data_record(), 'arch': ctx.run_cfg.eval.model.to_dict(),
            'protocol': HARD_PROTOCOL, 'epochs': int(epochs), 'seed': int(ctx.suite.seed),
            'num_models': int(ctx.suite.num_models), 'max_steps': int(ctx.suite.max_steps),
            'attack': attack_settings(ctx)}
  budget = full_data_budget(ctx, epochs)
  return ctx.cached('adversarial_full_data', {**record, **budget}, lambda d: summarise(
      ctx.networks('adversarial_full_data', full_data_set(ctx), protocol=HARD_PROTOCOL,
                   overrides=budget, measure=measure, root=d)))


def run(ctx: Context) -> dict:
  a = attack_settings(ctx)
  measure = make_measure(ctx)
  rows = {'set': summarise(ctx.networks('adversarial/set', ctx.syn, measure=measure)),
          'random': _random(ctx, measure)}
  if int(ctx.settings.full_data_epochs) > 0:
    rows['full_data'] = _full_data(ctx, measure, int(ctx.settings.full_data_epochs))
  return {'protocol': ctx.plan.protocol, 'hard_protocol': HARD_PROTOCOL,
          'eps': a['eps'], 'eps_labels': [eps_label(e) for e in a['eps']],
          'pgd_steps': a['pgd_steps'], 'step_size': a['step_size'],
          'test_images': min(a['test_images'], int(len(ctx.data.y_test))),
          'full_data_epochs': int(ctx.settings.full_data_epochs),
          'num_models': int(ctx.suite.num_models), 'rows': rows}


def _pm(row: dict, attack: str, j: int) -> str:
  return f'{100 * row[attack]["acc_mean"][j]:.2f} +- {100 * row[attack]["acc_std"][j]:.2f}'


def report(result: dict) -> str:
  rows = [(k, label) for k, label in ROWS if k in result['rows']]
  lines = [f'Test accuracy (%) under L-infinity attacks in pixel space (eps in units of [0, 1] '
           f'pixels), mean +- std over {result["num_models"]} networks, on {result["test_images"]} '
           f'fixed test images. PGD: {result["pgd_steps"]} steps of {result["step_size"]}, random '
           f'start; FGSM: one step of eps. The set and the random subset (same IPC) are trained '
           f'under the set\'s protocol ({result["protocol"]}); the full data with hard labels '
           f'under {result["hard_protocol"]} for {result["full_data_epochs"]} epochs. eps 0 is '
           'the clean accuracy.', '']
  lines += ['Clean accuracy (%): ' + '; '.join(
      f'{label} {100 * result["rows"][k]["clean"]["acc_mean"]:.2f} +- '
      f'{100 * result["rows"][k]["clean"]["acc_std"]:.2f}' for k, label in rows) + '.', '']
  head = '| eps | ' + ' | '.join(f'{label} {att}' for _, label in rows
                                  for att in ('FGSM', 'PGD')) + ' |'
  lines += [head, '|---|' + '---|' * (2 * len(rows))]
  for j, lab in enumerate(result['eps_labels']):
    cells = [_pm(result['rows'][k], att, j) for k, _ in rows for att in ('fgsm', 'pgd')]
    lines.append(f'| {lab} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(result: dict, directory: str) -> list[str]:
  from matplotlib.figure import Figure
  eps = np.asarray(result['eps']) * 255
  fig = Figure(figsize=(6, 4), dpi=100)
  ax = fig.subplots()
  for (k, label), colour in zip(ROWS, ('C0', 'C1', 'C2')):
    if k not in result['rows']:
      continue
    row = result['rows'][k]
    for att, style in (('pgd', '-'), ('fgsm', '--')):
      ax.errorbar(eps, 100 * np.asarray(row[att]['acc_mean']),
                  yerr=100 * np.asarray(row[att]['acc_std']), color=colour, linestyle=style,
                  marker='o', capsize=3, label=f'{label}, {att.upper()}')
  ax.set_xlabel('eps (x 1/255, L-infinity, pixel space)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(f'adversarial robustness ({result["protocol"]} protocol, PGD-'
               f'{result["pgd_steps"]})')
  ax.legend(fontsize=7)
  return [save_figure(fig, os.path.join(directory, 'adversarial.png'))]


def summary(result: dict) -> dict:
  """{'pgd_acc@<eps>': the set's mean PGD accuracy} at the middle budget of the list."""
  j = len(result['eps']) // 2
  return {f'pgd_acc@{result["eps_labels"][j]}': result['rows']['set']['pgd']['acc_mean'][j]}


register_axis(Axis(name='adversarial', run=run, report=report, settings=settings, plot=plot,
                   summary=summary,
                   description='FGSM / PGD robustness of networks trained on the set, beside a '
                               'random subset and the full data'))
