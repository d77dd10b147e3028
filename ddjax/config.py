"""The config schema of `ddjax.main` and its validation.

Every config file under `configs/` starts from `base_config()` and changes values; it may not add
keys. `validate(cfg)` runs before any compute and says what is allowed for every bad value. The keys
that other tooling relies on: seed, data.name, data.dir, distill.ipc, distill.steps, eval.num_models,
eval.steps, checkpoint.every.
"""
from __future__ import annotations

import difflib

import ml_collections

METHODS = ('frepo', 'kip', 'rfad', 'dc', 'dm', 'random_subset')
MATCHING_METHODS = ('dc', 'dm')
ADAPTIVE_PRUNING_METHODS = MATCHING_METHODS + ('frepo', 'kip', 'rfad')   # BiLP's ITE pruning
PRESETS = ('', 'cpu', 'paper')


def model_config(**overrides) -> ml_collections.ConfigDict:
  """Architecture block (ddjax.models.build_model keywords plus `arch`)."""
  cfg = ml_collections.ConfigDict()
  cfg.arch = 'convnet'
  cfg.depth = 3
  cfg.width = 64
  cfg.double_width = False
  cfg.norm = 'none'
  cfg.pooling = 'avg'
  cfg.mlp_widths = (256, 256)
  cfg.update(overrides)
  return cfg


