r"""CDA: SRe2L's squeeze / recover / relabel with an easy-to-hard curriculum on the recovery's
random crop (its scale's lower bound falls from 1 to 0.08, cosine, over the iterations).

    python -m ddjax.main --config=configs/cda.py --config.distill.ipc=10
    python -m ddjax.main --config=configs/cda.py:image_folder --config.data.dir=/data/tiny-imagenet

Presets: '' / 'cpu' (Fashion-MNIST, the cached ConvNet-3 observer, 1000 iterations), 'paper' /
'image_folder' (the official Tiny-ImageNet settings: 64 px, ResNet-18 observer, lr 0.4, r_bn 0.05,
4000 iterations).
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('cda', preset)
