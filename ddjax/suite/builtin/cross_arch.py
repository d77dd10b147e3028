"""The 'cross_arch' axis: the set trained on by networks of other architectures (the zoo of
`ddjax.models.zoo`) under its own protocol, beside the random real subset of the same size on the
same architecture (DC-BENCH's cross-architecture table)."""
from __future__ import annotations

import os

import numpy as np

from ddjax.suite.axes import Axis, register_axis
from ddjax.suite.report import save_figure
from ddjax.suite.builtin.common import pm, random_accuracy, set_accuracy
from ddjax.suite.context import Context


def settings(preset: str) -> dict:
  if preset == 'quick':
    return {'archs': 'ConvNet-3,ConvNet-3-BN,LeNet,MLP'}
  return {'archs': 'ConvNet-3,ConvNet-3-BN,ConvNet-3-NN,ConvNet-3-GN,ConvNet-3-MaxPool,'
                   'ConvNet-2,ConvNet-4,LeNet,AlexNet,VGG-11-BN,ResNet-18-BN,ResNet-18-AP,MLP'}


def run(ctx: Context) -> dict:
  archs = [a.strip() for a in ctx.settings.archs.split(',') if a.strip()]
  for a in archs:
    ctx.model(a)                          # an unknown name fails before any training
  rows = {}
  for a in archs:
    rows[a] = {'set': set_accuracy(ctx, arch=a), 'random': random_accuracy(ctx, arch=a)}
    rows[a]['gain'] = rows[a]['set']['acc_mean'] - rows[a]['random']['acc_mean']
  means = [r['set']['acc_mean'] for r in rows.values()]
  return {'protocol': ctx.plan.protocol, 'archs': rows, 'mean': float(np.mean(means)),
          'mean_gain': float(np.mean([r['gain'] for r in rows.values()])),
          'num_models': int(ctx.suite.num_models)}


def report(result: dict) -> str:
  lines = [f'Protocol {result["protocol"]} on each architecture; test accuracy (%), mean +- std '
           f'over {result["num_models"]} networks.', '',
           '| architecture | set | random subset | set - random (points) |', '|---|---|---|---|']
  for a, row in result['archs'].items():
    lines.append(f'| {a} | {pm(row["set"])} | {pm(row["random"])} | {100 * row["gain"]:+.2f} |')
  lines.append(f'| **mean** | {100 * result["mean"]:.2f} | | {100 * result["mean_gain"]:+.2f} |')
  return '\n'.join(lines)


def plot(result: dict, directory: str) -> list[str]:
  from matplotlib.figure import Figure
  archs = list(result['archs'])
  x = np.arange(len(archs))
  fig = Figure(figsize=(max(5, 0.8 * len(archs) + 2), 3.5), dpi=100)
  ax = fig.subplots()
  for off, which in ((-0.2, 'set'), (0.2, 'random')):
    ax.bar(x + off, [100 * result['archs'][a][which]['acc_mean'] for a in archs], 0.4,
           yerr=[100 * result['archs'][a][which]['acc_std'] for a in archs], label=which)
  ax.set_xticks(x, archs, rotation=30, ha='right')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(f'cross-architecture ({result["protocol"]} protocol)')
  ax.legend()
  return [save_figure(fig, os.path.join(directory, 'cross_arch.png'))]


def summary(result: dict) -> dict:
  return {'cross_arch_mean': result['mean']}


register_axis(Axis(name='cross_arch', run=run, report=report, settings=settings, plot=plot,
                   summary=summary,
                   description='the set on other architectures beside a random subset'))
