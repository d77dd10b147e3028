"""The 'privacy' axis: membership inference against networks trained on a distilled set.

The judged set was distilled from the whole training set, so it has no non-members to attack.
The axis therefore makes its own set the same way (the judged set's method config) from a known
part of the training data, and asks whether an attacker who queries a network trained on that
set can tell the part's images from others:

  members      a class-balanced, seeded chunk of the real TRAINING set (settings.members images,
               members // K per class);
  non-members  as many other training images, disjoint, class-balanced (not the test split, which
               stays for accuracy);
  shadow pool  the rest of the training set; LiRA's shadow networks train on chunks of it, so every
               evaluated image is OUT for every shadow.

  target set   the method run on the members chunk only (`ddjax.run(cfg, <axis>/distil_members,
               data=data.subset(members))`, resumable; distill.steps capped at
               settings.distill_steps, 0 = the method's own; its own evaluation off), at the judged
               set's IPC;
  targets      settings.targets networks trained on the target set under the set's protocol
               (`Context.networks`, each a resumable unit holding its logits on the members and
               non-members and its test accuracy);
  reference    as many networks trained on the members chunk itself (real images, labelled as the
               set's own labels are initialised) under the same protocol: the leakage of training
               on the real data, the figure the set is to be compared with;
  shadows      settings.shadows networks for offline LiRA: shadow='real' (default, cheap) trains
               each on a random real chunk of the members' size from the pool; 'distilled' distils
               each such chunk with the method first (faithful to the set's pipeline, costly). Real
               shadows model the reference exactly and the set's networks only roughly (a network
               trained on a small distilled set is less confident everywhere; LiRA's per-example
               calibration then shifts members and non-members alike).

Attacks (`ddjax.evaluate.privacy`, whose docstring has the formulas): the loss threshold (Yeom et
al. 2018), learned attacks (logistic regression, MLP; cross-fitted on the target network's own
outputs), offline LiRA (Carlini et al. 2022). Each target network is attacked on its own; the
result is the mean over target networks of each attack's AUC and TPR at 1 % and 0.1 % FPR.

Caches that depend on the training data are kept per chunk so no non-member leaks in through
them: the method's expert trajectories, BiLP scores and RDED's observer (the teacher of the 'rded'
protocol and of RDED's selection) are rebuilt under the axis directory, trained on the chunk they
belong to (the shadows' teacher on the shadow pool). A user's own observer (observer.checkpoint)
is used as given, and the report says so. The data's preprocessing (standardisation / ZCA) stays
the one fitted on the whole training set.

Published figures: FRePo's paper (Zhou, Nezhadarya and Ba, NeurIPS 2022, arXiv 2206.00719)
presents membership-inference defence as an application of distilled data and used the learned
attacks of ML Privacy Meter; its numbers could not be found in the sources searched while writing
this axis (only the abstract), so none are quoted here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import ml_collections
import numpy as np

from ddjax import config as config_lib
from ddjax.data.sampling import centered_one_hot, check_ipc, one_hot
from ddjax.evaluate import privacy
from ddjax.evaluate.train import accuracy, predict
from ddjax.infra import artifacts
from ddjax.runtime import pipeline
from ddjax.suite.axes import Axis, register_axis
from ddjax.suite.context import Context, log
from ddjax.suite.sets import load_set

SPLIT_PURPOSE = 0x5052          # folded into the split's seed ('PR')
SHADOWS = ('real', 'distilled')
FPR_GRID = np.logspace(-4, 0, 81)   # where the mean ROC curves are kept (plot)


def settings(preset: str) -> dict:
  quick = preset == 'quick'
  return {'members': 1000 if quick else 10000,   # images distilled from (class-balanced)
          'targets': 2 if quick else 5,          # networks trained on the target set (and on
                                                 # the real chunk)
          'shadow': 'real',                      # 'real' | 'distilled' (LiRA's OUT shadows)
          'shadows': 4 if quick else 16,
          'distill_steps': 200 if quick else 0,  # cap on the target set's steps (0: the method's)
          'attacks': 'loss,lr,mlp,lira',
          'folds': 2,                            # cross-fitting folds of the learned attacks
          'reference': True}                     # also attack networks trained on the real chunk


# ------------------------------------------------------------------------------------- split
def split(y: np.ndarray, num_classes: int, members: int, seed: int,
          need_pool: bool = True) -> dict:
  """Disjoint class-balanced index sets of the training labels y (N,): 'members' and
  'nonmembers', members // num_classes of each class each (in class order), and 'pool': every
  other index. ValueError naming the largest `members` the smallest class allows (with
  `need_pool`, room for one shadow chunk of the members' size in the pool too)."""
  y = np.asarray(y).astype(np.int64)
  per = int(members) // num_classes
  counts = np.bincount(y, minlength=num_classes)[:num_classes]
  chunks = 3 if need_pool else 2
  if per < 1 or chunks * per > counts.min():
    most = (counts.min() // chunks) * num_classes
    raise ValueError(f'privacy.members={members}: {chunks} disjoint chunks of {per} images per '
                     f'class (members, non-members{", a shadow chunk" if need_pool else ""}) '
                     f'need {chunks * per} per class, and the smallest class has {counts.min()}; '
                     f'set --suite.privacy.members to at least {num_classes} and at most {most}')
  rng = np.random.default_rng([int(seed), SPLIT_PURPOSE])
  out = {'members': [], 'nonmembers': [], 'pool': []}
  for c in range(num_classes):
    idx = rng.permutation(np.flatnonzero(y == c))
    out['members'].append(idx[:per])
    out['nonmembers'].append(idx[per:2 * per])
    out['pool'].append(idx[2 * per:])
  return {k: np.concatenate(v).astype(np.int64) for k, v in out.items()}


def shadow_chunk(y: np.ndarray, pool: np.ndarray, per_class: int, num_classes: int, seed: int,
                 i: int) -> np.ndarray:
  """Shadow i's chunk: per_class random pool indices of each class (seeded by seed and i)."""
  y = np.asarray(y).astype(np.int64)
  rng = np.random.default_rng([int(seed), SPLIT_PURPOSE, 1, int(i)])
  return np.concatenate([rng.choice(pool[y[pool] == c], per_class, replace=False)
                         for c in range(num_classes)]).astype(np.int64)


# ------------------------------------------------------------------------- configs, contexts
def isolated(cfg: ml_collections.ConfigDict, directory: str) -> ml_collections.ConfigDict:
  """A copy of cfg whose data-dependent caches (expert.dir, bilp.score_dir, observer.dir unless
  observer.checkpoint names the user's own) live under `directory`, so a chunk's runs never
  reuse one built from other training images (records of these caches need not tell two chunks
  of the same size apart)."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  if 'expert' in cfg:
    cfg.expert.dir = os.path.join(directory, 'experts')
  if 'bilp' in cfg:
    cfg.bilp.score_dir = os.path.join(directory, 'scores')
  if 'observer' in cfg and not cfg.observer.get('checkpoint', ''):
    cfg.observer.dir = os.path.join(directory, 'observer')
  return cfg


def on_chunk(ctx: Context, data, directory: str) -> Context:
  """The context with `data` (a chunk of the training set) as its data and the caches of
  `isolated(directory)`: networks trained through it see only that chunk (a protocol's teacher
  included)."""
  return dataclasses.replace(ctx, data=data, run_cfg=isolated(ctx.run_cfg, directory))


def distil_config(ctx: Context, data, workdir: str) -> tuple[ml_collections.ConfigDict, int]:
  """(cfg, steps): the judged set's config for distilling `data` into `workdir`: its own caches
  there (`isolated`), its evaluation off (eval.num_models 0, no kernel KRR), distill.steps capped
  at settings.distill_steps (0: no cap). ValueError when the chunk has fewer images per class than
  the method initialises from."""
  cfg = isolated(ctx.run_cfg, workdir)
  cfg.eval.num_models = 0
  cfg.eval.kernel_krr = False
  check_ipc(data.y_train, config_lib.real_per_class(cfg), data.num_classes, data.class_names,
            what=f'distill.ipc={cfg.distill.ipc} (x idc.factor^2) of the judged set, distilled '
                 'from the members chunk,')
  steps = pipeline.make_plan(cfg, data).steps
  cap = int(ctx.settings.distill_steps)
  if cap > 0 and steps > cap:
    cfg.distill.steps = cap
    steps = pipeline.make_plan(cfg, data).steps
  return cfg, int(steps)


def distil(ctx: Context, data, workdir: str) -> tuple[dict, dict]:
  """(set in model space {'x', 'y', extras}, info): the method run on `data` into `workdir`
  (resumed when interrupted, read back when finished with this config)."""
  cfg, steps = distil_config(ctx, data, workdir)
  done = os.path.join(workdir, 'results.json')
  have = (artifacts.read_json(os.path.join(workdir, 'config.json'))
          if os.path.exists(done) else None)
  if have is None or pipeline.config_differences(have, json.loads(cfg.to_json())):
    log(f'privacy: distilling {len(data.y_train)} images with {cfg.method} '
        f'({steps} steps) into {workdir}')
    pipeline.run(cfg, workdir, data=data)
  made = load_set(workdir)
  syn = {'x': ctx.model_space(made.x_pixels), 'y': made.y, **made.extras}
  return syn, {'method': cfg.method, 'steps': steps, 'images': int(len(made.y)),
               'ipc': made.ipc, 'hard_labels': made.hard_labels}


def real_chunk(ctx: Context, idx: np.ndarray, target: dict) -> dict:
  """The real training images at idx as a set, labelled as `Context.random_subset` labels a
  random subset (one-hot when the target set's labels are hard, else the method's label_init),
  with the target set's learned extras (a learned step size)."""
  y = np.asarray(ctx.data.y_train)[idx]
  k = ctx.data.num_classes
  hard = bool(np.all((target['y'] == 0) | (target['y'] == 1)))
  init = 'one_hot' if hard else ctx.run_cfg.distill.get('label_init', 'one_hot')
  labels = one_hot(y, k) if init == 'one_hot' else centered_one_hot(y, k)
  return {**{k_: v for k_, v in target.items() if k_ not in ('x', 'y')},
          'x': np.asarray(ctx.data.x_train[idx], np.float32), 'y': labels}


def measure_on(ctx: Context, x_members: np.ndarray, x_nonmembers: np.ndarray):
  """measure(model, variables) -> {'acc': test accuracy, 'logits_members' (M, K),
  'logits_nonmembers' (N, K)} (inference mode): what a unit of this axis keeps."""
  def measure(model, variables) -> dict:
    return {'acc': accuracy(model, variables, ctx.data.x_test, ctx.data.y_test),
            'logits_members': predict(model, variables, x_members)[0].astype(np.float32),
            'logits_nonmembers': predict(model, variables, x_nonmembers)[0].astype(np.float32)}
  return measure


# ---------------------------------------------------------------------------------- attacks
def attack_networks(nets: list[dict], y_m: np.ndarray, y_n: np.ndarray, attacks: list[str],
                    seed: int, folds: int, shadows: list[dict] | None) -> dict:
  """Every attack on every target network in `nets` (units of `measure_on`): per attack the mean
  and std over networks of AUC and TPR at the FPRs of `privacy.FPRS`, and the mean ROC on
  FPR_GRID; plus the networks' test accuracy and their accuracy on members and non-members."""
  shadow_logits = None
  if shadows:
    shadow_logits = np.stack([np.concatenate([s['logits_members'], s['logits_nonmembers']])
                              for s in shadows])
  per_net, rocs = [], {a: [] for a in attacks}
  for t, net in enumerate(nets):
    scores = privacy.attack_scores(net['logits_members'], y_m, net['logits_nonmembers'], y_n,
                                   attacks, seed=seed + t, folds=folds,
                                   shadow_logits=shadow_logits)
    per_net.append(privacy.attack_report(scores))
    for a, (sm, sn) in scores.items():
      rocs[a].append(privacy.roc_on_grid(sm, sn, FPR_GRID))
  out = {}
  for a in attacks:
    row = {}
    for metric in ('auc',) + tuple(privacy.FPRS):
      values = [r[a][metric] for r in per_net]
      row[metric], row[metric + '_std'] = float(np.mean(values)), float(np.std(values))
    out[a] = row
  accs = [float(n['acc']) for n in nets]
  fit = lambda key, y: float(np.mean([np.mean(n[key].argmax(-1) == y) for n in nets]))
  return {'attacks': out, 'roc': {a: np.mean(rocs[a], axis=0).tolist() for a in attacks},
          'accs': accs, 'acc_mean': float(np.mean(accs)), 'acc_std': float(np.std(accs)),
          'members_acc': fit('logits_members', y_m),
          'nonmembers_acc': fit('logits_nonmembers', y_n),
          'per_network': per_net}


# -------------------------------------------------------------------------------------- run
def _check(s) -> list[str]:
  attacks = [a.strip() for a in s.attacks.split(',') if a.strip()]
  unknown = [a for a in attacks if a not in privacy.ATTACKS]
  if unknown or not attacks:
    raise ValueError(f'privacy.attacks={s.attacks!r}: choose from {",".join(privacy.ATTACKS)}')
  if s.shadow not in SHADOWS:
    raise ValueError(f'privacy.shadow={s.shadow!r}: choose one of {SHADOWS}')
  if 'lira' in attacks and int(s.shadows) < 2:
    raise ValueError(f'privacy.shadows={s.shadows}: LiRA fits a Gaussian to at least 2 shadow '
                     "networks; raise it or leave 'lira' out of privacy.attacks")
  if int(s.targets) < 1:
    raise ValueError(f'privacy.targets={s.targets} must be >= 1')
  return attacks


def run(ctx: Context) -> dict:
  s = ctx.settings
  attacks = _check(s)
  data, k, seed = ctx.data, ctx.data.num_classes, int(ctx.suite.seed)
  lira = 'lira' in attacks
  parts = split(data.y_train, k, int(s.members), seed, need_pool=lira)
  per = len(parts['members']) // k
  y_all = np.asarray(data.y_train).astype(np.int64)
  y_m, y_n = y_all[parts['members']], y_all[parts['nonmembers']]
  x_m = np.asarray(data.x_train[parts['members']], np.float32)
  x_n = np.asarray(data.x_train[parts['nonmembers']], np.float32)
  log(f'privacy: {len(y_m)} members, {len(y_n)} non-members, {len(parts["pool"])} in the '
      'shadow pool')

  members_dir = os.path.join(ctx.out_dir, 'distil_members')
  members_data = data.subset(parts['members'])
  target, made = distil(ctx, members_data, members_dir)
  measure = measure_on(ctx, x_m, x_n)
  on_members = on_chunk(ctx, members_data, members_dir)
  nets = {'set': on_members.networks('privacy/set', target, num=int(s.targets),
                                     measure=measure)}
  if s.reference:
    nets['real'] = on_members.networks('privacy/real', real_chunk(ctx, parts['members'], target),
                                       num=int(s.targets), measure=measure)

  shadows = None
  if lira:
    pool_dir = os.path.join(ctx.out_dir, 'shadow_pool')
    on_pool = on_chunk(ctx, data.subset(parts['pool']), pool_dir)
    chunks = [shadow_chunk(y_all, parts['pool'], per, k, seed, i) for i in range(int(s.shadows))]
    if s.shadow == 'real':
      shadows = on_pool.networks('privacy/shadow_real',
                                 lambda i: real_chunk(ctx, chunks[i], target),
                                 num=int(s.shadows), measure=measure)
    else:
      sets = [distil(ctx, data.subset(c), os.path.join(ctx.out_dir, f'distil_shadow{i}'))[0]
              for i, c in enumerate(chunks)]
      shadows = on_pool.networks('privacy/shadow_distilled', lambda i: sets[i],
                                 num=int(s.shadows), measure=measure)

  results = {name: attack_networks(n, y_m, y_n, attacks, seed, int(s.folds), shadows)
             for name, n in nets.items()}
  notes = []
  if 'observer' in ctx.run_cfg and ctx.run_cfg.observer.get('checkpoint', ''):
    notes.append("the protocol's teacher is the user's observer "
                 f'({ctx.run_cfg.observer.checkpoint}), whose training data this axis does not '
                 'control')
  return {'protocol': ctx.plan.protocol, 'members': int(len(y_m)), 'nonmembers': int(len(y_n)),
          'per_class': per, 'pool': int(len(parts['pool'])), 'targets': int(s.targets),
          'shadow': s.shadow if lira else None, 'shadows': int(s.shadows) if lira else 0,
          'attacks': attacks, 'folds': int(s.folds), 'distilled': made,
          'false_positives_allowed': {key: int(math.floor(f * len(y_n) * (1 + 1e-12)))
                                      for key, f in privacy.FPRS.items()},
          'fpr_grid': FPR_GRID.tolist(), 'max_steps': int(ctx.suite.max_steps),
          'results': results, 'notes': notes}


# ---------------------------------------------------------------------------------- report
def _fmt(row: dict, metric: str) -> str:
  return f'{row[metric]:.3f} +- {row[metric + "_std"]:.3f}'


NAMES = {'loss': 'loss threshold', 'lr': 'learned (logistic regression)',
         'mlp': 'learned (MLP)', 'lira': 'LiRA offline'}


def report(result: dict) -> str:
  r, d = result['results'], result['distilled']
  cols = [c for c in ('set', 'real') if c in r]
  head = ' | '.join(f'{c} AUC | {c} TPR@1% | {c} TPR@0.1%' for c in cols)
  lines = [
      f'Membership inference against networks trained on a set distilled ({d["method"]}, '
      f'{d["steps"]} steps, IPC {d["ipc"]}, {d["images"]} images) from {result["members"]} real '
      f'training images (members), beside networks trained on those members themselves (real). '
      f'Non-members: {result["nonmembers"]} other training images. Protocol '
      f'{result["protocol"]}; mean +- std over {result["targets"]} target network'
      f'{"s" if result["targets"] != 1 else ""}, each '
      'attacked on its own. AUC 0.5 = chance; TPR at a low false-positive rate is what makes an '
      'attack dangerous (LiRA).', '',
      f'| attack | {head} |', '|---|' + '---|' * (3 * len(cols))]
  for a in result['attacks']:
    cells = ' | '.join(f'{_fmt(r[c]["attacks"][a], "auc")} | '
                       f'{_fmt(r[c]["attacks"][a], "tpr_at_1pct_fpr")} | '
                       f'{_fmt(r[c]["attacks"][a], "tpr_at_0.1pct_fpr")}' for c in cols)
    lines.append(f'| {NAMES.get(a, a)} | {cells} |')
  lines += ['', '| networks | test accuracy (%) | accuracy on members (%) | on non-members (%) |',
            '|---|---|---|---|']
  for c in cols:
    x = r[c]
    lines.append(f'| {c} | {100 * x["acc_mean"]:.2f} +- {100 * x["acc_std"]:.2f} | '
                 f'{100 * x["members_acc"]:.2f} | {100 * x["nonmembers_acc"]:.2f} |')
  fp = result['false_positives_allowed']
  n = result['nonmembers']
  lines += ['', f'With {n} non-members, TPR at 1 % FPR allows at most {fp["tpr_at_1pct_fpr"]} '
                f'false positives and TPR at 0.1 % FPR at most {fp["tpr_at_0.1pct_fpr"]}'
                + (' (none: it is the TPR at zero false positives)'
                   if fp['tpr_at_0.1pct_fpr'] == 0 else '')
                + '; figures resting on so few non-members are coarse (a step of 1 / '
                f'{n} in FPR).']
  if result['shadows']:
    lines.append(f'LiRA: {result["shadows"]} OUT shadow networks on {result["shadow"]} chunks of '
                 f'the shadow pool ({result["pool"]} images), one global variance below '
                 f'{privacy.LIRA_GLOBAL_STD_BELOW} shadows.'
                 + (' Real shadows mimic the reference exactly and the set\'s networks only '
                    'roughly.' if result['shadow'] == 'real' else ''))
  lines.append(f'Learned attacks: {result["folds"]}-fold cross-fitting on each target network\'s '
               'own outputs (the attacker knows the membership of the other folds).')
  lines += [f'Note: {x}.' for x in result.get('notes', [])]
  return '\n'.join(lines)


def plot(result: dict, directory: str) -> list[str]:
  """ROC curves of every attack, set (solid) and real reference (dashed), log-log as LiRA's."""
  from matplotlib.figure import Figure
  from ddjax.infra import files
  grid = np.asarray(result['fpr_grid'])
  fig = Figure(figsize=(5.5, 4.5), dpi=100)
  ax = fig.subplots()
  colors = {a: f'C{i}' for i, a in enumerate(result['attacks'])}
  for c, style in (('set', '-'), ('real', '--')):
    if c not in result['results']:
      continue
    for a in result['attacks']:
      row = result['results'][c]['attacks'][a]
      tpr = np.maximum(np.asarray(result['results'][c]['roc'][a]), 1e-5)
      ax.plot(grid, tpr, style, color=colors[a],
              label=f'{c}: {NAMES.get(a, a)} (AUC {row["auc"]:.3f})')
  ax.plot(grid, grid, ':', color='gray', label='chance')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlim(grid[0], 1)
  ax.set_ylim(1e-4, 1.05)
  ax.axvline(1.0 / max(result['nonmembers'], 1), color='lightgray', lw=0.8)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title(f'membership inference ({result["members"]} members)')
  ax.legend(fontsize=6, loc='lower right')
  fig.tight_layout()
  path = os.path.join(directory, 'privacy_roc.png')
  files.write_atomic(path, lambda f: fig.savefig(f, format='png'))
  return [path]


def summary(result: dict) -> dict:
  r = result['results']
  out = {'mia_auc': max(v['auc'] for v in r['set']['attacks'].values()),
         'mia_tpr@0.1%': max(v['tpr_at_0.1pct_fpr'] for v in r['set']['attacks'].values())}
  if 'real' in r:
    out['mia_auc[real]'] = max(v['auc'] for v in r['real']['attacks'].values())
  return out


register_axis(Axis(name='privacy', run=run, report=report, settings=settings, plot=plot,
                   summary=summary, needs_method=True,
                   description='membership inference on a set distilled from known members'))
