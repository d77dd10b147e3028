"""The 'rded' protocol: RDED's validation/main.py, students trained on a teacher's soft labels.

Students learn from the soft labels that the observer (`ddjax.evaluate.observer`, cfg.observer)
computes online per batch (`ddjax.evaluate.soft_labels`): cutmix images, KL at temperature 20
('batchmean', no T^2 factor, as the official code), AdamW lr 1e-3, betas (0.9, 0.999), weight
decay 0.01 on weights only (arrays with ndim > 1; biases and norms 0), the official quarter-cosine
lr * 0.5 * (1 + cos(pi * epoch / (2 E))) stepped per epoch (ends at 0.5 lr), batch by IPC as
argument.py:233-258 (`rded_batch_size`), eval.soft_label_epochs epochs (official 300), random
horizontal flip, preceded for a set stitched from `plan.patch_factor` > 1 patches per side by
ShufflePatches and RandomResizedCrop(scale (1 / factor, 1)) (RDED validation/main.py:115-126;
`ddjax.augment.patches`; identities at factor 1). Its official code reads sets back from image
files, so 'auto' pixel clipping is on for it.

The protocol declares the `observer` block (the teacher; RDED's selection uses the same one).
"""
from __future__ import annotations

import math

import ml_collections

from ddjax import registry
from ddjax.evaluate.protocols.base import settings_of
from ddjax.evaluate.protocols.common import config_overrides, log
from ddjax.infra import distributed
from ddjax.infra.config_checks import choice_errors, int_errors
from ddjax.models import from_config

RDED_EPOCHS = 300                   # RDED argument.py:114 and its scripts


