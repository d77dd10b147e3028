"""The 'continual' axis: class-incremental continual learning with the method's sets as the memory
(GDumb-style, as DM's CL_DM.py runs it for distilled sets and FRePo, arXiv 2206.00719, evaluates
its sets; `ddjax.evaluate.continual`, whose docstring states the protocol and what could and
could not be found of the published setting and figures).

For each class order and each step t: the judged set's method distils a set, at the set's IPC,
from the training images of step t's classes alone (`PreparedData.restrict_classes`; `ddjax.run`
into <axis dir>/order<o>/step<t>, no evaluation networks); its labels are lifted into the whole
data's K classes (`ddjax.data.lift_labels`) and it joins the memory. Then `suite.num_models` fresh
networks trained on the memory (every set so far) under the set's own protocol are tested on the
test images of every class seen so far (argmax over all K logits). Beside it, the random real
subset at the same memory (the same IPC of the same classes, labelled as the set is; network i's
draw is `Context.random_subset(ipc, 1000 seed + i)` restricted to the seen classes, so its memory
grows step by step), trained the same way.

A learned scalar of the sets (MTT's syn_lr) becomes, for the memory, the mean over its sets; the
random memory is trained with the same. The step runs get their own observer directory (RDED's
teacher is then trained on the step's classes: an observer of the whole data would not match).

Settings (`--suite.continual.<key>`): steps (5), orders (quick 1, full 5), distill_steps (a cap
on each step's distillation steps, quick 200; 0: the method's own).
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from ddjax.data import lift_labels
from ddjax.evaluate.continual import class_orders, curve_figures, seen_classes, seen_mask
from ddjax.evaluate.train import accuracy
from ddjax.runtime import pipeline
from ddjax.suite.axes import Axis, register_axis
from ddjax.suite.report import save_figure
from ddjax.suite.builtin.common import protocol_record
from ddjax.suite.context import Context, log
from ddjax.suite.sets import load_set


def settings(preset: str) -> dict:
  quick = preset == 'quick'
  return {'steps': 5, 'orders': 1 if quick else 5, 'distill_steps': 200 if quick else 0}


def _label_init(ctx: Context) -> str:
  return ctx.run_cfg.distill.get('label_init', 'one_hot') if 'distill' in ctx.run_cfg \
      else 'one_hot'


def step_config(ctx: Context, step_dir: str, data) -> ml_collections.ConfigDict:
  """The judged set's method config for one step: the set's IPC, no evaluation networks, the
  step's own observer directory, distillation steps capped at settings.distill_steps (> 0)."""
  cfg = ml_collections.ConfigDict(ctx.run_cfg.to_dict())
  cfg.distill.ipc = int(ctx.judged.ipc)
  cfg.eval.num_models = 0
  if 'observer' in cfg:
    cfg.observer.dir = os.path.join(step_dir, 'observer')
    cfg.observer.checkpoint = ''
  cap = int(ctx.settings.distill_steps)
  if cap > 0 and pipeline.make_plan(cfg, data).steps > cap:
    cfg.distill.steps = cap
    steps = pipeline.make_plan(cfg, data).steps
    if steps > cap:
      log(f'continual: {cfg.method} takes {steps} steps whatever distill.steps says; the cap '
          f'distill_steps={cap} does not apply to it')
  return cfg


def distil_step(ctx: Context, order: int, step: int, group: list[int]) -> dict:
  """The set of one step, made (or read back from a finished step directory) from the classes
  `group` alone, in the whole data's model space with labels over its K classes:
  {'x': (n, H, W, C), 'y': (n, K), 'classes': (n,) original classes, extras...}."""
  step_dir = os.path.join(ctx.out_dir, f'order{order}', f'step{step}')
  if not os.path.exists(os.path.join(step_dir, 'results.json')):
    data = ctx.data.restrict_classes(group)
    cfg = step_config(ctx, step_dir, data)
    log(f'continual: order {order} step {step}: distilling classes {group} with {cfg.method} '
        f'(IPC {cfg.distill.ipc})')
    pipeline.run(cfg, step_dir, data=data)
  made = load_set(step_dir)
  local = np.asarray(made.classes, np.int64)
  if made.num_classes != len(group) or local.max(initial=0) >= len(group):
    raise ValueError(f'{step_dir} holds a set of {made.num_classes} classes, not the '
                     f'{len(group)} of this step ({group}); delete it to distil it again')
  y = lift_labels(made.y, local, group, ctx.data.num_classes, _label_init(ctx))
  return {'x': ctx.model_space(made.x_pixels), 'y': y,
          'classes': np.asarray(group, np.int64)[local],
          **{k: np.asarray(v, np.float32) for k, v in made.extras.items()}}


