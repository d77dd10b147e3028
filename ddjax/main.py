r"""ddjax command line: config -> data -> distill -> export -> evaluate, into --workdir.

    python -m ddjax.main --config=configs/frepo_isa.py [--workdir=runs/x] [--config.distill.ipc=10]
    python -m ddjax.main --config=configs/frepo_isa.py:paper      # the paper's GPU-scale setting

Re-running with the same --workdir resumes from the last checkpoint. Outputs (see
ddjax.runtime.export): checkpoints/, metrics.jsonl, curve.png, distilled.npz, distilled.png,
results.json.
"""
from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import config as config_lib
from ddjax import data as data_lib
from ddjax import transforms as transforms_lib
from ddjax.augment.dsa import dsa_strategy_for
from ddjax import scoring
from ddjax.distill import idc as idc_lib
from ddjax.distill.bilp import AdaptivePruning
from ddjax.distill import step as step_lib
from ddjax.distill.dc import DC, dc_loops
from ddjax.distill.dm import DM
from ddjax.distill.frepo import FRePo, FRePoConfig
from ddjax.distill.kip import KIP
from ddjax.distill.rfad import RFAD
from ddjax.evaluate import evaluate_synthetic, get_protocol, kernel_krr_accuracy
from ddjax.kernels.architectures import kernel_network
from ddjax.models import build_model
from ddjax.runtime import export, files, loop, sharding

# Purposes folded into the root key, so every consumer of randomness has its own stream.
KEY_SYN_INIT, KEY_DISTILL_INIT, KEY_DISTILL, KEY_EVAL, KEY_SCORE = 0, 1, 2, 3, 4


def model_kwargs(m: ml_collections.ConfigDict) -> dict:
  """ddjax.models.build_model keywords of a model config block."""
  if m.arch == 'mlp':
    return {'widths': tuple(m.mlp_widths)}
  return dict(depth=m.depth, width=m.width, double_width=m.double_width, norm=m.norm,
              pooling=m.pooling)


def build(model_cfg: ml_collections.ConfigDict, num_classes: int):
  return build_model(model_cfg.arch, num_classes, **model_kwargs(model_cfg))


