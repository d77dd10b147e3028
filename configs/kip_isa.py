r"""KIP + ISA: drop the easiest 20% of each real batch by meta-loss, then the ISA closed form with
eps = 1. KIP's predictions K_TS w are linear in the implicit kernel features of the real sample,
which is what ISA's closed form needs (ISA Sec. 2.3).

    python -m ddjax.main --config=configs/kip_isa.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kip  # noqa: E402  (sibling config file)


def get_config(preset: str = ''):
  cfg = kip.get_config(preset)
  cfg.transform.drop_easiest = 0.2
  cfg.transform.isa_eps = 1.0
  return cfg
