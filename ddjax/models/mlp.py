"""A plain ReLU MLP on flattened inputs (DC's 'MLP')."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

Array = jax.Array


class MLP(nn.Module):
  """MLP returning (logits (N, num_classes), features (N, widths[-1])) for input (N, ...).

  The input is flattened to (N, prod(rest)); each hidden layer is Dense -> relu; the features are
  the last hidden layer's output (the input itself when `widths` is empty). `train` is accepted for
  the common model signature and ignored.
  """
  num_classes: int
  widths: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    del train
    x = x.reshape((x.shape[0], -1))
    for i, w in enumerate(self.widths):
      x = nn.relu(nn.Dense(w, name=f'dense{i}')(x))
    logits = nn.Dense(self.num_classes, name='head')(x)
    return logits, x
