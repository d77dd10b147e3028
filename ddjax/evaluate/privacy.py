"""Membership inference: how well an attacker tells a network's training examples (members) from
other examples of the same distribution (non-members), from the network's outputs alone.

Every score here follows one convention: a HIGHER score means "more likely a member". An attack
is judged by its ROC curve over all thresholds t (an example is called a member when its score
is >= t): TPR(t) = fraction of members called members, FPR(t) = fraction of non-members called
members; the AUC, and the TPR at a low FPR (Carlini et al. 2022, "Membership Inference Attacks
From First Principles", the LiRA paper: an attack is dangerous when it is confident about a few
examples, which the AUC averages away).

The per-example signals, from logits z (N, K) and true labels y (N,):

  loss            l = -log softmax(z)_y = logsumexp_k z_k - z_y                 (cross-entropy)
  confidence      phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{k != y} z_k      (LiRA's logit
                  scaling of p_y = softmax(z)_y; exact in this form, finite whenever z is, also
                  where p_y rounds to 1 in float32)

The attacks:

  loss threshold  score = -l (Yeom et al. 2018, "Privacy Risk in Machine Learning: Analyzing the
                  Connection to Overfitting"): members have lower loss.
  learned         a classifier (logistic regression or a small MLP, scikit-learn) on per-example
                  features (l, phi, the sorted softmax probabilities, the sorted logits), trained
                  and scored by k-fold cross-fitting, so each example is scored by a classifier
                  that never saw it; the attacker is given the membership of the other folds'
                  examples of the SAME target network (a strong, "known half of the members"
                  attacker, as the learned attacks of ML Privacy Meter that FRePo's paper used).
  LiRA offline    per example, a Gaussian N(mu, sigma^2) fitted to its confidence phi under
                  shadow networks that did NOT train on it (OUT); score z = (phi - mu) / sigma,
                  the one-sided test of Carlini et al. (their offline attack: Lambda = 1 -
                  Pr[Z > phi], Z ~ N(mu, sigma^2), i.e. Lambda = Phi(z)). We return z itself: it
                  is a monotone function of Lambda (the same ROC), and does not round to 1 for
                  confident members as Phi(z) does in floating point.

Everything is numpy / scipy / scikit-learn on host arrays.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import special

FPRS = {'tpr_at_1pct_fpr': 0.01, 'tpr_at_0.1pct_fpr': 0.001}   # attack_report's low-FPR points
LIRA_GLOBAL_STD_BELOW = 64     # 'auto': one global sigma with fewer OUT shadows than this
STD_FLOOR = 1e-3               # sigma of LiRA's Gaussians at least this (confidence units)
ATTACKS = ('loss', 'lr', 'mlp', 'lira')


def _as_scores(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores, np.float64).reshape(-1)
  m = np.asarray(is_member).reshape(-1).astype(bool)
  if s.shape != m.shape:
    raise ValueError(f'scores ({s.shape[0]}) and is_member ({m.shape[0]}) differ in length')
  if m.all() or not m.any():
    raise ValueError('membership scores need both members and non-members (is_member has one '
                     'kind only)')
  if not np.all(np.isfinite(s)):
    raise ValueError(f'{int(np.sum(~np.isfinite(s)))} membership scores are not finite')
  return s, m


def roc_curve(scores, is_member) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) of calling `score >= threshold` a member, every threshold kept
  (sklearn.metrics.roc_curve, drop_intermediate=False); the first point is (0, 0) at +inf.

  scores: (N,) higher = more likely a member; is_member: (N,) bool."""
  from sklearn import metrics
  s, m = _as_scores(scores, is_member)
  fpr, tpr, thresholds = metrics.roc_curve(m, s, drop_intermediate=False)
  return fpr, tpr, thresholds


def auc(scores, is_member) -> float:
  """Area under the ROC curve (sklearn.metrics.roc_auc_score): the probability that a random
  member scores higher than a random non-member, ties counting one half (Mann-Whitney U /
  (n_members n_nonmembers)). 0.5 = chance, 1 = perfect."""
  from sklearn import metrics
  s, m = _as_scores(scores, is_member)
  return float(metrics.roc_auc_score(m, s))


def tpr_at_fpr(scores, is_member, fpr: float, strict: bool = False) -> float:
  """The largest TPR among thresholds whose FPR is <= `fpr` (the TPR of the best attack allowed
  at most floor(fpr x n_nonmembers) false positives); the threshold +inf (nothing called a
  member) always qualifies, so the answer is 0 when even one false positive is too many.

  The LiRA paper reports "TPR at x % FPR" this way, reading the ROC at the last point whose FPR
  is below x; its released plotting code takes FPR < x strictly (`strict=True` here), which
  with n non-members and x = k / n allows k - 1 false positives instead of k. With few
  non-members the low-FPR figures rest on few (or no) false positives: at n = 1000 and 0.1 %,
  one false positive (strict: none)."""
  f, t, _ = roc_curve(scores, is_member)
  ok = f < fpr if strict else f <= fpr * (1 + 1e-12)
  return float(t[ok].max()) if ok.any() else 0.0     # strict with fpr = 0: no threshold


