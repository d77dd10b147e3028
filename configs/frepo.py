r"""FRePo on Fashion-MNIST.

Default (CPU, about 10 minutes on 2 cores at IPC 1): ConvNet-3 width 64 without channel doubling or
norm, a pool of 5 models, real batch 512, Adam at lr 1e-2 for the images and 3e-3 for the labels
(`ddjax.distill.frepo.CPU_LR`, from the search in benchmarks/results/frepo_search.md); 5000
steps at IPC 1 and 10000 from IPC 10 (`distill.steps = 0`: `ddjax.distill.frepo.cpu_steps`; about
45 minutes of distillation at IPC 10). Give --config.distill.steps=N for another budget.
`:paper` is FRePo's own setting (ConvNet 128-256-512 with batch norm, 10 models, batch 1024,
LAMB 3e-4, 500k steps) for a GPU.

    python -m ddjax.main --config=configs/frepo.py
    python -m ddjax.main --config=configs/frepo.py:paper --config.distill.ipc=10
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('frepo', preset)
