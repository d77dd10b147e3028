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
from ddjax import registry
from ddjax.data.prepared import cache_identity
from ddjax.distill import rded
from ddjax.evaluate import get_protocol, make_schedule
from ddjax.evaluate import observer as observer_lib
from ddjax.evaluate import soft_labels
from ddjax.evaluate.protocols.rded import rded_batch_size


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
  sel = results['build']['selection']          # the method's build report reaches results.json
  assert sel['patches_kept'] == 6 and sel['seconds'] > 0
  assert sel['patches_scored'] == cfg.rded.crops_per_image * int(np.minimum(np.bincount(
      ddjax.runtime.pipeline.load_data(cfg).y_train), cfg.rded.pool_per_class).sum())
  assert sel['ms_per_image'] == pytest.approx(1000 * sel['seconds'] / 6)
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
  # real images: inside [0, 1] ('auto' clips under 'rded': the identity here); the observer's
  # reading of the set is reported
  assert results['set_pixels']['outside_fraction'] == 0 and results['set_pixels']['clipped']
  assert sum(results['observer']['set_class_counts']) == 6
  assert 0 <= results['observer']['set_agreement'] <= 1


def test_observer_agreement_counts_what_the_observer_reads():
  """An observer that reads every image as class 0: it agrees with exactly the class-0 labels
  (of a hard or a learned label's top class), and puts every image in class 0."""
  from ddjax.models import build_model
  model = build_model('mlp', 3, widths=(4,))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 1)), train=False)
  variables = jax.tree_util.tree_map(jnp.zeros_like, variables)
  variables['params']['head']['bias'] = jnp.asarray([5.0, 0.0, -1.0])
  obs = observer_lib.Observer(model=model, variables=variables, record={}, path='',
                              trained_now=False)
  labels = np.array([0, 1, 2, 0, 2])
  y = np.eye(3, dtype=np.float32)[labels] * 0.6 + 0.1      # learned-label-like rows, same argmax
  out = soft_labels.observer_agreement(obs, np.zeros((5, 6, 6, 1), np.float32), y, 3)
  assert out['agreement'] == pytest.approx(2 / 5)
  assert out['class_counts'] == [5, 0, 0]


def test_clip_pixels_evaluates_the_clipped_set(tiny_npz, tmp_path):
  """eval.clip_pixels: the evaluation sees the set clipped to [0, 1] in pixel space ('on', and
  'auto' under the 'rded' protocol, which reads sets as image files), and the report says how far
  the set had left it."""
  from ddjax.runtime import evaluation, pipeline
  cfg = _obs_cfg(tiny_npz, tmp_path / 'obs')
  data = pipeline.load_data(cfg)
  from ddjax.data import apply_preprocessor, invert_preprocessor
  wild = np.linspace(-1.0, 2.0, 6 * 12 * 12).reshape(6, 12, 12, 1).astype(np.float32)
  syn = {'x': apply_preprocessor(data.pre, wild), 'y': np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2,
                                                                                     2]]}
  assert registry.protocol_name(cfg) == 'rded' and cfg.eval.clip_pixels == 'auto'
  plan = pipeline.make_plan(cfg, data)
  cfg.eval.clip_pixels = 'off'
  same, report = evaluation.pixel_range(cfg, plan, data, syn)
  assert same is syn and not report['clipped']
  assert report['pixel_min'] == pytest.approx(-1.0, abs=1e-4)
  assert report['pixel_max'] == pytest.approx(2.0, abs=1e-4)
  assert report['outside_fraction'] == pytest.approx(np.mean((wild < 0) | (wild > 1)), abs=0.01)
  for setting in ('on', 'auto'):
    cfg.eval.clip_pixels = setting
    clipped, report = evaluation.pixel_range(cfg, plan, data, syn)
    assert report['clipped']
    np.testing.assert_allclose(invert_preprocessor(data.pre, clipped['x']), np.clip(wild, 0, 1),
                               atol=1e-4)
    np.testing.assert_array_equal(clipped['y'], syn['y'])
  cfg.eval.protocol = 'dc'                     # 'auto' under a protocol that trains on the floats
  assert not evaluation.pixel_range(cfg, pipeline.make_plan(cfg, data), data, syn)[1]['clipped']


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