class Prepared:
  """The dataset after preprocessing (fit on train), as host float32 arrays."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    ds = data_lib.load_dataset(cfg.data.name, cfg.data.dir or None)
    data_lib.check_ipc(ds.y_train, cfg.distill.ipc * cfg.idc.factor ** 2, ds.num_classes,
                       ds.class_names)
    kind = cfg.data.preprocessing
    if kind == 'auto':
      kind = data_lib.default_preprocessing(cfg.data.name)
    self.dataset = ds
    self.pre = data_lib.fit_preprocessor(ds.x_train, kind=kind, zca_reg=cfg.data.zca_reg)
    self.x_train = np.asarray(data_lib.apply_preprocessor(self.pre, ds.x_train), np.float32)
    self.x_test = np.asarray(data_lib.apply_preprocessor(self.pre, ds.x_test), np.float32)
    self.y_train = ds.y_train
    self.y_test = ds.y_test
    self.num_classes = ds.num_classes
    self.targets_train = data_lib.centered_one_hot(ds.y_train, ds.num_classes)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.x_train.shape[1:])

  def subset(self, indices: np.ndarray) -> 'Prepared':
    """The same dataset with only the training examples at `indices` (test set unchanged)."""
    out = object.__new__(Prepared)
    out.__dict__.update(self.__dict__)
    out.x_train, out.y_train = self.x_train[indices], self.y_train[indices]
    out.targets_train = self.targets_train[indices]
    return out


def loss_scores(cfg: ml_collections.ConfigDict, prep: Prepared, workdir: str) -> dict:
  """Per-epoch scores of BiLP's criterion on prep's training set, computed once and cached.

  `bilp.score_trials` ConvNet-3 (width `bilp.score_width`) are trained `score_epochs` epochs each
  on the whole training set, recording every example's loss and EL2N after every epoch. Cached
  in `bilp.score_dir` (default workdir/scores/) under a name of the setting, so reruns, resumed
  runs and other runs sharing the directory do not train again.
  Returns {'loss': (T, E, N), 'el2n': (T, E, N), 'name': str}.
  """
  b = cfg.bilp
  name = scoring.cache_name(dataset=cfg.data.name, n=len(prep.y_train), seed=cfg.seed,
                            trials=b.score_trials, epochs=b.score_epochs, width=b.score_width,
                            preprocessing=prep.pre.kind)
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_SCORE)

  def compute():
    print(f'[bilp] scoring {len(prep.y_train)} examples: {b.score_trials} trials x '
          f'{b.score_epochs} epochs', flush=True)
    model = build_model('convnet', prep.num_classes, depth=3, width=b.score_width)
    out = scoring.score_trials(key, model, prep.x_train, prep.y_train, b.score_trials,
                               b.score_epochs, progress=lambda l: print('[bilp] ' + l, flush=True))
    return {'loss': out['loss'], 'el2n': out['el2n']}

  arrays = scoring.cached_scores(b.score_dir or os.path.join(workdir, 'scores'), name, compute)
  return {**arrays, 'name': name}


def preemptive_prune(cfg: ml_collections.ConfigDict, prep: Prepared,
                     workdir: str) -> tuple[Prepared, dict]:
  """BiLP's preemptive pruning (Sec. 4.1): drop bilp.prune_fraction of every class by the
  empirical-loss criterion before distilling (or, with bilp.prune_score='el2n', by PAD's EL2N
  difficulty, PAD appendix A.1's filter for DC and DM).

  Criterion (`loss_scores`): every example's loss (or EL2N) after every epoch of short training
  runs, averaged over trials, Gaussian-smoothed over epochs (sigma `score_sigma`) and read at
  `score_epoch` (`ddjax.scoring.bilp.empirical_loss_score`). The kept indices (into the
  training set, ascending) go to workdir/kept_indices.npz.
  """
  b = cfg.bilp
  arrays = loss_scores(cfg, prep, workdir)
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_SCORE)
  score = scoring.empirical_loss_score(arrays[b.prune_score], sigma=b.score_sigma,
                                       epoch=b.score_epoch)
  kept = scoring.prune_classwise(score, prep.y_train, alpha=b.prune_fraction,
                                 direction=b.prune_by, key=jax.random.fold_in(key, 1))
  files.write_npz(os.path.join(workdir, 'kept_indices.npz'), indices=kept, score=score)
  data_lib.check_ipc(prep.y_train[kept], cfg.distill.ipc * cfg.idc.factor ** 2,
                     prep.num_classes, prep.dataset.class_names)
  print(f'[bilp] preemptive pruning kept {len(kept)} of {len(prep.y_train)} examples '
        f'({b.prune_by}, fraction {b.prune_fraction})', flush=True)
  return prep.subset(kept), {'kept': int(len(kept)), 'of': int(len(prep.y_train)),
                             'fraction': b.prune_fraction, 'by': b.prune_by,
                             'score': b.prune_score,
                             'scores': arrays['name']}


def make_kernel_fn(cfg: ml_collections.ConfigDict):
  """kernel_fn(x1, x2, get) of cfg.kernel (infinite width), blocked by cfg.kernel.block_bytes."""
  k = cfg.kernel
  _, _, kernel_fn = kernel_network(k.arch, k.depth, k.W_std, k.b_std)
  block_bytes = int(k.block_bytes)
  return lambda x1, x2=None, get=None: kernel_fn(x1, x2, get, block_bytes=block_bytes)


def uses_platt(cfg: ml_collections.ConfigDict) -> bool:
  return cfg.method == 'rfad' and cfg.rfad.loss == 'platt'


def dsa_strategy(cfg: ml_collections.ConfigDict) -> str:
  """cfg.dsa.strategy with 'auto' resolved for the dataset ('' = no augmentation)."""
  if cfg.dsa.strategy == 'auto':
    return dsa_strategy_for(cfg.data.name)
  return cfg.dsa.strategy


def matching_loops(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """DC's (outer_loop, inner_loop): the config's, else DC's rule by IPC."""
  if cfg.dc.outer_loop and cfg.dc.inner_loop:
    return cfg.dc.outer_loop, cfg.dc.inner_loop
  outer, inner = dc_loops(cfg.distill.ipc)
  return cfg.dc.outer_loop or outer, cfg.dc.inner_loop or inner


def distill_steps(cfg: ml_collections.ConfigDict) -> int:
  """ddjax steps of the run: distill.steps, or DC iterations x outer_loop."""
  if cfg.method == 'dc' and cfg.dc.iterations:
    return cfg.dc.iterations * matching_loops(cfg)[0]
  return cfg.distill.steps


def make_distiller(cfg: ml_collections.ConfigDict, prep: Prepared):
  """The distiller of cfg.method, its loss transform and the synthetic-set optimizer."""
  if cfg.method == 'frepo':
    fcfg = FRePoConfig(num_models=cfg.frepo.num_models,
                       max_online_updates=cfg.frepo.max_online_updates,
                       online_lr=cfg.frepo.online_lr, reg=cfg.frepo.reg,
                       flip=config_lib.flip_enabled(cfg, prep.image_shape[-1]),
                       label_margin=cfg.frepo.label_margin)
    distiller = FRePo(build(cfg.model, prep.num_classes), fcfg, prep.image_shape)
  elif cfg.method == 'kip':
    distiller = KIP(make_kernel_fn(cfg), get=cfg.kernel.kind, reg=cfg.kip.reg)
  elif cfg.method == 'rfad':
    k = cfg.kernel
    features = kernel_network(k.arch, k.depth, k.W_std, k.b_std, width=cfg.rfad.width,
                              readout=False)
    distiller = RFAD(features, cfg.rfad.num_models, prep.image_shape, W_std=k.W_std,
                     b_std=k.b_std, reg=cfg.rfad.reg, loss=cfg.rfad.loss)
  elif cfg.method == 'dm':
    distiller = DM(build(cfg.model, prep.num_classes), prep.image_shape, prep.num_classes,
                   dsa_strategy=dsa_strategy(cfg))
  elif cfg.method == 'dc':
    outer, inner = matching_loops(cfg)
    distiller = DC(build(cfg.model, prep.num_classes), prep.image_shape, prep.num_classes,
                   outer_loop=outer, inner_loop=inner, lr_net=cfg.dc.lr_net,
                   inner_batch=cfg.dc.inner_batch, metric=cfg.dc.metric,
                   layer_fraction=cfg.dc.layer_fraction, dsa_strategy=dsa_strategy(cfg),
                   bn_size=cfg.dc.bn_size)
  else:
    raise ValueError(f'method={cfg.method!r} has no distiller; choose one of {config_lib.METHODS}.')
  if cfg.bilp.adaptive_beta > 0:
    b = cfg.bilp
    distiller = AdaptivePruning(distiller, cfg.distill.batch_size, beta=b.adaptive_beta,
                                mode=b.adaptive_mode, momentum=b.adaptive_momentum,
                                every=b.adaptive_every, ite_method=b.ite,
                                chunk_size=b.ite_chunk, sketch_dim=b.sketch_dim)
  if cfg.idc.factor > 1:
    distiller = idc_lib.MultiFormation(distiller, cfg.idc.factor)
  transform = transforms_lib.from_config(cfg.transform)
  optimizer = step_lib.make_syn_optimizer(
      cfg.distill.optimizer, cfg.distill.lr, cfg.distill.label_lr, distill_steps(cfg),
      learn_label=cfg.distill.learn_label, schedule=cfg.distill.schedule,
      extra_lrs={'log_temp': cfg.rfad.temp_lr} if uses_platt(cfg) else None,
      momentum=cfg.distill.momentum)
  return distiller, transform, optimizer


def initial_synthetic(cfg: ml_collections.ConfigDict, prep: Prepared) -> tuple[dict, np.ndarray]:
  """(syn, classes): class-balanced real (or noise) images and their initial labels.

  With IDC's multi-formation (idc.factor f > 1) each stored image is f^2 real images of its class,
  downsampled into an f x f grid (IDC's initialisation).
  """
  f = cfg.idc.factor
  syn = data_lib.init_synthetic(cfg.seed, prep.x_train, prep.y_train, cfg.distill.ipc * f * f,
                                prep.num_classes, init=cfg.distill.init,
                                label_init=cfg.distill.label_init)
  if f > 1:
    syn = {'x': np.asarray(idc_lib.encode(jnp.asarray(syn['x']), f)), 'y': syn['y'][::f * f]}
  classes = np.repeat(np.arange(prep.num_classes), cfg.distill.ipc).astype(np.int32)
  syn = {k: jnp.asarray(v) for k, v in syn.items()}
  if uses_platt(cfg):
    syn['log_temp'] = jnp.zeros((), jnp.float32)    # RFAD's Platt temperature, exp(0) = 1
  return syn, classes


def distill(cfg: ml_collections.ConfigDict, prep: Prepared, workdir: str, mesh=None):
  """Run (or resume) the distillation of `cfg`; returns (syn, classes, summary)."""
  root = jax.random.PRNGKey(cfg.seed)
  syn, classes = initial_synthetic(cfg, prep)
  if cfg.method == 'random_subset':
    return syn, classes, {'steps': 0, 'sec_per_step': 0.0, 'resumed_from': 0}
  distiller, transform, optimizer = make_distiller(cfg, prep)
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_divisible(cfg.distill.batch_size, mesh)
  state = step_lib.init_state(distiller, transform, optimizer, syn,
                              jax.random.fold_in(root, KEY_DISTILL_INIT))
  step_fn = step_lib.make_step(distiller, transform, optimizer, jnp.asarray(classes))
  hold = cfg.bilp.adaptive_every if cfg.bilp.adaptive_beta > 0 else 1
  sampler = loop.make_sampler(prep.x_train, prep.targets_train, cfg.distill.batch_size, cfg.seed,
                              balanced=cfg.distill.balanced_batch, hold=hold)
  state, summary = loop.run(
      step_fn, state, sampler, num_steps=distill_steps(cfg),
      key=jax.random.fold_in(root, KEY_DISTILL), workdir=workdir,
      checkpoint_every=cfg.checkpoint.every, keep=cfg.checkpoint.keep, log_every=cfg.log.every,
      mesh=mesh, name=cfg.method)
  return jax.device_get(state.syn), classes, summary


def evaluate(cfg: ml_collections.ConfigDict, prep: Prepared, syn: dict) -> dict:
  """Train cfg.eval.num_models fresh networks on `syn` under the configured protocol."""
  overrides = {k: cfg.eval[k] for k in ('steps', 'batch_size', 'lr') if cfg.eval[k]}
  if dsa_strategy(cfg):
    overrides['dsa_strategy'] = dsa_strategy(cfg)     # DSA / DM evaluate with DSA
  protocol = get_protocol(cfg.eval.protocol, int(syn['x'].shape[0]), **overrides)
  model = build(cfg.eval.model, prep.num_classes)
  print(f'[eval] protocol {protocol.name}: {protocol.steps} steps, batch {protocol.batch_size}, '
        f'{cfg.eval.num_models} models', flush=True)
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_EVAL)
  out = evaluate_synthetic(key, model, jnp.asarray(syn['x']), jnp.asarray(syn['y']),
                           prep.x_test, prep.y_test, protocol, num_models=cfg.eval.num_models,
                           krr=cfg.eval.krr, krr_reg=cfg.frepo.reg,
                           progress=lambda line: print('[eval] ' + line, flush=True))
  out['protocol'] = protocol.name
  out['steps'] = protocol.steps
  return out


