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
from ddjax.config import PRESETS, base_config

CPU_ITERATIONS, PAPER_ITERATIONS = 200, 1000


def matching_config(preset: str, method: str):
  """The settings DC, DSA and DM share: their ConvNet, class-balanced real batches of 256 per
  class, SGD with momentum 0.5 on the images, hard labels, DC's evaluation."""
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose one of {PRESETS}')
  cfg = base_config()
  cfg.method = method
  cfg.model.width = 128
  cfg.model.norm = 'instance'
  cfg.distill.batch_size = 256 * 10            # 256 real images per class (10 classes)
  cfg.distill.balanced_batch = True
  cfg.distill.optimizer = 'sgd'
  cfg.distill.momentum = 0.5
  cfg.distill.schedule = 'constant'
  cfg.distill.learn_label = False
  cfg.distill.label_init = 'one_hot'
  cfg.eval.protocol = 'dc'
  cfg.eval.krr = False
  cfg.eval.model.width = 128
  cfg.eval.model.norm = 'instance'
  cfg.checkpoint.every = 100
  cfg.log.every = 10
  return cfg


def get_config(preset: str = ''):
  cfg = matching_config(preset, 'dc')
  cfg.distill.lr = 0.1
  cfg.distill.init = 'noise'
  cfg.dc.iterations = CPU_ITERATIONS     # distill.steps = iterations x outer_loop
  if preset == 'paper':
    cfg.dc.iterations = PAPER_ITERATIONS
  return cfg
