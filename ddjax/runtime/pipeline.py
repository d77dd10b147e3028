"""A whole ddjax job as a library call: data -> optional pruning -> distill -> decode -> export ->
evaluate, into a workdir.

    import ddjax
    cfg = ddjax.config.method_config('frepo')          # or a config file's get_config()
    results = ddjax.run(cfg, 'runs/frepo')              # the dict also in runs/frepo/results.json

The stages are functions of (cfg, plan, data, ...) that name no method: what differs between
methods is resolved once, at the start of the run, into a `ddjax.registry.Plan` (steps, learning
rates, extra learned parameters, KRR regulariser, evaluation protocol, patch factor; written to
results.json under 'plan') and passed down; the rest comes from the built object's declared kind
and capabilities and its optional run hooks (`ddjax.distill.base`: a distiller, or a set builder
that builds its set without steps), and from the stored set's parameterisation (the identity, or
IDC's multi-formation: encode / decode). Nothing below `run` asks the registry again. BiLP's
adaptive pruning wraps any distiller whose capabilities allow it. Re-running a workdir resumes it;
a workdir made with another config is refused before any compute (`check_workdir`).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import config as config_lib
from ddjax import data as data_lib
from ddjax import registry
from ddjax import transforms as transforms_lib
from ddjax.data.prepared import PreparedData, prepare
from ddjax.distill import bilp as bilp_lib
from ddjax.distill import idc as idc_lib
from ddjax.distill import step as step_lib
from ddjax.distill.base import DISTILLER, NO_HOOKS, SET_BUILDER, SetParameterisation
from ddjax.runtime import cost as cost_lib
from ddjax.runtime import evaluation, export, loop
from ddjax.infra import artifacts, distributed, files, sharding
from ddjax.runtime import summaries as summaries_lib
from ddjax.runtime.pruning import preemptive_prune

# Purposes folded into the root key, so every consumer of randomness has its own stream
# (3: evaluation, 4: scoring; see ddjax.runtime.evaluation / pruning).
KEY_SYN_INIT, KEY_DISTILL_INIT, KEY_DISTILL = 0, 1, 2

# Keys a resumed workdir may change: they do not touch the distilled set.
RESUMABLE_CHANGES = ('eval.', 'log.', 'checkpoint.', 'data.dir', 'bilp.score_dir',
                     'kernel.block_bytes', 'expert.dir', 'expert.parallel', 'observer.dir',
                     'distributed.', 'ensemble.')
# Keys added to the schema after workdirs were written, with the value every older run had.
ADDED_KEYS = {'model.dtype': 'float32', 'data.image_size': 0, 'data.channels': 0,
              'data.train_split': 'train', 'data.test_split': 'test', 'data.test_fraction': 0.0,
              'data.tfds_name': '', 'data.streaming': False,
              'observer.arch': 'auto', 'distill.adam_b1': 0.9, 'distill.adam_b2': 0.999,
              'observer.ensemble': ''}    # older runs: a ConvNet observer, which is auto <= 32 px
OUTPUTS = ('checkpoints', 'metrics.jsonl', 'curve.png', 'distilled.npz', 'distilled.png',
           'distilled_images', 'results.json', 'kept_indices.npz', 'config.json',
           summaries_lib.SUBDIR)


class WorkdirError(ValueError):
  """The workdir cannot hold this run (a file, or made with another config)."""


def load_data(cfg: ml_collections.ConfigDict) -> PreparedData:
  """cfg.data loaded and preprocessed; the IPC checked against the smallest class."""
  ds = data_lib.load_dataset(cfg.data.name, cfg.data.dir or None,
                             **data_lib.source_options(cfg.data))
  data_lib.check_ipc(ds.y_train, config_lib.real_per_class(cfg), ds.num_classes, ds.class_names)
  return prepare(ds, cfg.data.preprocessing, cfg.data.zca_reg)


def config_differences(old: dict, new: dict) -> list[str]:
  """'key: old -> new' for every key that differs and that a resumed run may not change."""
  return artifacts.differences(old, new, may_differ=RESUMABLE_CHANGES, added=ADDED_KEYS)


def check_workdir(cfg: ml_collections.ConfigDict, workdir: str, restart: bool = False) -> None:
  """Refuse, before any compute, a workdir that is a file or that holds a run of another config
  (naming the keys that differ); with `restart`, delete its previous outputs instead."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir={workdir} is a file, not a directory; name a directory '
                       '(it is created when missing).')
  if restart:
    if distributed.is_main():        # several processes: process 0 deletes, the others wait
      for name in OUTPUTS:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
          shutil.rmtree(path)
        elif os.path.exists(path):
          os.remove(path)
    distributed.barrier('ddjax restart')
    return
  old = artifacts.read_record(workdir, 'config.json', fix='pass --restart to start over')
  artifacts.check(old, json.loads(cfg.to_json()), error=WorkdirError,
                  subject=f'{workdir} holds a run made with another config',
                  fix='use a new --workdir, or pass --restart (ddjax.run(..., restart=True)) to '
                  'delete its checkpoints and outputs and start over',
                  may_differ=RESUMABLE_CHANGES, added=ADDED_KEYS)


