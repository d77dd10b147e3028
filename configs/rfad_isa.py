r"""RFAD + ISA: drop the easiest 20% of each real batch, then ISA's closed form with eps = 1.

ISA integrates the squared loss over interpolations, so this config uses RFAD's MSE loss (the
Platt loss has no closed form; `validate` rejects ISA with it). Everything else is configs/rfad.py.

    python -m ddjax.main --config=configs/rfad_isa.py
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  cfg = method_config('rfad', preset)
  cfg.rfad.loss = 'mse'
  cfg.transform.drop_easiest = 0.2
  cfg.transform.isa_eps = 1.0
  return cfg
