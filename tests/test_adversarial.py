"""L-infinity attacks in pixel space (`ddjax.evaluate.adversarial`) and the suite's 'adversarial'
axis."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_CLASSES, make_tiny_arrays
from ddjax.data.preprocess import apply_preprocessor, fit_preprocessor
from ddjax.evaluate import adversarial as adv

EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255)


@pytest.fixture(scope='module')
def trained():
  """A small ConvNet trained on the tiny 3-class problem under ZCA preprocessing (an affine map
  with a full matrix: the attacks must differentiate through it), and test pixels with some
  exact 0 and 1 values (the pixel box's faces)."""
  from ddjax.evaluate.protocols.base import get_protocol
  from ddjax.evaluate.train import train_from_scratch
  from ddjax.models import build_model
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  pre = fit_preprocessor(x_tr, 'zca')
  model = build_model('convnet', TINY_CLASSES, depth=2, width=8)
  protocol = get_protocol('dc', len(y_tr), TINY_CLASSES, steps=150)
  variables = train_from_scratch(jax.random.PRNGKey(0), model,
                                 jnp.asarray(apply_preprocessor(pre, x_tr)),
                                 jnp.asarray(np.eye(TINY_CLASSES, dtype=np.float32)[y_tr]),
                                 protocol)
  x = x_te.copy()
  x[:, 0, :3] = 0.0
  x[:, -1, :3] = 1.0
  return model, variables, pre, x, y_te


@pytest.fixture(scope='module')
def attacks(trained):
  """Jitted fgsm(x, y, eps) and pgd(x, y, key, eps, step_size) (steps static) of the trained
  network, compiled once for the module."""
  model, variables, pre, _, _ = trained
  f = adv.model_apply_fn(model, variables, lambda v: apply_preprocessor(pre, v))
  fgsm = jax.jit(lambda x, y, eps: adv.fgsm(f, x, y, eps))
  pgd = jax.jit(lambda x, y, key, eps, steps, alpha: adv.pgd(f, x, y, key, eps, steps, alpha),
                static_argnums=4)
  return fgsm, pgd


def test_perturbations_stay_in_the_eps_ball_and_the_pixel_range(trained, attacks):
  fgsm, pgd = attacks
  _, _, _, x, y = trained
  x, y = jnp.asarray(x), jnp.asarray(y)
  for eps in (4 / 255, 16 / 255):
    for x_adv in (fgsm(x, y, eps),
                  pgd(x, y, jax.random.PRNGKey(3), eps, 7, adv.madry_step_size(eps, 7))):
      d = np.asarray(x_adv - x)
      assert np.abs(d).max() <= eps + 1e-6
      assert np.abs(d).max() >= eps - 1e-6             # it does move: the budget is used
      assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  # a step far larger than the ball still ends inside it (the projection, not the step, bounds)
  x_adv = pgd(x, y, jax.random.PRNGKey(3), 4 / 255, 7, 0.5)
  assert np.abs(np.asarray(x_adv - x)).max() <= 4 / 255 + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_budget_zero_changes_nothing_and_gives_the_clean_accuracy(trained, attacks):
  model, variables, pre, x, y = trained
  fgsm, pgd = attacks
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  assert np.array_equal(np.asarray(fgsm(xj, yj, 0.0)), x)
  assert np.array_equal(np.asarray(pgd(xj, yj, jax.random.PRNGKey(1), 0.0, 7, 0.0)), x)
  clean, _ = adv.robust_correct(model, variables, pre, x, y, 0.0, 'none')
  assert 0.6 < clean.mean() < 1.0         # a trained network, not a perfect one
  for attack in ('fgsm', 'pgd'):
    c, a = adv.robust_correct(model, variables, pre, x, y, 0.0, attack,
                              key=jax.random.PRNGKey(2), batch_size=32)
    assert np.array_equal(c, clean) and np.array_equal(a, clean)
    assert adv.robust_accuracy(model, variables, pre, x, y, 0.0, attack,
                               key=jax.random.PRNGKey(2)) == clean.mean()


def test_pgd_is_no_weaker_than_fgsm(trained):
  """On the trained ConvNet, in aggregate at every budget (margin 0: PGD's first step from its
  random start already covers FGSM's move within the ball, and 10 more steps of 2.5 eps / 10
  only climb the loss further on a smooth small network; both are deterministic here)."""
  model, variables, pre, x, y = trained
  gaps = []
  for j, eps in enumerate(EPS):
    fg = adv.robust_accuracy(model, variables, pre, x, y, eps, 'fgsm')
    pg = adv.robust_accuracy(model, variables, pre, x, y, eps, 'pgd',
                             key=jax.random.PRNGKey(j), steps=10)
    assert pg <= fg, (eps, pg, fg)
    gaps.append(fg - pg)
  assert max(gaps) > 0                    # PGD does find what FGSM misses somewhere


def test_pgd_equals_fgsm_per_example_on_a_binary_linear_model():
  """A two-class linear model: the loss gradient's sign is the same everywhere (sign of
  w_other - w_y), so FGSM's corner is the exact worst case and PGD, whose steps (2.5 eps in all)
  cross the ball from any random start, must end at the same corner: the same images and the
  same predictions, example by example."""
  rng = np.random.default_rng(0)
  d = 6 * 6
  w = rng.normal(size=(d, 2)).astype(np.float32)
  w[:, 1] = w[:, 0] + np.where(rng.random(d) < 0.5, -1.0, 1.0) * rng.uniform(0.2, 1.0, d)
  f = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(w) * 0.3
  x = jnp.asarray(rng.uniform(0, 1, (64, 6, 6, 1)).astype(np.float32))
  y = jnp.asarray((np.asarray(f(x)).argmax(-1) + (rng.random(64) < 0.2)) % 2)
  for eps in (1 / 255, 8 / 255, 0.1):
    a = adv.fgsm(f, x, y, eps)
    b = adv.pgd(f, x, y, jax.random.PRNGKey(5), eps, 10, adv.madry_step_size(eps, 10))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(f(a)).argmax(-1), np.asarray(f(b)).argmax(-1))