def data_facts(data: PreparedData) -> registry.DataFacts:
  """What a plan may depend on from the data (image shape, classes)."""
  return registry.DataFacts(image_shape=tuple(int(s) for s in data.x_train.shape[1:]),
                            num_classes=int(data.num_classes))


def make_plan(cfg: ml_collections.ConfigDict, data: PreparedData) -> registry.Plan:
  """The run's plan (`ddjax.registry.resolve`), for callers that drive the stages themselves."""
  return registry.resolve(cfg, data_facts(data))


def build_distiller(cfg: ml_collections.ConfigDict, plan: registry.Plan, data: PreparedData,
                    batch_size: int):
  """The method's distiller (or set builder), wrapped in BiLP's adaptive pruning when the config
  asks for it. IDC's multi-formation is the stored set's parameterisation
  (`set_parameterisation`), outside: the step hands BiLP the decoded set."""
  distiller = plan.build(cfg, data)
  return bilp_lib.from_config(distiller, cfg, batch_size)


def set_parameterisation(cfg: ml_collections.ConfigDict) -> SetParameterisation:
  """How the stored set maps to the trained and exported one: IDC's multi-formation when
  idc.factor > 1, else the identity."""
  return idc_lib.from_config(cfg)


def initial_synthetic(cfg: ml_collections.ConfigDict, plan: registry.Plan, data: PreparedData,
                      distiller, param: SetParameterisation | None = None
                      ) -> tuple[dict, np.ndarray]:
  """(stored set, classes): class-balanced real (or noise) images, `param.images_per_stored` per
  stored image, encoded by `param` (default: the config's, `set_parameterisation`), then made the
  step-0 set by a set builder's `build` or a distiller's `initial_set` hook (DATM's), with the
  plan's extra learned entries."""
  param = set_parameterisation(cfg) if param is None else param
  per = param.images_per_stored
  syn = data_lib.init_synthetic(cfg.seed, data.x_train, data.y_train, cfg.distill.ipc * per,
                                data.num_classes, init=cfg.distill.init,
                                label_init=cfg.distill.label_init)
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_SYN_INIT)
  syn = param.encode({k: jnp.asarray(v) for k, v in syn.items()})
  if distiller.kind == SET_BUILDER:
    syn = distiller.build(syn, key)
  else:
    initial = (distiller.hooks or NO_HOOKS).initial_set
    if initial is not None and per == 1:   # a packed parameterisation (IDC) encodes real images
      syn = initial(syn, key)
  for key, (value, _) in plan.extra_params.items():
    syn[key] = jnp.asarray(value, jnp.float32)
  classes = np.repeat(np.arange(data.num_classes), cfg.distill.ipc).astype(np.int32)
  return syn, classes


