"""The preemptive-pruning stage of a run (BiLP Sec. 4.1; PAD's EL2N filter): score the training set
once (cached), drop a fraction of every class, record what was kept."""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from ddjax import config as config_lib
from ddjax import scoring
from ddjax.data import check_ipc
from ddjax.data.prepared import PreparedData, cache_identity
from ddjax.models import build_model
from ddjax.infra import files

KEY_SCORE = 4     # the purpose folded into the root key for scoring (ddjax.runtime.pipeline)


def _log(line: str) -> None:
  print('[bilp] ' + line, flush=True)


def loss_scores(cfg: ml_collections.ConfigDict, data: PreparedData, workdir: str) -> dict:
  """Per-epoch scores of BiLP's criterion on data's training set, computed once and cached.

  `bilp.score_trials` ConvNet-3 (width `bilp.score_width`) are trained `score_epochs` epochs each
  on the whole training set, recording every example's loss and EL2N after every epoch. Cached
  in `bilp.score_dir` (default workdir/scores/) under a name of the setting, so reruns, resumed
  runs and other runs sharing the directory do not train again.
  Returns {'loss': (T, E, N), 'el2n': (T, E, N), 'name': str}.
  """
  b = cfg.bilp
  name = scoring.cache_name(dataset=cfg.data.name, n=len(data.y_train), seed=cfg.seed,
                            **cache_identity(data),
                            trials=b.score_trials, epochs=b.score_epochs, width=b.score_width,
                            preprocessing=data.pre.kind)
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_SCORE)

  def compute():
    _log(f'scoring {len(data.y_train)} examples: {b.score_trials} trials x {b.score_epochs} '
         'epochs')
    model = build_model('convnet', data.num_classes, depth=3, width=b.score_width)
    out = scoring.score_trials(key, model, data.x_train, data.y_train, b.score_trials,
                               b.score_epochs, progress=_log)
    return {'loss': out['loss'], 'el2n': out['el2n']}

  arrays = scoring.cached_scores(b.score_dir or os.path.join(workdir, 'scores'), name, compute)
  return {**arrays, 'name': name}


def preemptive_prune(cfg: ml_collections.ConfigDict, data: PreparedData,
                     workdir: str) -> tuple[PreparedData, dict]:
  """Drop bilp.prune_fraction of every class by the empirical-loss criterion before distilling
  (or, with bilp.prune_score='el2n', by PAD's EL2N difficulty, PAD appendix A.1's filter).

  Criterion (`loss_scores`): every example's loss (or EL2N) after every epoch of short training
  runs, averaged over trials, Gaussian-smoothed over epochs (sigma `score_sigma`) and read at
  `score_epoch` (`ddjax.scoring.bilp.empirical_loss_score`). The kept indices (into the
  training set, ascending) go to workdir/kept_indices.npz. Returns (the kept data, a summary).
  """
  b = cfg.bilp
  arrays = loss_scores(cfg, data, workdir)
  key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), KEY_SCORE)
  score = scoring.empirical_loss_score(arrays[b.prune_score], sigma=b.score_sigma,
                                       epoch=b.score_epoch)
  kept = scoring.prune_classwise(score, data.y_train, alpha=b.prune_fraction,
                                 direction=b.prune_by, key=jax.random.fold_in(key, 1))
  files.write_npz(os.path.join(workdir, 'kept_indices.npz'), indices=kept, score=score)
  check_ipc(data.y_train[kept], config_lib.real_per_class(cfg), data.num_classes,
            data.class_names)
  _log(f'preemptive pruning kept {len(kept)} of {len(data.y_train)} examples ({b.prune_by}, '
       f'fraction {b.prune_fraction})')
  summary = {'kept': int(len(kept)), 'of': int(len(data.y_train)), 'fraction': b.prune_fraction,
             'by': b.prune_by, 'score': b.prune_score, 'scores': arrays['name']}
  return data.subset(np.asarray(kept)), summary
