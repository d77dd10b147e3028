r"""SRe2L (Yin, Xing and Shen, NeurIPS 2023): squeeze, recover, relabel.

Squeeze: the observer (`ddjax.evaluate.observer`, cfg.observer; trained once and cached, shared
with RDED). Recover: images from N(0, 1) noise in the preprocessed space, optimised against the
observer's cross-entropy on their class plus r_bn times its batch-norm statistic loss
(`ddjax.distill.recover`, the official BNFeatureHook), clipped to the pixel range after every
update. Relabel: students trained on the observer's soft labels ('rded' protocol).

The official small-dataset recovery (VILA-Lab/SRe2L, SRe2L/*small_dataset/recover_cifar.py):
  Adam(lr, betas (0.5, 0.9), eps 1e-8) with a per-iteration cosine to 0     :62-63
  a roll by (0..jitter) pixels each iteration, no crop or flip              :72-74
  loss CE(target) + r_bn sum_l m_l R_l, m_1 = first_bn_multiplier          :80-92
  clip to the pixel range after every step                                  :116
  defaults: batch 100, 1000 iterations, jitter 4, first-BN x10              :201-210
  its script: lr 0.25, r_bn 0.01, 1000 iterations, batch 100                recover_cifar.sh:5-9
The ImageNet recovery (SRe2L/recover/data_synthesis.py:52-62) draws RandomResizedCrop(224) and a
horizontal flip each iteration before the roll (jitter 32); `recover.crop` / `recover.flip` turn
them on (the 'image_folder' preset does). Its image priors (total variation, l2) are not used
by the small-dataset script and not implemented.

    python -m ddjax.main --config=configs/sre2l.py
    python -m ddjax.main --config=configs/sre2l.py:paper      # CIFAR-10, ResNet-18 observer
    python -m ddjax.main --config=configs/sre2l.py:image_folder --config.data.dir=/data/imagenette2

Composition: the meta-loss is one number for the whole set, neither per real example nor
additive over real examples (no real data is read), so ISA, drop-easiest and BiLP's ITE do not
apply and the config refuses them; PAD's filters are trajectory-matching ones and do not apply.
"""
from __future__ import annotations

from ddjax import registry
from ddjax.distill import recover
from ddjax.evaluate.protocols.rded import OBSERVER_BLOCK

RECOVER_BLOCK = registry.ConfigBlock('recover', recover.recover_block,
                                     validate=recover.validate_recover)
PRESETS = registry.PRESETS + ('cifar10', 'cifar100', 'image_folder')


def configure_sre2l(cfg, preset: str) -> None:
  """SRe2L's recovery (module docstring) for a preset: '' / 'cpu' Fashion-MNIST with the cached
  ConvNet-3 observer (5 epochs); 'paper' / 'cifar10' / 'cifar100' the CIFAR scripts (ResNet-18
  observer with the small-image stem, 200 epochs as squeeze_cifar.sh); 'image_folder' 64 px class
  folders with a ResNet-18 observer and the ImageNet recovery's crop and flip."""
  recover.configure_recovery(cfg, preset)
  r = cfg.recover
  r.batch_size, r.r_bn, r.first_bn_multiplier = 100, 0.01, 10.0
  r.crop, r.flip, r.jitter = False, False, 4
  if preset in ('paper', 'cifar10', 'cifar100'):
    cfg.data.name = 'cifar100' if preset == 'cifar100' else 'cifar10'
    cfg.data.preprocessing = 'standard'
    cfg.observer.arch = 'resnet18'
    cfg.observer.epochs = 200
    cfg.eval.model.update(arch='resnet18', norm='batch')
    cfg.eval.num_models = 3
  if preset == 'image_folder':
    cfg.data.update(name='image_folder', image_size=64, channels=3, test_split='val',
                    preprocessing='standard')
    cfg.observer.arch = 'resnet18'
    cfg.observer.epochs = 30
    r.crop, r.flip, r.jitter = True, True, 4
    cfg.eval.model.update(arch='resnet18', norm='batch')
    cfg.eval.num_models = 3


def build_recovery(cfg, data) -> recover.Recovery:
  """The `Recovery` of cfg (SRe2L and CDA: they differ only in cfg.recover)."""
  return recover.Recovery(recover.observer_net(cfg, data), data.num_classes, cfg.distill.ipc,
                          project=recover.pixel_projection(data),
                          image_shape=tuple(data.x_train.shape[1:]),
                          **recover.recovery_kwargs(cfg))


registry.register(registry.Method(
    name='sre2l', build=build_recovery, distiller_class=recover.Recovery,
    blocks=(RECOVER_BLOCK, OBSERVER_BLOCK), configure=configure_sre2l,
    presets=PRESETS, protocol='rded',
    description="SRe2L: images recovered from an observer's batch-norm statistics, relabelled"))