def base_config() -> ml_collections.ConfigDict:
  """Every key a ddjax.main config may have, with the CPU defaults (FRePo's value in comments)."""
  cfg = ml_collections.ConfigDict()
  cfg.method = 'frepo'
  cfg.seed = 0

  cfg.data = ml_collections.ConfigDict()
  cfg.data.name = 'fashion_mnist'
  cfg.data.dir = ''                   # '' -> $DDJAX_DATA, then the Debian path
  cfg.data.preprocessing = 'auto'     # auto | none | standard | zca (auto: FRePo's per dataset)
  cfg.data.zca_reg = 0.1

  cfg.model = model_config()          # the network distillation trains (FRePo: 128-256-512, BN)

  cfg.distill = ml_collections.ConfigDict()
  cfg.distill.ipc = 1
  cfg.distill.steps = 3000            # FRePo: 500000 on a GPU
  cfg.distill.batch_size = 512        # real batch (FRePo: 1024)
  cfg.distill.balanced_batch = False  # class-balanced real batches (KIP: True)
  cfg.distill.optimizer = 'adam'      # FRePo: lamb
  cfg.distill.momentum = 0.0          # SGD momentum (DC / DSA / DM: 0.5)
  cfg.distill.lr = 3e-3               # FRePo: 3e-4
  cfg.distill.label_lr = 3e-3         # FRePo: 3e-4
  cfg.distill.learn_label = True
  cfg.distill.schedule = 'cosine'
  cfg.distill.init = 'real'           # real | noise
  cfg.distill.label_init = 'centered_one_hot'

  cfg.frepo = ml_collections.ConfigDict()
  cfg.frepo.num_models = 5            # FRePo: 10
  cfg.frepo.max_online_updates = 100
  cfg.frepo.online_lr = 1e-3          # FRePo: 3e-4 (Adam)
  cfg.frepo.reg = 1e-6                # lambda = reg * trace(K_SS) / n
  cfg.frepo.flip = 'auto'             # auto: on except for digit-like 1-channel datasets
  cfg.frepo.label_margin = 0.0        # > 0 adds the label-margin term

  cfg.kernel = ml_collections.ConfigDict()   # infinite-width kernel: KIP's, and eval.kernel_krr's
  cfg.kernel.arch = 'convnet'         # fc | conv | convnet | convnet_gap (ddjax.kernels.architectures)
  cfg.kernel.depth = 3
  cfg.kernel.W_std = 2 ** 0.5         # KIP, RFAD: sqrt(2)
  cfg.kernel.b_std = 0.1
  cfg.kernel.kind = 'ntk'              # ntk | nngp
  cfg.kernel.block_bytes = 2 ** 28    # largest band array of one block of kernel entries

  cfg.kip = ml_collections.ConfigDict()
  cfg.kip.reg = 1e-6                  # lambda = reg * trace(K_SS) / n

  cfg.rfad = ml_collections.ConfigDict()   # random features of kernel.arch / depth / W_std / b_std
  cfg.rfad.num_models = 8             # M networks drawn per step
  cfg.rfad.width = 256                # channels of each random network (RFAD: 256)
  cfg.rfad.reg = 5e-3                 # RFAD's `jit`: lambda = reg * trace(K_SS) / n
  cfg.rfad.loss = 'platt'             # platt | mse
  cfg.rfad.temp_lr = 1e-2             # learning rate of the Platt temperature

  cfg.dc = ml_collections.ConfigDict()     # gradient matching (DC; DSA = DC + dsa.strategy)
  cfg.dc.iterations = 0               # > 0: DC iterations; distill.steps = iterations x outer_loop
  cfg.dc.outer_loop = 0               # 0 -> DC's rule by IPC (1: 1, 10: 10, 50: 50)
  cfg.dc.inner_loop = 0               # 0 -> DC's rule by IPC (1: 1, 10: 50, 50: 10)
  cfg.dc.lr_net = 0.01                # SGD of the network on the synthetic set
  cfg.dc.inner_batch = 256            # DC's batch_train
  cfg.dc.metric = 'ours'              # ours (layer-wise) | mse | cos
  cfg.dc.layer_fraction = 0.0         # PAD: leave the shallowest fraction of parameters unmatched
  cfg.dc.bn_size = 16                 # real images per class setting batch-norm statistics

  cfg.dsa = ml_collections.ConfigDict()    # differentiable siamese augmentation (DSA, DM)
  cfg.dsa.strategy = ''               # '' = off; DSA / DM: 'auto' = color_crop_cutout_flip_scale_rotate
                                      # without flip on digit datasets

  cfg.idc = ml_collections.ConfigDict()    # IDC multi-formation parameterization
  cfg.idc.factor = 1                  # 1 = off; IDC: 2 (each stored image holds 4 images)

  cfg.bilp = ml_collections.ConfigDict()   # BiLP data pruning (ddjax.scoring, ddjax.distill.bilp)
  cfg.bilp.prune_fraction = 0.0       # preemptive: drop this fraction of every class before distilling
  cfg.bilp.prune_by = 'drop_largest'  # drop_largest (BiLP: large loss) | drop_smallest | random
  cfg.bilp.prune_score = 'loss'       # loss (BiLP) | el2n (PAD's difficulty: drop_largest drops the
                                      # hardest, for small IPC; drop_smallest the easiest, large IPC)
  cfg.bilp.score_trials = 2           # short training runs of the loss criterion (BiLP: 50)
  cfg.bilp.score_epochs = 5           # epochs per run (early epochs suffice, BiLP Fig. 3)
  cfg.bilp.score_epoch = -1           # epoch the smoothed loss curve is read at (-1: last)
  cfg.bilp.score_sigma = 3.0          # Gaussian smoothing of the curve over epochs
  cfg.bilp.score_width = 32           # ConvNet-3 width of the scoring networks
  cfg.bilp.score_dir = ''             # score cache; '' = <workdir>/scores (share one across runs)
  cfg.bilp.adaptive_beta = 0.0        # adaptive ITE pruning rate (BiLP: 0.3); 0 = off
  cfg.bilp.adaptive_mode = 'both'     # both | drop_large | drop_small (BiLP Table 5)
  cfg.bilp.adaptive_every = 10        # lazy reselection period (the real batch is held as long)
  cfg.bilp.adaptive_momentum = 0.1    # running ITE statistics (Eq. 8)
  cfg.bilp.ite = 'first_order'        # first_order (Taylor, Eq. 7) | exact (leave-one-out) | sketch
  cfg.bilp.sketch_dim = 64            # random projections of the 'sketch' ITE scores
  cfg.bilp.ite_chunk = 32             # real samples differentiated at once in the ITE (memory)

  cfg.transform = ml_collections.ConfigDict()
  cfg.transform.drop_easiest = 0.0    # ISA: 0.2
  cfg.transform.isa_eps = 0.0         # ISA: 1.0

  cfg.eval = ml_collections.ConfigDict()
  cfg.eval.protocol = 'frepo'         # frepo | dc
  cfg.eval.num_models = 5
  cfg.eval.steps = 0                  # 0 -> the protocol's own rule (FRePo: by #prototypes)
  cfg.eval.batch_size = 0             # 0 -> the protocol's own rule
  cfg.eval.lr = 0.0                   # 0 -> the protocol's own
  cfg.eval.krr = True                 # also report FRePo's KRR-predictor accuracy
  cfg.eval.model = model_config()     # the network trained from scratch (FRePo: no norm)
  cfg.eval.kernel_krr = False         # also KRR with the infinite-width kernel of cfg.kernel
  cfg.eval.kernel_krr_test = 0        # test images for kernel KRR (0: all; it costs per pair)

  cfg.checkpoint = ml_collections.ConfigDict()
  cfg.checkpoint.every = 500
  cfg.checkpoint.keep = 2

  cfg.log = ml_collections.ConfigDict()
  cfg.log.every = 100
  return cfg


def _keys(cfg: ml_collections.ConfigDict, prefix: str = '') -> set[str]:
  out = set()
  for k, v in cfg.items():
    name = prefix + k
    if isinstance(v, ml_collections.ConfigDict):
      out |= _keys(v, name + '.')
    else:
      out.add(name)
  return out


