r"""FRePo on Fashion-MNIST.

Default (CPU, about 10 minutes on 2 cores at IPC 1): ConvNet-3 width 64 without channel doubling or
norm, a pool of 5 models, real batch 512, Adam for the images and at 3e-3 for the labels. The
images' lr and the number of steps follow the IPC (`distill.lr = 0` and `distill.steps = 0`:
`ddjax.distill.frepo.cpu_lr` / `cpu_steps`, from the search in benchmarks/results/frepo_search.md):
lr 1e-2 and 5000 steps below IPC 10; lr 2e-2 and 10000 steps from IPC 10 (about 45 minutes of
distillation). Give --config.distill.lr=X or --config.distill.steps=N to override either.
`:paper` is FRePo's own setting (ConvNet 128-256-512 with batch norm, 10 models, batch 1024,
LAMB 3e-4, 500k steps) for a GPU.

    python -m ddjax.main --config=configs/frepo.py
    python -m ddjax.main --config=configs/frepo.py:paper --config.distill.ipc=10
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('frepo', preset)
