r"""IDC's multi-formation parameterization (Kim et al., ICML 2022) on DSA gradient matching.

Each stored synthetic image holds factor^2 = 4 images at half resolution, decoded (cut into a 2 x 2
grid and bilinearly upsampled) before the meta-loss and for evaluation, so IPC 1 trains on 4
images per class for the storage of 1; initialised by downsampling 4 real images per stored
image. `idc.factor` works with every distiller, e.g. on DM: `--config=configs/dm.py
--config.idc.factor=2`.

    python -m ddjax.main --config=configs/idc.py
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  cfg = method_config('dc', preset)      # DSA (configs/dsa.py) ...
  cfg.dsa.strategy = 'auto'
  cfg.distill.init = 'real'
  cfg.idc.factor = 2                     # ... on IDC's multi-formation
  return cfg
