r"""KIP + ISA: drop the easiest 20% of each real batch by meta-loss, then the ISA closed form with
eps = 1. KIP's predictions K_TS w are linear in the implicit kernel features of the real sample,
which is what ISA's closed form needs (ISA Sec. 2.3).

    python -m ddjax.main --config=configs/kip_isa.py
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  cfg = method_config('kip', preset)
  cfg.transform.drop_easiest = 0.2
  cfg.transform.isa_eps = 1.0
  return cfg
