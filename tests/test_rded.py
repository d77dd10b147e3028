"""RDED: crop / score / select, stitching, the soft-label KL, the observer cache, the 'rded'
protocol and one end-to-end run, all on tiny data."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_CLASSES, tiny_config
from ddjax.data.prepared import cache_identity
from ddjax.distill import rded
from ddjax.evaluate import get_protocol, make_schedule
from ddjax.evaluate import observer as observer_lib
from ddjax.evaluate import soft_labels
from ddjax.evaluate.protocols import rded_batch_size


def toy_logits(x):
  """A toy observer over 3 classes: class 0's logit is 10 x the crop's mean, the others 0, so the
  cross-entropy on class 0 falls as the crop brightens."""
  s = 10.0 * jnp.mean(x, axis=(1, 2, 3))
  return jnp.stack([s, jnp.zeros_like(s), jnp.zeros_like(s)], axis=-1)


def test_resized_crop_of_whole_image_is_identity_and_boxes_are_square_inside():
  img = jax.random.normal(jax.random.PRNGKey(0), (12, 12, 3))
  out = rded.resized_crop(img, jnp.array([0.0, 0.0, 12.0]), 12, 12)
  np.testing.assert_allclose(out, img, atol=1e-5)
  boxes = np.asarray(rded.crop_boxes(jax.random.PRNGKey(1), 500, 12, 12))
  top, left, side = boxes.T
  assert np.all(top >= 0) and np.all(left >= 0)
  assert np.all(top + side <= 12 + 1e-4) and np.all(left + side <= 12 + 1e-4)
  frac = side ** 2 / 144
  assert frac.min() >= 0.08 - 1e-4 and frac.max() <= 1 + 1e-4 and frac.max() > 0.8


def test_scorer_keeps_each_images_lowest_loss_crop():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(6, 12, 12, 1)), jnp.float32)
  labels = jnp.zeros((6,), jnp.int32)
  key = jax.random.PRNGKey(3)
  score = rded.make_scorer(toy_logits, (12, 12), (12, 12), crops=5)
  best, loss = score(images, labels, key)
  # the same crops, scored directly
  boxes = rded.crop_boxes(key, 30, 12, 12).reshape(6, 5, 3)
  for i in range(6):
    crops = jnp.stack([rded.resized_crop(images[i], boxes[i, j], 12, 12) for j in range(5)])
    logits = np.asarray(toy_logits(crops), np.float64)
    ce = np.log(np.exp(logits).sum(-1)) - logits[:, 0]
    j = int(np.argmin(ce))
    np.testing.assert_allclose(loss[i], ce[j], rtol=1e-4)
    np.testing.assert_allclose(best[i], crops[j], atol=1e-5)


def test_select_keeps_the_lowest_loss_images_one_patch_per_source():
  rng = np.random.default_rng(1)
  y = np.repeat(np.arange(3), 10)
  # brightness differs by image, so the best crops rank the images by brightness
  x = (rng.uniform(0, 0.01, size=(30, 8, 8, 1)) + np.linspace(0, 1, 30)[:, None, None, None])
  x = x.astype(np.float32)
  score = rded.make_scorer(toy_logits, (8, 8), (8, 8), crops=3)
  patches, losses, idx = rded.select_patches(score, x, y, 3, keep=4, pool_per_class=10,
                                             key=jax.random.PRNGKey(0), chunk=7)
  assert patches.shape == (12, 8, 8, 1) and losses.shape == (12,)
  for c in range(3):
    kept = idx[4 * c:4 * c + 4]
    assert np.all(y[kept] == c) and len(set(kept.tolist())) == 4   # one patch per source image
    assert np.all(np.diff(losses[4 * c:4 * c + 4]) >= 0)            # best first
  # class 0 is scored on its own logit: the brightest images of class 0 win
  assert set(idx[:4].tolist()) == {6, 7, 8, 9}
  with pytest.raises(ValueError, match='fewer than'):
    rded.select_patches(score, x, y, 3, keep=11, pool_per_class=10, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize('channels', [1, 3])
def test_stitch_places_patches_row_major(channels):
  f, h = 2, 3
  patches = np.arange(8, dtype=np.float32)[:, None, None, None] * np.ones((8, h, h, channels))
  out = np.asarray(rded.stitch(patches, f))
  assert out.shape == (2, 6, 6, channels)
  for g in range(2):
    for r in range(f):
      for c in range(f):
        cell = out[g, r * h:(r + 1) * h, c * h:(c + 1) * h]
        assert np.all(cell == g * 4 + r * f + c)
  same = np.asarray(rded.stitch(patches, 1))
  np.testing.assert_array_equal(same, patches)
  odd = np.asarray(rded.stitch(patches, f, 7, 7))          # remainder fitted (nearest)
  assert odd.shape == (2, 7, 7, channels)
  assert rded.factor_of(_cfg_factor(0), (64, 64, 3)) == 2
  assert rded.factor_of(_cfg_factor(0), (28, 28, 1)) == 1
  assert rded.factor_of(_cfg_factor(3), (28, 28, 1)) == 3


def _cfg_factor(f):
  from ddjax.config import method_config
  cfg = method_config('rded')
  cfg.rded.factor = f
  return cfg


def test_soft_kl_matches_numpy():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(5, 4)) * 30, rng.normal(size=(5, 4)) * 30
  temp = 20.0

  def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p, q = softmax(t / temp), softmax(s / temp)
  want = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1))
  got = soft_labels.soft_kl(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), temp)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  assert float(soft_labels.soft_kl(jnp.asarray(t), jnp.asarray(t), temp)) == pytest.approx(0, abs=1e-6)


def test_cutmix_takes_a_box_from_a_partner():
  x = jnp.arange(4, dtype=jnp.float32)[:, None, None, None] * jnp.ones((4, 8, 8, 1))
  out = np.asarray(soft_labels.cutmix(jax.random.PRNGKey(2), x))
  masks = []
  for i in range(4):
    values = set(np.unique(out[i]).tolist())
    assert len(values) <= 2 and (i in values or len(values) == 1)
    if len(values) == 2:
      masks.append(out[i, :, :, 0] != i)
  assert masks, 'cutmix left every image unmixed'      # an identity cutmix fails here
  assert all(0 < m.mean() < 1 for m in masks)            # a box, not the whole image
  for m in masks[1:]:                     # one box for the whole batch
    np.testing.assert_array_equal(m, masks[0])


def test_rded_protocol_schedule_batch_and_weight_decay_mask():
  assert [rded_batch_size(n, 10) for n in (10, 100, 500)] == [10, 50, 100]
  assert rded_batch_size(100 * 10, 100) == 100 and rded_batch_size(5, 10) == 5
  p = get_protocol('rded', 100, 10, epochs=4)
  assert (p.batch_size, p.steps_per_epoch, p.steps, p.temperature) == (50, 2, 8, 20.0)
  sched = make_schedule(p)
  lrs = [float(sched(s)) for s in range(8)]
  want = [1e-3 * 0.5 * (1 + np.cos(np.pi * (s // 2) / 8)) for s in range(8)]
  np.testing.assert_allclose(lrs, want, rtol=1e-5)
  from ddjax.evaluate import make_optimizer
  opt = make_optimizer(p)
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones((2,))}
  upd, _ = opt.update(jax.tree_util.tree_map(jnp.zeros_like, params), opt.init(params), params)
  assert float(jnp.abs(upd['b']).max()) == 0.0 and float(jnp.abs(upd['w']).max()) > 0.0


@pytest.fixture
def tiny_data(tiny_npz):
  from ddjax.runtime.pipeline import load_data
  return load_data(tiny_config(tiny_npz))


def _obs_cfg(tiny_npz, observer_dir, **rded_keys):
  from ddjax.config import method_config
  cfg = method_config('rded')
  base = tiny_config(tiny_npz)
  cfg.data, cfg.eval.model = base.data, base.eval.model
  cfg.eval.model.norm = 'batch'
  cfg.distill.ipc = 2
  cfg.observer.update(dict(dir=str(observer_dir), width=8, depth=2, epochs=3, batch_size=32,
                           lr=3e-3))
  cfg.eval.soft_label_epochs = 5
  cfg.rded.update(dict(pool_per_class=20, score_chunk=32))
  cfg.rded.update(rded_keys)
  return cfg


def test_observer_trains_is_cached_reused_and_a_mismatch_refused(tiny_npz, tiny_data, tmp_path,
                                                                monkeypatch):
  cfg = _obs_cfg(tiny_npz, tmp_path / 'obs')
  obs = observer_lib.get_observer(cfg, tiny_data)
  assert obs.trained_now and obs.record['test_acc'] > 1.0 / TINY_CLASSES + 0.2
  record = json.load(open(tmp_path / 'obs' / 'record.json'))
  assert record['dataset'] == 'npz' and record['image_shape'] == [12, 12, 1]

  def no_training(*a, **k):
    raise AssertionError('a cached observer must not be retrained')

  monkeypatch.setattr(observer_lib, 'train', no_training)
  again = observer_lib.get_observer(cfg, tiny_data)
  assert not again.trained_now
  x = jnp.asarray(tiny_data.x_test[:8])
  np.testing.assert_allclose(again.model.apply(again.variables, x, train=False)[0],
                             obs.model.apply(obs.variables, x, train=False)[0], atol=1e-5)
  cfg.observer.epochs = 4
  cfg.observer.width = 16
  with pytest.raises(observer_lib.ObserverMismatch, match='epochs.*|arch'):
    observer_lib.get_observer(cfg, tiny_data)
  # a user's own observer: only the data keys are checked, the architecture is its own
  cfg.observer.checkpoint = str(tmp_path / 'obs')
  user = observer_lib.get_observer(cfg, tiny_data)
  assert user.record['arch']['width'] == 8
  small = tiny_data.subset(np.arange(60))
  with pytest.raises(observer_lib.ObserverMismatch, match='train_size'):
    observer_lib.get_observer(cfg, small)
  # another npz of the same name and size (different pixels) is another dataset: refused
  other = dataclasses.replace(tiny_data, x_train=np.ascontiguousarray(tiny_data.x_train[:, ::-1]))
  assert cache_identity(other) != cache_identity(tiny_data) != {}
  with pytest.raises(observer_lib.ObserverMismatch, match='data_crc32'):
    observer_lib.get_observer(cfg, other)


def test_rded_end_to_end_run(tiny_npz, tmp_path):
  import ddjax
  cfg = _obs_cfg(tiny_npz, tmp_path / 'obs')
  results = ddjax.run(cfg, str(tmp_path / 'run'))
  ev = results['eval']
  assert ev['protocol'] == 'rded' and ev['steps'] == 5 and ev['epochs'] == 5
  assert 0 <= ev['acc_mean'] <= 1 and ev['best_last20_mean'] >= ev['acc_mean']
  assert results['observer']['record']['arch']['width'] == 8
  assert os.path.isdir(results['observer']['checkpoint'])
  assert results['observer']['preprocessing'] == results['observer']['record']['preprocessing']
  out = np.load(tmp_path / 'run' / 'distilled.npz')
  assert out['x'].shape == (6, 12, 12, 1)
  np.testing.assert_array_equal(out['y'].argmax(-1), np.repeat(np.arange(3), 2))
  np.testing.assert_array_equal(out['classes'], np.repeat(np.arange(3), 2))
  # the stored images are crops of their class's real images: the observer reads them right
  obs = observer_lib.get_observer(cfg, ddjax.runtime.pipeline.load_data(cfg))
  pred = np.asarray(obs.model.apply(obs.variables, jnp.asarray(out['x']), train=False)[0])
  assert (pred.argmax(-1) == out['classes']).mean() >= 0.5


def test_rded_protocol_evaluates_another_methods_set(tiny_npz, tmp_path):
  import ddjax
  from ddjax.config import method_config
  cfg = method_config('random_subset')
  base = _obs_cfg(tiny_npz, tmp_path / 'obs')
  cfg.data, cfg.eval.model, cfg.observer, cfg.distill.ipc = (base.data, base.eval.model,
                                                             base.observer, 2)
  cfg.eval.num_models, cfg.eval.protocol, cfg.eval.soft_label_epochs = 1, 'rded', 2
  results = ddjax.run(cfg, str(tmp_path / 'run'))
  assert results['eval']['protocol'] == 'rded' and results['eval']['epochs'] == 2
  assert results['eval']['steps'] == 2                    # 6 images, batch 6 (IPC 2 -> 50, at most n)
  assert 'best_last20_mean' in results['eval'] and results['observer']['trained_now']


def test_validation_epochs_are_the_last_fifth():
  assert soft_labels.validation_epochs(300) == list(range(250, 301, 10))
  assert soft_labels.validation_epochs(10) == [9, 10]
  assert soft_labels.validation_epochs(1) == [1]


def test_students_learn_the_teachers_soft_labels():
  """A constant teacher (its head bias only): the student's tempered softmax moves to the
  teacher's, not to any hard label of the images."""
  from ddjax.models import build_model
  from ddjax.models.training import fresh_carry
  k = TINY_CLASSES
  teacher = build_model('mlp', k, widths=(4,))
  t_vars = teacher.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 1)), train=False)
  t_vars = jax.tree_util.tree_map(jnp.zeros_like, t_vars)
  bias = jnp.asarray([6.0, 0.0, -6.0])[:k]
  t_vars['params']['head']['bias'] = bias
  student = build_model('mlp', k, widths=(4,))
  protocol = get_protocol('rded', 8, k, lr=0.2, epochs=60)
  step = soft_labels._student_step(student, teacher, protocol)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 6, 6, 1))
  from ddjax.evaluate import make_optimizer
  carry = fresh_carry(student, jax.random.PRNGKey(2), (6, 6, 1), make_optimizer(protocol))
  kl = lambda c: float(soft_labels.soft_kl(
      student.apply({'params': c[0]}, x, train=False)[0], jnp.broadcast_to(bias, (8, k)),
      protocol.temperature))
  before = kl(carry)
  for s in range(60):
    carry, _ = step(carry, t_vars, x, jnp.arange(8), jax.random.PRNGKey(10 + s))
  assert kl(carry) < 0.2 * before, (before, kl(carry))
