r"""DATM: difficulty-aligned trajectory matching (Guo et al., ICLR 2024) on Fashion-MNIST.

MTT's meta-loss with DATM's start-epoch window, initial images the experts classify correctly,
soft labels learned from the experts' averaged logits (SGD, momentum 0.9) and the update gate;
evaluated by the 'tm' protocol with soft cross-entropy, batch 128.

    python -m ddjax.main --config=configs/datm.py
    python -m ddjax.main --config=configs/datm.py:faithful        # C10/IPC1.yaml transferred
    python -m ddjax.main --config=configs/datm.py:faithful --config.distill.ipc=10 \
        --config.datm.sequential=True --config.datm.current_max_start_epoch=10 \
        --config.trajectory.max_start_epoch=20 --config.trajectory.lr_lr=1e-5 \
        --config.distill.label_lr=2 --config.datm.threshold=1.0 \
        --config.trajectory.batch_syn=100                          # its IPC-10 row
    python -m ddjax.main --config=configs/datm.py:cifar10         # = :paper (MTT's ZCA, zca_mtt)
    python -m ddjax.main --config=configs/datm.py:cifar100        # C100/IPC1.yaml

Budget knobs of the CPU default that differ from the faithful setting: width 32 (not 128);
5 experts x 6 epochs of plain SGD (not 100 x 100 GSAM experts); N 40 (not 80); 500 iterations
(not 10000). Unchanged: M 2, window [0, 4), lr_img 100, lr_lr 1e-7, lr_y 5, threshold 1.1.
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('datm', preset)
