r"""FRePo + ISA (crucial samples): drop the easiest 20% of each real batch by meta-loss, then the
Infinite Semantic Augmentation closed form with eps = 1 (ISA Algorithm 1; p and eps as in all of
ISA's experiments). The main job of the README.

    python -m ddjax.main --config=configs/frepo_isa.py              # CPU default, IPC 1
    python -m ddjax.main --config=configs/frepo_isa.py:paper        # FRePo's GPU-scale setting
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  cfg = method_config('frepo', preset)
  cfg.transform.drop_easiest = 0.2
  cfg.transform.isa_eps = 1.0
  return cfg
