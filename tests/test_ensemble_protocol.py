"""The 'ensemble' protocol (EDC / G-VBSM's evaluation): its loss, the mean-of-logits target, the
schedules, the parameter EMA, students learning from teachers, one end-to-end run, validation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_CLASSES, make_tiny_arrays, tiny_config
from ddjax.evaluate.protocols import ensemble as E
from ddjax.models import build_model


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_mse_ce_and_kl_match_numpy():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4)) * 3
  labels = np.array([0, 3, 1, 2, 2, 0])
  log_p = np.log(_softmax(s))
  want = np.mean((s - t) ** 2) + 0.15 * -np.mean(log_p[np.arange(6), labels])
  got = E.mse_ce(jnp.asarray(s), jnp.asarray(t), jnp.asarray(labels), 0.15)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # the loss as the training step sees it: target (B, 2, K) = (teacher logits, one-hot label)
  target = jnp.stack([jnp.asarray(t), jax.nn.one_hot(labels, 4)], axis=1)
  recipe = E.make_recipe(6, w_ce=0.15)
  np.testing.assert_allclose(E.ensemble_loss(recipe)(jnp.asarray(s), target), want, rtol=1e-5)
  assert float(E.ensemble_loss(E.make_recipe(6, w_ce=0.0))(jnp.asarray(t), target)) == 0.0
  temp = 30.0                               # 'kl': batchmean KL at T, no T^2
  p, q = _softmax(t / temp), _softmax(s / temp)
  kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
  got = E.ensemble_loss(E.make_recipe(6, loss='kl', temperature=temp))(jnp.asarray(s), target)
  np.testing.assert_allclose(got, kl, rtol=1e-4, atol=1e-8)


def test_target_is_the_mean_of_the_teachers_logits():
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 6, 6, 1))
  teachers = (build_model('mlp', 3, widths=(4,)), build_model('mlp', 3, widths=(7, 5)))
  variables = [m.init(jax.random.PRNGKey(i + 1), x, train=False) for i, m in enumerate(teachers)]
  each = [np.asarray(m.apply(v, x, train=False)[0]) for m, v in zip(teachers, variables)]
  assert not np.allclose(each[0], each[1])
  got = E.mean_teacher_logits(teachers, variables, x)
  np.testing.assert_allclose(got, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('schedule', E.SCHEDULES)
def test_each_schedule_follows_its_formula_per_epoch(schedule):
  epochs, per_epoch, lr0 = 20, 3, 1e-3
  recipe = E.make_recipe(30, batch_size=10, epochs=epochs, schedule=schedule, zeta=2.0, lr=lr0)
  assert recipe.steps_per_epoch == per_epoch and recipe.steps == 60
  formulas = {
      'cosine': lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)),
      'multistep': lambda e: 0.5 ** sum(e >= m for m in (16, 18, 19)),
      'smoothed': lambda e: 0.5 * (1 + math.cos(math.pi * e / (2 * epochs))),
      'linear': lambda e: 1 - e / (2 * epochs),
  }
  sched = E.make_schedule(recipe)
  for epoch in (0, 1, 7, 15, 16, 17, 18, 19):
    for within in range(per_epoch):        # constant within an epoch
      got = float(sched(epoch * per_epoch + within))
      assert got == pytest.approx(lr0 * formulas[schedule](epoch), rel=1e-5), (epoch, within)
  assert E.milestones(1000) == (800, 900, 950)          # EDC's CIFAR-10 MultiStepLR
  if schedule == 'smoothed':   # zeta 2 ends near half of lr0; zeta 1 is the plain cosine
    assert float(sched(59)) == pytest.approx(lr0 * 0.5 * (1 + math.cos(math.pi * 19 / 40)))
    assert float(sched(59)) > 0.5 * lr0
    one = E.make_schedule(E.make_recipe(30, batch_size=10, epochs=epochs, schedule=schedule,
                                        zeta=1.0))
    cos = E.make_schedule(E.make_recipe(30, batch_size=10, epochs=epochs, schedule='cosine'))
    np.testing.assert_allclose([one(s) for s in range(60)], [cos(s) for s in range(60)],
                               rtol=1e-6)
  if schedule == 'linear':     # zeta 1: SRe2L's 1 - e / E
    one = E.make_schedule(E.make_recipe(30, batch_size=10, epochs=epochs, schedule=schedule,
                                        zeta=1.0))
    assert float(one(3 * 15)) == pytest.approx(lr0 * (1 - 15 / 20))


def test_ema_parameters_follow_a_hand_rolled_ema_and_keep_live_batch_stats():
  k = TINY_CLASSES
  student = build_model('convnet', k, depth=1, width=4, norm='batch')
  teachers = (build_model('mlp', k, widths=(4,)),)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 6, 6, 1))
  t_vars = (teachers[0].init(jax.random.PRNGKey(1), x, train=False),)
  labels = jnp.arange(8) % k
  recipe = E.make_recipe(8, batch_size=4, epochs=3, ema=0.9, lr=1e-2)
  step = E.make_student_step(student, teachers, recipe, k)
  state = E.init_state(student, jax.random.PRNGKey(2), (6, 6, 1), recipe)
  hand = state[0][0]
  for s in range(5):
    state, _ = step(state, t_vars, x, labels, jnp.arange(4) + (s % 2) * 4,
                    jax.random.PRNGKey(10 + s))
    hand = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, hand, state[0][0])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         state[1], hand)
  gap = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state[1],
                               state[0][0])
  assert max(jax.tree_util.tree_leaves(gap)) > 1e-4          # the EMA lags the live parameters
  variables = E.state_variables(state)
  assert variables['params'] is state[1]                     # parameters only are swapped
  assert variables['batch_stats'] is state[0][1]             # the live batch statistics
  off = E.make_recipe(8, batch_size=4, epochs=3, ema=0.0)
  plain = E.init_state(student, jax.random.PRNGKey(2), (6, 6, 1), off)
  assert plain[1] is None and E.state_variables(plain)['params'] is plain[0][0]


def _teacher(x, y, width, seed):
  from ddjax.evaluate import observer as observer_lib
  model = build_model('mlp', TINY_CLASSES, widths=(width,))
  variables = observer_lib.train(model, x, y, jax.random.PRNGKey(seed), epochs=15, batch_size=32,
                                 lr=3e-3)
  return model, variables


def test_students_learn_from_the_teachers_alone():
  """Two MLP teachers trained on the tiny problem; students see 4 images per class and the
  teachers' mean logits only (w_ce = 0: the set's labels are not used) and beat chance clearly."""
  from ddjax.evaluate.train import accuracy
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  teachers = [_teacher(x_tr, y_tr, w, s) for w, s in ((32, 0), (16, 1))]
  for model, variables in teachers:
    assert accuracy(model, variables, x_te, y_te) > 0.9
  pick = np.concatenate([np.flatnonzero(y_tr == c)[:4] for c in range(TINY_CLASSES)])
  wrong = (y_tr[pick] + 1) % TINY_CLASSES                     # labels that w_ce = 0 ignores
  student = build_model('mlp', TINY_CLASSES, widths=(32,))
  recipe = E.make_recipe(len(pick), batch_size=6, epochs=25, w_ce=0.0, ema=0.9, min_crop=0.5,
                         schedule='cosine')
  test = lambda v: accuracy(student, v, x_te, y_te)
  _, res = E.train_student(jax.random.PRNGKey(3), student, [m for m, _ in teachers],
                           [v for _, v in teachers], x_tr[pick], wrong, recipe, TINY_CLASSES,
                           test)
  assert res['final_acc'] > 1 / TINY_CLASSES + 0.35, res
  assert res['best_last20_acc'] >= res['final_acc'] and str(recipe.epochs) in res['val_accs']


def _run_cfg(tiny_npz, tmp_path):
  from ddjax.config import method_config
  cfg = method_config('random_subset')
  base = tiny_config(tiny_npz)
  cfg.data, cfg.eval.model, cfg.distill.ipc = base.data, base.eval.model, 2
  cfg.eval.model.update(dict(arch='mlp', mlp_widths=(16,)))      # a quick compile
  cfg.eval.num_models, cfg.eval.protocol = 2, 'ensemble'
  cfg.observer.update(dict(dir=str(tmp_path / 'obs'), epochs=1, batch_size=32, lr=3e-3,
                           ensemble='MLP,ConvNet-1'))
  cfg.ensemble.update(dict(epochs=3, batch_size=4))
  return cfg


def test_end_to_end_run_with_two_zoo_observers_and_protocol_train(tiny_npz, tmp_path):
  import ddjax
  from ddjax import registry
  from ddjax.runtime.pipeline import load_data
  cfg = _run_cfg(tiny_npz, tmp_path)
  results = ddjax.run(cfg, str(tmp_path / 'run'))
  ev = results['eval']
  assert ev['protocol'] == 'ensemble' and ev['epochs'] == 3 and ev['batch_size'] == 4
  assert ev['steps'] == 3 * 2                       # 6 images, batch 4: 2 steps per epoch
  assert len(ev['accs']) == 2 and 0 <= ev['acc_mean'] <= 1
  assert ev['best_last20_mean'] >= ev['acc_mean']
  assert ev['recipe']['loss'] == 'mse_ce' and ev['recipe']['ema'] == 0.99
  obs = results['observers']
  assert obs['names'] == ['MLP', 'ConvNet-1'] and len(obs['teachers']) == 2
  assert [t['record']['arch']['arch'] for t in obs['teachers']] == ['mlp', 'convnet']
  assert all(t['trained_now'] for t in obs['teachers']) and 0 <= obs['set_agreement'] <= 1
  assert results['set_pixels']['clipped']           # 'auto' clips: the sets are image files
  # Protocol.train (the suite's): one network, the cached teachers reused; its variables are
  # the EMA parameters
  data = load_data(cfg)
  spec = registry.get_protocol('ensemble')
  syn = {'x': data.x_train[:6], 'y': np.eye(3, dtype=np.float32)[data.y_train[:6]]}
  model = ddjax.models.from_config(cfg.eval.model, 3)
  variables = spec.train(cfg, data, syn, None, jax.random.PRNGKey(0), model, {'epochs': 3})
  init = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)), train=False)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(init)
  assert model.apply(variables, jnp.asarray(data.x_test[:4]), train=False)[0].shape == (4, 3)
  with pytest.raises(ValueError, match="cannot take the override.*'loss'"):
    spec.train(cfg, data, syn, None, jax.random.PRNGKey(0), model, {'loss': 'ce'})


def test_config_validation_presets_and_resume():
  from ddjax.config import ConfigError, method_config, validate
  from ddjax.runtime.pipeline import config_differences
  cfg = method_config('random_subset')
  cfg.eval.protocol = 'ensemble'
  validate(cfg)
  for key, value, match in (('schedule', 'step', r"ensemble.schedule='step' is not one of"),
                            ('ema', 1.0, r'ensemble.ema must lie in \[0, 1\)'),
                            ('ema', -0.1, r'ensemble.ema must lie in \[0, 1\)'),
                            ('w_ce', -0.5, 'ensemble.w_ce must be a number >= 0'),
                            ('loss', 'mse', r"ensemble.loss='mse' is not one of"),
                            ('min_crop', 0.0, r'ensemble.min_crop must lie in \(0, 1\]'),
                            ('randaugment', True, 'RandAugment .* not implemented')):
    bad = method_config('random_subset')
    bad.ensemble[key] = value
    with pytest.raises(ConfigError, match=match):
      validate(bad)
  with pytest.raises(ValueError, match='ensemble.ema'):
    E.make_recipe(10, ema=1.0)
  # the bundles: EDC's and G-VBSM's CIFAR-10 students; epochs only with paper=True
  E.ensemble_preset(cfg, 'edc')
  e = cfg.ensemble
  assert (e.loss, e.w_ce, e.schedule, e.ema, e.batch_size, e.weight_decay, e.epochs) == (
      'mse_ce', 0.025, 'multistep', 0.99, 25, 0.01, E.ENSEMBLE_EPOCHS)
  E.ensemble_preset(cfg, 'gvbsm', paper=True, observers=True)
  assert (e.w_ce, e.schedule, e.ema, e.batch_size, e.weight_decay, e.epochs) == (
      0.15, 'cosine', 0.0, 100, 0.0, 1000)
  assert cfg.observer.ensemble == 'ResNet-18-BN,ConvNet-3'
  validate(cfg)
  with pytest.raises(ValueError, match='unknown ensemble preset'):
    E.ensemble_preset(cfg, 'rded')
  # the block only decides the evaluation: an older run's config without it resumes
  old = cfg.to_dict()
  del old['ensemble']
  assert config_differences(old, cfg.to_dict()) == []
