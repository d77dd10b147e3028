"""Cached artifacts and their records (ddjax.infra.artifacts), and the caches built on them: the
workdir's config check and the observer's directory (the expert buffer's are in test_experts)."""
import json
import os

import numpy as np
import pytest

from ddjax.infra import artifacts

STORED = {'dataset': 'npz', 'model': {'width': 8, 'depth': 2}, 'epochs': 3,
          'image_shape': [12, 12, 1], 'eval': {'num_models': 2}, 'experts': 5}


def test_differences_name_nested_keys_and_follow_the_rules():
  want = {'dataset': 'npz', 'model': {'width': 16, 'depth': 2, 'norm': 'batch'}, 'epochs': 3,
          'image_shape': (12, 12, 1), 'eval': {'num_models': 9}, 'experts': 4}
  # a tuple equals the list JSON stores; sorted flat keys; a key on one side only is '<absent>'
  assert artifacts.differences(STORED, want) == [
      "eval.num_models: 2 -> 9", "experts: 5 -> 4", "model.norm: '<absent>' -> 'batch'",
      "model.width: 8 -> 16"]
  rules = dict(may_differ=('eval.', 'model.width'), added={'model.norm': 'batch'},
               usable={'experts': lambda have, want: have >= want})
  assert artifacts.differences(STORED, want, **rules) == []
  assert artifacts.differences(STORED, dict(want, experts=6), **rules) == ['experts: 5 -> 6']
  # 'model.width' is one key: 'model.widths' still counts; 'eval.' is every key below eval
  assert artifacts.differences({'model': {'widths': 1}}, {'model': {'widths': 2}},
                               may_differ=('model.width',)) == ['model.widths: 1 -> 2']
  # only: these keys and the keys below them
  assert artifacts.differences(STORED, want, only=('model',)) == [
      "model.norm: '<absent>' -> 'batch'", 'model.width: 8 -> 16']
  assert artifacts.differences(STORED, want, only=('dataset', 'data_crc32')) == []
  assert artifacts.differences(STORED, dict(want, data_crc32=7), only=('data_crc32',)) == [
      "data_crc32: '<absent>' -> 7"]


def test_check_refuses_in_one_line_naming_the_keys_and_what_to_do():
  class Refused(ValueError):
    pass

  artifacts.check(None, STORED, subject='x', fix='y')          # nothing stored yet
  artifacts.check(STORED, dict(STORED), subject='x', fix='y')
  with pytest.raises(Refused) as e:
    artifacts.check(STORED, dict(STORED, epochs=4, dataset='cifar10'), error=Refused,
                    subject='the cache in d was made for another run', fix='delete d')
  assert str(e.value) == ("the cache in d was made for another run (dataset: 'npz' -> 'cifar10'; "
                          'epochs: 3 -> 4); delete d.')
  assert issubclass(artifacts.Mismatch, ValueError)


