"""The shared classifier-training core (ddjax.models.training)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddjax.models import build_model
from ddjax.models.training import (carry_variables, cross_entropy, epoch_batches, fresh_carry,
                                   init_carry, make_train_step, mse_loss, split_variables)

SHAPE = (8, 8, 1)


@pytest.mark.parametrize('n,batch', [(10, 4), (10, 10), (10, 32), (7, 1), (12, 5)])
def test_epoch_batches_cover_every_example_in_equal_batches(n, batch):
  idx = np.asarray(epoch_batches(jax.random.PRNGKey(0), n, batch))
  nb = -(-n // min(batch, n))
  assert idx.shape == (nb, -(-n // nb)) and idx.shape[1] <= batch
  assert set(idx.ravel().tolist()) == set(range(n))
  # the first n entries are one permutation; the rest wrap around to its start
  flat = idx.ravel()
  assert len(set(flat[:n].tolist())) == n
  np.testing.assert_array_equal(flat[n:], flat[:idx.size - n])
  np.testing.assert_array_equal(
      idx, jax.jit(epoch_batches, static_argnums=(1, 2))(jax.random.PRNGKey(0), n, batch))


@pytest.mark.parametrize('norm', ['none', 'batch'])
def test_step_trains_and_carries_batch_stats(norm):
  model = build_model('convnet', 3, depth=1, width=4, norm=norm)
  opt = optax.adam(1e-2)
  carry = fresh_carry(model, jax.random.PRNGKey(0), SHAPE, opt)
  assert (carry[1] is None) == (norm == 'none')
  x = jax.random.normal(jax.random.PRNGKey(1), (6,) + SHAPE)
  labels = jnp.arange(6) % 3
  step = jax.jit(make_train_step(model, opt, cross_entropy))
  first = None
  for _ in range(20):
    carry, loss = step(carry, x, labels)
    first = loss if first is None else first
  assert loss < first
  variables = carry_variables(carry)
  assert set(variables) == ({'params'} if norm == 'none' else {'params', 'batch_stats'})
  if norm == 'batch':   # the running statistics moved away from their initial values
    fresh = fresh_carry(model, jax.random.PRNGKey(0), SHAPE, opt)[1]
    assert not np.allclose(jax.tree_util.tree_leaves(fresh)[0],
                           jax.tree_util.tree_leaves(variables['batch_stats'])[0])


def test_step_augments_with_the_key_and_checks_shapes():
  model = build_model('mlp', 2, widths=(4,))
  opt = optax.sgd(0.1)
  seen = []
  step = make_train_step(model, opt, mse_loss, lambda k, x: seen.append(k) or x + 1.0)
  carry = init_carry(model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE)), opt)
  key = jax.random.PRNGKey(5)
  _, loss = step(carry, jnp.zeros((3,) + SHAPE), jnp.zeros((3, 2)), key)
  assert len(seen) == 1 and seen[0] is key and loss.shape == ()
  with pytest.raises(AssertionError):
    step(carry, jnp.zeros((3,) + SHAPE), jnp.zeros((4, 2)), key)


def test_split_variables_rejects_unknown_collections():
  with pytest.raises(ValueError, match='collections'):
    split_variables({'params': {}, 'cache': {}})
  assert split_variables({'params': 1}) == (1, None)
