"""The random-real-subset baseline: IPC real images per class, drawn class-balanced, with their
(centred) one-hot labels, and no distillation at all (zero steps). Evaluated under exactly the
protocol of the distilled sets, so it is the floor every method must beat.
"""
from __future__ import annotations

from ddjax import registry
from ddjax.distill.base import SetBuilder


class RandomSubset(SetBuilder):
  """A set builder whose set is the default draw: the class-balanced real subset."""

  def build(self, syn_init, key):
    del key
    return syn_init


def _configure(cfg, preset: str) -> None:
  from ddjax.distill.frepo import apply_paper_preset
  cfg.distill.steps = 0
  if preset == 'paper':        # FRePo's evaluation setting, the one its sets are compared under
    apply_paper_preset(cfg)
    cfg.distill.steps = 0


registry.register(registry.Method(
    name='random_subset', distiller_class=RandomSubset, build=lambda cfg, data: RandomSubset(),
    configure=_configure, protocol='frepo',
    description='baseline: a random class-balanced real subset, no distillation'))
