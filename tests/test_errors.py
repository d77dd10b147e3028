"""Bad input ends in one line on stderr naming the file or key and what to do (exit status 1, no
traceback), and leaves nothing in the workdir that blocks the corrected rerun."""
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from conftest import make_tiny_arrays, tiny_config
from ddjax import config as config_lib
from ddjax import data, main
from ddjax.infra import distributed, files
from ddjax.infra.checkpoint import Checkpointer
from ddjax.runtime import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=ROOT, timeout=120):
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'ddjax.main', *args], capture_output=True,
                        text=True, cwd=cwd, env=env, timeout=timeout)


def _one_line_error(proc, *needles):
  """The process failed with exactly one stderr line, `error: ...`, holding every needle."""
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def _raise(outer: BaseException, inner: BaseException) -> BaseException:
  try:
    try:
      raise inner
    except BaseException as e:
      raise outer from e
  except BaseException as e:
    return e


# --- the message printer -------------------------------------------------------------------

def test_message_keeps_ddjax_context_and_adds_the_cause():
  npy = _raise(ValueError('file /d/x_train.npy is not a readable .npy array (truncated); write '
                          'it again.'), ValueError('truncated'))
  assert main._message(npy) == ('file /d/x_train.npy is not a readable .npy array (truncated); '
                                'write it again.')
  tfds = _raise(ImportError("data.name='tfds' needs tensorflow-datasets: pip install "
                            "'ddjax[tfds]'."), ModuleNotFoundError("No module named 'tfds'"))
  text = main._message(tfds)
  assert text.startswith("data.name='tfds' needs") and "No module named 'tfds'" in text
  # absl / ml_collections wrappers that only hold a traceback give way to what they wrap
  wrapped = _raise(ValueError('Error whilst parsing config file:\n\nTraceback (most recent call '
                              'last):\n  File ...'), KeyError('distill.ipc'))
  assert main._message(wrapped) == 'distill.ipc'


# --- the config file and its overrides ---------------------------------------------------------

def test_config_file_problems_are_named(tmp_path):
  assert main.config_path(['x', '--config=a/b.py:paper', '--config', 'c/d.py']) == 'c/d.py'
  missing = main.config_file_error(str(tmp_path / 'nope.py'))
  assert str(tmp_path / 'nope.py') in missing and 'does not exist' in missing
  assert main.config_file_error(str(tmp_path)).endswith('get_config().')
  assert main.config_file_error(None) == ''
  none = main.config_value_error(None, 'cfg.py')
  assert 'config file cfg.py: get_config() returned None' in none and 'return cfg' in none
  assert main.config_value_error(config_lib.base_config(), 'cfg.py') == ''
  errors = main.override_errors(['--config=c.py', '--config.distil.ipc=3',
                                 '--config.distill.ipc=3', '--noconfig.log.tensorbord'])
  assert errors == [
      "unknown config key 'distil.ipc'. Did you mean 'distill.ipc'? (from --config.distil.ipc=3)",
      "unknown config key 'log.tensorbord'. Did you mean 'log.tensorboard'? (from "
      '--noconfig.log.tensorbord)']


def test_cli_config_file_errors_are_one_line(tmp_path):
  _one_line_error(_cli(f'--config={tmp_path / "missing.py"}'), 'missing.py', 'does not exist')
  (tmp_path / 'none.py').write_text('def get_config(preset=""):\n  pass\n')
  _one_line_error(_cli(f'--config={tmp_path / "none.py"}'), 'none.py',
                  'get_config() returned None')
  _one_line_error(_cli('--config=configs/frepo.py', '--config.distil.ipc=3',
                       f'--workdir={tmp_path / "w"}'),
                  "unknown config key 'distil.ipc'. Did you mean 'distill.ipc'?")
  assert not (tmp_path / 'w').exists()


def test_a_config_file_imports_a_module_beside_it(tmp_path):
  """No PYTHONPATH for the config's directory: the CLI puts it on sys.path, as for a script."""
  (tmp_path / 'my_method.py').write_text('SEED = 7\n')
  (tmp_path / 'mine.py').write_text(textwrap.dedent(f'''\
      from my_method import SEED
      from ddjax.config import method_config

      def get_config(preset=''):
        cfg = method_config('frepo', preset)
        cfg.seed = SEED
        cfg.data.name = 'npz'
        cfg.data.dir = {str(tmp_path / 'nowhere.npz')!r}
        return cfg
      '''))
  proc = _cli(f'--config={tmp_path / "mine.py"}', f'--workdir={tmp_path / "w"}')
  assert 'my_method' not in proc.stderr, proc.stderr[-3000:]
  assert proc.returncode == 1 and 'nowhere.npz does not exist' in proc.stderr, proc.stderr[-3000:]


# --- the workdir ----------------------------------------------------------------------------

