"""Host-phased steps (`ddjax.distill.step.make_host_step`): DC's network update chosen on the host
gives the same states as the fused step with its `lax.cond`, also under BiLP and IDC; a resumed
DC run equals an uninterrupted one; wrappers keep their phase hooks consistent (IDC's
multi-formation is the step's set parameterisation, outside BiLP)."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ddjax.distill
from ddjax import transforms as T
from ddjax.distill import base as base_lib
from ddjax.distill import step as step_lib
from ddjax.distill.bilp import AdaptivePruning
from ddjax.distill.dc import DC
from ddjax.distill.idc import MultiFormation
from ddjax.models import build_model

K, SHAPE = 3, (8, 8, 1)


def _batch(seed, per_class):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(K), per_class)
  x = rng.normal(size=(len(labels),) + SHAPE).astype(np.float32) + labels[:, None, None, None]
  return {'x': jnp.asarray(x), 'y': jnp.asarray(np.eye(K, dtype=np.float32)[labels])}


def _distiller(kind, outer_loop=3):
  """(distiller, the stored set's parameterisation)."""
  model = build_model('convnet', K, depth=2, width=8, norm='instance')
  if kind == 'bilp-dm':
    from ddjax.distill.dm import DM
    return AdaptivePruning(DM(model, SHAPE, K), K * 8, every=2), base_lib.IDENTITY
  dc = DC(model, SHAPE, K, outer_loop=outer_loop, inner_loop=2, inner_batch=4)
  if kind == 'bilp':
    return AdaptivePruning(dc, K * 8, every=2), base_lib.IDENTITY
  if kind == 'idc-bilp':
    return AdaptivePruning(dc, K * 8, every=2), MultiFormation(2)
  return dc, base_lib.IDENTITY


@pytest.mark.parametrize('kind', ['dc', 'idc-bilp', 'bilp-dm'])   # idc-bilp holds bilp on dc
def test_host_phased_steps_equal_the_fused_step(kind):
  """IPC 10-like schedule at tiny size: outer_loop 3 (train, train, new network), 7 steps, so
  both phases run, twice; BiLP reselects every 2 steps in a program of its own. Every state and
  metric equals the fused step's, whose `lax.cond`s make the same choices on the device."""
  d, param = _distiller(kind)
  dc_phases = ['train', 'train', 'fresh'] * 2
  want = {'dc': dc_phases,
          'idc-bilp': [(s % 2 == 0, p) for s, p in enumerate(dc_phases)],
          'bilp-dm': [(s % 2 == 0, None) for s in range(6)]}[kind]
  assert [d.hooks.host_phase(s) for s in range(6)] == want   # schedules reach through wrappers
  rng = np.random.default_rng(1)
  syn = {'x': jnp.asarray(rng.normal(size=(2 * K,) + SHAPE), jnp.float32),
         'y': jnp.asarray(np.eye(K, dtype=np.float32).repeat(2, 0))}
  opt = step_lib.make_syn_optimizer('sgd', 0.1, 0.0, 20, learn_label=False,
                                    schedule='constant', momentum=0.5)
  classes = jnp.repeat(jnp.arange(K), 2)
  state0 = step_lib.init_state(d, T.identity(), opt, syn, jax.random.PRNGKey(0), param)
  fused = jax.jit(step_lib.make_step(d, T.identity(), opt, classes, param))
  parts = step_lib.make_host_step(d, T.identity(), opt, classes, param)
  assert parts.prepare is not None and parts.finish is not None
  split = step_lib.host_driver(parts)
  a = b = state0
  for s in range(7):
    batch, key = _batch(s, 8), jax.random.PRNGKey(100 + s)
    a, ma = fused(a, batch, key)
    b, mb = split(s, b, batch, key)
    assert sorted(ma) == sorted(mb)
    for k in ma:
      np.testing.assert_allclose(float(mb[k]), float(ma[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-5)
  assert int(b.step) == 7
  if kind != 'bilp-dm':   # the network count followed the host's schedule: 2 iterations + 1
    dc_state = b.distiller_state if kind == 'dc' else b.distiller_state.wrapped_state
    assert int(dc_state.count) == 1
  if kind != 'dc':        # the selection happened, and masks some samples
    assert int(b.distiller_state.selection.count) == 4
    assert 0 < float(b.distiller_state.selection.mask.mean()) < 1


def test_dc_phases_are_the_branches_of_update():
  """update_at(FRESH) is `update` after the last outer loop, bit for bit (a new network from the
  same key); update_at(TRAIN) is `update` before it."""
  d, _ = _distiller('dc')
  syn = {'x': jnp.asarray(np.random.default_rng(2).normal(size=(2 * K,) + SHAPE), jnp.float32)}
  state = d.init(syn, jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(3)
  for count, phase in ((2, 'fresh'), (0, 'train')):
    st = state.replace(count=jnp.int32(count))
    traced = jax.jit(d.update)(syn, st, key)
    phased = jax.jit(d.update_at, static_argnums=0)(phase, syn, st, key)
    assert int(traced.count) == int(phased.count) == (0 if phase == 'fresh' else 1)
    for x, y in zip(jax.tree_util.tree_leaves(traced), jax.tree_util.tree_leaves(phased)):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_distillers_without_a_schedule_keep_the_fused_step():
  from ddjax.distill.dm import DM
  dm = DM(build_model('convnet', K, depth=2, width=8, norm='instance'), SHAPE, K)
  assert dm.hooks is None
  opt = step_lib.make_syn_optimizer('sgd', 1.0, 0.0, 20, learn_label=False)
  parts = step_lib.make_host_step(dm, T.identity(), opt, jnp.repeat(jnp.arange(K), 1))
  assert parts.prepare is None and parts.finish is None and parts.phase is None
  with pytest.raises(ValueError, match='phase'):
    _distiller('dc')[0].update_at('other', None, None, jax.random.PRNGKey(0))


def test_wrappers_override_the_phase_hooks_with_the_plain_ones():
  """A wrapper that changes `before_loss` / `update` must change `before_loss_at` / `update_at`
  alike, in the hooks it exposes, or the host-phased programs would skip it (base.Wrapper's
  rule)."""
  import pkgutil, importlib
  for info in pkgutil.iter_modules(ddjax.distill.__path__):
    importlib.import_module(f'ddjax.distill.{info.name}')
  wrappers = [c for c in _subclasses(base_lib.Wrapper)]
  assert 'AdaptivePruning' in {c.__name__ for c in wrappers}
  for cls in wrappers:
    for plain, phased in (('before_loss', 'before_loss_at'), ('update', 'update_at')):
      if _defines(cls, plain):
        assert _defines(cls, phased), f'{cls.__name__} overrides {plain} but not {phased}'
        assert _defines(cls, 'hooks'), f'{cls.__name__} overrides {plain} but not its hooks'
  d, _ = _distiller('bilp')
  hooks = d.hooks
  for name in ('before_loss', 'before_loss_at', 'update_at', 'host_phase'):
    assert getattr(hooks, name).__self__ is d, name     # the wrapper's own, not DC's


def _subclasses(cls):
  for sub in cls.__subclasses__():
    yield sub
    yield from _subclasses(sub)


def _defines(cls, name):
  return any(name in vars(k) for k in inspect.getmro(cls)
             if k not in (base_lib.Wrapper, base_lib.Distiller, object))


def test_resumed_dc_run_equals_uninterrupted_run(tiny_npz, tmp_path, monkeypatch):
  """DC at outer_loop 3 through the pipeline (host-phased programs): killed at step 5, resumed
  from the checkpoint at step 3 (mid-iteration), it ends on the uninterrupted run's set."""
  import os
  from conftest import load_shipped_config, run_killed_and_resumed
  cfg = load_shipped_config('dc')
  for key, value in {'data.name': 'npz', 'data.dir': tiny_npz, 'model.width': 8,
                     'model.depth': 2, 'distill.ipc': 2, 'distill.steps': 7, 'dc.iterations': 0,
                     'dc.outer_loop': 3, 'dc.inner_loop': 2, 'distill.batch_per_class': 10,
                     'eval.num_models': 0, 'checkpoint.every': 3, 'log.every': 1}.items():
    block, leaf = key.split('.')
    cfg[block][leaf] = value
  straight, interrupted, results = run_killed_and_resumed(cfg, tmp_path, monkeypatch)
  assert results['distill']['resumed_from'] == 3
  with np.load(os.path.join(straight, 'distilled.npz')) as f, \
      np.load(os.path.join(interrupted, 'distilled.npz')) as g:
    np.testing.assert_allclose(f['x'], g['x'], rtol=0, atol=1e-6)