def union(sets: list[dict]) -> dict:
  """The memory: the sets' rows in step order; a learned scalar (extra) the mean over sets."""
  out = {k: np.concatenate([s[k] for s in sets]) for k in ('x', 'y', 'classes')}
  for k in sets[0]:
    if k not in out:
      out[k] = np.mean(np.stack([np.asarray(s[k], np.float32) for s in sets]), axis=0)
  return out


def seen_accuracy(ctx: Context, seen: list[int]):
  """measure(model, variables) -> {'acc': accuracy on the test images of the classes `seen`}."""
  mask = seen_mask(ctx.data.y_test, seen)
  x, y = ctx.data.x_test[mask], np.asarray(ctx.data.y_test)[mask]
  return lambda model, variables: {'acc': accuracy(model, variables, x, y)}


def _for_training(memory: dict) -> dict:
  return {k: v for k, v in memory.items() if k != 'classes'}


def random_memory(ctx: Context, seen: list[int], extras: dict):
  """i -> network i's random memory: its draw of the random subset (the set's IPC, labelled as
  the set is) restricted to the classes `seen`, with the memory's learned scalars."""
  ipc, seed = ctx.judged.ipc, int(ctx.suite.seed)
  keep = seen_mask(np.repeat(np.arange(ctx.data.num_classes), ipc), seen)   # rows class by class

  def draw(i: int) -> dict:
    sub = ctx.random_subset(ipc, seed * 1000 + i)
    return {**extras, 'x': np.asarray(sub['x'])[keep], 'y': np.asarray(sub['y'])[keep]}

  return draw


def _random_curve(ctx: Context, o: int, groups: list[list[int]], extras: list[dict]) -> list:
  """Accuracies (steps, networks) of the random memory along one order; cached per data,
  protocol, IPC, labels, seed, the order's groups and the memory's learned scalars."""
  record = {'data': ctx.data_record(), 'arch': ctx.run_cfg.eval.model.to_dict(),
            **protocol_record(ctx, None), 'ipc': int(ctx.judged.ipc),
            'seed': int(ctx.suite.seed), 'num_models': int(ctx.suite.num_models),
            'hard': ctx.judged.hard_labels, 'label_init': _label_init(ctx), 'groups': groups,
            'extras': [{k: np.asarray(v).tolist() for k, v in e.items()} for e in extras]}

  def compute(directory: str) -> dict:
    accs = []
    for t in range(len(groups)):
      seen = seen_classes(groups, t)
      measures = ctx.networks(f'continual_random/step{t}', random_memory(ctx, seen, extras[t]),
                              measure=seen_accuracy(ctx, seen), root=directory)
      accs.append([float(m['acc']) for m in measures])
    return {'accs': accs}

  return ctx.cached('continual_random', record, compute)['accs']


