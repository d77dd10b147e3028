"""The random-real-subset baseline: IPC real images per class, drawn class-balanced, with their
(centred) one-hot labels, and no distillation at all (zero steps). Evaluated under exactly the
protocol of the distilled sets, so it is the floor every method must beat.
"""
from __future__ import annotations

from ddjax import registry
from ddjax.distill.base import NO_META_LOSS, Distiller


class RandomSubset(Distiller):
  """No meta-loss: the run takes zero steps, the initial (real) set is the result."""

  record = NO_META_LOSS

  def per_sample(self, syn, state, batch, key):
    raise NotImplementedError('random_subset takes no distillation steps (its set is the initial '
                              'real subset); distill.steps has no effect on it.')


def _configure(cfg, preset: str) -> None:
  from ddjax.distill.frepo import apply_paper_preset
  cfg.distill.steps = 0
  if preset == 'paper':        # FRePo's evaluation setting, the one its sets are compared under
    apply_paper_preset(cfg)
    cfg.distill.steps = 0


registry.register(registry.Method(
    name='random_subset', distiller_class=RandomSubset, build=lambda cfg, data: RandomSubset(),
    configure=_configure, plan=lambda cfg, facts: {'steps': 0}, protocol='frepo',
    description='baseline: a random class-balanced real subset, no distillation'))