# -- the students' patch augmentation (factor > 1) ------------------------------------------------
@pytest.mark.parametrize('factor,side', [(2, 8), (3, 9), (2, 9)])
def test_shuffle_patches_moves_whole_cells_by_the_drawn_permutations(factor, side):
  from ddjax.augment.patches import patch_permutations, shuffle_patches
  n, cell = 8, side // factor
  x = np.arange(n * side * side * 2, dtype=np.float32).reshape(n, side, side, 2)  # all distinct
  key = jax.random.PRNGKey(4)
  run = jax.jit(lambda k, x: (shuffle_patches(k, x, factor), patch_permutations(k, n, factor)))
  out, (rows, cols) = jax.tree_util.tree_map(np.asarray, run(key, jnp.asarray(x)))
  assert out.shape == x.shape
  # pixel k of cell j along an axis comes from pixel k of cell perm[j]; a remainder past the
  # factor x cell pixels stays where it is along that axis
  source = lambda perm: [perm[y // cell] * cell + y % cell if y < factor * cell else y
                         for y in range(side)]
  grid = lambda img: [img[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
                      for r in range(factor) for c in range(factor)]
  moved = 0
  for i in range(n):
    assert sorted(rows[i]) == sorted(cols[i]) == list(range(factor))
    np.testing.assert_array_equal(out[i], x[i][source(rows[i])][:, source(cols[i])])
    key_of = lambda img: sorted(float(g.min()) for g in grid(img))
    assert key_of(out[i]) == key_of(x[i])     # a round trip: the multiset of cells is kept
    moved += not np.array_equal(out[i], x[i])
  assert moved >= 2, 'the patches were not shuffled'
  assert shuffle_patches(key, x, 1) is x


def test_rrc_boxes_stay_in_the_scale_range_and_the_image():
  from ddjax.augment.patches import rrc_boxes
  k = jax.random.PRNGKey(5)
  # (image, scale, the largest area fraction a box of aspect in [3/4, 4/3] can have); the last
  # two: scale (1, 1), RDED's factor 1, where only the whole image fits (the crop is the
  # identity), and a wide image where nothing fits (torchvision's centred, ratio-clamped box)
  cases = (((16, 16), (0.5, 1.0), 1.0), ((12, 20), (0.25, 1.0), 0.8), ((16, 16), (1.0, 1.0), 1.0),
           ((10, 20), (1.0, 1.0), 2 / 3))
  all_boxes = jax.jit(lambda k: [rrc_boxes(k, 3000, h, w, s) for (h, w), s, _ in cases])(k)
  for ((h, w), scale, largest), boxes in zip(cases, all_boxes):
    top, left, bh, bw = np.asarray(boxes, np.float64).T
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + bh <= h + 1e-4) and np.all(left + bw <= w + 1e-4)
    frac = bh * bw / (h * w)
    if scale[0] < 1:
      assert frac.min() >= scale[0] - 1e-5 and frac.max() <= scale[1] + 1e-5
      assert frac.min() < scale[0] + 0.05 and frac.max() > largest - 0.05  # the range is drawn
      aspect = bw / bh
      assert aspect.min() >= 3 / 4 - 1e-5 and aspect.max() <= 4 / 3 + 1e-5
      assert aspect.min() < 0.8 and aspect.max() > 1.25
  np.testing.assert_allclose(all_boxes[2], np.tile([0, 0, 16, 16], (3000, 1)), atol=1e-4)
  np.testing.assert_allclose(all_boxes[3], np.tile([0, (20 - 40 / 3) / 2, 10, 40 / 3], (3000, 1)),
                             atol=1e-4)


def test_random_resized_crop_resamples_the_drawn_box():
  from ddjax.augment.patches import crop_resize, random_resized_crop, rrc_boxes
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 12, 12, 3))
  ramp = (np.arange(12.0)[:, None, None] * 10 + np.arange(12.0)[None, :, None]).astype(np.float32)

  @jax.jit
  def run(key, x, ramp):
    boxes = rrc_boxes(key, 4, 12, 12, (0.25, 1.0))
    resized = jax.vmap(lambda im, b: crop_resize(im, b, 12, 12))(x, boxes)
    return (random_resized_crop(key, x, (0.25, 1.0)), resized,
            random_resized_crop(key, x, (1.0, 1.0)),
            crop_resize(ramp, jnp.asarray([2.0, 3.0, 6.0, 8.0]), 12, 12))

  out, want, same, got = run(jax.random.PRNGKey(2), x, jnp.asarray(ramp))
  np.testing.assert_allclose(out, want, atol=1e-5)             # the crop of the drawn box
  assert not np.allclose(out, x, atol=1e-2)
  np.testing.assert_allclose(same, x, atol=1e-5)               # scale (1, 1): the identity
  # bilinear of a linear ramp is exact inside the image: the box (2, 3, 6, 8) maps pixel (i, j)
  # to (2 + (i + 0.5) * 6 / 12 - 0.5, 3 + (j + 0.5) * 8 / 12 - 0.5)
  i, j = np.meshgrid(np.arange(12), np.arange(12), indexing='ij')
  np.testing.assert_allclose(got[..., 0], 10 * (2 + (i + 0.5) * 0.5 - 0.5)
                             + (3 + (j + 0.5) * 8 / 12 - 0.5), atol=1e-4)


