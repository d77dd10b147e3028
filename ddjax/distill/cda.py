r"""CDA (Yin and Shen, TMLR 2024, "Dataset Distillation via Curriculum Data Synthesis in Large Data
Era"): SRe2L's recovery with an easy-to-hard curriculum on the random crop.

Each recovery iteration draws RandomResizedCrop(scale (lo(t), 1)) and a flip for the batch, then
SRe2L's roll; the lower bound lo(t) falls from 1 (whole images: easy) to `recover.min_crop`
(0.08: small crops, hard) over the first `recover.milestone` fraction of the iterations
(`ddjax.distill.recover.crop_lower_bound`; VILA-Lab/SRe2L CDA/recover_cda_tiny.py:50-79 and
recover_cda_in1k.py:51-80: modes step / linear / cosine, cosine by default). Everything else is
SRe2L's (`ddjax.distill.sre2l`), relabelling included ('rded' protocol); CDA/README.md:117
"We follow SRe2L relabeling".

Official settings (CDA/README.md): Tiny-ImageNet lr 0.4, r_bn 0.05, 4000 iterations, batch 100,
jitter 4, cosine, milestone 1 (:66-71; code defaults recover_cda_tiny.py:233-245, milestone 0 =
no curriculum unless given); ImageNet-1k lr 0.25, r_bn 0.01, 4000 iterations, jitter 32 (:85-90).
There is no official CIFAR script. Presets: '' / 'cpu' Fashion-MNIST (SRe2L's CPU default with the
crop, flip and cosine curriculum over all 1000 iterations); 'paper' / 'image_folder' the Tiny-
ImageNet settings on 64 px class folders (data.dir=ROOT with train/ and val/) and a ResNet-18
observer.

    python -m ddjax.main --config=configs/cda.py
    python -m ddjax.main --config=configs/cda.py:image_folder --config.data.dir=/data/tiny-imagenet

Composition: as SRe2L (no transforms, no BiLP: the recovery reads no real examples).
"""
from __future__ import annotations

from ddjax import registry
from ddjax.distill import recover, sre2l


def _configure(cfg, preset: str) -> None:
  sre2l.configure_sre2l(cfg, 'image_folder' if preset == 'paper' else preset)
  r = cfg.recover
  r.crop, r.flip, r.min_crop, r.max_crop = True, True, 0.08, 1.0
  r.curriculum, r.milestone = 'cosine', 1.0
  if preset in ('paper', 'image_folder'):     # CDA/README.md:66-71 (Tiny-ImageNet)
    cfg.distill.lr = 0.4
    cfg.distill.steps = 4000
    r.r_bn, r.jitter, r.batch_size = 0.05, 4, 100


registry.register(registry.Method(
    name='cda', build=sre2l.build_recovery, distiller_class=recover.Recovery,
    blocks=(sre2l.RECOVER_BLOCK, sre2l.OBSERVER_BLOCK), configure=_configure,
    presets=registry.PRESETS + ('image_folder',),
    protocol='rded',
    description="CDA: SRe2L's recovery with an easy-to-hard crop curriculum"))