def rded_batch_size(num_prototypes: int, num_classes: int) -> int:
  """RDED's student batch (argument.py:233-258) by IPC = n // K: 10 / 50 / 100 for IPC 1 / 10 /
  50 (up to 1, 10, larger), doubled for >= 100 classes, at most n."""
  ipc = max(1, num_prototypes // max(1, num_classes))
  batch = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
  if num_classes >= 100:
    batch *= 2
  return max(1, min(batch, num_prototypes))


def settings(n: int, num_classes, overrides: dict) -> dict:
  epochs = overrides.get('epochs', RDED_EPOCHS)
  batch = overrides.get('batch_size', rded_batch_size(n, num_classes or 10))
  per_epoch = math.ceil(n / min(batch, n))
  return dict(optimizer='adam', lr=1e-3, momentum=0.0, weight_decay=0.01, loss='kl',
              schedule='quarter_cosine', warmup_steps=0, batch_size=batch,
              steps=epochs * per_epoch, epochs=epochs, steps_per_epoch=per_epoch,
              decay_weights_only=True, temperature=20.0, augment=True, translate_frac=0.0,
              cutout_frac=0.0, flip=True)


def observer_block() -> ml_collections.ConfigDict:
  """cfg.observer: the teacher of soft-label evaluation and of RDED's selection."""
  b = ml_collections.ConfigDict()
  b.dir = ''                 # '' = runs/observers/<dataset>_<arch>_seed<s>, shared by runs
  b.checkpoint = ''          # a user's own observer directory (record.json + checkpoint)
  b.arch = 'auto'            # auto (convnet <= 32 px, resnet18 above) | convnet | resnet18
  b.depth = 3                # ConvNet-3 with batch norm (RDED's conv3)
  b.width = 128
  b.epochs = 5               # CPU default (F-MNIST: 90.2 % test); accuracy in its record
  b.batch_size = 256
  b.lr = 1e-3                # Adam, cosine to 0
  b.flip = True
  b.translate = 2
  b.ensemble = ''            # comma-separated zoo names (ddjax.models.zoo): several observers
  return b                   # (G-VBSM / EDC), each trained with this budget; '' = the one above


def validate_observer(cfg: ml_collections.ConfigDict) -> list[str]:
  errors = []
  for key in ('depth', 'width', 'epochs', 'batch_size'):
    errors += int_errors(cfg, f'observer.{key}', 1)
  errors += choice_errors(cfg, 'observer.arch', ('auto', 'convnet', 'resnet18'))
  return errors + ensemble_errors(cfg)


def ensemble_names(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The zoo names of observer.ensemble ('' -> ())."""
  return tuple(n.strip() for n in str(cfg.observer.get('ensemble', '')).split(',') if n.strip())


def ensemble_errors(cfg: ml_collections.ConfigDict) -> list[str]:
  from ddjax.models.zoo import zoo_names
  if not isinstance(cfg.observer.get('ensemble', ''), str):
    return [f'observer.ensemble must be a string of comma-separated zoo names, got '
            f'{cfg.observer.ensemble!r}.']
  bad = [n for n in ensemble_names(cfg) if n not in zoo_names()]
  return [f'observer.ensemble names {bad} not in the zoo; choose from {", ".join(zoo_names())}.'
          ] if bad else []


OBSERVER_BLOCK = registry.ConfigBlock('observer', observer_block, validate=validate_observer)


def evaluate(cfg, data, syn: dict, plan, key) -> tuple[dict, str]:
  """eval.num_models students trained on the observer's online soft labels (the observer of
  cfg.observer, trained or reused by `ddjax.evaluate.observer.get_observer`). Returns (results
  entries 'eval' and 'observer', the summary line)."""
  from ddjax.evaluate import observer as observer_lib
  from ddjax.evaluate import soft_labels
  factor = int(plan.patch_factor)
  protocol = settings_of(plan.evaluator, int(syn['x'].shape[0]), data.num_classes,
                         **config_overrides(cfg, ('batch_size', 'lr')),
                         epochs=int(cfg.eval.soft_label_epochs), patch_factor=factor)
  obs = observer_lib.get_observer(cfg, data)
  reading = soft_labels.observer_agreement(obs, syn['x'], syn['y'], data.num_classes)
  log(f'the observer puts {100 * reading["agreement"]:.1f} % of the set in its labels\' '
      f'classes; images per class it reads: {reading["class_counts"]}')
  model = from_config(cfg.eval.model, data.num_classes)
  log(f'protocol rded: {protocol.epochs} epochs ({protocol.steps} steps), batch '
      f'{protocol.batch_size}, T {protocol.temperature}, patch factor {factor}, '
      f'{cfg.eval.num_models} students')
  ev = soft_labels.evaluate_soft_label(key, model, obs, syn['x'], data.x_test, data.y_test,
                                       protocol, cfg.eval.num_models, progress=log,
                                       members=distributed.own_members(cfg.eval.num_models),
                                       gather=distributed.gather_members)
  keys = ('accs', 'acc_mean', 'acc_std', 'best_last20_accs', 'best_last20_mean',
          'best_last20_std')
  entries = {'eval': {**{k: ev[k] for k in keys}, 'protocol': 'rded', 'steps': protocol.steps,
                      'epochs': protocol.epochs, 'patch_factor': factor},
             'observer': dict(obs.reference(), preprocessing=data.pre.kind,
                              set_agreement=reading['agreement'],
                              set_class_counts=reading['class_counts'])}
  line = (f'test accuracy {100 * ev["acc_mean"]:.2f} +- {100 * ev["acc_std"]:.2f} % (final); '
          f'best over the last 20 % of epochs (RDED\'s reported number) '
          f'{100 * ev["best_last20_mean"]:.2f} %')
  return entries, line


def train(cfg, data, syn: dict, plan, key, model, overrides: dict) -> dict:
  """One student on the observer's soft labels of the set's images (`Protocol.train`)."""
  from ddjax.evaluate import observer as observer_lib
  from ddjax.evaluate import soft_labels
  settings = {'epochs': int(cfg.eval.soft_label_epochs), 'patch_factor': int(plan.patch_factor),
              **config_overrides(cfg, ('batch_size', 'lr')), **overrides}
  protocol = settings_of(plan.evaluator, int(syn['x'].shape[0]), data.num_classes, **settings)
  obs = observer_lib.get_observer(cfg, data)
  variables, _ = soft_labels.train_student(key, model, obs.model, obs.variables, syn['x'],
                                           protocol)
  return variables


registry.register_protocol(registry.Protocol(
    name='rded', settings=settings, evaluate=evaluate, train=train, blocks=(OBSERVER_BLOCK,),
    reads_image_files=True,
    description="RDED's evaluation: students on an observer's online soft labels"))