def test_the_patch_factor_reaches_the_students_augmentation(monkeypatch):
  """The 'rded' protocol's step applies student_augment with the set's factor (and not at 1);
  RDED's registration gives its factor, other methods 1."""
  from ddjax import registry
  from ddjax.augment import patches
  from ddjax.models import build_model
  from ddjax.models.training import fresh_carry
  from ddjax.evaluate import make_optimizer
  factor = lambda cfg, shape: registry.resolve(cfg, registry.DataFacts(shape, 10)).patch_factor
  assert factor(_cfg_factor(0), (64, 64, 3)) == 2
  assert factor(_cfg_factor(0), (28, 28, 1)) == 1
  other = _cfg_factor(0)
  other.method = 'random_subset'
  assert factor(other, (64, 64, 3)) == 1
  calls = []

  def spy(key, x, factor):
    calls.append(factor)
    return patches.student_augment(key, x, factor)

  monkeypatch.setattr(soft_labels, 'student_augment', spy)
  teacher = student = build_model('mlp', 3, widths=(4,))
  t_vars = jax.eval_shape(lambda k: teacher.init(k, jnp.zeros((1, 8, 8, 1))), jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((6, 8, 8, 1), jnp.float32)
  for factor, lr in ((2, 1.01e-3), (1, 1.02e-3)):    # fresh protocols: fresh traces
    protocol = get_protocol('rded', 6, 3, epochs=1, patch_factor=factor, lr=lr)
    assert protocol.patch_factor == factor
    step = soft_labels._student_step(student, teacher, protocol)
    carry = jax.eval_shape(lambda k: fresh_carry(student, k, (8, 8, 1), make_optimizer(protocol)),
                           jax.random.PRNGKey(2))
    jax.eval_shape(step, carry, t_vars, x, jnp.arange(6), jax.random.PRNGKey(3))   # traced only
  assert calls == [2]
  with pytest.raises(ValueError, match='patch_factor'):
    get_protocol('rded', 6, 3, patch_factor=0)
  # at factor 2 the images change, keeping their shape; at 1 they are returned as they are
  images = jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 1))
  y = jax.jit(patches.student_augment, static_argnums=2)(jax.random.PRNGKey(4), images, 2)
  assert y.shape == images.shape and not np.allclose(y, images)
  assert patches.student_augment(jax.random.PRNGKey(4), images, 1) is images


# -- observer architectures and the image-folder preset --------------------------------------------
def test_observer_arch_auto_and_the_convnet_record_unchanged():
  cfg = _cfg_factor(0)
  for shape, arch in (((28, 28, 1), 'convnet'), ((32, 32, 3), 'convnet'), ((64, 64, 3), 'resnet18'),
                      ((33, 20, 3), 'resnet18')):
    assert observer_lib.observer_arch(cfg, shape) == arch
  # cached ConvNet observers stay valid: the record of a ConvNet is what it always was
  assert observer_lib.arch_of(cfg, (28, 28, 1)) == {
      'arch': 'convnet', 'depth': 3, 'width': 128, 'double_width': False, 'norm': 'batch',
      'pooling': 'avg'}
  assert observer_lib.arch_of(cfg, (64, 64, 3)) == {'arch': 'resnet18', 'norm': 'batch'}
  cfg.observer.arch = 'convnet'
  assert observer_lib.arch_of(cfg, (64, 64, 3))['arch'] == 'convnet'
  cfg.observer.arch = 'resnet18'
  assert observer_lib.arch_of(cfg, (28, 28, 1))['arch'] == 'resnet18'


