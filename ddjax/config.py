"""The config schema of a ddjax run and its validation.

`base_config()` holds the blocks every run has (data, model, distill, kernel, dsa, idc, bilp,
transform, eval, checkpoint, log, distributed) plus the blocks every registered method and
protocol declares (`ddjax.registry.ConfigBlock`: cfg.frepo, cfg.trajectory and cfg.expert of the
trajectory family, cfg.observer of the 'rded' protocol, ...). `method_config(name, preset)` is the
base with the method's own defaults for a preset; config files under `configs/` start from it and
change values; they may not add keys. `validate(cfg)` runs before any compute and says what is
allowed for every bad value: the shared rules here, each block's and the method's own rules from
their registrations. The keys that other tooling relies on:
seed, data.name, data.dir, distill.ipc, distill.steps, eval.num_models, eval.steps,
checkpoint.every.
"""
from __future__ import annotations

import difflib
import math

import ml_collections

from ddjax import registry
from ddjax.infra.config_checks import choice_errors, fraction_errors, int_errors  # noqa: F401
from ddjax.infra.config_checks import get as _get
from ddjax.distill.base import PER_CLASS, accepts_row_transforms, has_ite_form

PRESETS = registry.PRESETS
# Shared numbers that may be negative (-1: the last epoch, auto, detected); methods and protocols
# declare their own with their blocks (`ddjax.registry.ConfigBlock.signed_keys`).
SHARED_SIGNED_KEYS = ('bilp.score_epoch', 'distill.label_momentum', 'distributed.process_id')


class ConfigError(ValueError):
  """A config that cannot run: the message lists every problem and what is allowed."""


def __getattr__(name: str):
  if name == 'METHODS':                # every registered method, the package's and the user's
    return registry.names()
  if name == 'SIGNED_KEYS':            # the shared ones and every registered block's
    return SHARED_SIGNED_KEYS + registry.signed_keys()
  raise AttributeError(name)


