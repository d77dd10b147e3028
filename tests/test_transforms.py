"""ISA's closed form against quadrature, and crucial-sample selection."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from ddjax import transforms as T


def _record(key, b=12, k=5):
  kp, kt = jax.random.split(key)
  pred = jax.random.normal(kp, (b, k))
  target = jax.random.normal(kt, (b, k))
  return T.per_sample_mse(pred, target)


def _quadrature_loss(pred, target, partner, eps):
  """1/eps int_0^eps 1/2 |(P + a dP) - (y + a dy)|^2 da, by adaptive quadrature, per row."""
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  out = []
  for i, j in enumerate(np.asarray(partner)):
    f = lambda a: 0.5 * np.sum((pred[i] + a * (pred[j] - pred[i])
                                - target[i] - a * (target[j] - target[i])) ** 2)
    out.append(integrate.quad(f, 0.0, eps, epsabs=1e-12)[0] / eps)
  return np.array(out)


@pytest.mark.parametrize('eps', [1.0, 0.5, 0.1])
def test_isa_closed_form_equals_quadrature(eps):
  ps = _record(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(1)
  out, _ = T.isa(eps).apply(ps, (), key)
  partner = T.partner_indices(key, ps.batch_size)
  np.testing.assert_allclose(out.loss, _quadrature_loss(ps.pred, ps.target, partner, eps),
                             rtol=1e-5, atol=1e-6)


def test_isa_eps_zero_is_plain_loss():
  ps = _record(jax.random.PRNGKey(2))
  a, b = T.isa_residuals(ps, T.partner_indices(jax.random.PRNGKey(3), ps.batch_size))
  np.testing.assert_allclose(T.isa_loss(a, b, 0.0), ps.loss, rtol=1e-6)


def test_isa_gradient_equals_quadrature_gradient():
  """d/dP of the closed form equals d/dP of a fine Gauss-Legendre quadrature of the integral."""
  eps = 1.0
  ps = _record(jax.random.PRNGKey(4), b=6, k=3)
  partner = T.partner_indices(jax.random.PRNGKey(5), 6)
  nodes, weights = np.polynomial.legendre.leggauss(20)  # exact for degree <= 39 polynomials
  alphas = jnp.asarray(0.5 * eps * (nodes + 1)); w = jnp.asarray(0.5 * weights)

  def closed(pred):
    a, b = T.isa_residuals(ps.replace(pred=pred), partner)
    return jnp.mean(T.isa_loss(a, b, eps))

  def quad(pred):
    a, b = T.isa_residuals(ps.replace(pred=pred), partner)
    per_alpha = jax.vmap(lambda al: 0.5 * jnp.sum((a + al * b) ** 2, axis=-1))(alphas)
    return jnp.mean(jnp.sum(w[:, None] * per_alpha, axis=0))

  np.testing.assert_allclose(closed(ps.pred), quad(ps.pred), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(closed)(ps.pred), jax.grad(quad)(ps.pred),
                             rtol=1e-4, atol=1e-6)


def test_isa_pairing_rule_is_a_single_cycle():
  for n in (2, 3, 10, 64):
    partner = np.asarray(T.partner_indices(jax.random.PRNGKey(n), n))
    assert sorted(partner) == list(range(n))        # each sample is a partner exactly once
    assert np.all(partner != np.arange(n))          # never paired with itself
    seen, i = set(), 0
    while i not in seen:
      seen.add(i); i = partner[i]
    assert len(seen) == n                           # one cycle through the whole batch


@pytest.mark.parametrize('b,p', [(10, 0.2), (1024, 0.2), (7, 0.3), (100, 0.29), (5, 0.0)])
def test_drop_easiest_keeps_ceil_and_the_hardest(b, p):
  loss = jax.random.permutation(jax.random.PRNGKey(b), jnp.arange(b, dtype=jnp.float32))
  ps = T.PerSample(pred=jnp.zeros((b, 2)) + loss[:, None], target=jnp.zeros((b, 2)), loss=loss)
  out, _ = T.drop_easiest(p).apply(ps, (), jax.random.PRNGKey(0))
  k = math.ceil(round((1 - p) * b, 9))
  assert out.batch_size == k == T.num_kept(b, p)
  np.testing.assert_array_equal(np.sort(np.asarray(out.loss)), np.arange(b - k, b))
  np.testing.assert_array_equal(out.pred[:, 0], out.loss)   # rows stay together


def test_drop_hardest_keeps_the_easiest():
  loss = jnp.array([5., 1., 4., 2., 3.])
  ps = T.PerSample(pred=jnp.zeros((5, 1)), target=jnp.zeros((5, 1)), loss=loss)
  out, _ = T.drop_hardest(0.4).apply(ps, (), jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.sort(np.asarray(out.loss)), [1., 2., 3.])


def test_drop_easiest_passes_no_gradient_through_the_selection():
  """The gradient of the kept mean equals the gradient with the kept set fixed in advance."""
  x = jnp.array([0.3, -2.0, 1.5, 0.1, -0.7, 2.2])

  def loss_of(x, transform):
    ps = T.PerSample(pred=x[:, None], target=jnp.zeros((6, 1)), loss=0.5 * x ** 2)
    return T.transformed_loss(transform, ps, transform.init(), jax.random.PRNGKey(0))[0]

  g = jax.grad(loss_of)(x, T.drop_easiest(0.5))
  kept = np.argsort(-np.asarray(0.5 * x ** 2))[:3]
  expected = np.zeros(6); expected[kept] = np.asarray(x)[kept] / 3
  np.testing.assert_allclose(g, expected, rtol=1e-6)


def test_chain_drop_then_isa_shapes_and_config():
  ps = _record(jax.random.PRNGKey(7), b=20)
  t = T.chain(T.drop_easiest(0.2), T.isa(1.0))
  out, state = t.apply(ps, t.init(), jax.random.PRNGKey(0))
  assert out.batch_size == 16 and state == ((), ())
  jitted = jax.jit(lambda ps, key: t.apply(ps, t.init(), key)[0].loss)   # jit-able end to end
  assert jitted(ps, jax.random.PRNGKey(0)).shape == (16,)
  with pytest.raises(ValueError, match='init'):
    t.apply(ps, (), jax.random.PRNGKey(0))


@pytest.mark.parametrize('bad', [-0.1, 1.0])
def test_invalid_fractions_raise(bad):
  with pytest.raises(ValueError, match='fraction'):
    T.drop_easiest(bad)
  with pytest.raises(ValueError, match='eps'):
    T.isa(bad + 2.0)
