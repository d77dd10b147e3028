"""Class-incremental continual learning: class orders, class-restricted data, lifted labels, and
the suite's 'continual' axis end to end on a tiny 4-class problem with the random-subset method."""
import json
import os

import numpy as np
import pytest

from ddjax.data import Dataset, centered_one_hot, lift_labels, one_hot, prepare
from ddjax.data.prepared import cache_identity
from ddjax.evaluate.continual import class_orders, curve_figures, seen_classes, seen_mask


# ----------------------------------------------------------------------------- class orders
@pytest.mark.parametrize('k,steps', [(10, 5), (10, 2), (10, 3), (100, 10), (7, 7), (10, 1)])
def test_every_class_is_in_exactly_one_step(k, steps):
  for order in class_orders(k, steps, orders=3, seed=4):
    assert len(order) == steps
    flat = [c for g in order for c in g]
    assert sorted(flat) == list(range(k))            # each class once, none missing
    sizes = [len(g) for g in order]
    assert max(sizes) - min(sizes) <= 1              # nearly equal when steps does not divide k


def test_orders_are_reproducible_and_seeded():
  a = class_orders(10, 5, orders=5, seed=0)
  assert a == class_orders(10, 5, orders=5, seed=0)
  assert a != class_orders(10, 5, orders=5, seed=1)
  assert all(a[0] != a[o] for o in range(1, 5))               # orders differ from each other
  assert a[0] != [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]     # order 0 is permuted too
  # seed 0's orders are DM's CL_DM.py class orders (np.random.seed(o); permutation(K))
  for o in range(5):
    np.random.seed(o)
    assert [c for g in a[o] for c in g] == np.random.permutation(10).tolist()


@pytest.mark.parametrize('steps,least', [(0, 1), (11, 1), (6, 2), (-1, 1)])
def test_bad_step_counts_say_what_to_choose(steps, least):
  with pytest.raises(ValueError, match=r'choose steps in \[1, '):
    class_orders(10, steps, orders=1, min_classes_per_step=least)
  with pytest.raises(ValueError, match='at least 1 class order'):
    class_orders(10, 5, orders=0)


def test_seen_classes_and_figures():
  groups = [[3, 1], [0, 2]]
  assert seen_classes(groups, 0) == [3, 1] and seen_classes(groups, 1) == [3, 1, 0, 2]
  assert seen_mask(np.array([0, 1, 2, 3]), [3, 1]).tolist() == [False, True, False, True]
  acc = np.array([[[0.9, 0.7], [0.6, 0.4]], [[1.0, 1.0], [0.5, 0.5]]])   # (orders, steps, nets)
  f = curve_figures(acc)
  assert np.allclose(f['per_order'], [[0.8, 0.5], [1.0, 0.5]])
  assert f['final'] == pytest.approx(0.5) and f['average'] == pytest.approx(0.7)
  assert np.allclose(f['mean'], [0.9, 0.5])


# ------------------------------------------------------------------- class-restricted data
def _dataset(k=4, per_class=10, test_per_class=6, side=12, seed=0):
  rng = np.random.default_rng(seed)

  def split(n):
    y = np.repeat(np.arange(k), n)
    x = rng.uniform(0.0, 0.35, size=(len(y), side, side, 1))
    band = side // k
    for c in range(k):
      x[y == c, band * c:band * (c + 1)] += 0.5
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int32)

  (x_tr, y_tr), (x_te, y_te) = split(per_class), split(test_per_class)
  return Dataset('npz', x_tr, y_tr, x_te, y_te, k, tuple(f'c{c}' for c in range(k)), 'tiny')


