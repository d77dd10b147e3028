"""KRR solve/predict against a float64 numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np

from ddjax.kernels import krr


def _numpy_reference(f_t, f_s, y_s, reg):
  f_t, f_s, y_s = (np.asarray(a, np.float64) for a in (f_t, f_s, y_s))
  k_ss = f_s @ f_s.T
  lam = reg * np.trace(k_ss) / k_ss.shape[0]
  return f_t @ f_s.T @ np.linalg.solve(k_ss + lam * np.eye(len(k_ss)), y_s)


def test_krr_predict_matches_float64_numpy():
  rng = np.random.default_rng(0)
  f_s = rng.normal(size=(20, 64)).astype(np.float32)
  f_t = rng.normal(size=(50, 64)).astype(np.float32)
  y_s = rng.normal(size=(20, 10)).astype(np.float32)
  for reg in (1e-6, 1e-2, 1.0):
    got = krr.krr_predict_from_features(jnp.asarray(f_t), jnp.asarray(f_s), jnp.asarray(y_s), reg)
    np.testing.assert_allclose(got, _numpy_reference(f_t, f_s, y_s, reg), rtol=2e-3, atol=2e-4)


def test_krr_rank_deficient_kernel_uses_the_ridge():
  """n_s > d: K_SS is singular; the ridge (and jitter retry) must still give the exact answer."""
  rng = np.random.default_rng(1)
  f_s = rng.normal(size=(30, 8)).astype(np.float32)
  f_t = rng.normal(size=(5, 8)).astype(np.float32)
  y_s = rng.normal(size=(30, 3)).astype(np.float32)
  got = krr.krr_predict_from_features(jnp.asarray(f_t), jnp.asarray(f_s), jnp.asarray(y_s), 1e-3)
  np.testing.assert_allclose(got, _numpy_reference(f_t, f_s, y_s, 1e-3), rtol=1e-2, atol=1e-3)


def test_krr_solve_retries_with_jitter_instead_of_nan():
  """Duplicated prototypes at reg=0: the first Cholesky fails; the retry gives finite weights."""
  f = np.ones((4, 3), np.float32)
  k = jnp.asarray(f @ f.T)
  w = jax.jit(lambda k: krr.krr_solve(k, jnp.eye(4), reg=0.0))(k)
  assert np.all(np.isfinite(np.asarray(w)))


def test_krr_is_differentiable_and_matches_finite_differences():
  rng = np.random.default_rng(2)
  f_s = jnp.asarray(rng.normal(size=(6, 12)), jnp.float32)
  f_t = jnp.asarray(rng.normal(size=(9, 12)), jnp.float32)
  y_s = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
  loss = lambda fs: jnp.sum(krr.krr_predict_from_features(f_t, fs, y_s, 1e-2) ** 2)
  g = jax.grad(loss)(f_s)
  d = jnp.asarray(rng.normal(size=f_s.shape), jnp.float32) * 1e-2
  fd = (loss(f_s + d) - loss(f_s - d)) / 2
  np.testing.assert_allclose(jnp.vdot(g, d), fd, rtol=2e-2)
