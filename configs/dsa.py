r"""DSA: DC with differentiable siamese augmentation (Zhao & Bilen, ICML 2021), as the official
main.py with --method DSA: the same random augmentation (one of color / crop / cutout / flip / scale /
rotate per call, DSA's magnitudes) applied to the real and the synthetic images of a class before
their gradients are matched, and in the inner training; initialised from real images (the
repository's README command). Flip is left out on digit datasets.

    python -m ddjax.main --config=configs/dsa.py
    python -m ddjax.main --config=configs/dsa.py:paper --config.distill.ipc=10
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  cfg = method_config('dc', preset)
  cfg.dsa.strategy = 'auto'
  cfg.distill.init = 'real'
  return cfg
