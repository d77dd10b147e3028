r"""BiLP on DM: preemptive empirical-loss pruning (50% per class) and adaptive ITE pruning of each
class's real embeddings (DM's meta-loss is quadratic in the real mean, so the first-order ITE is
exact here). See configs/bilp_dc.py.

    python -m ddjax.main --config=configs/bilp_dm.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bilp_dc  # noqa: E402  (sibling config files)
import dm  # noqa: E402


def get_config(preset: str = ''):
  return bilp_dc.bilp_defaults(dm.get_config(preset))
