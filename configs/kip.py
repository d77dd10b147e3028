r"""KIP (Kernel Inducing Points) on Fashion-MNIST, as in the KIP notebooks.

KRR with an infinite-width NTK, lambda = 1e-6 * trace / n, centred one-hot labels, Adam at 0.04, a
large class-balanced real batch per step (KIP: 5000, drawn afresh each step), MSE meta-loss,
5000 steps (the notebook: "~1000+ for full convergence").
Evaluated by KRR with the same kernel and by training finite ConvNets.

Default (CPU): the KIP notebook's own default kernel, a one-hidden-layer FC NTK (W_std sqrt(2),
b_std 0.1): a step costs milliseconds, so the notebook's target batch of 5000 fits a CPU. Labels
are learned (KIP's label-learning variant). `:paper` is KIP's ConvNet kernel
(3 x [Conv, ReLU, AvgPool] + Flatten, ~2 ms per kernel entry on this CPU) for a GPU.

    python -m ddjax.main --config=configs/kip.py
    python -m ddjax.main --config=configs/kip.py:paper --config.distill.ipc=10
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('kip', preset)
