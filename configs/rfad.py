r"""RFAD (random feature approximation) on Fashion-MNIST, as in the RFAD code.

Per step, M freshly drawn no-norm ConvNet-3s (3 x [Conv 3x3, ReLU, AvgPool 2x2], weights
N(0, 2 / fan_in), biases N(0, 0.01), no readout) give random features of the ConvNet NNGP; the
readout is added in closed form; lambda = 5e-3 * trace / n; Platt-scaling loss with a learned
temperature (lr 1e-2); AdaBelief at 1e-3; labels learned (the README's example command).
Evaluated by KRR with the ConvNet-3 NNGP (RFAD's `eval_distilled_set.py`) and by finite ConvNets.

Default (CPU): 4 networks of width 64 on a real batch of 500 per step (RFAD: 8 x width 256 on
5120), which is ~40x less compute per step; `:paper` restores RFAD's sizes for a GPU.

    python -m ddjax.main --config=configs/rfad.py
    python -m ddjax.main --config=configs/rfad.py:paper --config.distill.ipc=10
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('rfad', preset)
