r"""BiLP on DC (Xu et al., "Distill Gold from Massive Ores", Alg. 1): preemptive pruning of the real
set by the empirical-loss criterion (drop the 50% of every class with the largest smoothed early
training loss, as BiLP's large-scale runs), then DC gradient matching with adaptive ITE pruning of
every real batch (first-order ITE, running statistics with momentum 0.1, keep the central 70% of
N(mu, sigma^2), reselect every 10 iterations while the batch is held).

    python -m ddjax.main --config=configs/bilp_dc.py
    python -m ddjax.main --config=configs/bilp_dc.py --config.bilp.adaptive_mode=drop_large
"""
from ddjax.config import method_config
from ddjax.distill.bilp import paper_defaults


def get_config(preset: str = ''):
  return paper_defaults(method_config('dc', preset))