def test_restrict_classes_keeps_rows_relabels_and_keeps_model_space():
  data = prepare(_dataset(), 'standard')
  part = data.restrict_classes([3, 1])
  assert part.num_classes == 2 and part.classes == (3, 1)
  assert part.class_names == ('c3', 'c1')
  # rows of classes 3 and 1, in original order, relabelled 3 -> 0, 1 -> 1
  rows = np.flatnonzero(np.isin(data.y_train, [3, 1]))
  assert np.array_equal(part.x_train, data.x_train[rows])        # same model space
  assert np.array_equal(part.y_train, np.where(data.y_train[rows] == 3, 0, 1))
  assert np.allclose(part.targets_train, centered_one_hot(part.y_train, 2))
  test_rows = np.flatnonzero(np.isin(data.y_test, [3, 1]))
  assert np.array_equal(part.x_test, data.x_test[test_rows])
  assert np.array_equal(part.y_test, np.where(data.y_test[test_rows] == 3, 0, 1))
  assert np.array_equal(part.dataset.x_train, data.dataset.x_train[rows])   # raw pixels too
  assert part.pre is data.pre
  # restricting again composes the original classes; the cache identity names them
  assert part.restrict_classes([1]).classes == (1,)
  assert cache_identity(part)['classes'] == [3, 1] and 'classes' not in cache_identity(data)
  with pytest.raises(ValueError, match='distinct class indices'):
    data.restrict_classes([1, 1])
  with pytest.raises(ValueError, match=r'in \[0, 4\)'):
    data.restrict_classes([4])


def test_restrict_classes_of_a_streamed_training_set_reads_the_same_rows():
  import dataclasses

  from ddjax.data import Rows
  ds = _dataset()
  whole = prepare(ds, 'standard').restrict_classes([3, 1])
  streamed = prepare(dataclasses.replace(ds, x_train=Rows(ds.x_train)), 'standard')
  part = streamed.restrict_classes([3, 1])
  n = len(part.y_train)
  assert np.allclose(part.x_train[np.arange(n)], whole.x_train, atol=1e-6)
  assert np.array_equal(part.targets_train[np.arange(n)], whole.targets_train)
  assert np.array_equal(part.y_train, whole.y_train)


def test_lift_labels_maps_local_labels_to_the_global_classes():
  group, k = [3, 1], 4
  local = np.array([0, 0, 1])
  # never-learned labels lift to exactly the global labels of the same init
  assert np.array_equal(lift_labels(one_hot(local, 2), local, group, k, 'one_hot'),
                        one_hot([3, 3, 1], k))
  assert np.allclose(lift_labels(centered_one_hot(local, 2), local, group, k, 'centered_one_hot'),
                     centered_one_hot([3, 3, 1], k))
  # a learned change stays on the step's own classes; the other classes keep their init
  y = one_hot(local, 2) + np.array([[0.1, -0.2], [0.0, 0.0], [0.3, 0.5]], np.float32)
  lifted = lift_labels(y, local, group, k, 'one_hot')
  assert np.allclose(lifted[:, [3, 1]], y) and np.all(lifted[:, [0, 2]] == 0)
  with pytest.raises(ValueError, match='must be'):
    lift_labels(y, local, [3, 1, 2], k)


