r"""RDED: observer-selected realistic patches (no optimisation), evaluated by students trained on
the observer's online soft labels (the 'rded' protocol). Fashion-MNIST by default; the observer
(ConvNet-3, batch norm, width 128) is trained once and cached (observer.dir).

    python -m ddjax.main --config=configs/rded.py --config.distill.ipc=10
    python -m ddjax.main --config=configs/rded.py:cifar10      # = :paper (Conv3 -> Conv3)
    python -m ddjax.main --config=configs/rded.py:cifar100
    python -m ddjax.main --config=configs/rded.py:image_folder --config.data.dir=/data/imagenette2
    python -m ddjax.main --config=configs/random_subset.py --config.eval.protocol=rded

Presets: '' / 'cpu' (Fashion-MNIST, observer 5 epochs), 'paper' / 'cifar10' and 'cifar100' (the
official scripts: CIFAR, standardised, 300 student epochs; CIFAR-100's students AdamW 2e-3 with
batch 25, the official special case; needs the CIFAR files, data.dir).
'image_folder': ImageNette-style class folders (ROOT/train/<class>/*.JPEG and ROOT/val/<class>/,
`data.dir=ROOT` is yours to give; `data.test_split` names the test folder, or
`data.test_fraction` > 0 splits class folders directly under ROOT), RGB, centre-cropped and
resized to 64 px (`data.image_size`; 128 also works, at 4x the cost), standardised; factor 2 (4
patches per image, the paper's N = 4 at >= 64 px, with the students' ShufflePatches and
RandomResizedCrop(scale (1/2, 1))); observer and students ResNet-18 with the small-image stem and
batch norm (observer.arch=resnet18, 30 observer epochs; RDED's resnet18 -> resnet18 for ImageNette,
whose official runs use torchvision's 224 px stem instead); 3 students. GPU-scale: a 64 px
ResNet-18 with this stem costs about 4.2 GFLOP per image forward (XLA's cost analysis).
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('rded', preset)
