r"""RDED: observer-selected realistic patches (no optimisation), evaluated by students trained on
the observer's online soft labels (the 'rded' protocol). Fashion-MNIST by default; the observer
(ConvNet-3, batch norm, width 128) is trained once and cached (observer.dir).

    python -m ddjax.main --config=configs/rded.py --config.distill.ipc=10
    python -m ddjax.main --config=configs/rded.py:cifar10      # = :paper (Conv3 -> Conv3)
    python -m ddjax.main --config=configs/rded.py:cifar100
    python -m ddjax.main --config=configs/random_subset.py --config.eval.protocol=rded

Presets: '' / 'cpu' (Fashion-MNIST, observer 2 epochs), 'paper' / 'cifar10' and 'cifar100' (the
official scripts: CIFAR, standardised, 300 student epochs; needs the CIFAR files, data.dir).
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('rded', preset)
