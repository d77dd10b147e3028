"""The FRePo distiller: the meta-loss goes down, the model pool ages and resets."""
import jax
import jax.numpy as jnp
import numpy as np

from conftest import TINY_CLASSES, TINY_SHAPE, make_tiny_arrays
from ddjax import transforms as T
from ddjax.data import centered_one_hot, init_synthetic
from ddjax.distill import step as step_lib
from ddjax.distill.frepo import FRePo, FRePoConfig
from ddjax.models import build_model


def _setup(num_models=3, max_updates=4, transform=None, lr=1e-2):
  x, y, _, _ = make_tiny_arrays()
  model = build_model('convnet', TINY_CLASSES, depth=2, width=8)
  distiller = FRePo(model, FRePoConfig(num_models=num_models, max_online_updates=max_updates,
                                       online_lr=1e-3), TINY_SHAPE)
  syn = {k: jnp.asarray(v) for k, v in init_synthetic(0, x, y, 2, TINY_CLASSES).items()}
  transform = transform or T.identity()
  opt = step_lib.make_syn_optimizer('adam', lr, lr, steps=100)
  state = step_lib.init_state(distiller, transform, opt, syn, jax.random.PRNGKey(0))
  classes = jnp.repeat(jnp.arange(TINY_CLASSES), 2)
  step = jax.jit(step_lib.make_step(distiller, transform, opt, classes))
  batch = {'x': jnp.asarray(x), 'y': jnp.asarray(centered_one_hot(y, TINY_CLASSES))}
  return distiller, state, step, batch


def _pool_meta_loss(distiller, syn, inner, batch):
  """Plain meta-loss of `syn` averaged over every model of a fixed pool."""
  losses = []
  for i in range(distiller.cfg.num_models):
    ps = distiller.per_sample(syn, inner.replace(current=jnp.int32(i)), batch, None)
    losses.append(float(jnp.mean(ps.loss)))
  return np.mean(losses)


def test_frepo_steps_lower_the_meta_loss():
  distiller, state, step, batch = _setup()
  pool0 = state.distiller_state
  before = _pool_meta_loss(distiller, state.syn, pool0, batch)
  for s in range(15):
    state, metrics = step(state, batch, jax.random.PRNGKey(s))
  after = _pool_meta_loss(distiller, state.syn, pool0, batch)
  assert np.isfinite(after) and after < 0.8 * before, (before, after)


def test_frepo_with_isa_lowers_the_meta_loss():
  distiller, state, step, batch = _setup(transform=T.chain(T.drop_easiest(0.2), T.isa(1.0)))
  before = _pool_meta_loss(distiller, state.syn, state.distiller_state, batch)
  pool0 = state.distiller_state
  for s in range(15):
    state, metrics = step(state, batch, jax.random.PRNGKey(s))
  assert metrics['kept'] == 96  # ceil(0.8 * 120)
  assert _pool_meta_loss(distiller, state.syn, pool0, batch) < 0.8 * before


def test_pool_starts_staggered_then_ages_and_resets():
  num, max_updates = 3, 4
  distiller, state, step, batch = _setup(num_models=num, max_updates=max_updates)
  ages = np.array(state.distiller_state.age)
  np.testing.assert_array_equal(ages, [i * max_updates // num for i in range(num)])
  resets = 0
  for s in range(20):
    i = int(state.distiller_state.current)
    old = jax.tree_util.tree_map(lambda a: np.asarray(a[i]), state.distiller_state.variables['params'])
    state, _ = step(state, batch, jax.random.PRNGKey(100 + s))
    ages[i] += 1
    new = jax.tree_util.tree_map(lambda a: np.asarray(a[i]), state.distiller_state.variables['params'])
    changed = any(not np.array_equal(a, b) for a, b in
                  zip(jax.tree_util.tree_leaves(old), jax.tree_util.tree_leaves(new)))
    assert changed                               # the used model trained (or was re-initialised)
    if ages[i] >= max_updates:
      ages[i] = 0
      resets += 1
    np.testing.assert_array_equal(np.asarray(state.distiller_state.age), ages)
    others = [j for j in range(num) if j != i]
    assert np.all(np.asarray(state.distiller_state.age)[others] < max_updates)
  assert int(state.distiller_state.resets) == resets > 0


def test_label_margin_regularizer():
  x, y, _, _ = make_tiny_arrays()
  model = build_model('mlp', TINY_CLASSES, widths=(8,))
  d = FRePo(model, FRePoConfig(label_margin=0.5, num_models=1), TINY_SHAPE)
  classes = jnp.array([0, 1, 2])
  y_ok = jnp.eye(3) * 2.0                            # margin 2 >= 0.5: no penalty
  y_bad = jnp.array([[0., 1., 0.], [0., 1., 0.], [0., 0., 0.3]])  # margins -1, 1, 0.3
  assert float(d.regularizer({'x': None, 'y': y_ok}, classes)) == 0.0
  np.testing.assert_allclose(d.regularizer({'x': None, 'y': y_bad}, classes),
                             (1.5 + 0.0 + 0.2) / 3, rtol=1e-6)