def test_a_resnet_observer_is_reused_as_such_and_refused_for_a_convnet(tiny_npz, tiny_data,
                                                                      tmp_path, monkeypatch):
  from ddjax.models import ResNet18
  cfg = _obs_cfg(tiny_npz, tmp_path / 'obs')
  cfg.observer.arch = 'resnet18'
  want = observer_lib.wanted_record(cfg, tiny_data)
  assert want['arch'] == {'arch': 'resnet18', 'norm': 'batch'}
  model = observer_lib.model_of(want, tiny_data.num_classes)
  assert isinstance(model, ResNet18)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros([1] + want['image_shape'])),
                          jax.random.PRNGKey(7))
  rng = np.random.default_rng(0)                # random values: no compiled init needed here
  variables = jax.tree_util.tree_map(
      lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  observer_lib.save(str(tmp_path / 'obs'), variables, dict(want, test_acc=0.5))

  def no_training(*a, **k):
    raise AssertionError('a cached observer must not be retrained')

  monkeypatch.setattr(observer_lib, 'train', no_training)
  for arch in ('convnet', 'auto'):             # 12 px: auto is a ConvNet
    cfg.observer.arch = arch
    with pytest.raises(observer_lib.ObserverMismatch,
                       match=r"arch: .*resnet18.*convnet.*'resnet18'"):
      observer_lib.get_observer(cfg, tiny_data)
  cfg.observer.arch = 'resnet18'
  obs = observer_lib.get_observer(cfg, tiny_data)
  assert not obs.trained_now and isinstance(obs.model, ResNet18)
  assert obs.record['arch'] == {'arch': 'resnet18', 'norm': 'batch'}
  jax.tree_util.tree_map(np.testing.assert_array_equal, dict(obs.variables), variables)
  cfg.observer.dir = ''
  assert observer_lib.default_dir(cfg, tiny_data).endswith('npz_resnet18_seed0')


def test_cifar_presets_are_the_official_scripts():
  """configs/rded.py:cifar10 / cifar100: the official Conv3 -> Conv3 scripts (RDED's argument.py):
  factor 1 at 32 px, ConvNet-3 BN width 128 observer and students, AdamW 1e-3 with RDED's
  batch rule, except CIFAR-100's special case (2e-3, batch 25)."""
  from conftest import load_shipped_config
  from ddjax import config as config_lib
  from ddjax.evaluate.protocols.rded import rded_batch_size
  for preset, classes in (('cifar10', 10), ('cifar100', 100)):
    cfg = load_shipped_config('rded', preset)
    config_lib.validate(cfg)
    assert cfg.data.name == preset and registry.protocol_name(cfg) == 'rded'
    assert rded.factor_of(cfg, (32, 32, 3)) == 1
    assert observer_lib.observer_arch(cfg, (32, 32, 3)) == 'convnet'
    assert (cfg.eval.model.norm, cfg.eval.model.width, cfg.eval.model.depth) == ('batch', 128, 3)
    assert cfg.eval.soft_label_epochs == 300 and cfg.eval.clip_pixels == 'auto'
    lr, batch = (cfg.eval.lr, cfg.eval.batch_size)
    protocol = get_protocol('rded', 10 * classes, classes, **({'lr': lr, 'batch_size': batch}
                                                              if lr else {}))
    if preset == 'cifar10':
      assert (protocol.lr, protocol.batch_size) == (1e-3, rded_batch_size(100, 10)) == (1e-3, 50)
    else:
      assert (protocol.lr, protocol.batch_size) == (2e-3, 25)


def test_image_folder_preset_resolves_without_data():
  from conftest import load_shipped_config
  from ddjax import config as config_lib
  from ddjax.models import ResNet18, from_config
  cfg = load_shipped_config('rded', 'image_folder')
  config_lib.validate(cfg)                     # data.dir is the user's: nothing is read here
  assert (cfg.data.name, cfg.data.image_size, cfg.data.channels, cfg.data.test_split,
          cfg.data.dir) == ('image_folder', 64, 3, 'val', '')
  assert rded.factor_of(cfg, (64, 64, 3)) == 2
  assert observer_lib.observer_arch(cfg, (64, 64, 3)) == 'resnet18'
  assert isinstance(from_config(cfg.eval.model, 10), ResNet18)
  assert cfg.eval.model.norm == 'batch'
  cfg.data.image_size = 128
  config_lib.validate(cfg)
  cfg.distill.ipc = 100                        # 100 x 2^2 patches > the 300-image pool
  with pytest.raises(config_lib.ConfigError, match='pool_per_class'):
    config_lib.validate(cfg)
  cfg.distill.ipc, cfg.observer.arch = 10, 'vgg'
  with pytest.raises(config_lib.ConfigError, match='observer.arch'):
    config_lib.validate(cfg)
