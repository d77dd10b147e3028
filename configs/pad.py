r"""PAD: prioritize alignment in dataset distillation (Li, Guo et al., 2024) on Fashion-MNIST:
DATM on experts trained with FIEX's difficulty schedule, matching deep-layer parameters only
(FIEM; alpha by IPC from the paper's Table 9: 0 at IPC 1, 0.25 at IPC 10).

    python -m ddjax.main --config=configs/pad.py
    python -m ddjax.main --config=configs/pad.py --config.distill.ipc=10 --config.pad.alpha=0.5
    python -m ddjax.main --config=configs/pad.py --config.pad.fiem=loss   # the HEAD ablation
    python -m ddjax.main --config=configs/pad.py:faithful
    python -m ddjax.main --config=configs/pad.py:cifar10          # = :paper (MTT's ZCA, zca_mtt)

Budget knobs of the CPU default beyond DATM's: EL2N from 4 models trained 2 epochs (ddjax's
choice: PAD publishes none). The FIEX schedule keeps PAD's epochs (harder samples added until epoch
20, the easiest 10 % / 20 % dropped after epochs 40 / 60), so the 6-epoch CPU buffer is the start of
PAD's own, inside its add phase, as PAD's IPC-1 students see it; the schedule scaled to 6 epochs
(`--config.expert.fiex_add_end_epoch=2 --config.expert.fiex_remove_epochs='(3, 4)'`) cost 9.5
points at IPC 1 (benchmarks/README.md).
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('pad', preset)
