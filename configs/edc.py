r"""EDC's recovery: G-VBSM's with real-image initialisation, soft category-aware statistic matching
(edc.alpha), optional flatness regularisation (edc.flatness), RandomResizedCrop + flip and no
roll, no DD loss, no dropped Conv hooks; several observers (observer.ensemble), round-robin.

    python -m ddjax.main --config=configs/edc.py --config.distill.ipc=10
    python -m ddjax.main --config=configs/edc.py:paper --config.data.dir=/data/cifar10
    python -m ddjax.main --config=configs/edc.py --config.edc.flatness=True --config.edc.flatness_weight=0.25

Presets: '' / 'cpu' (Fashion-MNIST; observers ConvNet-3-BN, LeNet, AlexNet; batch = the whole set;
200 iterations), 'paper' (the shipped CIFAR-10 script: IPC 1, batch 10, lr 0.05, 75 iterations,
r_loss 0.01, momentum 0.8, drop 0, real initialisation; the zoo's nearest eight observers),
'image_folder' (64 px class folders, ResNet-18-BN among the observers).
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('edc', preset)
