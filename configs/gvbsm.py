r"""G-VBSM: SRe2L's squeeze / recover / relabel against several observers (observer.ensemble,
one per iteration, round-robin), matching their BatchNorm, Conv channel and 4x4-patch statistics
through EMA straight-through statistics, plus the eigenvalue DD loss.

    python -m ddjax.main --config=configs/gvbsm.py --config.distill.ipc=10
    python -m ddjax.main --config=configs/gvbsm.py:paper --config.data.dir=/data/cifar10
    python -m ddjax.main --config=configs/gvbsm.py:image_folder --config.data.dir=/data/imagenette2

Presets: '' / 'cpu' (Fashion-MNIST; observers ConvNet-3-BN, LeNet, AlexNet trained 5 epochs and
cached beside the run's observer; real statistics from 10 000 training images; 500 iterations;
a roll of up to 4 px, not the official 32, which wraps a 28 px image all the way round),
'paper' (the official CIFAR-10 script: batch 100, lr 0.05, IPC 10, 4000 iterations, r_loss 0.01,
nuc_norm 1, momentum 0.8, drop 0.4, RandomCrop(pad 4) + flip + roll 32; the zoo's nearest five
observers), 'image_folder' (64 px class folders, ResNet-18-BN among the observers).
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('gvbsm', preset)
