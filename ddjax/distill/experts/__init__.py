"""Expert trajectories for trajectory matching (MTT, DATM, PAD): training and the buffer on disk.

An expert is the run's network (`cfg.model`) trained from scratch on the real training set with
cross-entropy, SGD and DSA as MTT's `buffer.py`; its parameters are
snapshotted at initialisation and after every epoch: `expert.epochs + 1` snapshots per expert.
Options: FTD's GSAM experts (DATM / PAD) and PAD's FIEX data schedule. One idea per module:

  gsam       GSAM's gradient (`gsam_gradient`)
  step       one expert's step, how a chunk of experts steps together (modes), the experts' keys
  schedule   which examples an epoch trains on (all, or FIEX's subset)
  record     the buffer's record, the reuse rule and the default directory (a hash of the record),
             on `ddjax.infra.artifacts`
  buffer     the directory's files: reading snapshots one row at a time, writing them
  train      the training loop (`train_buffer`, `get_buffer`)

    buf = experts.get_buffer(cfg, data)          # trains once into runs/buffers/<dataset>_<hash>
    start = buf.unravel(buf.snapshot(expert=0, epoch=2))

This package registers no method (the registry imports it at start; heavy imports are local).
"""
from ddjax.distill.experts.buffer import (CARRY, INDEX, DamagedBuffer, ExpertBuffer, epoch_path,
                                          open_buffer)
from ddjax.distill.experts.gsam import (gsam_direction, gsam_gradient, gsam_perturbation,
                                        make_gsam_train_step)
from ddjax.distill.experts.record import (FORMAT, RECORD, ExpertMismatch, buffer_dir,
                                          dsa_strategy, model_of, model_record,
                                          record_differences, wanted_record)
from ddjax.distill.experts.step import (MODES, chunk_step, default_mode, epoch_plan, expert_keys,
                                        fiex_key, init_fn, make_expert_step, make_optimizer,
                                        shardings)
from ddjax.distill.experts.train import get_buffer, train_buffer

__all__ = [
    'CARRY', 'INDEX', 'DamagedBuffer', 'ExpertBuffer', 'epoch_path', 'open_buffer',
    'gsam_direction', 'gsam_gradient', 'gsam_perturbation', 'make_gsam_train_step', 'FORMAT',
    'RECORD', 'ExpertMismatch', 'buffer_dir', 'dsa_strategy', 'model_of', 'model_record',
    'record_differences', 'wanted_record', 'MODES', 'default_mode', 'expert_keys', 'fiex_key',
    'make_expert_step', 'make_optimizer', 'chunk_step', 'epoch_plan', 'init_fn', 'shardings',
    'get_buffer', 'train_buffer',
]
