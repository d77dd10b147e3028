"""Kernel ridge regression (KRR): the solve and predict at the heart of FRePo, KIP, RFAD and ISA.

With a support set S (here: the synthetic set) and targets T (a real batch),

    w   = (K_SS + lambda I)^-1 Y_S            (n_s, K)
    P_T = K_TS w                               (n_t, K)

where lambda = reg * trace(K_SS) / n_s (FRePo/ISA: reg = 1e-6). This is ISA Eq. 4 and FRePo's
meta-prediction. The system is solved with a Cholesky factorization (never an explicit inverse). If
the factor is not finite (K_SS numerically indefinite, e.g. duplicated prototypes in float32), the
solve is retried with geometrically larger diagonal jitter, all inside jit (`lax.while_loop`), so a
step never returns NaN because of a borderline kernel.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def ridge(k_ss: Array, reg: float) -> Array:
  """lambda = reg * trace(K_SS) / n_s, the scale-free ridge used by FRePo, KIP and ISA."""
  n = k_ss.shape[0]
  return reg * jnp.trace(k_ss) / n


def krr_solve(k_ss: Array, y_s: Array, reg: float = 1e-6, max_tries: int = 6) -> Array:
  """Return w = (K_SS + lambda I)^-1 Y_S, shape (n_s, K).

  Args:
    k_ss: (n_s, n_s) symmetric positive semi-definite kernel of the support set.
    y_s: (n_s, K) support targets.
    reg: relative ridge; lambda = reg * trace(K_SS) / n_s.
    max_tries: if the Cholesky factor is not finite, the ridge is raised (to at least 1e-6 of
      the mean diagonal, then by 10 per try) and the factorization retried, at most this many
      times. If every try fails the weights are NaN, which the run loop reports as divergence.
  """
  n = k_ss.shape[0]
  k_ss = 0.5 * (k_ss + k_ss.T)  # exact symmetry for the factorization
  lam = ridge(k_ss, reg)        # differentiable, as in FRePo
  eye = jnp.eye(n, dtype=k_ss.dtype)
  chol = jnp.linalg.cholesky(k_ss + lam * eye)
  # The common case factorizes once; only a non-finite factor pays for the rescue.
  chol = jax.lax.cond(
      jnp.all(jnp.isfinite(chol)), lambda: chol,
      lambda: jnp.linalg.cholesky(k_ss + (lam + _rescue_jitter(
          jax.lax.stop_gradient(k_ss), jax.lax.stop_gradient(lam), max_tries)) * eye))
  return jax.scipy.linalg.cho_solve((chol, True), y_s)


def _rescue_jitter(k_ss: Array, lam: Array, max_tries: int) -> Array:
  """Extra diagonal jitter making K_SS + (lam + extra) I factorizable; no gradient.

  Starts at 1e-6 of the mean diagonal and grows by 10 per try. A `lax.while_loop` cannot be
  reverse-differentiated, so the loop only finds the jitter and the caller factorizes once more
  with it.
  """
  n = k_ss.shape[0]
  eye = jnp.eye(n, dtype=k_ss.dtype)
  floor = 1e-6 * jnp.maximum(jnp.trace(k_ss) / n, jnp.finfo(k_ss.dtype).tiny)
  ok = lambda extra: jnp.all(jnp.isfinite(jnp.linalg.cholesky(k_ss + (lam + extra) * eye)))

  def cond(carry):
    extra, tries = carry
    return jnp.logical_and(~ok(extra), tries < max_tries)

  def body(carry):
    extra, tries = carry
    return extra * 10.0, tries + 1

  extra, _ = jax.lax.while_loop(cond, body, (floor, jnp.array(1)))
  return extra


def krr_predict(k_ts: Array, k_ss: Array, y_s: Array, reg: float = 1e-6) -> Array:
  """P_T = K_TS (K_SS + lambda I)^-1 Y_S, shape (n_t, K) (ISA Eq. 4 / FRePo)."""
  return k_ts @ krr_solve(k_ss, y_s, reg)


def linear_kernel(f1: Array, f2: Array) -> Array:
  """Conjugate kernel from features: K = F1 F2^T, (n1, d) x (n2, d) -> (n1, n2)."""
  return f1 @ f2.T


def krr_predict_from_features(f_t: Array, f_s: Array, y_s: Array, reg: float = 1e-6) -> Array:
  """KRR with the conjugate (feature) kernel: P_T = F_T F_S^T (F_S F_S^T + lambda I)^-1 Y_S."""
  return krr_predict(linear_kernel(f_t, f_s), linear_kernel(f_s, f_s), y_s, reg)
