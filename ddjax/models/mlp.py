"""A plain ReLU MLP on flattened inputs (DC's 'MLP')."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from ddjax.models.convnet import to_float32

Array = jax.Array


class MLP(nn.Module):
  """MLP returning (logits (N, num_classes), features (N, widths[-1])) for input (N, ...).

  The input is flattened to (N, prod(rest)); each hidden layer is Dense -> relu; the features are
  the last hidden layer's output (the input itself when `widths` is empty). `train` is accepted for
  the common model signature and ignored. `dtype` is the compute dtype (None: float32;
  `jnp.bfloat16`: mixed precision with float32 parameters and float32 outputs, as `ConvNet`).
  """
  num_classes: int
  widths: Sequence[int] = (256, 256)
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    del train
    x = x.reshape((x.shape[0], -1))
    for i, w in enumerate(self.widths):
      x = nn.relu(nn.Dense(w, dtype=self.dtype, name=f'dense{i}')(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return to_float32(logits), to_float32(x)
