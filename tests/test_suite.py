"""The evaluation suite (ddjax.suite): judging a set end to end on the tiny dataset, resuming,
refusing a directory made for other settings, sets from every source judged alike, and an axis
and a protocol registered from outside the package."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from ddjax import registry
from ddjax.evaluate import scores
from ddjax.runtime import pipeline
from ddjax.suite import runner

TINY = {'num_models': 2, 'max_steps': 15, 'robust_scores.full_data_epochs': 40}


@pytest.fixture
def tiny_set(tiny_npz, tmp_path):
  """A random-subset workdir on the tiny dataset (no evaluation of its own)."""
  cfg = tiny_config(tiny_npz)
  cfg.method = 'random_subset'
  cfg.eval.num_models = 0
  cfg.eval.protocol = 'dc'
  workdir = str(tmp_path / 'set')
  pipeline.run(cfg, workdir)
  return workdir


def _judge(tiny_set, tmp_path, axes='accuracy,robust_scores', out='suite', **extra):
  overrides = {**TINY, 'cache_dir': str(tmp_path / 'cache'), **extra}
  return runner.evaluate_set(tiny_set, str(tmp_path / out), axes=axes, overrides=overrides)


def _count_training():
  calls = []
  spec = registry.get_protocol('dc')
  original = spec.train

  def counted(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)
  object.__setattr__(spec, 'train', counted)
  return calls, lambda: object.__setattr__(spec, 'train', original)


def test_the_suite_judges_a_set_and_its_scores_follow_from_its_accuracies(tiny_set, tmp_path):
  res = _judge(tiny_set, tmp_path)
  out = tmp_path / 'suite'
  assert (out / 'suite.json').exists() and (out / 'report.md').exists()
  saved = json.loads((out / 'suite.json').read_text())
  assert saved['set']['ipc'] == 2 and saved['set']['protocol'] == 'dc'
  acc = res['axes']['accuracy']['protocols']['dc']
  assert len(acc['set']['accs']) == 2 and 0 <= acc['set']['acc_mean'] <= 1
  rs = res['axes']['robust_scores']
  a = {k: v['acc_mean'] for k, v in rs['accuracies'].items()}
  assert rs['hlr'] == pytest.approx(a['real_hard'] - a['set_hard'])
  assert rs['ior'] == pytest.approx(a['set'] - a['random'])
  assert rs['lrs'] == pytest.approx(scores.label_robust_score(rs['hlr'], rs['ior']))
  assert rs['ars'] == pytest.approx(scores.augmentation_robust_score(
      a['set'], a['random'], a['set_plain'], a['random_plain']))
  assert a['real_hard'] > 0.6            # the tiny problem is learnable from all its data
  # the same cell asked by two axes is trained once: the set under its own protocol
  assert rs['accuracies']['set']['accs'] == acc['set']['accs']
  assert 'HLR' in (out / 'report.md').read_text()


def test_a_finished_suite_is_read_back_and_an_interrupted_one_trains_only_what_is_missing(
    tiny_set, tmp_path):
  first = _judge(tiny_set, tmp_path, axes='accuracy')
  calls, restore = _count_training()
  try:
    again = _judge(tiny_set, tmp_path, axes='accuracy')
    assert calls == []
    assert again['axes']['accuracy']['protocols'] == first['axes']['accuracy']['protocols']
    # a kill after network 0 of the set's cell: its result and network 1's unit are gone
    os.remove(tmp_path / 'suite' / 'accuracy' / 'result.json')
    os.remove(tmp_path / 'suite' / 'units' / 'set' / 'own' / 'eval_model' / 'net1.npz')
    resumed = _judge(tiny_set, tmp_path, axes='accuracy')
  finally:
    restore()
  assert len(calls) == 1          # network 1 alone; the random baseline is cached
  assert resumed['axes']['accuracy']['protocols']['dc']['set']['accs'] == pytest.approx(
      first['axes']['accuracy']['protocols']['dc']['set']['accs'], abs=1e-6)


def test_a_directory_made_with_other_settings_is_refused(tiny_set, tmp_path):
  _judge(tiny_set, tmp_path, axes='accuracy')
  with pytest.raises(ValueError, match='num_models'):
    _judge(tiny_set, tmp_path, axes='accuracy', num_models=3)
  with pytest.raises(ValueError, match='protocols'):       # an axis's own setting changed
    _judge(tiny_set, tmp_path, axes='accuracy', **{'accuracy.protocols': 'dc,frepo'})
  with pytest.raises(ValueError, match='unknown suite setting'):
    _judge(tiny_set, tmp_path, axes='accuracy', out='other', bogus=1)
  # an axis added later joins the finished suite
  both = _judge(tiny_set, tmp_path, axes='accuracy,cross_arch',
                **{'cross_arch.archs': 'MLP'})
  assert set(both['axes']) == {'accuracy', 'cross_arch'}


def test_the_npz_of_a_workdir_is_judged_as_the_workdir_and_its_image_folder_close(
    tiny_set, tmp_path, tiny_npz):
  cfg = tiny_config(tiny_npz)
  cfg.eval.protocol = 'dc'
  common = {**TINY, 'cache_dir': str(tmp_path / 'cache')}
  work = runner.evaluate_set(tiny_set, str(tmp_path / 'w'), axes='accuracy', overrides=common)
  npz = runner.evaluate_set(os.path.join(tiny_set, 'distilled.npz'), str(tmp_path / 'n'),
                            axes='accuracy', overrides=common, config=cfg)
  folder = runner.evaluate_set(os.path.join(tiny_set, 'distilled_images'), str(tmp_path / 'f'),
                               axes='accuracy', overrides=common, config=cfg)
  accs = lambda r: r['axes']['accuracy']['protocols']['dc']['set']['accs']
  assert accs(npz) == pytest.approx(accs(work), abs=1e-6)
  assert np.mean(accs(folder)) == pytest.approx(np.mean(accs(work)), abs=0.15)
  assert folder['set']['source'] == 'folder'
  assert folder['set']['hard_labels'] == work['set']['hard_labels']   # labels.npy read back


def test_a_user_axis_and_a_user_protocol_run_end_to_end(tiny_set, tmp_path):
  sys.path.insert(0, os.path.join(ROOT, 'tests'))
  import example_axis  # noqa: F401  (registers 'nearest_real')
  import example_protocol  # noqa: F401  (registers the 1-NN protocol 'nearest')
  res = _judge(tiny_set, tmp_path, axes='nearest_real,accuracy',
               **{'accuracy.protocols': 'nearest', 'nearest_real.real_per_class': 1000})
  assert res['axes']['nearest_real']['mean_distance'] == pytest.approx(0.0, abs=1e-5)  # real
  rows = res['axes']['accuracy']['protocols']
  assert set(rows) == {'dc', 'nearest'} and 0 <= rows['nearest']['set']['acc_mean'] <= 1
  assert 'nearest_real' in (tmp_path / 'suite' / 'report.md').read_text()


def test_the_command_line_lists_axes_and_refuses_unknown_settings(tiny_set, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *a: subprocess.run([sys.executable, '-m', 'ddjax.evaluate', *a], cwd=tmp_path,
                                   env=env, capture_output=True, text=True, timeout=120)
  listed = run('--list')
  assert listed.returncode == 0 and 'robust_scores' in listed.stdout
  bad = run(f'--set={tiny_set}', '--suite.num_modles=3')
  assert bad.returncode != 0 and 'num_modles' in bad.stderr
  missing = run('--set=/nonexistent/set')
  assert missing.returncode != 0 and 'no set at' in missing.stderr


def test_cross_architecture_trains_every_named_network_and_refuses_unknown_ones(tiny_set,
                                                                                tmp_path):
  res = _judge(tiny_set, tmp_path, axes='cross_arch', **{'cross_arch.archs': 'ConvNet-2,MLP'})
  rows = res['axes']['cross_arch']['archs']
  assert list(rows) == ['ConvNet-2', 'MLP']
  for row in rows.values():
    assert len(row['set']['accs']) == 2 and len(row['random']['accs']) == 2
    assert row['gain'] == pytest.approx(row['set']['acc_mean'] - row['random']['acc_mean'])
  assert res['axes']['cross_arch']['mean'] == pytest.approx(
      np.mean([r['set']['acc_mean'] for r in rows.values()]))
  assert (tmp_path / 'suite' / 'cross_arch' / 'cross_arch.png').exists()
  with pytest.raises(ValueError, match='unknown zoo architecture'):
    _judge(tiny_set, tmp_path, axes='cross_arch', out='bad',
           **{'cross_arch.archs': 'ConvNet-2,ResNet-50'})


MULTI_CONFIG = '''
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_config

def get_config():
  cfg = tiny_config({npz!r})
  cfg.method = 'random_subset'
  cfg.eval.num_models = 0
  cfg.eval.protocol = 'dc'
  return cfg
'''


def test_two_processes_share_the_networks_and_end_with_the_one_process_results(
    tiny_set, tiny_npz, tmp_path):
  config = tmp_path / 'tiny_config.py'
  config.write_text(MULTI_CONFIG.format(tests=os.path.join(ROOT, 'tests'), npz=tiny_npz))
  args = [f'--set={tiny_set}', f'--config={config}', '--suite.axes=accuracy',
          '--suite.num_models=3', '--suite.max_steps=15']
  env = dict(os.environ, PYTHONPATH=ROOT)
  one = subprocess.run([sys.executable, '-m', 'ddjax.evaluate', *args,
                        f'--out={tmp_path / "one"}', f'--suite.cache_dir={tmp_path / "c1"}'],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert one.returncode == 0, one.stderr[-2000:]
  two = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'multiprocess.py'), '-n=2',
                        '--devices_per_process=1', '--entry=-m ddjax.evaluate', '--', *args,
                        f'--out={tmp_path / "two"}', f'--suite.cache_dir={tmp_path / "c2"}'],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert two.returncode == 0, two.stderr[-2000:]
  rows = lambda d: json.loads((tmp_path / d / 'suite.json').read_text())[
      'axes']['accuracy']['protocols']['dc']
  assert rows('two')['set']['accs'] == pytest.approx(rows('one')['set']['accs'], abs=1e-6)
  assert rows('two')['random']['accs'] == pytest.approx(rows('one')['random']['accs'], abs=1e-6)
  # networks 0 and 2 on process 0, network 1 on process 1: every unit written once
  units = sorted(p.name for p in (tmp_path / 'two' / 'units' / 'set' / 'own' / 'eval_model')
                 .iterdir())
  assert units == ['net0.npz', 'net1.npz', 'net2.npz']


def test_each_cell_trains_under_the_protocol_it_names(tiny_set, tmp_path, monkeypatch):
  """The set's own protocol is 'frepo' here; HLR's cells ask for 'dc' and must train as 'dc'."""
  from ddjax.evaluate.protocols import common
  seen = []
  real = common.train_from_scratch

  def spy(key, model, x, y, protocol, *args, **kwargs):
    seen.append((protocol.name, protocol.loss, protocol.optimizer, int(x.shape[0]),
                 protocol.steps))
    return real(key, model, x, y, protocol, *args, **kwargs)
  monkeypatch.setattr(common, 'train_from_scratch', spy)
  _judge(tiny_set, tmp_path, axes='robust_scores', protocol='frepo',
         **{'robust_scores.ars': False})
  names = {s[0] for s in seen}
  assert names == {'frepo', 'dc'}
  assert not (tmp_path / 'suite' / 'units' / 'set' / 'own' / 'MLP').exists()
  for name, loss, optimizer, n, steps in seen:
    assert (loss, optimizer) == (('mse', 'adam') if name == 'frepo' else ('ce', 'sgd'))
  full = [s for s in seen if s[3] == 120]        # the whole tiny training set, 40 epochs
  assert full and all(s[0] == 'dc' and s[4] == 40 for s in full)


def test_robust_scores_on_one_named_architecture(tiny_set, tmp_path):
  """robust_scores.arch puts every cell of the scores, the full-data reference included, on one
  zoo network (so sets with different eval models compare)."""
  res = _judge(tiny_set, tmp_path, axes='robust_scores',
               **{'robust_scores.arch': 'MLP', 'robust_scores.ars': False})
  assert res['axes']['robust_scores']['arch'] == 'MLP'
  units = tmp_path / 'suite' / 'units' / 'set'
  assert (units / 'own' / 'MLP').is_dir() and (units / 'dc' / 'MLP' / 'hard').is_dir()
  assert not (units / 'own' / 'eval_model').exists()
  cached = [json.loads(p.read_text()) for p in (tmp_path / 'cache').glob('full_data_*/record.json')]
  assert [c['arch'] for c in cached] == ['MLP']
