"""Run loop: resume after a crash equals an uninterrupted run; sharded equals single-device;
checkpoints and exports survive kills and corruption with clear errors."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import run_killed_and_resumed, tiny_config
from ddjax.runtime import loop, pipeline
from ddjax.infra import files
from ddjax.infra.checkpoint import CheckpointError, Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _syn(workdir):
  with np.load(os.path.join(workdir, 'distilled.npz')) as f:
    return f['x'], f['y']


def test_resumed_run_equals_uninterrupted_run(tiny_npz, tmp_path, monkeypatch):
  cfg = tiny_config(tiny_npz, steps=7)
  cfg.eval.num_models = 0
  straight, interrupted, results = run_killed_and_resumed(cfg, tmp_path, monkeypatch)
  assert results['distill']['resumed_from'] == 3   # the checkpoint at 3 survived the kill at 5
  assert results['cost']['resumed_from'] == 3 and results['cost']['steps_this_process'] == 4
  for a, b in zip(_syn(straight), _syn(interrupted)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  steps = [r['step'] for r in files.read_jsonl(os.path.join(interrupted, 'metrics.jsonl'))]
  assert steps[-1] == 7


SHARDED_SCRIPT = textwrap.dedent('''
    import os, sys, json
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    os.environ['JAX_PLATFORMS'] = 'cpu'
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from conftest import tiny_config
    from ddjax.runtime import pipeline
    from ddjax.infra import sharding
    assert jax.device_count() == 8, jax.devices()
    cfg = tiny_config({npz!r}, steps=4)
    data = pipeline.load_data(cfg)
    out = {{}}
    for n in (1, 8):
      mesh = sharding.make_mesh(jax.devices()[:n])
      syn, _, _ = pipeline.distill(cfg, pipeline.make_plan(cfg, data), data, os.path.join({tmp!r}, f'dev{{n}}'), mesh=mesh)
      out[n] = {{k: np.asarray(v).tolist() for k, v in syn.items()}}
    print(json.dumps(out))
''')


def test_sharded_step_on_8_devices_equals_single_device(tiny_npz, tmp_path):
  script = SHARDED_SCRIPT.format(tests=os.path.join(ROOT, 'tests'), npz=tiny_npz, tmp=str(tmp_path))
  env = {**os.environ, 'PYTHONPATH': ROOT}
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for k in ('x', 'y'):
    np.testing.assert_allclose(np.array(out['1'][k]), np.array(out['8'][k]), rtol=1e-5, atol=1e-5)


def test_batch_not_divisible_by_devices_is_refused():
  from ddjax.infra import sharding

  class FakeMesh:
    devices = np.zeros(8)
  with pytest.raises(ValueError, match='multiple of 8'):
    sharding.check_batch_divisible(30, FakeMesh())


def test_unfinished_checkpoint_is_ignored_and_corrupt_one_reported(tmp_path):
  state = {'a': np.arange(4.0, dtype=np.float32), 'step': np.array(3, np.int32)}
  ckpt = Checkpointer(str(tmp_path / 'ck'))
  ckpt.save(3, state)
  # a save killed half-way leaves only Orbax's temporary directory behind
  os.makedirs(tmp_path / 'ck' / '6.orbax-checkpoint-tmp' / 'default')
  ckpt2 = Checkpointer(str(tmp_path / 'ck'))
  assert ckpt2.latest_step() == 3
  step, restored = ckpt2.restore_latest(state)
  assert step == 3 and np.array_equal(restored['a'], state['a'])
  # corrupt every data file of the finished checkpoint
  for root, _, names in os.walk(tmp_path / 'ck' / '3'):
    for name in names:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  with pytest.raises(CheckpointError, match='fresh --workdir'):
    Checkpointer(str(tmp_path / 'ck')).restore_latest(state)


def test_atomic_writes_leave_no_partial_files(tmp_path):
  path = str(tmp_path / 'r.json')
  files.write_json(path, {'a': 1})

  class Boom(Exception):
    pass

  def bad_writer(f):
    f.write(b'{"half": ')
    raise Boom()
  with pytest.raises(Boom):
    files.write_atomic(path, bad_writer)
  assert json.load(open(path)) == {'a': 1}
  assert os.listdir(tmp_path) == ['r.json']


def test_batches_depend_only_on_seed_and_step():
  a = loop.batch_indices(0, 5, 1000, 64)
  assert np.array_equal(a, loop.batch_indices(0, 5, 1000, 64))
  assert len(set(a.tolist())) == 64
  assert not np.array_equal(a, loop.batch_indices(0, 6, 1000, 64))
