r"""DM: distribution matching (Zhao & Bilen, WACV 2023), as the official main_DM.py.

Per iteration a fresh randomly initialised ConvNet-3 (width 128, instance norm) embeds 256 real
images per class and the synthetic images of that class, both after the same DSA augmentation;
the loss is the sum over classes of the squared distance between the mean embeddings. Images by
SGD lr 1.0, momentum 0.5, initialised from real images; hard labels; DC's evaluation protocol.
The paper runs 20000 iterations (`:paper`); the CPU default runs 1000.

    python -m ddjax.main --config=configs/dm.py
    python -m ddjax.main --config=configs/dm.py:paper --config.distill.ipc=10
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('dm', preset)
