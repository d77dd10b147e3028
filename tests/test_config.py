"""Every invalid config fails before compute with a message that says what is allowed."""
import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_config
from ddjax import config as config_lib
from ddjax.runtime import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=600):
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'ddjax.main', *args], capture_output=True,
                        text=True, cwd=ROOT, env=env, timeout=timeout)


@pytest.mark.parametrize('key,value,message', [
    ('method', 'frepoo', "method='frepoo' is not one of ('datm', 'dc', 'dm', 'frepo', 'kip', 'mtt', "
                         "'ncfm', 'pad', 'random_subset', 'rded', 'rfad'"),
    ('data.name', 'imagenet21k', "data.name='imagenet21k' is not one of"),
    ('model.arch', 'resnet1000', "model.arch='resnet1000' is not one of"),
    ('eval.model.norm', 'groupish', "eval.model.norm='groupish' is not one of"),
    ('distill.ipc', 0, 'distill.ipc must be an integer >= 1'),
    ('eval.protocol', 'mine', "eval.protocol='mine' is not one of"),
    ('eval.clip_pixels', 'yes', "eval.clip_pixels='yes' is not one of ('auto', 'on', 'off')"),
    ('eval.vmap_models', -1, 'eval.vmap_models must be an integer >= 0 (0: the backend default'),
    ('transform.drop_easiest', 1.0, 'transform.drop_easiest must lie in [0, 1)'),
    ('transform.isa_eps', 2.0, 'transform.isa_eps must lie in [0, 1]'),
])
def test_invalid_values_are_named_with_what_is_allowed(key, value, message):
  cfg = config_lib.base_config()
  block, _, leaf = key.rpartition('.')
  target = cfg
  for part in filter(None, block.split('.')):
    target = target[part]
  target[leaf] = value
  with pytest.raises(ValueError) as e:
    config_lib.validate(cfg)
  assert message in str(e.value)


def test_unknown_key_is_refused_with_a_suggestion():
  cfg = config_lib.base_config()
  cfg.distill.ipcc = 3
  with pytest.raises(ValueError, match=r"unknown config key 'distill.ipcc'. Did you mean 'distill.ipc'"):
    config_lib.validate(cfg)


def test_ipc_larger_than_smallest_class_fails_before_compute(tiny_npz, tmp_path):
  cfg = tiny_config(tiny_npz)
  cfg.distill.ipc = 41   # the tiny set has 40 images per class
  with pytest.raises(ValueError, match='ipc'):
    pipeline.run(cfg, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')


def test_shipped_configs_are_valid():
  sys.path.insert(0, os.path.join(ROOT, 'configs'))
  import frepo, frepo_isa, random_subset  # noqa: E401
  for module in (frepo, frepo_isa, random_subset):
    for preset in ('', 'paper'):
      config_lib.validate(module.get_config(preset))
  isa = frepo_isa.get_config()
  assert (isa.transform.drop_easiest, isa.transform.isa_eps) == (0.2, 1.0)
  paper = frepo.get_config('paper')
  assert (paper.distill.optimizer, paper.frepo.num_models, paper.distill.batch_size) == ('lamb', 10, 1024)
  with pytest.raises(ValueError, match='preset'):
    frepo.get_config('fast')


def test_cli_rejects_bad_override_and_missing_dataset(tmp_path):
  bad_key = _cli('--config=configs/frepo_isa.py', '--config.distill.ipcc=3',
                 f'--workdir={tmp_path / "a"}', timeout=120)
  assert bad_key.returncode != 0 and 'ipcc' in bad_key.stderr
  bad_value = _cli('--config=configs/frepo_isa.py', '--config.model.arch=resnet1000',
                   f'--workdir={tmp_path / "b"}', timeout=120)
  assert bad_value.returncode != 0 and "model.arch='resnet1000' is not one of" in bad_value.stderr
  missing = _cli('--config=configs/frepo_isa.py', '--config.data.name=cifar10',
                 f'--config.data.dir={tmp_path / "nowhere"}', f'--workdir={tmp_path / "c"}',
                 timeout=120)
  assert missing.returncode != 0 and 'nowhere' in missing.stderr and 'cifar' in missing.stderr
  assert not os.path.exists(tmp_path / 'c')


def test_cli_end_to_end_on_tiny_npz(tiny_npz, tmp_path):
  workdir = tmp_path / 'run'
  proc = _cli('--config=configs/frepo_isa.py', '--config.data.name=npz',
              f'--config.data.dir={tiny_npz}', '--config.model.width=8',
              '--config.eval.model.width=8', '--config.distill.ipc=2', '--config.distill.steps=4',
              '--config.distill.batch_size=32', '--config.frepo.num_models=2',
              '--config.eval.num_models=2', '--config.eval.steps=10', '--config.log.every=2',
              f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'steps/s' in proc.stdout and 'ETA' in proc.stdout
  results = json.load(open(workdir / 'results.json'))
  assert results['method'] == 'frepo' and results['dataset'] == 'npz' and results['ipc'] == 2
  assert results['distill']['steps'] == 4 and results['distill']['sec_per_step'] > 0
  assert len(results['eval']['accs']) == 2
  assert all(0 <= a <= 1 for a in results['eval']['accs'])
  assert 0 <= results['krr_eval']['acc'] <= 1
  for name in ('distilled.npz', 'distilled.png', 'curve.png', 'metrics.jsonl', 'config.json'):
    assert (workdir / name).exists(), name


def test_cli_errors_are_one_line_on_stderr_before_compute(tiny_npz, tmp_path):
  """What a new user runs into gets one clear line and a non-zero exit, no traceback."""
  def check(proc, *needles):
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
      assert needle in proc.stderr, proc.stderr[-3000:]

  check(_cli('--config=configs/frepo.py:gpu', timeout=120), "unknown preset 'gpu'", "'paper'")
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a directory')
  tiny = ['--config=configs/frepo.py', '--config.data.name=npz', f'--config.data.dir={tiny_npz}']
  check(_cli(*tiny, f'--workdir={a_file}', timeout=120), 'is a file')
  check(_cli(*tiny, '--config.distill.lr=nan', '--config.frepo.reg=-1e-6',
             f'--workdir={tmp_path / "n"}', timeout=120),
        'distill.lr=nan must be a finite number', 'frepo.reg=-1e-06 must be >= 0')
  assert not (tmp_path / 'n').exists()


def test_divergence_and_a_changed_workdir_config_stop_with_what_to_do(tiny_npz, tmp_path):
  from ddjax.runtime.loop import DivergedError
  cfg = tiny_config(tiny_npz)
  cfg.eval.num_models = 0
  diverging = tiny_config(tiny_npz)
  diverging.eval.num_models, diverging.checkpoint.every = 0, 1
  diverging.distill.optimizer, diverging.distill.lr = 'sgd', 1e30
  with pytest.raises(DivergedError,
                     match=r'diverged at step \d.*non-finite.*last good checkpoint is step'):
    pipeline.run(diverging, str(tmp_path / 'd'))
  run = str(tmp_path / 'r')
  pipeline.run(cfg, run)
  cfg.distill.ipc = 1
  cfg.eval.num_models = 1                     # evaluation keys may change on a finished run
  with pytest.raises(pipeline.WorkdirError, match=r'distill.ipc: 2 -> 1.*--restart'):
    pipeline.run(cfg, run)
  assert pipeline.run(cfg, run, restart=True)['ipc'] == 1
