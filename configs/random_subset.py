r"""Baseline: a random class-balanced real subset of IPC images per class (centred one-hot labels),
evaluated under exactly the protocol of the distilled sets.

    python -m ddjax.main --config=configs/random_subset.py --config.distill.ipc=10
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import frepo  # noqa: E402  (sibling config file)


def get_config(preset: str = ''):
  cfg = frepo.get_config(preset)
  cfg.method = 'random_subset'
  cfg.distill.steps = 0
  return cfg