def model_config(**overrides) -> ml_collections.ConfigDict:
  """Architecture block (ddjax.models.build_model keywords plus `arch`)."""
  cfg = ml_collections.ConfigDict()
  cfg.arch = 'convnet'                # convnet | mlp | resnet18 | resnet18_ap | vgg11 (their own
                                      # widths; norm, bn_momentum, dtype apply) | lenet | alexnet
                                      # (dtype applies); ddjax.models, ddjax.models.zoo
  cfg.depth = 3
  cfg.width = 64
  cfg.double_width = False
  cfg.norm = 'none'                   # none | instance | batch | layer | group (4 groups)
  cfg.norm_placement = 'dc'           # dc: conv -> norm | frepo: FRePo's (ddjax.models.convnet)
  cfg.bn_momentum = 0.9               # flax's convention (PyTorch's 0.1); FRePo: 0.1
  cfg.pooling = 'avg'
  cfg.mlp_widths = (256, 256)
  cfg.dtype = 'float32'               # compute: float32 | bfloat16 (mixed precision: parameters,
                                      # synthetic set, optimizer states and losses stay float32)
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
  cfg.data.preprocessing = 'auto'     # auto | none | standard | zca | zca_mtt (auto: FRePo's)
  cfg.data.zca_reg = 0.1              # zca: relative to the mean eigenvalue; zca_mtt: absolute eps
  cfg.data.image_size = 0             # image_folder / tfds: square size to resize to (0: own size)
  cfg.data.channels = 0               # image_folder / tfds: 1 grey | 3 RGB (0: the images' own)
  cfg.data.train_split = 'train'      # image_folder: split folders (ImageNette: test_split=val);
  cfg.data.test_split = 'test'        # tfds: split names
  cfg.data.test_fraction = 0.0        # image_folder: > 0 splits class folders under data.dir
  cfg.data.tfds_name = ''             # data.name=tfds: the TFDS dataset (mnist, cifar10, ...)
  cfg.data.streaming = False          # npy / image_folder / tfds: read training batches from disk

  cfg.model = model_config()          # the network distillation trains (FRePo: 128-256-512, BN)

  cfg.distill = ml_collections.ConfigDict()
  cfg.distill.ipc = 1
  cfg.distill.steps = 3000            # FRePo: 500000 on a GPU; FRePo's CPU default: 0 (by IPC)
  cfg.distill.batch_size = 512        # real batch (FRePo: 1024)
  cfg.distill.batch_per_class = 0     # > 0: real batch = this x classes, class-balanced (DC: 256)
  cfg.distill.balanced_batch = False  # class-balanced real batches (KIP: True)
  cfg.distill.optimizer = 'adam'      # FRePo: lamb
  cfg.distill.momentum = 0.0          # SGD momentum (DC / DSA / DM / MTT: 0.5)
  cfg.distill.label_momentum = -1.0   # the labels' SGD momentum (DATM: 0.9); -1 = distill.momentum
  cfg.distill.adam_b1 = 0.9           # Adam's betas (SRe2L's recovery: 0.5, 0.9)
  cfg.distill.adam_b2 = 0.999
  cfg.distill.lr = 3e-3               # FRePo: 3e-4
  cfg.distill.label_lr = 3e-3         # FRePo: 3e-4
  cfg.distill.learn_label = True
  cfg.distill.schedule = 'cosine'
  cfg.distill.end_fraction = 0.0      # cosine ends at this fraction of the rates (FRePo: 0.1)
  cfg.distill.init = 'real'           # real | noise
  cfg.distill.label_init = 'centered_one_hot'

  cfg.kernel = ml_collections.ConfigDict()   # infinite-width kernel: KIP's, and eval.kernel_krr's
  cfg.kernel.arch = 'convnet'         # fc | conv | convnet | convnet_gap (ddjax.kernels.architectures)
  cfg.kernel.depth = 3
  cfg.kernel.W_std = 2 ** 0.5         # KIP, RFAD: sqrt(2)
  cfg.kernel.b_std = 0.1
  cfg.kernel.kind = 'ntk'              # ntk | nngp
  cfg.kernel.block_bytes = 2 ** 28    # largest band array of one block of kernel entries

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
  cfg.bilp.ite_chunk = 0              # real samples of a class scored at once in the ITE (memory
                                      # ~ chunk x IPC); 0: automatic (whole classes at IPC 1, 32 at
                                      # IPC 10; ddjax.scoring.ite.auto_chunk)

  cfg.transform = ml_collections.ConfigDict()
  cfg.transform.drop_easiest = 0.0    # ISA: 0.2
  cfg.transform.isa_eps = 0.0         # ISA: 1.0

  cfg.eval = ml_collections.ConfigDict()
  cfg.eval.protocol = 'auto'          # auto (the method's) | frepo | dc | rded | tm | ensemble
  cfg.eval.num_models = 5
  cfg.eval.vmap_models = 0            # networks trained together in one vmapped step (memory: that
                                      # many networks' activations at once); 0 = the backend's
                                      # default (CPU: 1, accelerators: all; ddjax.evaluate.train)
  cfg.eval.steps = 0                  # 0 -> the protocol's own rule (FRePo: by #prototypes)
  cfg.eval.batch_size = 0             # 0 -> the protocol's own rule
  cfg.eval.lr = 0.0                   # 0 -> the protocol's own
  cfg.eval.krr = True                 # also report FRePo's KRR-predictor accuracy
  cfg.eval.model = model_config()     # the network trained from scratch (FRePo: no norm)
  cfg.eval.kernel_krr = False         # also KRR with the infinite-width kernel of cfg.kernel
  cfg.eval.kernel_krr_test = 0        # test images for kernel KRR (0: all; it costs per pair)
  cfg.eval.soft_label_epochs = 300    # the 'rded' protocol's student epochs (official 300)
  cfg.eval.clip_pixels = 'auto'       # auto | on | off: evaluate the set clipped to the data's
                                      # pixel range [0, 1]; auto: on for protocols whose official
                                      # code reads sets back from image files (rded, ensemble),
                                      # off for those that train on the set as learned

  cfg.checkpoint = ml_collections.ConfigDict()
  cfg.checkpoint.every = 500
  cfg.checkpoint.keep = 2

  cfg.log = ml_collections.ConfigDict()
  cfg.log.every = 100
  cfg.log.tensorboard = False         # TensorBoard summaries in <workdir>/tensorboard
  cfg.log.image_every = 500           # ... with the distilled grid every N steps (0: at the end)

  cfg.distributed = ml_collections.ConfigDict()  # multi-process runs (ddjax.infra.distributed)
  cfg.distributed.initialize = 'auto'  # auto: when the keys below or srun / mpirun ask for it | on
                                       # (JAX's detection: TPU VMs, SLURM, Open MPI) | off
  cfg.distributed.coordinator_address = ''  # host:port of process 0; '' = detected
  cfg.distributed.num_processes = 0   # 0 = detected
  cfg.distributed.process_id = -1     # -1 = detected
  cfg.distributed.local_device_ids = ()   # this process's GPUs, e.g. (0,); () = detected / all
  cfg.distributed.cluster_detection = ''  # JAX's cluster_detection_method ('' = try each)
  cfg.distributed.cpu_collectives = 'gloo'  # CPU collectives between processes: gloo | mpi | none
  cfg.distributed.timeout = 300       # seconds to wait for every process to join

  for name, block in registry.config_blocks().items():   # each method's and protocol's blocks
    cfg[name] = block
  return cfg