def evaluate_kernel_krr(cfg: ml_collections.ConfigDict, prep: Prepared, syn: dict) -> dict:
  """KRR test accuracy with the infinite-width kernel of cfg.kernel (RFAD's reg for RFAD)."""
  n_test = cfg.eval.kernel_krr_test or len(prep.y_test)
  idx = np.random.default_rng(cfg.seed).permutation(len(prep.y_test))[:n_test]
  idx.sort()
  reg = cfg.rfad.reg if cfg.method == 'rfad' else cfg.kip.reg
  print(f'[eval] kernel KRR: {cfg.kernel.arch}-{cfg.kernel.depth} {cfg.kernel.kind}, '
        f'{n_test} test images', flush=True)
  t0 = time.perf_counter()
  acc = kernel_krr_accuracy(make_kernel_fn(cfg), syn['x'], syn['y'], prep.x_test[idx],
                            prep.y_test[idx], get=cfg.kernel.kind, reg=reg,
                            progress=lambda line: print('[eval] ' + line, flush=True))
  return {'acc': acc, 'kernel': f'{cfg.kernel.arch}-{cfg.kernel.depth}', 'get': cfg.kernel.kind,
          'reg': reg, 'test_images': int(n_test), 'seconds': time.perf_counter() - t0}


def run(cfg: ml_collections.ConfigDict, workdir: str, mesh=None,
        prep: Prepared | None = None) -> dict:
  """The whole job; returns the results dict also written to workdir/results.json."""
  t0 = time.perf_counter()
  config_lib.validate(cfg)
  prep = prep or Prepared(cfg)
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, 'config.json'), cfg.to_dict())
  print(f'[data] {prep.dataset!r}, preprocessing {prep.pre.kind}', flush=True)
  pruning = None
  if cfg.bilp.prune_fraction > 0:
    prep, pruning = preemptive_prune(cfg, prep, workdir)
  syn, classes, summary = distill(cfg, prep, workdir, mesh)
  if cfg.idc.factor > 1:   # the training set is the decoded one (what IDC evaluates)
    f = cfg.idc.factor
    syn = {**syn, 'x': np.asarray(idc_lib.decode(jnp.asarray(syn['x']), f)),
           'y': np.asarray(idc_lib.decode_labels(jnp.asarray(syn['y']), f))}
    classes = np.asarray(idc_lib.decoded_classes(jnp.asarray(classes), f))
  paths = export.export_distilled(workdir, syn, classes, prep.pre, prep.dataset.class_names)
  export.plot_curve(workdir, f'{run_tag(cfg)} {cfg.data.name} IPC {cfg.distill.ipc}')
  print(f'[export] {paths["npz"]}, {paths["png"]}', flush=True)
  results = {
      'method': cfg.method, 'dataset': cfg.data.name, 'ipc': cfg.distill.ipc, 'seed': cfg.seed,
      'transform': {'drop_easiest': cfg.transform.drop_easiest,
                    'isa_eps': cfg.transform.isa_eps},
      'distill': {'steps': summary['steps'], 'sec_per_step': summary['sec_per_step'],
                  'resumed_from': summary['resumed_from'], 'devices': jax.device_count()},
  }
  if pruning is not None:
    results['preemptive_pruning'] = pruning
  if cfg.bilp.adaptive_beta > 0:
    results['adaptive_pruning'] = {k: cfg.bilp[k] for k in ('adaptive_beta', 'adaptive_mode',
                                                            'adaptive_every', 'ite')}
  if cfg.eval.num_models > 0:
    ev = evaluate(cfg, prep, syn)
    results['eval'] = {k: ev[k] for k in ('accs', 'acc_mean', 'acc_std', 'protocol', 'steps')}
    if 'krr_acc' in ev:
      results['krr_eval'] = {'acc': ev['krr_acc'], 'accs': ev['krr_accs'],
                             'acc_std': ev['krr_acc_std']}
    print(f'[eval] test accuracy {100 * ev["acc_mean"]:.2f} +- {100 * ev["acc_std"]:.2f} %'
          + (f', KRR predictor {100 * ev["krr_acc"]:.2f} %' if 'krr_acc' in ev else ''),
          flush=True)
  if cfg.eval.kernel_krr:
    results['kernel_krr_eval'] = evaluate_kernel_krr(cfg, prep, syn)
    print(f'[eval] kernel KRR accuracy {100 * results["kernel_krr_eval"]["acc"]:.2f} %', flush=True)
  results['wall_seconds'] = time.perf_counter() - t0
  files.write_json(os.path.join(workdir, 'results.json'), results)
  print(f'[done] {os.path.join(workdir, "results.json")}', flush=True)
  return results