def test_workdir_below_a_file_or_unwritable_fails_before_compute(tiny_npz, tmp_path,
                                                                 monkeypatch):
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  with pytest.raises(files.DirectoryError, match=f'lies below the file {a_file}, not a '
                                                 'directory; name a directory'):
    pipeline.run(tiny_config(tiny_npz), str(a_file / 'w'))
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda p, mode: False if str(p) == str(tmp_path)
                      else real_access(p, mode))
  with pytest.raises(files.DirectoryError, match=f'no permission to create it in {tmp_path}; '
                                                 'choose a directory you can write'):
    pipeline.run(tiny_config(tiny_npz), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_make_dirs_names_the_directory(tmp_path):
  (tmp_path / 'f').write_text('')
  with pytest.raises(files.DirectoryError) as e:
    files.make_dirs(str(tmp_path / 'f' / 'w'), '--workdir')
  assert main._message(e.value).startswith(f'--workdir={tmp_path / "f" / "w"}: cannot create')


# --- the model against the data: refused before anything is written --------------------------

def test_convnet_too_deep_for_the_images_names_the_largest_depth(tiny_npz, tmp_path):
  from ddjax.models import convnet
  assert [convnet.max_depth((s, s, 1)) for s in (1, 3, 12, 16, 32)] == [0, 1, 3, 4, 5]
  assert convnet.max_depth((28, 28, 1)) == 5           # padded to 32 x 32
  assert convnet.max_depth((12, 12, 1), pooling='none') > 100
  with pytest.raises(ValueError, match='12 x 12 images allow at most 3 blocks'):
    convnet.ConvNet(num_classes=3, depth=4, width=4).init(
        __import__('jax').random.PRNGKey(0), np.zeros((1, 12, 12, 1), np.float32))
  cfg = tiny_config(tiny_npz)
  cfg.model.depth = 5                  # the tiny set is 12 x 12: at most depth 3
  workdir = tmp_path / 'w'
  with pytest.raises(config_lib.ConfigError,
                     match=r'model.depth=5: .* 12 x 12 images allow at most 3 blocks; set '
                           r'model.depth <= 3'):
    pipeline.run(cfg, str(workdir))
  assert not (workdir / 'config.json').exists()
  pipeline.check_workdir(tiny_config(tiny_npz), str(workdir))   # the corrected rerun may start


def test_a_dataset_with_one_class_is_refused_before_compute(tmp_path):
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  path = tmp_path / 'one.npz'
  np.savez(path, x_train=x_tr[y_tr == 0], y_train=y_tr[y_tr == 0], x_test=x_te[y_te == 0],
           y_test=y_te[y_te == 0])
  with pytest.raises(config_lib.ConfigError,
                     match=f'the dataset {path} has 1 class; .* needs at least 2 classes'):
    pipeline.run(tiny_config(str(path)), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_a_real_batch_larger_than_the_training_set_is_refused_before_anything_is_written(
    tiny_npz, tmp_path):
  cfg = tiny_config(tiny_npz, batch_size=1000)       # the tiny set has 120 training images
  with pytest.raises(config_lib.ConfigError, match='distill.batch_size=1000 exceeds the 120 '
                     'training examples; set distill.batch_size <= 120'):
    pipeline.run(cfg, str(tmp_path / 'w'))
  cfg = tiny_config(tiny_npz, batch_per_class=50)
  with pytest.raises(config_lib.ConfigError, match=r'distill.batch_per_class=50 x 3 classes = '
                     r'150 exceeds .* set distill.batch_per_class <= 40'):
    pipeline.run(cfg, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
  steps_free = tiny_config(tiny_npz, batch_size=1000)
  steps_free.method = 'random_subset'                # no distillation steps: no real batches
  steps_free.eval.num_models, steps_free.eval.krr = 0, False
  data = pipeline.load_data(steps_free)
  config_lib.validate_data(steps_free, pipeline.make_plan(steps_free, data), data)


# --- data integrity: every message names the file --------------------------------------------

def _load_error(*args, **kwargs) -> str:
  with pytest.raises(ValueError) as e:
    data.load_dataset(*args, env={}, system_dirs=[], **kwargs)
  return main._message(e.value)


def test_nan_pixels_are_reported_as_nan(tmp_path):
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  x_tr[3, 1, 1, 0] = np.nan
  x_tr[5, 2, 2, 0] = np.inf
  np.savez(tmp_path / 'nan.npz', x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
  text = _load_error('npz', tmp_path / 'nan.npz')
  assert text == (f'{tmp_path / "nan.npz"}:x_train: 2 pixel values are NaN or infinite; replace '
                  'them with values in [0, 1] or drop those images.')


def test_truncated_and_malformed_files_are_named(tmp_path):
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  ds = data.Dataset('npy', x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32), 3,
                    ('a', 'b', 'c'), '')
  good = data.write_npy(tmp_path / 'npy', ds)
  for name, content, needle in [
      ('x_train.npy', None, 'is not a readable .npy array'),
      ('class_names.json', '["a", "b",', 'is not valid JSON'),
      ('class_names.json', '{"a": 0}', 'must hold a JSON list of class names'),
  ]:
    bad = tmp_path / f'bad_{name}_{len(content or "")}'
    shutil.copytree(good, bad)
    if content is None:
      raw = (bad / name).read_bytes()
      (bad / name).write_bytes(raw[:len(raw) // 2])
    else:
      (bad / name).write_text(content)
    text = _load_error('npy', bad)
    assert text.startswith(f'file {bad / name} {needle}'), text
  idx = tmp_path / 'idx'
  idx.mkdir()
  for stem, arr in [('train-images-idx3-ubyte', x_tr[..., 0]), ('train-labels-idx1-ubyte', y_tr),
                    ('t10k-images-idx3-ubyte', x_te[..., 0]), ('t10k-labels-idx1-ubyte', y_te)]:
    data.write_idx(idx / (stem + '.gz'), (arr * 255 if arr.ndim > 1 else arr).astype(np.uint8))
  raw = (idx / 'train-images-idx3-ubyte.gz').read_bytes()
  (idx / 'train-images-idx3-ubyte.gz').write_bytes(raw[:len(raw) // 2])
  text = _load_error('mnist', idx)
  assert text.startswith(f'file {idx / "train-images-idx3-ubyte.gz"} is not a valid IDX file: '
                         'corrupt gzip stream'), text
  np.savez(tmp_path / 'ok.npz', x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
  raw = (tmp_path / 'ok.npz').read_bytes()
  (tmp_path / 'cut.npz').write_bytes(raw[:len(raw) // 2])
  text = _load_error('npz', tmp_path / 'cut.npz')
  assert text.startswith(f'file {tmp_path / "cut.npz"} is not a readable .npz archive'), text


# --- jax.distributed -------------------------------------------------------------------------

def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _dist(address, process_id, timeout):
  return ml_collections.ConfigDict(dict(
      initialize='auto', coordinator_address=address, num_processes=2, process_id=process_id,
      local_device_ids=(), cluster_detection='', cpu_collectives='none', timeout=timeout))


def test_unreachable_coordinator_is_one_error_naming_address_and_timeout():
  address = f'127.0.0.1:{_closed_port()}'
  with pytest.raises(distributed.DistributedSetupError,
                     match=f'process 1 could not reach the coordinator {address} within '
                           r'distributed.timeout=0.3 s .*start process 0 first'):
    distributed.initialize(_dist(address, 1, 0.3))
  assert not distributed._initialized()


def test_a_peer_that_never_joins_ends_in_one_line_not_a_cpp_abort():
  address = f'127.0.0.1:{_closed_port()}'
  block = _dist(address, 0, 1).to_dict()
  script = ('import ml_collections\nfrom ddjax.infra import distributed\n'
            f'distributed.initialize(ml_collections.ConfigDict({block!r}))\nprint("joined")\n')
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=120)
  assert proc.returncode == 1 and 'joined' not in proc.stdout, proc.stderr[-3000:]
  assert 'Fatal Python error' not in proc.stderr and 'Check failure' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: process 0 waited distributed.timeout=1 s at the coordinator '
                         f'{address} for all 2 processes to join'), proc.stderr[-3000:]


# --- checkpoints -----------------------------------------------------------------------------

def test_a_damaged_checkpoint_skipped_on_resume_is_replaced(tmp_path, caplog):
  state = {'a': np.arange(4.0, dtype=np.float32), 'step': np.array(3, np.int32)}
  ckpt = Checkpointer(str(tmp_path / 'ck'), keep=3)
  ckpt.save(3, state)
  ckpt.save(6, {**state, 'a': state['a'] + 1})
  for root, _, names in os.walk(tmp_path / 'ck' / '6'):
    for name in names:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  with caplog.at_level(logging.WARNING):
    step, _ = Checkpointer(str(tmp_path / 'ck'), keep=3).restore_latest(state)
  assert step == 3 and 'skipping unreadable checkpoints' in caplog.text
  caplog.clear()
  again = Checkpointer(str(tmp_path / 'ck'), keep=3)
  assert again.all_steps() == [3]            # the damaged step is gone: no warning next time
  with caplog.at_level(logging.WARNING):
    assert again.restore_latest(state)[0] == 3
  assert 'unreadable' not in caplog.text
  again.save(6, {**state, 'a': state['a'] + 2})      # and the run writes that step again
  step, restored = Checkpointer(str(tmp_path / 'ck'), keep=3).restore_latest(state)
  assert step == 6 and np.array_equal(restored['a'], state['a'] + 2)
