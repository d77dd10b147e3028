r"""BiLP on DM: preemptive empirical-loss pruning (50% per class) and adaptive ITE pruning of each
class's real embeddings (DM's meta-loss is quadratic in the real mean, so the first-order ITE is
exact here). See configs/bilp_dc.py.

    python -m ddjax.main --config=configs/bilp_dm.py
"""
from ddjax.config import method_config
from ddjax.distill.bilp import paper_defaults


def get_config(preset: str = ''):
  return paper_defaults(method_config('dm', preset))
