r"""BiLP on IDC (multi-formation factor 2 on DSA gradient matching), the setting of BiLP Table 6:
preemptive empirical-loss pruning and adaptive ITE pruning on the decoded synthetic set.
See configs/bilp_dc.py.

    python -m ddjax.main --config=configs/bilp_idc.py
"""
from ddjax.config import method_config
from ddjax.distill.bilp import paper_defaults


def get_config(preset: str = ''):
  cfg = method_config('dc', preset)      # IDC on DSA, configs/idc.py
  cfg.dsa.strategy = 'auto'
  cfg.distill.init = 'real'
  cfg.idc.factor = 2
  return paper_defaults(cfg)
