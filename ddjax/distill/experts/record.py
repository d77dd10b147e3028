"""An expert buffer's record: what determines its trajectories, the reuse rule and the default
directory (a hash of the record), on `ddjax.infra.artifacts`.

Reuse rule: a buffer whose record differs from the run's in any key is refused, naming the keys
(`ExpertMismatch`), except that a buffer with MORE experts than asked is used (the first
`num_experts` are read) and one with fewer finished epochs than asked is trained on (resumed) up
to the asked number; one with more epochs is used as it is. A buffer with fewer experts is
refused. The default directory runs/buffers/<dataset>_<hash> hashes the record without
`expert.epochs`, so runs asking for more epochs extend the same buffer and runs asking for
another number of experts get their own.
"""
from __future__ import annotations

import os
import zlib

import numpy as np

from ddjax.data.prepared import cache_identity
from ddjax.infra import artifacts

RECORD = artifacts.RECORD
FORMAT = 1
# expert keys that always shape the trajectories; the gsam_* and fiex_* keys join when switched on
EXPERT_KEYS = ('num_experts', 'epochs', 'lr', 'momentum', 'weight_decay', 'batch_size', 'dsa',
               'seed', 'gsam', 'fiex')
GSAM_KEYS = ('gsam_rho', 'gsam_alpha', 'gsam_adaptive')
FIEX_KEYS = ('fiex_init_ratio', 'fiex_add_end_epoch', 'fiex_remove_epochs', 'fiex_remove_ratios',
             'fiex_score_models', 'fiex_score_epochs')
# the reuse rule as `artifacts.differences` rules: more epochs are trained on, more experts serve
RULES = dict(may_differ=('expert.epochs',),
             usable={'expert.num_experts': lambda have, want: isinstance(have, int)
                     and have >= want})


class ExpertMismatch(artifacts.Mismatch):
  """An expert buffer was made for other data, another model or other expert settings."""


def dsa_strategy(cfg, dataset_name: str) -> str:
  """The experts' DSA strategy: MTT's color_crop_cutout_flip_scale_rotate without flip on digit
  datasets, '' with expert.dsa off."""
  from ddjax.augment.dsa import dsa_strategy_for
  return dsa_strategy_for(dataset_name) if cfg.expert.dsa else ''


def model_record(block) -> dict:
  """The model block as a buffer records it: its compute dtype only when not float32 (the
  buffers written before mixed precision existed record none, and stay usable)."""
  model = block.to_dict()
  if model.get('dtype') == 'float32':
    del model['dtype']
  return model


def wanted_record(cfg, data) -> dict:
  """The record a buffer of this run must have: data (name, train size, image shape,
  preprocessing, classes, a CRC of the labels), the model block, the DSA strategy and the expert
  keys that shape trajectories (the gsam_* and fiex_* keys only when switched on; never dir and
  parallel)."""
  e = cfg.expert
  keys = EXPERT_KEYS + (GSAM_KEYS if e.gsam else ()) + (FIEX_KEYS if e.fiex else ())
  labels = np.ascontiguousarray(np.asarray(data.y_train, np.int64))
  return artifacts.plain({
      'format': FORMAT, 'dataset': str(data.dataset.name), 'train_size': int(len(labels)),
      'image_shape': [int(d) for d in data.x_train.shape[1:]],
      'preprocessing': str(data.pre.kind), 'num_classes': int(data.num_classes),
      'labels_crc32': int(zlib.crc32(labels.tobytes())), 'model': model_record(cfg.model),
      'dsa_strategy': dsa_strategy(cfg, str(data.dataset.name)),
      'expert': {k: e[k] for k in keys}, **cache_identity(data)})


def record_differences(have: dict, want: dict) -> list[str]:
  """'key: have -> want' for every key of either record that differs, except a buffer's larger
  num_experts / epochs (usable); a smaller num_experts is a difference."""
  return artifacts.differences(have, want, **RULES)


def check_record(have: dict | None, want: dict, directory: str) -> None:
  """Refuse (ExpertMismatch naming the keys) a stored record `have` that the run cannot use."""
  artifacts.check(have, want, error=ExpertMismatch,
                  subject=f'the expert buffer in {directory} was made for another run',
                  fix='set expert.dir to another directory, or delete this one to train again',
                  **RULES)


def read_record(directory: str) -> dict | None:
  """The buffer's record.json, None when absent (artifacts.RecordError naming a damaged one)."""
  return artifacts.read_record(directory, fix='delete the buffer directory to train it again')


def buffer_dir(cfg, data) -> str:
  """expert.dir, or runs/buffers/<dataset>_<10 hex digits of the record without expert.epochs>
  (shared by every run started from the same directory)."""
  if cfg.expert.dir:
    return cfg.expert.dir
  want = wanted_record(cfg, data)
  want['expert'].pop('epochs')
  return os.path.join('runs', 'buffers', f'{want["dataset"]}_{artifacts.content_hash(want)}')


def model_of(record: dict):
  """The flax module of a buffer's record."""
  import ml_collections

  from ddjax.models import from_config
  return from_config(ml_collections.ConfigDict(record['model']), int(record['num_classes']))