def _choice(errors: list[str], key: str, value, allowed) -> None:
  if value not in allowed:
    errors.append(f'{key}={value!r} is not one of {tuple(allowed)}.')


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raise ValueError listing every problem of `cfg` (unknown keys, bad values), before compute.

  Needs no data: the IPC against the smallest class is checked once the dataset is loaded
  (ddjax.data.check_ipc).
  """
  from ddjax.data import DATASETS           # local imports keep `import ddjax.config` light
  from ddjax.evaluate import PROTOCOLS
  from ddjax.models import ARCHITECTURES, NORMS, POOLINGS

  errors = []
  known = _keys(base_config())
  for key in sorted(_keys(cfg) - known):
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    errors.append(f'unknown config key {key!r}.{hint}')
  _choice(errors, 'method', cfg.get('method'), METHODS)
  data = cfg.get('data', {})
  _choice(errors, 'data.name', data.get('name'), tuple(DATASETS))
  _choice(errors, 'data.preprocessing', data.get('preprocessing'),
          ('auto', 'none', 'standard', 'zca'))
  for block in ('model', 'eval.model'):
    m = cfg.get('model', {}) if block == 'model' else cfg.get('eval', {}).get('model', {})
    _choice(errors, f'{block}.arch', m.get('arch'), ARCHITECTURES)
    _choice(errors, f'{block}.norm', m.get('norm'), NORMS)
    _choice(errors, f'{block}.pooling', m.get('pooling'), POOLINGS)
    if not isinstance(m.get('depth'), int) or m.get('depth') < 1:
      errors.append(f'{block}.depth must be an integer >= 1, got {m.get("depth")!r}.')
    if not isinstance(m.get('width'), int) or m.get('width') < 1:
      errors.append(f'{block}.width must be an integer >= 1, got {m.get("width")!r}.')
  d = cfg.get('distill', {})
  if not isinstance(d.get('ipc'), int) or d.get('ipc') < 1:
    errors.append(f'distill.ipc must be an integer >= 1 (images per class), got {d.get("ipc")!r}.')
  if not isinstance(d.get('steps'), int) or d.get('steps') < 0:
    errors.append(f'distill.steps must be an integer >= 0, got {d.get("steps")!r}.')
  if not isinstance(d.get('batch_size'), int) or d.get('batch_size') < 1:
    errors.append(f'distill.batch_size must be an integer >= 1, got {d.get("batch_size")!r}.')
  _choice(errors, 'distill.optimizer', d.get('optimizer'), ('lamb', 'adam', 'adabelief', 'sgd'))
  _choice(errors, 'distill.schedule', d.get('schedule'), ('cosine', 'constant'))
  _choice(errors, 'distill.init', d.get('init'), ('real', 'noise'))
  _choice(errors, 'distill.label_init', d.get('label_init'), ('centered_one_hot', 'one_hot'))
  f = cfg.get('frepo', {})
  if not isinstance(f.get('num_models'), int) or f.get('num_models') < 1:
    errors.append(f'frepo.num_models must be an integer >= 1, got {f.get("num_models")!r}.')
  if not isinstance(f.get('max_online_updates'), int) or f.get('max_online_updates') < 1:
    errors.append('frepo.max_online_updates must be an integer >= 1, '
                  f'got {f.get("max_online_updates")!r}.')
  _choice(errors, 'frepo.flip', f.get('flip'), ('auto', True, False))
  from ddjax.kernels.architectures import KERNEL_ARCHITECTURES
  kn = cfg.get('kernel', {})
  _choice(errors, 'kernel.arch', kn.get('arch'), KERNEL_ARCHITECTURES)
  _choice(errors, 'kernel.kind', kn.get('kind'), ('ntk', 'nngp'))
  if not isinstance(kn.get('depth'), int) or kn.get('depth') < 1:
    errors.append(f'kernel.depth must be an integer >= 1, got {kn.get("depth")!r}.')
  r = cfg.get('rfad', {})
  _choice(errors, 'rfad.loss', r.get('loss'), ('platt', 'mse'))
  for key in ('num_models', 'width'):
    if not isinstance(r.get(key), int) or r.get(key) < 1:
      errors.append(f'rfad.{key} must be an integer >= 1, got {r.get(key)!r}.')
  if (cfg.get('method') == 'rfad' and r.get('loss') == 'platt'
      and cfg.get('transform', {}).get('isa_eps', 0.0) > 0):
    errors.append("transform.isa_eps > 0 with rfad.loss='platt': ISA's closed form integrates "
                  "the squared loss; set rfad.loss='mse' (configs/rfad_isa.py does).")
  dcc = cfg.get('dc', {})
  _choice(errors, 'dc.metric', dcc.get('metric'), ('ours', 'mse', 'cos'))
  for key in ('iterations', 'outer_loop', 'inner_loop'):
    if not isinstance(dcc.get(key), int) or dcc.get(key) < 0:
      errors.append(f'dc.{key} must be an integer >= 0 (0: DC\'s rule by IPC), got {dcc.get(key)!r}.')
  if not 0.0 <= dcc.get('layer_fraction', 0.0) < 1.0:
    errors.append(f'dc.layer_fraction must lie in [0, 1), got {dcc.get("layer_fraction")!r}.')
  ic = cfg.get('idc', {})
  if not isinstance(ic.get('factor'), int) or ic.get('factor') < 1:
    errors.append(f'idc.factor must be an integer >= 1 (1: off), got {ic.get("factor")!r}.')
  if cfg.get('method') in MATCHING_METHODS:
    tr = cfg.get('transform', {})
    if tr.get('drop_easiest', 0.0) > 0 or tr.get('isa_eps', 0.0) > 0:
      errors.append(f"transform.drop_easiest / isa_eps apply to KRR-family predictions; "
                    f"method={cfg.get('method')!r} matches gradients or embeddings: set them to 0.")
    if not d.get('balanced_batch'):
      errors.append(f"method={cfg.get('method')!r} matches per class: set "
                    "distill.balanced_batch=True (batch_size = classes x real images per class).")
    if cfg.get('method') == 'dm' and cfg.get('model', {}).get('norm') == 'batch':
      errors.append("method='dm' with model.norm='batch': DM embeds each class with a fresh "
                    "network; use 'instance' (DM's default) or 'none'.")
  b = cfg.get('bilp', {})
  if not 0.0 <= b.get('prune_fraction', 0.0) < 1.0:
    errors.append(f'bilp.prune_fraction must lie in [0, 1), got {b.get("prune_fraction")!r}.')
  _choice(errors, 'bilp.prune_by', b.get('prune_by'), ('drop_largest', 'drop_smallest', 'random'))
  _choice(errors, 'bilp.prune_score', b.get('prune_score'), ('loss', 'el2n'))
  for key in ('score_trials', 'score_epochs', 'score_width', 'adaptive_every', 'sketch_dim',
              'ite_chunk'):
    if not isinstance(b.get(key), int) or b.get(key) < 1:
      errors.append(f'bilp.{key} must be an integer >= 1, got {b.get(key)!r}.')
  if not 0.0 <= b.get('adaptive_beta', 0.0) < 1.0:
    errors.append(f'bilp.adaptive_beta must lie in [0, 1), got {b.get("adaptive_beta")!r}.')
  _choice(errors, 'bilp.adaptive_mode', b.get('adaptive_mode'), ('both', 'drop_large', 'drop_small'))
  _choice(errors, 'bilp.ite', b.get('ite'), ('first_order', 'exact', 'sketch'))
  if not 0.0 < b.get('adaptive_momentum', 0.1) <= 1.0:
    errors.append(f'bilp.adaptive_momentum must lie in (0, 1], got {b.get("adaptive_momentum")!r}.')
  if b.get('adaptive_beta', 0.0) > 0 and cfg.get('method') not in ADAPTIVE_PRUNING_METHODS:
    errors.append(f"bilp.adaptive_beta > 0 needs an additive-separable matching meta-loss or "
                  f"per-sample KRR meta-losses (method in {ADAPTIVE_PRUNING_METHODS}), got "
                  f"method={cfg.get('method')!r}; preemptive pruning (bilp.prune_fraction) "
                  "works for every method.")
  t = cfg.get('transform', {})
  if not 0.0 <= t.get('drop_easiest', 0.0) < 1.0:
    errors.append(f'transform.drop_easiest must lie in [0, 1), got {t.get("drop_easiest")!r}.')
  if not 0.0 <= t.get('isa_eps', 0.0) <= 1.0:
    errors.append(f'transform.isa_eps must lie in [0, 1], got {t.get("isa_eps")!r}.')
  e = cfg.get('eval', {})
  _choice(errors, 'eval.protocol', e.get('protocol'), tuple(PROTOCOLS))
  if not isinstance(e.get('num_models'), int) or e.get('num_models') < 0:
    errors.append(f'eval.num_models must be an integer >= 0, got {e.get("num_models")!r}.')
  c = cfg.get('checkpoint', {})
  if not isinstance(c.get('every'), int) or c.get('every') < 1:
    errors.append(f'checkpoint.every must be an integer >= 1, got {c.get("every")!r}.')
  if errors:
    raise ValueError('invalid config:\n  - ' + '\n  - '.join(errors))


def flip_enabled(cfg: ml_collections.ConfigDict, channels: int) -> bool:
  """FRePo mirrors prototypes except on 1-channel digit/clothing data (MNIST, Fashion-MNIST)."""
  if cfg.frepo.flip == 'auto':
    return channels != 1
  return bool(cfg.frepo.flip)
