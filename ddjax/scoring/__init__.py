"""Per-sample scoring and data selection for dataset distillation.

- `per_sample`: loss, EL2N, GraNd, entropy, margin, correctness of a classifier over a dataset
  (jitted, batched) and `score_trials`, short training runs recording them per epoch; forgetting.
- `bilp`: BiLP's preemptive pruning (trial-mean loss curve, Gaussian-smoothed over epochs, read at
  the last epoch; class-wise pruning) and an atomic on-disk score cache.
- `ite`: BiLP's individual treatment effect of each real sample on the meta-gradient, exact
  (leave-one-out), first-order (one `jax.linearize`, vmapped JVPs) and a sketch of the
  first-order scores (random projections), on a distiller's declared additive form or its
  per-sample meta-losses.
- `selection`: BiLP's adaptive pruning: running statistics, the quantile window, lazy reselection.
"""
from ddjax.scoring.bilp import (cache_name, cached_scores, empirical_loss_score, gaussian_smooth,
                                load_scores, prune_classwise, save_scores,
                                stratify_classwise)
from ddjax.scoring.ite import (ITEProblem, PerSampleFn, Separable, additive_ite_scores,
                               compute_ite,
                               ite_exact, ite_first_order, ite_score, ite_sketch_scores,
                               masked_statistic, per_sample_ite_scores, rank_error)
from ddjax.scoring.per_sample import (cross_entropy_loss, el2n, entropy, forgetting_events,
                                      grand_norms, margin, never_learned, score_dataset,
                                      score_trials)
from ddjax.scoring.selection import (AdaptiveSelection, SelectionState, adaptive_pruning,
                                     quantile_window, update_statistics, window_bounds)

__all__ = [
    'AdaptiveSelection', 'ITEProblem', 'PerSampleFn', 'Separable', 'SelectionState', 'additive_ite_scores',
    'ite_sketch_scores', 'adaptive_pruning', 'cache_name', 'cached_scores', 'cross_entropy_loss',
    'compute_ite', 'el2n', 'per_sample_ite_scores', 'empirical_loss_score', 'entropy', 'forgetting_events',
    'gaussian_smooth', 'grand_norms', 'ite_exact', 'ite_first_order', 'ite_score',
    'load_scores', 'margin', 'masked_statistic', 'never_learned', 'prune_classwise',
    'quantile_window', 'rank_error', 'save_scores', 'score_dataset', 'score_trials',
    'stratify_classwise', 'update_statistics', 'window_bounds',
]
