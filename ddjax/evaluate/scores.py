"""DD-Ranking's robust scores of a distilled set (Li et al., "DD-Ranking: Rethinking the Evaluation
of Dataset Distillation", 2025; its `ddranking.metrics` code).

Test accuracy alone credits a set with what its evaluation protocol adds (soft labels from a
teacher, strong augmentation): a random real subset under the same protocol often scores as well.
The scores below compare the set with that random subset and with the real data, each trained the
same way, so that what is left is what the images carry:

  HLR  hard-label recovery    = acc(real data, hard labels) - acc(set, hard labels)
       how far the set, trained on as plain labelled images, stays from the full data (lower is
       better);
  IOR  improvement over random = acc(set, its protocol) - acc(random real subset, same protocol)
       what the set adds over random real images of the same size under the same protocol
       (higher is better);
  LRS  label-robust score      = (e^a - e^-1) / (e - e^-1),  a = w IOR - (1 - w) HLR, w = 0.5;
  ARS  augmentation-robust score = (e^b - e^-1) / (e - e^-1),
       b = w (acc(set, aug) - acc(random, aug)) + (1 - w) (acc(set, no aug) - acc(random, no aug)),
       the improvement over random with and without the protocol's augmentation, the two
       differences DD-Ranking's `AugmentationRobustScore` measures.

Accuracies are fractions in [0, 1]. Then HLR and IOR lie in [-1, 1], so a and b lie in [-1, 1]
and LRS and ARS in [0, 1], the bounded range the definition intends (a = 0, a set no better than
random and as good as the full data, gives (1 - e^-1) / (e - e^-1) ~= 0.269). DD-Ranking 0.2.0
feeds percentages into the same exponential, which gives other numbers; `percent_scale_score`
computes that figure too, labelled, for comparison with its leaderboard.
"""
from __future__ import annotations

import math

DEFAULT_WEIGHT = 0.5


def _check_fraction(name: str, value: float) -> float:
  value = float(value)
  if not -1e-9 <= value <= 1 + 1e-9:
    raise ValueError(f'{name} must be an accuracy fraction in [0, 1], got {value!r} '
                     '(percentages? divide by 100)')
  return value


def hard_label_recovery(acc_real_hard: float, acc_set_hard: float) -> float:
  """HLR = acc(real data, hard labels) - acc(set, hard labels), both fractions."""
  return (_check_fraction('acc_real_hard', acc_real_hard)
          - _check_fraction('acc_set_hard', acc_set_hard))


def improvement_over_random(acc_set: float, acc_random: float) -> float:
  """IOR = acc(set, its protocol) - acc(random real subset of the same size, same protocol)."""
  return _check_fraction('acc_set', acc_set) - _check_fraction('acc_random', acc_random)


def bounded_score(alpha: float) -> float:
  """(e^alpha - e^-1) / (e - e^-1): maps alpha in [-1, 1] monotonically onto [0, 1]."""
  return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def label_robust_score(hlr: float, ior: float, weight: float = DEFAULT_WEIGHT) -> float:
  """LRS = bounded_score(w IOR - (1 - w) HLR), w = `weight` (DD-Ranking: 0.5)."""
  if not 0 <= weight <= 1:
    raise ValueError(f'weight must lie in [0, 1], got {weight}')
  return bounded_score(weight * ior - (1 - weight) * hlr)


def augmentation_robust_score(acc_set_aug: float, acc_random_aug: float, acc_set_plain: float,
                              acc_random_plain: float, weight: float = DEFAULT_WEIGHT) -> float:
  """ARS = bounded_score(w (acc_set_aug - acc_random_aug) + (1 - w) (acc_set_plain -
  acc_random_plain)): the improvement over random with the protocol's augmentation and without."""
  return augmentation_scores(acc_set_aug, acc_random_aug, acc_set_plain, acc_random_plain,
                             weight)['ars']


def augmentation_scores(acc_set_aug: float, acc_random_aug: float, acc_set_plain: float,
                        acc_random_plain: float, weight: float = DEFAULT_WEIGHT) -> dict:
  """ARS, its exponent beta and ARS on DD-Ranking 0.2.0's percent scale."""
  if not 0 <= weight <= 1:
    raise ValueError(f'weight must lie in [0, 1], got {weight}')
  with_aug = improvement_over_random(acc_set_aug, acc_random_aug)
  without = improvement_over_random(acc_set_plain, acc_random_plain)
  beta = weight * with_aug + (1 - weight) * without
  return {'ars': bounded_score(beta), 'beta': beta,
          'ars_percent_scale': percent_scale_score(beta)}


def percent_scale_score(alpha_fraction: float) -> float:
  """The score DD-Ranking 0.2.0 prints for the same accuracies: its exponent is in percentage
  points (100 x the fraction-scale alpha), so e.g. an IOR of +5 points alone gives e^2.5-scale
  values far outside [0, 1]. Only for comparing with its figures; not bounded."""
  return bounded_score(100.0 * alpha_fraction)


def robust_scores(acc_real_hard: float, acc_set_hard: float, acc_set: float, acc_random: float,
                  weight: float = DEFAULT_WEIGHT) -> dict:
  """HLR, IOR, LRS (and LRS on DD-Ranking 0.2.0's percent scale) from the four accuracies."""
  hlr = hard_label_recovery(acc_real_hard, acc_set_hard)
  ior = improvement_over_random(acc_set, acc_random)
  alpha = weight * ior - (1 - weight) * hlr
  return {'hlr': hlr, 'ior': ior, 'lrs': bounded_score(alpha), 'alpha': alpha,
          'lrs_percent_scale': percent_scale_score(alpha), 'weight': weight}