def method_config(method: str, preset: str = '') -> ml_collections.ConfigDict:
  """The base config with `method`'s defaults for `preset` ('' = the CPU default, 'cpu' the same,
  'paper' the paper's GPU-scale setting). ConfigError names the presets and methods that exist."""
  try:
    spec = registry.get(method)
  except registry.RegistryError as e:
    raise ConfigError(str(e)) from None
  if preset not in spec.presets:
    shown = tuple(p for p in spec.presets if p)
    raise ConfigError(f'unknown preset {preset!r} for method {method!r}; presets: {shown} '
                      "(':paper' after the config path, or none for the CPU default).")
  cfg = base_config()
  cfg.method = method
  spec.configure(cfg, preset)
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


def _numbers(errors: list[str], cfg: ml_collections.ConfigDict) -> None:
  """Every number of the config is finite, and >= 0 unless its key is in SIGNED_KEYS: a NaN or
  negative rate, regulariser or size fails here instead of training until it diverges."""
  signed = SHARED_SIGNED_KEYS + registry.signed_keys()

  def walk(node, prefix):
    for k, v in node.items():
      name = prefix + k
      if isinstance(v, ml_collections.ConfigDict):
        walk(v, name + '.')
      elif isinstance(v, (int, float)) and not isinstance(v, bool):
        if not math.isfinite(v):
          errors.append(f'{name}={v!r} must be a finite number.')
        elif v < 0 and name not in signed:
          errors.append(f'{name}={v!r} must be >= 0.')
  walk(cfg, '')


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raise ConfigError listing every problem of `cfg` (unknown keys, bad values), before compute.

  Needs no data: the IPC against the smallest class is checked once the dataset is loaded
  (ddjax.data.check_ipc). The method's own rules come from its registration.
  """
  from ddjax.data import DATASETS           # local imports keep `import ddjax.config` light
  from ddjax.kernels.architectures import KERNEL_ARCHITECTURES
  from ddjax.models import (ARCHITECTURES, COMPUTE_DTYPES, GROUP_NORM_GROUPS, NORM_PLACEMENTS,
                            NORMS, POOLINGS)

  errors = []
  known = _keys(base_config())
  errors += [_unknown_key(key, known) for key in sorted(_keys(cfg) - known)]
  _numbers(errors, cfg)
  errors += choice_errors(cfg, 'method', registry.names())
  errors += choice_errors(cfg, 'data.name', tuple(DATASETS))
  errors += choice_errors(cfg, 'data.preprocessing', ('auto', 'none', 'standard', 'zca',
                                                          'zca_mtt'))
  errors += _data_source_errors(cfg)
  for block in ('model', 'eval.model'):
    errors += choice_errors(cfg, f'{block}.arch', ARCHITECTURES)
    errors += choice_errors(cfg, f'{block}.norm', NORMS)
    errors += choice_errors(cfg, f'{block}.pooling', POOLINGS)
    errors += choice_errors(cfg, f'{block}.norm_placement', NORM_PLACEMENTS)
    errors += choice_errors(cfg, f'{block}.dtype', COMPUTE_DTYPES)
    errors += fraction_errors(cfg, f'{block}.bn_momentum')
    errors += int_errors(cfg, f'{block}.depth', 1)
    errors += int_errors(cfg, f'{block}.width', 1)
    width = _get(cfg, f'{block}.width')
    if (_get(cfg, f'{block}.arch') == 'convnet' and _get(cfg, f'{block}.norm') == 'group'
        and isinstance(width, int) and width % GROUP_NORM_GROUPS):
      errors.append(f"{block}.width={width}: norm 'group' splits the channels into "
                    f'{GROUP_NORM_GROUPS} groups; set a width divisible by {GROUP_NORM_GROUPS}.')
  errors += int_errors(cfg, 'distill.ipc', 1, ' (images per class)')
  errors += int_errors(cfg, 'distill.steps', 0)
  errors += int_errors(cfg, 'distill.batch_size', 1)
  errors += int_errors(cfg, 'distill.batch_per_class', 0, ' (0: use distill.batch_size)')
  errors += choice_errors(cfg, 'distill.optimizer', ('lamb', 'adam', 'adabelief', 'sgd'))
  errors += choice_errors(cfg, 'distill.schedule', ('cosine', 'constant'))
  errors += fraction_errors(cfg, 'distill.end_fraction', closed=True)
  errors += fraction_errors(cfg, 'distill.adam_b1') + fraction_errors(cfg, 'distill.adam_b2')
  errors += choice_errors(cfg, 'distill.init', ('real', 'noise'))
  errors += choice_errors(cfg, 'distill.label_init', ('centered_one_hot', 'one_hot'))
  errors += choice_errors(cfg, 'kernel.arch', KERNEL_ARCHITECTURES)
  errors += choice_errors(cfg, 'kernel.kind', ('ntk', 'nngp'))
  errors += int_errors(cfg, 'kernel.depth', 1)
  errors += int_errors(cfg, 'idc.factor', 1, ' (1: off)')
  errors += fraction_errors(cfg, 'bilp.prune_fraction')
  errors += choice_errors(cfg, 'bilp.prune_by', ('drop_largest', 'drop_smallest', 'random'))
  errors += choice_errors(cfg, 'bilp.prune_score', ('loss', 'el2n'))
  for key in ('score_trials', 'score_epochs', 'score_width', 'adaptive_every', 'sketch_dim'):
    errors += int_errors(cfg, f'bilp.{key}', 1)
  errors += int_errors(cfg, 'bilp.ite_chunk', 0, ' (0: automatic)')
  errors += fraction_errors(cfg, 'bilp.adaptive_beta')
  errors += choice_errors(cfg, 'bilp.adaptive_mode', ('both', 'drop_large', 'drop_small'))
  errors += choice_errors(cfg, 'bilp.ite', ('first_order', 'exact', 'sketch'))
  momentum = _get(cfg, 'bilp.adaptive_momentum')
  if not (isinstance(momentum, (int, float)) and 0.0 < momentum <= 1.0):
    errors.append(f'bilp.adaptive_momentum must lie in (0, 1], got {momentum!r}.')
  errors += fraction_errors(cfg, 'transform.drop_easiest')
  errors += fraction_errors(cfg, 'transform.isa_eps', closed=True)
  errors += choice_errors(cfg, 'eval.protocol', ('auto',) + registry.protocol_names())
  errors += choice_errors(cfg, 'eval.clip_pixels', ('auto', 'on', 'off'))
  errors += int_errors(cfg, 'eval.num_models', 0)
  errors += int_errors(cfg, 'eval.vmap_models', 0, ' (0: the backend default; 1: one network at '
                       'a time)')
  errors += int_errors(cfg, 'eval.soft_label_epochs', 1)
  errors += int_errors(cfg, 'checkpoint.every', 1)
  errors += int_errors(cfg, 'log.every', 1)
  errors += int_errors(cfg, 'log.image_every', 0, ' (0: only at the end)')
  if not isinstance(_get(cfg, 'log.tensorboard'), bool):
    errors.append(f"log.tensorboard must be True or False, got {_get(cfg, 'log.tensorboard')!r}.")
  if isinstance(cfg.get('distributed'), ml_collections.ConfigDict):
    from ddjax.infra.distributed import config_errors
    errors += config_errors(cfg.distributed)
  for block in registry.blocks().values():    # every registered block's own rules
    if isinstance(cfg.get(block.name), ml_collections.ConfigDict):
      errors += block.validate(cfg)
  if cfg.get('method') in registry.names():
    errors += _capability_errors(cfg, registry.get(cfg.method))
    errors += registry.get(cfg.method).validate(cfg)
  raise_errors(errors)


def validate_data(cfg: ml_collections.ConfigDict, plan, data) -> None:
  """Raise ConfigError listing what the loaded data rules out in `cfg`, before anything is
  written to the workdir: fewer than 2 classes, a ConvNet (model, eval.model) deeper than the
  images allow or another network they are too small for, a real batch larger than the training
  set.
  plan: the run's `ddjax.registry.Plan` (a batch matters only when it takes steps); data: a
  `ddjax.data.PreparedData` (image_shape, num_classes, x_train, dataset.source).
  (The IPC against the smallest class: ddjax.data.check_ipc.)"""
  from ddjax.models import image_size_error
  from ddjax.models.convnet import depth_error
  errors = []
  if data.num_classes < 2:
    source = getattr(data.dataset, 'source', '') or _get(cfg, 'data.name')
    classes = f'{data.num_classes} class' + ('' if data.num_classes == 1 else 'es')
    errors.append(f'the dataset {source} has {classes}; distilling a classification set '
                  'needs at least 2 classes: check its labels (data.dir).')
  for block in ('model', 'eval.model'):     # eval.model: when evaluation networks are trained
    used = block == 'model' or (_get(cfg, 'eval.num_models') or 0) > 0
    if used and _get(cfg, f'{block}.arch') == 'convnet':
      errors.append(depth_error(_get(cfg, f'{block}.depth'), tuple(data.image_shape),
                                _get(cfg, f'{block}.pooling'), key=f'{block}.depth'))
    elif used:
      errors.append(image_size_error(_get(cfg, f'{block}.arch'), tuple(data.image_shape),
                                     key=f'{block}.arch'))
  count = int(data.x_train.shape[0])
  batch = real_batch_size(cfg, max(data.num_classes, 1))
  if batch > count and plan.steps > 0:
    if cfg.distill.batch_per_class:
      most = count // max(data.num_classes, 1)
      errors.append(f'distill.batch_per_class={cfg.distill.batch_per_class} x '
                    f'{data.num_classes} classes = {batch} exceeds the {count} training '
                    f'examples; set distill.batch_per_class <= {most}.')
    else:
      errors.append(f'distill.batch_size={batch} exceeds the {count} training examples; set '
                    f'distill.batch_size <= {count}.')
  raise_errors([e for e in errors if e])


def raise_errors(errors: list[str]) -> None:
  """ConfigError with every problem (one line for one problem, a list for several)."""
  if len(errors) == 1:
    raise ConfigError(f'invalid config: {errors[0]}')
  if errors:
    raise ConfigError('invalid config:\n  - ' + '\n  - '.join(errors))


def unknown_key_error(key: str, known: set[str] | None = None) -> str:
  """'unknown config key K. Did you mean C?' when the schema (`known`, default the base config's
  keys) lacks the dotted `key`; '' when it has it (or holds it as a block)."""
  known = _keys(base_config()) if known is None else known
  if key in known or any(k.startswith(key + '.') for k in known):
    return ''
  return _unknown_key(key, known)


def _unknown_key(key: str, known: set[str]) -> str:
  close = difflib.get_close_matches(key, sorted(known), n=1)
  hint = f' Did you mean {close[0]!r}?' if close else ''
  return f'unknown config key {key!r}.{hint}'


def _data_source_errors(cfg: ml_collections.ConfigDict) -> list[str]:
  """The options of image folders, TFDS and streaming (ddjax.data.sources)."""
  from ddjax.data import sources
  errors = int_errors(cfg, 'data.image_size', 0, " (0: the images' own size)")
  errors += choice_errors(cfg, 'data.channels', (0, 1, 3))
  errors += fraction_errors(cfg, 'data.test_fraction')
  name = _get(cfg, 'data.name')
  for key in ('train_split', 'test_split'):
    if not isinstance(_get(cfg, f'data.{key}'), str) or not _get(cfg, f'data.{key}'):
      errors.append(f'data.{key} must name a split (a folder of an image folder, a TFDS split).')
  if name == 'tfds' and not _get(cfg, 'data.tfds_name'):
    errors.append("data.name='tfds' needs data.tfds_name, the TFDS dataset (e.g. mnist).")
  streaming = _get(cfg, 'data.streaming')
  if not isinstance(streaming, bool):
    errors.append(f'data.streaming must be True or False, got {streaming!r}.')
  elif streaming:
    if name in sources.DATASETS and not sources.streams(name):
      able = tuple(k for k in sources.DATASETS if sources.streams(k))
      errors.append(f'data.streaming=True reads {able}, not {name!r}: convert it once with '
                    'ddjax.data.write_npy and use data.name=npy.')
    if (_get(cfg, 'bilp.prune_fraction') or 0) > 0:
      errors.append('bilp.prune_fraction scores every training example at once, which needs '
                    'the training set in memory: set data.streaming=False.')
  return errors


def _capability_errors(cfg: ml_collections.ConfigDict, spec: registry.Method) -> list[str]:
  """What the method's declared capabilities rule out (record kind, additive form)."""
  errors = []
  t, b, d = cfg.get('transform', {}), cfg.get('bilp', {}), cfg.get('distill', {})
  method = spec.distiller_class          # capabilities are class attributes
  if not accepts_row_transforms(method) and (t.get('drop_easiest', 0.0) > 0
                                             or t.get('isa_eps', 0.0) > 0):
    errors.append(f'transform.drop_easiest / isa_eps rank or pair real examples; '
                  f'method={spec.name!r} returns no per-example records ({method.record}): '
                  'set them to 0.')
  if method.record == PER_CLASS:
    if not d.get('batch_per_class') and not d.get('balanced_batch'):
      errors.append(f'method={spec.name!r} matches per class: set distill.batch_per_class '
                    '(real images per class) or distill.balanced_batch=True.')
  if b.get('adaptive_beta', 0.0) > 0 and not has_ite_form(method):
    errors.append(f'bilp.adaptive_beta > 0 needs per-sample meta-losses or an additive form '
                  f'of the meta-loss, which method={spec.name!r} does not declare; preemptive '
                  'pruning (bilp.prune_fraction) works for every method.')
  return errors


def real_batch_size(cfg: ml_collections.ConfigDict, num_classes: int) -> int:
  """The real batch: distill.batch_per_class x classes when set, else distill.batch_size."""
  per_class = cfg.distill.batch_per_class
  return per_class * num_classes if per_class else cfg.distill.batch_size


def balanced_batch(cfg: ml_collections.ConfigDict) -> bool:
  """Whether real batches are class-balanced (always with distill.batch_per_class)."""
  return bool(cfg.distill.batch_per_class) or bool(cfg.distill.balanced_batch)


def real_per_class(cfg: ml_collections.ConfigDict) -> int:
  """Real images per class the synthetic set is initialised from (IPC x IDC's factor^2)."""
  return cfg.distill.ipc * cfg.idc.factor ** 2