def test_records_round_trip_and_a_damaged_one_names_its_file(tmp_path):
  directory = str(tmp_path / 'a')
  assert artifacts.read_record(directory) is None
  path = artifacts.write_record(directory, dict(STORED, image_shape=(12, 12, 1)))
  assert path == os.path.join(directory, artifacts.RECORD)
  assert artifacts.read_record(directory) == STORED
  assert [f for f in os.listdir(directory) if f != artifacts.RECORD] == []   # no temporary file
  text = open(path).read()
  for damaged in (text[:len(text) // 2], '', '\xff\xfe'):
    with open(path, 'w', encoding='latin-1') as f:
      f.write(damaged)
    with pytest.raises(artifacts.RecordError) as e:
      artifacts.read_record(directory, fix='delete the directory to build it again')
    message = str(e.value)
    assert path in message and 'delete the directory' in message and '\n' not in message
  with open(path, 'w') as f:
    f.write('[1, 2]')
  with pytest.raises(artifacts.RecordError, match='holds a JSON list, not a record'):
    artifacts.read_record(directory)


def test_content_hash_is_the_sha1_of_the_sorted_json():
  # the expert buffers' default directories are named by this hash: it must never change
  record = {'image_shape': [12, 12, 1], 'expert': {'lr': 0.05}, 'dataset': 'npz'}
  assert artifacts.content_hash(record) == '137cfa5032'
  assert artifacts.content_hash(dict(record, dataset='cifar10')) != '137cfa5032'
  assert len(artifacts.content_hash(record, 16)) == 16


def test_a_killed_single_shot_build_is_discarded_and_a_complete_one_kept(tmp_path):
  directory = str(tmp_path / 'obs')
  os.makedirs(os.path.join(directory, 'checkpoint', '0'))
  open(os.path.join(directory, 'stray.bin'), 'w').close()
  open(os.path.join(directory, 'users_notes.txt'), 'w').close()
  assert not artifacts.is_complete(directory)
  assert artifacts.discard_incomplete(directory, ('checkpoint', 'stray.bin', 'missing')) == [
      'checkpoint', 'stray.bin']
  assert os.listdir(directory) == ['users_notes.txt']          # only the build's own entries
  os.makedirs(os.path.join(directory, 'checkpoint'))
  artifacts.publish(directory, STORED)
  assert artifacts.is_complete(directory)
  assert artifacts.discard_incomplete(directory, ('checkpoint',)) == []
  assert os.path.isdir(os.path.join(directory, 'checkpoint'))
  assert artifacts.discard_incomplete(str(tmp_path / 'none'), ('checkpoint',)) == []


def test_a_torn_npz_names_its_file(tmp_path):
  path = str(tmp_path / 'scores.npz')
  assert artifacts.read_npz(path) is None
  np.savez(path, a=np.arange(1000.0))
  np.testing.assert_array_equal(artifacts.read_npz(path)['a'], np.arange(1000.0))
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(artifacts.RecordError, match=f'score cache {path} is unreadable.*; '
                                                  'delete it to recompute'):
    artifacts.read_npz(path, 'score cache', 'delete it to recompute')


# -- the caches built on it ------------------------------------------------------------------------
def test_a_damaged_workdir_config_is_named_with_what_to_do(tmp_path):
  from conftest import tiny_config
  from ddjax.runtime import pipeline
  cfg = tiny_config(str(tmp_path / 'tiny.npz'))
  workdir = tmp_path / 'run'
  workdir.mkdir()
  pipeline.check_workdir(cfg, str(workdir))                   # no config.json: a new run
  (workdir / 'config.json').write_text(json.dumps(cfg.to_dict())[:40])
  with pytest.raises(artifacts.RecordError) as e:
    pipeline.check_workdir(cfg, str(workdir))
  assert str(workdir / 'config.json') in str(e.value) and '--restart' in str(e.value)
  (workdir / 'config.json').write_text(cfg.to_json())
  pipeline.check_workdir(cfg, str(workdir))
  old = cfg.to_dict()
  cfg.distill.ipc, cfg.eval.num_models = cfg.distill.ipc + 1, 7   # eval.* may change
  with pytest.raises(pipeline.WorkdirError) as e:
    pipeline.check_workdir(cfg, str(workdir))
  ipc = old['distill']['ipc']
  assert f'(distill.ipc: {ipc} -> {ipc + 1}); use a new --workdir' in str(e.value)


def _observer_record():
  return {'dataset': 'npz', 'train_size': 120, 'image_shape': [12, 12, 1],
          'preprocessing': 'standardize', 'seed': 0, 'epochs': 1,
          'arch': {'arch': 'convnet', 'depth': 1, 'width': 4, 'double_width': False,
                   'norm': 'batch', 'pooling': 'avg'}}


def _observer_variables(record, seed):
  import jax
  import jax.numpy as jnp
  from ddjax.evaluate import observer as observer_lib
  model = observer_lib.model_of(record, 3)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros([1] + record['image_shape']),
                                              train=False), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                dict(shapes))


def test_an_observer_save_killed_before_its_record_is_not_kept(tmp_path):
  """A save killed between its checkpoint and its record leaves a checkpoint and no record; the
  next save (a retrained observer) must store its own variables, not keep the stale ones."""
  import jax
  from ddjax.evaluate import observer as observer_lib
  path = str(tmp_path / 'obs')
  record = _observer_record()
  stale, fresh = _observer_variables(record, 1), _observer_variables(record, 2)
  observer_lib.save(path, stale, record)
  os.remove(os.path.join(path, observer_lib.RECORD))          # killed before the record
  assert not artifacts.is_complete(path)
  observer_lib.save(path, fresh, record)
  _, variables, got = observer_lib.load(path, 3)
  assert got == record
  jax.tree_util.tree_map(np.testing.assert_array_equal, dict(variables), fresh)


def test_a_damaged_observer_record_names_its_file(tmp_path):
  from ddjax.evaluate import observer as observer_lib
  path = tmp_path / 'obs'
  path.mkdir()
  (path / 'record.json').write_text('{"dataset": "npz", "train_')
  with pytest.raises(artifacts.RecordError) as e:
    observer_lib.load(str(path), 3)
  assert str(path / 'record.json') in str(e.value) and 'delete the observer directory' in str(
      e.value)
  with pytest.raises(observer_lib.ObserverMismatch, match='holds no observer'):
    observer_lib.load(str(tmp_path / 'nothing'), 3)
