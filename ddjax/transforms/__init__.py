"""Loss transforms on per-sample meta-loss records: selection, ISA, and their composition."""
from ddjax.transforms.base import (LossTransform, PerClass, PerSample, chain, identity, mean_loss,
                                   per_sample_mse, squared_error, stateless, transformed_loss)
from ddjax.transforms.isa import isa, isa_loss, isa_residuals, partner_indices
from ddjax.transforms.selection import drop_easiest, drop_hardest, num_kept


def from_config(cfg) -> LossTransform:
  """Build the chain named by a `transform` config block: drop_easiest, then isa (ISA Alg. 1).

  cfg.drop_easiest: fraction p in [0, 1) (0 disables); cfg.isa_eps: eps in [0, 1] (0 disables).
  """
  parts = []
  if cfg.drop_easiest > 0:
    parts.append(drop_easiest(cfg.drop_easiest))
  if cfg.isa_eps > 0:
    parts.append(isa(cfg.isa_eps))
  return chain(*parts) if parts else identity()
