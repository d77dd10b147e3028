r"""Baseline: a random class-balanced real subset of IPC images per class (centred one-hot labels),
evaluated under exactly the protocol of the distilled sets.

    python -m ddjax.main --config=configs/random_subset.py --config.distill.ipc=10
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('random_subset', preset)