def test_a_larger_budget_never_raises_pgd_accuracy(trained):
  model, variables, pre, x, y = trained
  key = jax.random.PRNGKey(7)
  accs = [adv.robust_accuracy(model, variables, pre, x, y, eps, 'pgd', key=key, steps=10)
          for eps in (0.0,) + EPS]
  assert all(b <= a for a, b in zip(accs, accs[1:])), accs
  assert accs[-1] < accs[0]


def test_a_callable_preprocessing_gives_the_same_predictions(trained):
  model, variables, pre, x, y = trained
  fn = lambda v: apply_preprocessor(pre, v)
  for attack in ('none', 'fgsm'):
    a = adv.robust_correct(model, variables, pre, x, y, 4 / 255, attack)
    b = adv.robust_correct(model, variables, fn, x, y, 4 / 255, attack)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_bad_arguments_say_what_to_give(trained):
  model, variables, pre, x, y = trained
  with pytest.raises(ValueError, match='unknown attack'):
    adv.robust_correct(model, variables, pre, x, y, 0.1, 'cw')
  with pytest.raises(ValueError, match='needs a PRNG key'):
    adv.robust_correct(model, variables, pre, x, y, 0.1, 'pgd')
  with pytest.raises(ValueError, match='must be >= 0'):
    adv.robust_correct(model, variables, pre, x, y, -0.1, 'fgsm')


def test_eps_settings_parse_and_label():
  from ddjax.suite.builtin.adversarial import eps_label, parse_eps, settings
  assert parse_eps('0,2/255, 8/255,0.1') == [0.0, 2 / 255, 8 / 255, 0.1]
  assert [eps_label(e) for e in parse_eps(settings('quick')['eps'])] == ['0', '2/255', '4/255',
                                                                          '8/255']
  assert parse_eps(settings('full')['eps'])[-1] == 16 / 255
  with pytest.raises(ValueError, match='not a number'):
    parse_eps('0,two')
  with pytest.raises(ValueError, match='negative'):
    parse_eps('-1/255')


def test_adversarial_axis_end_to_end(tmp_path, tiny_npz):
  from conftest import tiny_config
  from ddjax import run
  from ddjax.suite.axes import get_axis
  from ddjax.suite.runner import evaluate_set
  cfg = tiny_config(tiny_npz)
  cfg.method = 'random_subset'
  cfg.distill.steps = 0
  cfg.eval.num_models = 0
  workdir = str(tmp_path / 'rs')
  run(cfg, workdir)
  out = str(tmp_path / 'suite')
  overrides = {'num_models': 1, 'max_steps': 30, 'cache_dir': str(tmp_path / 'cache'),
               'adversarial.eps': '0,8/255,32/255', 'adversarial.pgd_steps': 3,
               'adversarial.test_images': 40, 'adversarial.full_data_epochs': 1}
  r = evaluate_set(workdir, out, axes='adversarial', overrides=overrides)['axes']['adversarial']
  assert r['eps_labels'] == ['0', '8/255', '32/255'] and r['test_images'] == 40
  for key in ('set', 'random', 'full_data'):
    row = r['rows'][key]
    assert row['pgd']['acc_mean'][0] == row['fgsm']['acc_mean'][0] == row['clean']['acc_mean']
    assert all(b <= a for a, b in zip(row['pgd']['acc_mean'], row['pgd']['acc_mean'][1:]))
  assert get_axis('adversarial').summary(r) == {
      'pgd_acc@8/255': r['rows']['set']['pgd']['acc_mean'][1]}
  assert os.path.exists(os.path.join(out, 'adversarial', 'adversarial.png'))
  assert '| 32/255 |' in open(os.path.join(out, 'report.md')).read()
  # the baselines are cached with the attack settings: other settings compute them afresh
  cached = sorted(os.listdir(tmp_path / 'cache'))
  assert [c.split('_')[0] + '_' + c.split('_')[1] for c in cached] == [
      'adversarial_full', 'adversarial_random']
