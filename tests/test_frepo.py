"""The FRePo distiller: the meta-loss goes down, the model pool ages and resets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_label_margin_is_frepos_term_against_numpy():
  """-mean_i min(top1_i - top2_i, 1/K) over label rows, class-agnostic; off gives 0."""
  model = build_model('mlp', TINY_CLASSES, widths=(8,))
  d = FRePo(model, FRePoConfig(num_models=1), TINY_SHAPE)
  y = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
  y[2] = [0.5, 0.5, -1.0]                                      # a tie: margin 0
  top = np.sort(y, axis=1)[:, ::-1]
  want = -np.mean(np.minimum(top[:, 0] - top[:, 1], 1.0 / 3))
  got = float(d.regularizer({'x': None, 'y': jnp.asarray(y)}, jnp.zeros(7, jnp.int32)))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert want < 0 and np.any(top[:, 0] - top[:, 1] > 1.0 / 3)  # both branches of the min
  off = FRePo(model, FRePoConfig(num_models=1, label_margin=False), TINY_SHAPE)
  assert float(off.regularizer({'x': None, 'y': jnp.asarray(y)}, None)) == 0.0


def test_batch_norm_features_use_running_statistics():
  """FRePo's features: inference mode, the pool model's running statistics, for any batch."""
  x, y, _, _ = make_tiny_arrays()
  model = build_model('convnet', TINY_CLASSES, depth=2, width=8, norm='batch',
                      norm_placement='frepo', bn_momentum=0.1)
  d = FRePo(model, FRePoConfig(num_models=1, max_online_updates=5), TINY_SHAPE)
  syn = {k: jnp.asarray(v) for k, v in init_synthetic(0, x, y, 2, TINY_CLASSES).items()}
  state = d.init(syn, jax.random.PRNGKey(0))
  for k in range(3):                       # online training moves the running statistics
    state = d.update(syn, state, jax.random.PRNGKey(k))
  variables = jax.tree_util.tree_map(lambda a: a[0], state.variables)
  assert np.abs(np.asarray(jax.tree_util.tree_leaves(variables['batch_stats'])[0])).max() > 0
  xb = jnp.asarray(x[:5])
  _, want = model.apply(variables, xb, train=False)
  np.testing.assert_allclose(d.features(variables, xb), want, rtol=1e-6)
  # one image's features do not depend on the batch it comes with (no batch statistics)
  np.testing.assert_allclose(d.features(variables, xb[:1]), want[:1], rtol=1e-5, atol=1e-6)


def test_paper_preset_is_frepos_published_setting():
  """configs/frepo.py:paper against FRePo's values (script/distill.py, networks.py, eval.py)."""
  from conftest import load_shipped_config
  cfg = load_shipped_config('frepo', 'paper')
  frepo_table = {
      'model.arch': 'convnet', 'model.depth': 3, 'model.width': 128, 'model.double_width': True,
      'model.norm': 'batch', 'model.norm_placement': 'frepo', 'model.bn_momentum': 0.1,
      'distill.optimizer': 'lamb', 'distill.lr': 3e-4, 'distill.label_lr': 3e-4,
      'distill.schedule': 'cosine', 'distill.end_fraction': 0.1, 'distill.batch_size': 1024,
      'distill.steps': 500_000, 'distill.learn_label': True,
      'distill.label_init': 'centered_one_hot', 'frepo.num_models': 10,
      'frepo.max_online_updates': 100, 'frepo.online_lr': 3e-4, 'frepo.reg': 1e-6,
      'frepo.label_margin': True, 'eval.model.width': 128, 'eval.model.double_width': True,
      'eval.model.norm': 'none', 'eval.num_models': 5, 'data.preprocessing': 'auto',
  }
  for key, want in frepo_table.items():
    node = cfg
    for part in key.split('.'):
      node = node[part]
    assert node == want, (key, node, want)


def test_cpu_default_budget_follows_the_ipc_and_an_explicit_budget_wins():
  """configs/frepo_isa.py's CPU default: 5000 steps at image lr 1e-2 below IPC 10, 10000 at 2e-2
  from IPC 10 (distill.steps = distill.lr = 0); a given distill.steps / distill.lr is used as is,
  by the optimizer too; :paper keeps FRePo's 500k steps at 3e-4."""
  from conftest import load_shipped_config
  from ddjax import registry
  from ddjax.runtime import pipeline
  facts = registry.DataFacts(image_shape=(28, 28, 1), num_classes=10)
  plan = lambda cfg: registry.resolve(cfg, facts)
  cfg = load_shipped_config('frepo_isa')
  assert (cfg.distill.steps, cfg.distill.lr, cfg.distill.label_lr) == (0, 0, 3e-3)
  got = {}
  for ipc in (1, 5, 10, 50):
    cfg.distill.ipc = ipc
    got[ipc] = (plan(cfg).steps, plan(cfg).lr)
  assert got == {1: (5000, 1e-2), 5: (5000, 1e-2), 10: (10_000, 2e-2), 50: (10_000, 2e-2)}

  def first_image_update(cfg):   # Adam's first step moves every entry by lr (cosine at step 0)
    opt = pipeline.make_optimizer(cfg, plan(cfg))
    params = {'x': jnp.zeros((2, 3)), 'y': jnp.zeros((2, 4))}
    updates, _ = opt.update({'x': jnp.ones((2, 3)), 'y': jnp.ones((2, 4))}, opt.init(params),
                            params)
    return float(-updates['x'][0, 0])

  assert first_image_update(cfg) == pytest.approx(2e-2, rel=1e-4)
  cfg.distill.steps, cfg.distill.lr = 123, 5e-3
  assert (plan(cfg).steps, plan(cfg).lr) == (123, 5e-3)
  assert first_image_update(cfg) == pytest.approx(5e-3, rel=1e-4)
  cfg.distill.ipc, cfg.distill.lr = 1, 0.0
  assert first_image_update(cfg) == pytest.approx(1e-2, rel=1e-4)
  paper = load_shipped_config('frepo', 'paper')
  assert (plan(paper).steps, plan(paper).lr) == (500_000, 3e-4)
