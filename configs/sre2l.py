r"""SRe2L: squeeze (train the observer), recover (images from noise matching its batch-norm
statistics and its class), relabel (students on its soft labels, the 'rded' protocol).

    python -m ddjax.main --config=configs/sre2l.py --config.distill.ipc=10
    python -m ddjax.main --config=configs/sre2l.py:paper       # = :cifar10 (ResNet-18 observer)
    python -m ddjax.main --config=configs/sre2l.py:cifar100
    python -m ddjax.main --config=configs/sre2l.py:image_folder --config.data.dir=/data/imagenette2

Presets: '' / 'cpu' (Fashion-MNIST, the cached ConvNet-3 observer, 1000 recovery iterations),
'paper' / 'cifar10' / 'cifar100' (the official CIFAR scripts: ResNet-18 observer trained 200
epochs, Adam lr 0.25 betas (0.5, 0.9), r_bn 0.01, 1000 iterations, jitter 4; needs the CIFAR
files, data.dir), 'image_folder' (64 px class folders, ResNet-18 observer, crop + flip + jitter).
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('sre2l', preset)