def make_optimizer(cfg: ml_collections.ConfigDict, plan: registry.Plan):
  """The synthetic set's optimizer: images, labels and the method's extra entries, at the
  plan's rates over its steps."""
  extra = {k: lr for k, (_, lr) in plan.extra_params.items()}
  d = cfg.distill
  return step_lib.make_syn_optimizer(d.optimizer, plan.lr, plan.label_lr, plan.steps,
                                     learn_label=d.learn_label, schedule=d.schedule,
                                     end_fraction=d.end_fraction, extra_lrs=extra or None,
                                     momentum=d.momentum, betas=(d.adam_b1, d.adam_b2),
                                     label_momentum=None if d.label_momentum < 0 else
                                     d.label_momentum)


def distill(cfg: ml_collections.ConfigDict, plan: registry.Plan, data: PreparedData,
            workdir: str, mesh=None, summaries=None):
  """Run (or resume) the distillation; returns (decoded set, its classes, summary).

  summaries: process 0's TensorBoard writer (`ddjax.runtime.summaries`), or None."""
  root = jax.random.PRNGKey(cfg.seed)
  batch_size = config_lib.real_batch_size(cfg, data.num_classes)
  distiller = build_distiller(cfg, plan, data, batch_size)
  param = set_parameterisation(cfg)
  syn, classes = initial_synthetic(cfg, plan, data, distiller, param)
  num_steps = plan.steps
  summary = {'steps': 0, 'sec_per_step': 0.0, 'resumed_from': 0}
  if num_steps > 0 and distiller.kind == DISTILLER:
    hooks = distiller.hooks or NO_HOOKS
    transform = transforms_lib.from_config(cfg.transform)
    optimizer = make_optimizer(cfg, plan)
    mesh = mesh or sharding.make_mesh()
    state = step_lib.init_state(distiller, transform, optimizer, syn,
                                jax.random.fold_in(root, KEY_DISTILL_INIT), param)
    step_fn = step_lib.make_host_step(distiller, transform, optimizer, jnp.asarray(classes),
                                      param)
    image = None
    if summaries is not None:       # the distilled grid, drawn by process 0 from its own copy
      image = functools.partial(export.state_image, param,
                                np.asarray(param.decode_classes(jnp.asarray(classes))),
                                data.pre, data.class_names)
    sampler = hooks.batch_sampler and hooks.batch_sampler(cfg.seed)  # own batches, replicated
    own_batches = sampler is not None
    if not own_batches:                               # real batches, split over the devices
      sharding.check_batch_divisible(batch_size, mesh)
      hold = cfg.bilp.adaptive_every if cfg.bilp.adaptive_beta > 0 else 1
      sampler = loop.make_sampler(data.x_train, data.targets_train, batch_size, cfg.seed,
                                  balanced=config_lib.balanced_batch(cfg), hold=hold,
                                  rows=sharding.process_rows(mesh, batch_size),
                                  labels=data.y_train)
    state, summary = loop.run(
        step_fn, state, sampler, num_steps=num_steps, key=jax.random.fold_in(root, KEY_DISTILL),
        workdir=workdir, checkpoint_every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
        log_every=cfg.log.every, mesh=mesh, name=cfg.method, batch_sharded=not own_batches,
        problem=hooks.problem, batch_size=batch_size, summaries=summaries,
        summary_image=image)
    syn = jax.device_get(state.syn)
  decoded = jax.device_get(param.decode({k: jnp.asarray(v) for k, v in syn.items()}))
  classes = np.asarray(param.decode_classes(jnp.asarray(classes)))
  summary['build'] = distiller.report() if distiller.kind == SET_BUILDER else {}
  return {k: np.asarray(v) for k, v in decoded.items()}, classes, summary


def run_tag(cfg: ml_collections.ConfigDict) -> str:
  """The method, with '_isa' when any loss transform is on ('frepo_isa', 'kip_isa', ...)."""
  if cfg.transform.drop_easiest > 0 or cfg.transform.isa_eps > 0:
    return cfg.method + '_isa'
  return cfg.method


def default_workdir(cfg: ml_collections.ConfigDict) -> str:
  return os.path.join('runs', f'{run_tag(cfg)}_{cfg.data.name}_ipc{cfg.distill.ipc}_seed{cfg.seed}')


