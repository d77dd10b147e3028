r"""A composition no paper has run: BiLP's preemptive pruning (drop the 50% of every class with the
largest smoothed early-training loss) before FRePo + ISA (drop the 20% easiest of each batch by
meta-loss, then ISA's closed-form interpolation loss). The two selections act at different levels:
BiLP on the dataset, once; ISA's crucial-sample dropping on every batch. BiLP's adaptive ITE
pruning also applies to FRePo (its meta-loss is a mean of per-sample KRR losses, so ITE_i is the
per-sample meta-gradient): add --config.bilp.adaptive_beta=0.3 for all three selections.

    python -m ddjax.main --config=configs/frepo_isa_bilp.py
    python -m ddjax.main --config=configs/frepo_isa_bilp.py --config.bilp.adaptive_beta=0.3
"""
from ddjax.config import method_config


def get_config(preset: str = ''):
  cfg = method_config('frepo', preset)
  cfg.transform.drop_easiest = 0.2
  cfg.transform.isa_eps = 1.0
  cfg.bilp.prune_fraction = 0.5
  cfg.bilp.prune_by = 'drop_largest'
  return cfg
