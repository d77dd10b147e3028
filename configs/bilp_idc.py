r"""BiLP on IDC (multi-formation factor 2 on DSA gradient matching), the setting of BiLP Table 6:
preemptive empirical-loss pruning and adaptive ITE pruning on the decoded synthetic set.
See configs/bilp_dc.py.

    python -m ddjax.main --config=configs/bilp_idc.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bilp_dc  # noqa: E402  (sibling config files)
import idc  # noqa: E402


def get_config(preset: str = ''):
  return bilp_dc.bilp_defaults(idc.get_config(preset))
