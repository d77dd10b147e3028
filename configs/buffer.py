"""The MTT CPU-default expert buffer (`python -m ddjax.buffer`); other buffers come from a
method's own config: `python -m ddjax.buffer --config=configs/pad.py`."""
from ddjax.config import method_config


def get_config(preset: str = ''):
  return method_config('mtt', preset)
