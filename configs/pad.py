r"""PAD: prioritize alignment in dataset distillation (Li, Guo et al., 2024) on Fashion-MNIST:
DATM on experts trained with FIEX's difficulty schedule, matching deep-layer parameters only
(FIEM; alpha by IPC from the paper's Table 9: 0 at IPC 1, 0.25 at IPC 10).

    python -m ddjax.main --config=configs/pad.py
    python -m ddjax.main --config=configs/pad.py --config.distill.ipc=10 --config.pad.alpha=0.5
    python -m ddjax.main --config=configs/pad.py --config.pad.fiem=loss   # the HEAD ablation
    python -m ddjax.main --config=configs/pad.py:faithful
    python -m ddjax.main --config=configs/pad.py:cifar10          # = :paper

Budget knobs of the CPU default beyond DATM's: the FIEX schedule scaled to the 6-epoch buffer
(harder samples added until epoch 2, the easiest 10 % / 20 % dropped after epochs 3 / 4; PAD:
20, 40, 60 of 100); EL2N from 4 models trained 2 epochs (ddjax's choice: PAD publishes none).
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('pad', preset)
