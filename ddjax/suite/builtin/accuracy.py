"""The 'accuracy' axis: the set's test accuracy under its own protocol and under any others asked
for, each beside a random real subset of the same IPC trained the same way. The gap between the
two is what the set adds; the rest is the protocol's."""
from __future__ import annotations

from ddjax.suite.axes import Axis, register_axis
from ddjax.suite.builtin.common import pm, random_accuracy, set_accuracy
from ddjax.suite.context import Context


def settings(preset: str) -> dict:
  return {'protocols': '' if preset == 'quick' else 'dc,frepo,rded'}   # besides the set's own


def _protocols(ctx: Context) -> list[str]:
  extra = [p.strip() for p in ctx.settings.protocols.split(',') if p.strip()]
  own = ctx.plan.protocol
  return [own] + [p for p in extra if p != own]


def run(ctx: Context) -> dict:
  rows = {}
  for name in _protocols(ctx):
    spec = ctx.protocol(name)
    protocol = None if name == ctx.plan.protocol else name
    if spec.train is None:       # a protocol that trains no network: its own evaluate, once
      entries, _ = spec.evaluate(ctx.run_cfg, ctx.data, ctx.syn, ctx.plan_for(spec), ctx.key)
      rows[name] = {'set': {k: entries['eval'][k] for k in ('accs', 'acc_mean', 'acc_std')}}
      continue
    rows[name] = {'set': set_accuracy(ctx, protocol),
                  'random': random_accuracy(ctx, protocol)}
    rows[name]['gain'] = rows[name]['set']['acc_mean'] - rows[name]['random']['acc_mean']
  return {'own_protocol': ctx.plan.protocol, 'protocols': rows,
          'num_models': int(ctx.suite.num_models), 'max_steps': int(ctx.suite.max_steps)}


def report(result: dict) -> str:
  lines = ['Test accuracy (%) of networks trained from scratch, final epoch, mean +- std over '
           f'{result["num_models"]} networks'
           + (f', at most {result["max_steps"]} steps each' if result['max_steps'] else '')
           + '. The random real subset has the same IPC and is trained the same way.', '',
           '| protocol | set | random subset | set - random (points) |', '|---|---|---|---|']
  for name, row in result['protocols'].items():
    own = ' (own)' if name == result['own_protocol'] else ''
    rnd = row.get('random')
    lines.append(f'| {name}{own} | {pm(row["set"])} | {pm(rnd) if rnd else "-"} | '
                 f'{100 * row["gain"]:+.2f} |' if rnd else
                 f'| {name}{own} | {pm(row["set"])} | - | - |')
  return '\n'.join(lines)


def summary(result: dict) -> dict:
  out = {}
  for name, row in result['protocols'].items():
    out[f'acc[{name}]'] = row['set']['acc_mean']
    if 'random' in row:
      out[f'random[{name}]'] = row['random']['acc_mean']
  return out


register_axis(Axis(name='accuracy', run=run, report=report, settings=settings, summary=summary,
                   description='the set under its protocol (and others) beside a random subset'))