def run(cfg: ml_collections.ConfigDict, workdir: str | None = None, *, mesh=None,
        data: PreparedData | None = None, restart: bool = False) -> dict:
  """The whole job; returns the results dict also written to workdir/results.json.

  workdir: default runs/<method>[_isa]_<dataset>_ipc<k>_seed<s>. data: the prepared dataset when
  the caller has it already (else loaded from cfg.data). restart: discard a previous run in the
  workdir instead of resuming it.

  Several processes (cfg.distributed, ddjax.infra.distributed): every process calls this with
  the same config; JAX's distributed runtime starts first, each process loads its rows of every
  real batch, every process evaluates; process 0 alone prints and writes the workdir's files.
  """
  config_lib.validate(cfg)
  distributed.initialize(cfg.distributed)
  with distributed.quiet_unless_main():
    return _run(cfg, workdir, mesh, data, restart)


def _run(cfg: ml_collections.ConfigDict, workdir: str | None, mesh, data: PreparedData | None,
         restart: bool) -> dict:
  t0 = time.perf_counter()
  main = distributed.is_main()
  workdir = workdir or default_workdir(cfg)
  check_workdir(cfg, workdir, restart)
  files.check_writable_dir(workdir, '--workdir')       # below a file, no permission: fail now
  logger = summaries_lib.from_config(cfg, workdir)     # log.tensorboard: process 0, tensorboardX
  data = data or load_data(cfg)
  plan = make_plan(cfg, data)        # the one visit to the registry of a run
  config_lib.validate_data(cfg, plan, data)
  files.make_dirs(workdir, '--workdir')     # config.json only once the data passed its checks
  if main:
    files.write_json(os.path.join(workdir, 'config.json'), cfg.to_dict())
  print(f'[data] {data.dataset!r}, preprocessing {data.pre.kind}', flush=True)
  print(f'[plan] {plan.to_dict()}', flush=True)
  pruning, pruning_seconds = None, None
  with cost_lib.stopwatch() as making:      # the cost of making the set: pruning .. decoded set
    if cfg.bilp.prune_fraction > 0:
      with cost_lib.stopwatch() as pruning_clock:
        data, pruning = preemptive_prune(cfg, data, workdir)
      pruning_seconds = pruning_clock.seconds
    try:
      syn, classes, summary = distill(cfg, plan, data, workdir, mesh, summaries=logger)
    except BaseException:
      if logger is not None:
        logger.close()
      raise
  cost = cost_lib.record(making.seconds, steps=summary['steps'],
                         sec_per_step=summary['sec_per_step'],
                         resumed_from=summary['resumed_from'], pruning_seconds=pruning_seconds)
  if main:
    paths = export.export_distilled(workdir, syn, classes, data.pre, data.class_names)
    export.plot_curve(workdir, f'{run_tag(cfg)} {cfg.data.name} IPC {cfg.distill.ipc}')
    print(f'[export] {paths["npz"]}, {paths["png"]}, {paths["images"]}', flush=True)
  results = {
      'method': cfg.method, 'dataset': cfg.data.name, 'ipc': cfg.distill.ipc, 'seed': cfg.seed,
      'plan': plan.to_dict(),
      'transform': {'drop_easiest': cfg.transform.drop_easiest,
                    'isa_eps': cfg.transform.isa_eps},
      'distill': {'steps': summary['steps'], 'sec_per_step': summary['sec_per_step'],
                  'resumed_from': summary['resumed_from'], 'devices': jax.device_count(),
                  'processes': jax.process_count()},
      'cost': cost,
  }
  if summary.get('build'):
    results['build'] = summary['build']
  if pruning is not None:
    results['preemptive_pruning'] = pruning
  if cfg.bilp.adaptive_beta > 0:
    results['adaptive_pruning'] = {k: cfg.bilp[k] for k in ('adaptive_beta', 'adaptive_mode',
                                                            'adaptive_every', 'ite')}
  results.update(evaluation.evaluate(cfg, plan, data, syn))
  results['wall_seconds'] = time.perf_counter() - t0
  if main:
    files.write_json(os.path.join(workdir, 'results.json'), results)
  if logger is not None:
    logger.results(summary['steps'], results)
    logger.close()
  print(f'[done] {os.path.join(workdir, "results.json")}', flush=True)
  return results