def per_example_loss(logits, labels) -> np.ndarray:
  """Cross-entropy (N,) float64 of logits (N, K) against labels: (N,) ints or (N, K) rows
  (their argmax); l = logsumexp_k z_k - z_y, computed in float64 (stable for any finite z)."""
  z, y = _logits_labels(logits, labels)
  return special.logsumexp(z, axis=1) - z[np.arange(len(y)), y]


def logit_confidence(logits, labels) -> np.ndarray:
  """LiRA's scaled confidence (N,) float64: phi = log(p_y) - log(1 - p_y), p = softmax(z),
  computed as z_y - logsumexp_{k != y} z_k (the same quantity: log p_y = z_y - LSE(z) and
  log(1 - p_y) = LSE_{k != y}(z) - LSE(z)), so it stays finite where p_y rounds to 1."""
  z, y = _logits_labels(logits, labels)
  rows = np.arange(len(y))
  others = z.copy()
  others[rows, y] = -np.inf
  return z[rows, y] - special.logsumexp(others, axis=1)


def _logits_labels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
  z = np.asarray(logits, np.float64)
  if z.ndim != 2 or z.shape[1] < 2:
    raise ValueError(f'logits must be (N, K) with K >= 2 classes, got shape {z.shape}')
  y = np.asarray(labels)
  y = y.argmax(-1) if y.ndim == 2 else y.astype(np.int64)
  if y.shape != (z.shape[0],):
    raise ValueError(f'labels ({y.shape}) do not match logits ({z.shape})')
  return z, y


def loss_threshold_scores(losses) -> np.ndarray:
  """Yeom et al.'s loss-threshold attack: score = -loss (members have lower loss)."""
  return -np.asarray(losses, np.float64)


def attack_features(logits, labels) -> np.ndarray:
  """The learned attacks' per-example features (N, 2 + 2K) float64: [loss, confidence phi,
  softmax probabilities sorted descending (K), logits sorted descending (K)]. Sorting makes them
  class-agnostic; the loss and phi carry the true label."""
  z, y = _logits_labels(logits, labels)
  p = special.softmax(z, axis=1)
  return np.concatenate([per_example_loss(z, y)[:, None], logit_confidence(z, y)[:, None],
                         -np.sort(-p, axis=1), -np.sort(-z, axis=1)], axis=1)


EARLY_STOPPING_FROM = 1000   # the MLP attack holds out 10 % to stop early from this many examples


def _classifier(model: str, seed: int, n: int = 0):
  from sklearn.linear_model import LogisticRegression
  from sklearn.neural_network import MLPClassifier
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  if model == 'lr':
    clf = LogisticRegression(max_iter=1000)
  elif model == 'mlp':
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=seed,
                        early_stopping=n >= EARLY_STOPPING_FROM)
  else:
    raise ValueError(f"unknown attack model {model!r}; choose 'lr' or 'mlp'")
  return make_pipeline(StandardScaler(), clf)


def learned_attack_scores(features_m, features_n, seed: int, folds: int = 2,
                          model: str = 'lr') -> tuple[np.ndarray, np.ndarray]:
  """Scores (members (M,), non-members (N,)) of a learned attack by k-fold cross-fitting.

  The M + N examples are split into `folds` stratified folds (seeded); for each fold a fresh
  classifier (`model`: 'lr' logistic regression; 'mlp' an MLP of one 64-unit ReLU layer, Adam, at
  most 200 epochs, stopped early on 10 % of its training examples when it has at least
  EARLY_STOPPING_FROM; features standardised first) is fitted on the other folds (label 1 =
  member) and scores the fold with its predicted member probability. Every example is thus
  scored by an attack that never saw it. The folds' classifiers are calibrated slightly
  differently, so their pooled ROC is, if anything, a little pessimistic for the attack.

  features_m: (M, F) of members; features_n: (N, F) of non-members (`attack_features`)."""
  from sklearn.model_selection import StratifiedKFold
  from sklearn.exceptions import ConvergenceWarning
  fm, fn = np.asarray(features_m, np.float64), np.asarray(features_n, np.float64)
  x = np.concatenate([fm, fn])
  y = np.r_[np.ones(len(fm), np.int64), np.zeros(len(fn), np.int64)]
  if folds < 2 or folds > min(len(fm), len(fn)):
    raise ValueError(f'folds={folds} must be >= 2 and at most the smaller group '
                     f'({min(len(fm), len(fn))} examples)')
  scores = np.empty(len(y))
  splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y)
  for i, (train, test) in enumerate(splits):
    clf = _classifier(model, seed + i, len(train))
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', ConvergenceWarning)
      clf.fit(x[train], y[train])
    scores[test] = clf.predict_proba(x[test])[:, 1]
  return scores[:len(fm)], scores[len(fm):]


