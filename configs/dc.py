r"""DC: dataset condensation with gradient matching (Zhao et al., ICLR 2021), as the official main.py.

ConvNet-3 width 128 with instance norm and average pooling; per class, the layer-wise distance
between the gradients of a real batch (256 per class) and of the synthetic images of that class;
a fresh network per DC iteration, trained `inner_loop` epochs on the synthetic set between the
`outer_loop` image updates (DC's rule by IPC: 1 -> (1, 1), 10 -> (10, 50), 50 -> (50, 10)); images
by SGD lr 0.1, momentum 0.5, initialised from noise (DC's default); hard labels. One ddjax step is
one outer-loop update, so DC's 1000 iterations are 1000 * outer_loop steps (`:paper`).
Evaluated with DC's protocol (SGD 0.01, momentum 0.9, 1000 epochs).

CPU default: DC's network and batch sizes, 200 iterations (x outer_loop steps).

    python -m ddjax.main --config=configs/dc.py
    python -m ddjax.main --config=configs/dc.py:paper --config.distill.ipc=10
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('dc', preset)
