r"""FRePo on Fashion-MNIST.

Default (CPU, about 10 minutes on 2 cores): ConvNet-3 width 64 without channel doubling or norm,
a pool of 5 models, real batch 512, Adam at a larger learning rate. `:paper` is FRePo's own setting
(ConvNet 128-256-512 with batch norm, 10 models, batch 1024, LAMB 3e-4, 500k steps) for a GPU.

    python -m ddjax.main --config=configs/frepo.py
    python -m ddjax.main --config=configs/frepo.py:paper --config.distill.ipc=10
"""
from ddjax.config import PRESETS, base_config


def apply_paper_preset(cfg):
  """FRePo's official distillation and evaluation settings (GPU scale)."""
  cfg.model.width = 128
  cfg.model.double_width = True
  cfg.model.norm = 'batch'
  cfg.distill.steps = 500_000
  cfg.distill.batch_size = 1024
  cfg.distill.optimizer = 'lamb'
  cfg.distill.lr = 3e-4
  cfg.distill.label_lr = 3e-4
  cfg.frepo.num_models = 10
  cfg.frepo.max_online_updates = 100
  cfg.frepo.online_lr = 3e-4
  cfg.eval.model.width = 128
  cfg.eval.model.double_width = True
  cfg.eval.model.norm = 'none'   # FRePo evaluates its batch-norm ConvNet without norm
  cfg.checkpoint.every = 10_000
  cfg.log.every = 1000
  return cfg


def get_config(preset: str = ''):
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose one of {PRESETS}')
  cfg = base_config()
  cfg.method = 'frepo'
  if preset == 'paper':
    apply_paper_preset(cfg)
  return cfg
