r"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022) on Fashion-MNIST.

The run builds (or reuses, or resumes) its expert buffer first (`python -m ddjax.buffer
--config=configs/mtt.py` builds it alone), then learns the images and the step size, then trains
5 networks with the 'tm' protocol (SGD 0.9, wd 5e-4, the learned step size, 1000 epochs, DSA).

    python -m ddjax.main --config=configs/mtt.py
    python -m ddjax.main --config=configs/mtt.py:faithful          # MTT's CIFAR-10 IPC-1 row
    python -m ddjax.main --config=configs/mtt.py:faithful --config.distill.ipc=10 \
        --config.trajectory.syn_steps=30 --config.trajectory.max_start_epoch=20 \
        --config.trajectory.lr_lr=1e-5 --config.trajectory.lr_teacher=0.001    # its IPC-10 row
    python -m ddjax.main --config=configs/mtt.py:cifar10           # = :paper, CIFAR-10 IPC 1 (ZCA)
    python -m ddjax.main --config=configs/mtt.py:cifar100          # CIFAR-100 IPC 1 (ZCA)

The CIFAR presets whiten as MTT does (`data.preprocessing=zca_mtt`: kornia's ZCA with an absolute
eps of 0.1 on the raw [0, 1] pixels, the scale MTT's lr_img was tuned on), not with FRePo's 'zca'
(standardised pixels, regulariser 0.1 x the mean eigenvalue: a stronger whitening, larger pixels).
Fashion-MNIST keeps per-channel standardisation, as MTT's code for 1-channel data.

Budget knobs of the CPU default that differ from the faithful setting: network width 32 (not
128) for experts, students and evaluation; 5 experts x 6 epochs (not 100 x 50); 500 iterations
(not 5000). Unchanged: N 50, M 2, T+ 2, lr_img 1000, lr_lr 1e-7, lr_teacher 0.01, all images per
inner step, real initialisation, DSA, hard labels.
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('mtt', preset)