def lira_offline_scores(target_conf, shadow_out_conf, global_std: bool | str = 'auto',
                        std_floor: float = STD_FLOOR) -> np.ndarray:
  """Offline LiRA (Carlini et al. 2022): z (N,) = (phi - mu) / sigma per example.

  target_conf: (N,) the target network's confidence phi (`logit_confidence`) on each example;
  shadow_out_conf: (S, N) the same under S >= 2 shadow networks none of which trained on the
  example (OUT). mu = the mean of its S OUT confidences; sigma = their standard deviation
  (ddof 1) per example, or with `global_std` one sigma for all examples, the pooled within-
  example deviation sqrt(mean_i var_i); at least `std_floor`. 'auto': global with fewer than
  LIRA_GLOBAL_STD_BELOW shadows (LiRA's paper found a fixed, global variance better when shadow
  models are few; the threshold 64 is ours). LiRA's released code takes for its global variance
  the deviation of all OUT confidences together, which also counts how the means differ between
  examples; the pooled within-example deviation here is the spread the test assumes.

  The score is one-sided: larger = the target is more confident on the example than networks
  that did not see it, i.e. more likely a member. z is monotone in the paper's Lambda = Phi(z)."""
  c = np.asarray(target_conf, np.float64).reshape(-1)
  s = np.asarray(shadow_out_conf, np.float64)
  if s.ndim != 2 or s.shape[1] != c.shape[0]:
    raise ValueError(f'shadow_out_conf must be (S, N) with N = {c.shape[0]} examples, got '
                     f'{s.shape}')
  if s.shape[0] < 2:
    raise ValueError(f'LiRA needs at least 2 OUT shadow networks to fit a Gaussian per example, '
                     f'got {s.shape[0]}')
  if global_std == 'auto':
    global_std = s.shape[0] < LIRA_GLOBAL_STD_BELOW
  mu = s.mean(axis=0)
  var = s.var(axis=0, ddof=1)
  sigma = np.sqrt(var.mean()) if global_std else np.sqrt(var)
  return (c - mu) / np.maximum(sigma, std_floor)


def attack_scores(logits_m, labels_m, logits_n, labels_n, attacks=ATTACKS, seed: int = 0,
                  folds: int = 2, shadow_logits=None) -> dict:
  """{attack: (scores of members (M,), of non-members (N,))} for each of `attacks` ('loss',
  'lr', 'mlp', 'lira') on one target network's logits (M, K) on members and (N, K) on
  non-members. 'lira' needs shadow_logits (S, M + N, K): S OUT shadow networks' logits on the
  members then the non-members (S >= 2)."""
  out = {}
  for name in attacks:
    if name == 'loss':
      out[name] = (loss_threshold_scores(per_example_loss(logits_m, labels_m)),
                   loss_threshold_scores(per_example_loss(logits_n, labels_n)))
    elif name in ('lr', 'mlp'):
      out[name] = learned_attack_scores(attack_features(logits_m, labels_m),
                                        attack_features(logits_n, labels_n), seed, folds, name)
    elif name == 'lira':
      if shadow_logits is None:
        raise ValueError("the 'lira' attack needs shadow networks' logits (shadow_logits)")
      labels = np.r_[_logits_labels(logits_m, labels_m)[1], _logits_labels(logits_n, labels_n)[1]]
      shadow = np.stack([logit_confidence(s, labels) for s in np.asarray(shadow_logits)])
      target = np.r_[logit_confidence(logits_m, labels_m), logit_confidence(logits_n, labels_n)]
      z = lira_offline_scores(target, shadow)
      out[name] = (z[:len(labels_m)], z[len(labels_m):])
    else:
      raise ValueError(f'unknown attack {name!r}; choose from {ATTACKS}')
  return out


def attack_report(scores: dict) -> dict:
  """{attack: {'auc', 'tpr_at_1pct_fpr', 'tpr_at_0.1pct_fpr'}} of {attack: (scores of members,
  scores of non-members)} (`attack_scores`); TPRs by `tpr_at_fpr` (FPR <= x)."""
  out = {}
  for name, (sm, sn) in scores.items():
    s = np.r_[np.asarray(sm, np.float64), np.asarray(sn, np.float64)]
    m = np.r_[np.ones(len(sm), bool), np.zeros(len(sn), bool)]
    out[name] = {'auc': auc(s, m), **{k: tpr_at_fpr(s, m, f) for k, f in FPRS.items()}}
  return out


def roc_on_grid(scores_m, scores_n, grid) -> np.ndarray:
  """TPR (len(grid),) at each FPR of `grid` (`tpr_at_fpr`): an ROC curve on a fixed grid, to
  average over target networks and plot."""
  s = np.r_[np.asarray(scores_m, np.float64), np.asarray(scores_n, np.float64)]
  m = np.r_[np.ones(len(scores_m), bool), np.zeros(len(scores_n), bool)]
  f, t, _ = roc_curve(s, m)
  return np.array([t[f <= g * (1 + 1e-12)].max() for g in np.asarray(grid, np.float64)])
