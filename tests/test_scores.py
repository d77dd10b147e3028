"""DD-Ranking's robust scores (ddjax.evaluate.scores) against hand-computed values and bounds."""
import math

import numpy as np
import pytest

from ddjax.evaluate import scores

E, INV_E = math.e, math.exp(-1)


def test_hlr_and_ior_are_the_stated_differences():
  assert scores.hard_label_recovery(0.92, 0.70) == pytest.approx(0.22)
  assert scores.improvement_over_random(0.85, 0.80) == pytest.approx(0.05)
  assert scores.improvement_over_random(0.80, 0.85) == pytest.approx(-0.05)


def test_lrs_against_a_hand_computed_value():
  # HLR 0.22, IOR 0.05, w 0.5: alpha = 0.025 - 0.11 = -0.085
  alpha = 0.5 * 0.05 - 0.5 * 0.22
  want = (math.exp(alpha) - INV_E) / (E - INV_E)
  assert want == pytest.approx(0.23427, abs=1e-5)   # by hand: (0.918512 - 0.367879) / 2.350402
  assert scores.label_robust_score(0.22, 0.05) == pytest.approx(want, rel=1e-12)
  out = scores.robust_scores(0.92, 0.70, 0.85, 0.80)
  assert out['lrs'] == pytest.approx(want, rel=1e-12)
  assert out['hlr'] == pytest.approx(0.22) and out['ior'] == pytest.approx(0.05)
  # DD-Ranking 0.2.0's percent scale: alpha in points = -8.5
  assert out['lrs_percent_scale'] == pytest.approx((math.exp(-8.5) - INV_E) / (E - INV_E))


def test_scores_are_bounded_and_monotone():
  assert scores.bounded_score(-1) == pytest.approx(0.0, abs=1e-15)
  assert scores.bounded_score(1) == pytest.approx(1.0)
  rng = np.random.default_rng(0)
  for _ in range(200):
    a = rng.uniform(0, 1, 4)
    lrs = scores.robust_scores(*a)['lrs']
    ars = scores.augmentation_robust_score(*a)
    assert 0 <= lrs <= 1 and 0 <= ars <= 1
  # better set (higher IOR, lower HLR) -> higher LRS
  assert scores.label_robust_score(0.1, 0.2) > scores.label_robust_score(0.1, 0.1)
  assert scores.label_robust_score(0.05, 0.1) > scores.label_robust_score(0.1, 0.1)
  # the extremes: a set as good as the full data (HLR 0) and 1 above random -> 1
  assert scores.label_robust_score(-1.0, 1.0) == pytest.approx(1.0)


def test_ars_against_a_hand_computed_value():
  # with aug: 0.85 - 0.80 = 0.05; without: 0.70 - 0.72 = -0.02; beta = 0.015
  want = (math.exp(0.015) - INV_E) / (E - INV_E)
  assert scores.augmentation_robust_score(0.85, 0.80, 0.70, 0.72) == pytest.approx(want)


def test_percentages_are_refused_with_a_hint():
  with pytest.raises(ValueError, match='divide by 100'):
    scores.robust_scores(92.0, 70.0, 85.0, 80.0)
  with pytest.raises(ValueError, match='weight'):
    scores.label_robust_score(0.1, 0.1, weight=1.5)