def run(ctx: Context) -> dict:
  s = ctx.settings
  k = int(ctx.data.num_classes)
  orders = class_orders(k, int(s.steps), int(s.orders), int(ctx.suite.seed),
                        min_classes_per_step=2)
  set_acc, random_acc = [], []
  for o, groups in enumerate(orders):
    sets, accs, extras = [], [], []
    for t, group in enumerate(groups):
      sets.append(distil_step(ctx, o, t, group))
      memory = union(sets)
      extras.append({key: v for key, v in memory.items() if key not in ('x', 'y', 'classes')})
      seen = seen_classes(groups, t)
      measures = ctx.networks(f'continual/order{o}/step{t}', _for_training(memory),
                              measure=seen_accuracy(ctx, seen))
      accs.append([float(m['acc']) for m in measures])
      log(f'continual: order {o} step {t} ({len(seen)} classes seen, memory of '
          f'{len(memory["y"])} images): accuracy {100 * np.mean(accs[-1]):.2f} %')
    set_acc.append(accs)
    random_acc.append(_random_curve(ctx, o, groups, extras))
  steps = len(orders[0])
  return {'protocol': ctx.plan.protocol, 'method': ctx.run_cfg.method,
          'ipc': int(ctx.judged.ipc), 'steps': steps, 'orders': len(orders),
          'class_orders': orders,
          'classes_seen': [len(seen_classes(orders[0], t)) for t in range(steps)],
          'distill_steps': int(s.distill_steps), 'num_models': int(ctx.suite.num_models),
          'set': {'accs': set_acc, **curve_figures(np.asarray(set_acc))},
          'random': {'accs': random_acc, **curve_figures(np.asarray(random_acc))}}


def report(result: dict) -> str:
  cap = (f'each step distilled for at most {result["distill_steps"]} steps'
         if result['distill_steps'] else "each step distilled with the method's own steps")
  lines = [f'Class-incremental learning: {result["steps"]} steps, {result["orders"]} class '
           f'order(s); at each step the method ({result["method"]}) distils IPC {result["ipc"]} '
           f'from that step\'s classes alone ({cap}); {result["num_models"]} fresh networks '
           f'trained on the memory so far under the set\'s protocol ({result["protocol"]}) are '
           'tested on every class seen so far. The random memory holds real images of the same '
           'classes at the same IPC. Test accuracy (%), mean +- std over orders and networks.',
           '', '| classes seen | set | random memory | set - random (points) |',
           '|---|---|---|---|']
  a, r = result['set'], result['random']
  for t, n in enumerate(result['classes_seen']):
    lines.append(f'| {n} | {100 * a["mean"][t]:.2f} +- {100 * a["std"][t]:.2f} | '
                 f'{100 * r["mean"][t]:.2f} +- {100 * r["std"][t]:.2f} | '
                 f'{100 * (a["mean"][t] - r["mean"][t]):+.2f} |')
  for key, name in (('final', 'final accuracy'), ('average', 'average over steps')):
    lines.append(f'| **{name}** | {100 * a[key]:.2f} | {100 * r[key]:.2f} | '
                 f'{100 * (a[key] - r[key]):+.2f} |')
  lines += ['', 'Class orders: ' + '; '.join(
      ' | '.join(','.join(str(c) for c in g) for g in order) for order in result['class_orders'])]
  return '\n'.join(lines)


def plot(result: dict, directory: str) -> list[str]:
  from matplotlib.figure import Figure
  n = np.asarray(result['classes_seen'])
  fig = Figure(figsize=(5.5, 3.8), dpi=100)
  ax = fig.subplots()
  for key, label in (('set', f'{result["method"]} set'), ('random', 'random memory')):
    ax.errorbar(n, 100 * np.asarray(result[key]['mean']), yerr=100 * np.asarray(result[key]['std']),
                marker='o', capsize=3, label=label)
  ax.set_xticks(n)
  ax.set_xlabel('number of classes seen')
  ax.set_ylabel('test accuracy on seen classes (%)')
  ax.set_title(f'class-incremental, IPC {result["ipc"]}, {result["orders"]} order(s)')
  ax.legend()
  return [save_figure(fig, os.path.join(directory, 'continual.png'))]


def summary(result: dict) -> dict:
  return {'continual_final': result['set']['final'], 'continual_avg': result['set']['average']}


register_axis(Axis(name='continual', run=run, report=report, settings=settings, plot=plot,
                   summary=summary, needs_method=True,
                   description='class-incremental learning with the method\'s sets as memory, '
                               'beside a random memory'))