def run_tag(cfg: ml_collections.ConfigDict) -> str:
  """The method, with '_isa' when any loss transform is on ('frepo_isa', 'kip_isa', ...)."""
  if cfg.transform.drop_easiest > 0 or cfg.transform.isa_eps > 0:
    return cfg.method + '_isa'
  return cfg.method


def default_workdir(cfg: ml_collections.ConfigDict) -> str:
  return os.path.join('runs', f'{run_tag(cfg)}_{cfg.data.name}_ipc{cfg.distill.ipc}_seed{cfg.seed}')


def main(argv) -> None:
  from absl import flags, logging
  del argv
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
  cfg = flags.FLAGS.config
  try:  # everything that can be wrong with the config or the data fails here, before compute
    config_lib.validate(cfg)
    prep = Prepared(cfg)
  except (data_lib.DatasetNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  run(cfg, flags.FLAGS.workdir or default_workdir(cfg), prep=prep)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', 'configs/frepo_isa.py', 'Config file (and :preset).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', '', 'Output directory; default runs/<method>_<dataset>_ipc<k>.')

  def parse_flags(argv):
    try:
      return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
      message = str(e).replace('\\n', ' ').replace("\\'", "'")
      if len(message) > 1 and message[0] == message[-1] and message[0] in '\'"':
        message = message[1:-1]
      sys.exit(f'error: bad command line ({type(e).__name__}): {message}\n'
               'Override only keys that exist in the config (see ddjax/config.py), '
               'e.g. --config.distill.ipc=10.')

  app.run(main, flags_parser=parse_flags)