# ------------------------------------------------------------------------ the axis, end to end
def test_continual_axis_runs_end_to_end_with_the_random_subset(tmp_path):
  from ddjax import run
  from ddjax.config import method_config
  from ddjax.suite.runner import evaluate_set

  ds = _dataset(per_class=12, test_per_class=10)
  path = tmp_path / 'tiny4.npz'
  np.savez(path, x_train=(ds.x_train[..., 0] * 255).astype(np.uint8), y_train=ds.y_train,
           x_test=(ds.x_test[..., 0] * 255).astype(np.uint8), y_test=ds.y_test)
  cfg = method_config('random_subset')
  cfg.data.name, cfg.data.dir = 'npz', str(path)
  cfg.eval.model.width, cfg.eval.model.depth = 8, 2
  cfg.model.width, cfg.model.depth = 8, 2
  cfg.distill.ipc = 2
  cfg.eval.num_models = 0
  workdir = str(tmp_path / 'rs')
  run(cfg, workdir)
  out = str(tmp_path / 'suite')
  overrides = {'num_models': 1, 'max_steps': 200, 'cache_dir': str(tmp_path / 'cache'),
               'continual.steps': 2, 'continual.orders': 1}
  results = evaluate_set(workdir, out, axes='continual', overrides=overrides)
  r = results['axes']['continual']
  groups = r['class_orders'][0]
  assert sorted(c for g in groups for c in g) == [0, 1, 2, 3] and r['classes_seen'] == [2, 4]
  # each step distilled its own classes only: 2 images of each, labelled in the 4-class space
  for t, group in enumerate(groups):
    with np.load(os.path.join(out, 'continual', 'order0', f'step{t}', 'distilled.npz')) as z:
      assert z['y'].shape == (4, 2) and sorted(z['classes'].tolist()) == [0, 0, 1, 1]
  for key in ('set', 'random'):
    accs = np.asarray(r[key]['accs'])
    assert accs.shape == (1, 2, 1) and np.all((accs >= 0) & (accs <= 1))
    assert r[key]['final'] == pytest.approx(accs[0, -1, 0])
    assert r[key]['average'] == pytest.approx(accs.mean())
    # the classes are easy (a bright band each): a memory whose labels were lifted onto the
    # wrong classes would score near chance on the 4 classes at the last step
    assert accs[0, -1, 0] >= 0.9
  assert os.path.exists(os.path.join(out, 'continual', 'continual.png'))
  assert '| **final accuracy** |' in open(os.path.join(out, 'report.md')).read()
  from ddjax.suite.axes import get_axis
  assert get_axis('continual').summary(r) == {'continual_final': r['set']['final'],
                                              'continual_avg': r['set']['average']}
  # resumable: a second call finds the result and distils nothing again
  stamp = os.path.getmtime(os.path.join(out, 'continual', 'order0', 'step0', 'results.json'))
  again = evaluate_set(workdir, out, axes='continual', overrides=overrides)
  assert again['axes']['continual']['set']['accs'] == r['set']['accs']
  assert os.path.getmtime(os.path.join(out, 'continual', 'order0', 'step0',
                                        'results.json')) == stamp
  json.dumps(again['axes']['continual'])


def test_an_observer_of_other_classes_is_told_apart():
  """A cached teacher (RDED's observer) of the whole data is not one of a class-restricted
  part: the observer record's identity keys include the classes."""
  from ddjax.evaluate.observer import record_differences
  base = {'dataset': 'fashion_mnist', 'train_size': 12000, 'image_shape': [28, 28, 1],
          'preprocessing': 'standard', 'arch': {'arch': 'convnet'}, 'seed': 0, 'epochs': 5}
  assert record_differences(base, dict(base)) == []
  assert record_differences(base, {**base, 'classes': [3, 1]})
  assert record_differences({**base, 'classes': [1, 3]}, {**base, 'classes': [3, 1]})


def test_step_config_caps_steps_and_turns_off_evaluation(tmp_path):
  import types

  import ml_collections

  from ddjax.config import method_config
  from ddjax.runtime.pipeline import make_plan
  from ddjax.suite.builtin.continual import step_config
  data = prepare(_dataset(), 'standard').restrict_classes([2, 0])
  run_cfg = method_config('frepo')          # distill.steps 0: FRePo's CPU steps by IPC
  run_cfg.distill.ipc = 3
  assert make_plan(run_cfg, data).steps > 50
  ctx = types.SimpleNamespace(run_cfg=run_cfg, judged=types.SimpleNamespace(ipc=3),
                              settings=ml_collections.ConfigDict({'distill_steps': 50}))
  cfg = step_config(ctx, str(tmp_path / 'step0'), data)
  assert make_plan(cfg, data).steps == 50 and cfg.distill.ipc == 3
  assert cfg.eval.num_models == 0 and run_cfg.eval.num_models > 0     # the judged config kept
  ctx.settings.distill_steps = 0
  assert make_plan(step_config(ctx, str(tmp_path), data), data).steps == \
      make_plan(run_cfg, data).steps
  rded = method_config('rded')               # its teacher: one per step, in the step directory
  ctx.run_cfg = rded
  assert step_config(ctx, str(tmp_path / 's'), data).observer.dir == str(tmp_path / 's' /
                                                                         'observer')
