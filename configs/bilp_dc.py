r"""BiLP on DC (Xu et al., "Distill Gold from Massive Ores", Alg. 1): preemptive pruning of the real
set by the empirical-loss criterion (drop the 50% of every class with the largest smoothed early
training loss, as BiLP's large-scale runs), then DC gradient matching with adaptive ITE pruning of
every real batch (first-order ITE, running statistics with momentum 0.1, keep the central 70% of
N(mu, sigma^2), reselect every 10 iterations while the batch is held).

    python -m ddjax.main --config=configs/bilp_dc.py
    python -m ddjax.main --config=configs/bilp_dc.py --config.bilp.adaptive_mode=drop_large
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dc  # noqa: E402  (sibling config file)


def bilp_defaults(cfg):
  """BiLP's two levels on any matching config."""
  cfg.bilp.prune_fraction = 0.5
  cfg.bilp.prune_by = 'drop_largest'
  cfg.bilp.adaptive_beta = 0.3
  cfg.bilp.adaptive_mode = 'both'
  cfg.bilp.adaptive_every = 10
  cfg.bilp.adaptive_momentum = 0.1
  return cfg


def get_config(preset: str = ''):
  return bilp_defaults(dc.get_config(preset))
