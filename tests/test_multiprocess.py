"""Multi-process runs on JAX's distributed runtime: two local processes x two CPU devices (gloo
collectives, the coordinator on localhost), started by launch/multiprocess.py, end equal to the
one-process four-device run through a kill and a resume; the launch recipes' command lines."""
import ast
import json
import os
import shlex
import subprocess
import sys
import textwrap

import numpy as np

from conftest import ROOT, tiny_config
from ddjax.infra import files

sys.path.insert(0, os.path.join(ROOT, 'launch'))
import multiprocess  # noqa: E402  (launch/multiprocess.py)

CONFIG = textwrap.dedent('''
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config

    def get_config():
      cfg = tiny_config({npz!r}, steps=7)     # checkpoints at steps 3 and 6
      cfg.model.depth, cfg.frepo.num_models, cfg.frepo.max_online_updates = 1, 1, 2  # compiles
      # 3 evaluation networks shared by 2 processes (0 and 2 | 1; padded gather), tiny and quick
      cfg.eval.num_models, cfg.eval.steps, cfg.eval.model.depth = 3, 4, 1
      return cfg                                                               # in half the time
''')

# ddjax.main whose process 1 SIGKILLs itself when it asks for step 5's batch (after the
# checkpoint at step 3 and step 4, which every process finished: metrics are logged every step).
KILLER = textwrap.dedent('''
    import os, signal
    import jax
    from absl import app
    from ddjax import main
    from ddjax.runtime import loop

    real = loop.make_sampler

    def make_sampler(*args, **kwargs):
      sample = real(*args, **kwargs)

      def sample_or_die(step):
        if step == 5 and jax.process_index() == 1:
          os.kill(os.getpid(), signal.SIGKILL)
        return sample(step)
      return sample_or_die

    loop.make_sampler = make_sampler
    app.run(main.main, flags_parser=main.parse_flags)
''')


def _start(n, devices, args, cache, entry=('-m', 'ddjax.main')):
  """The launcher as a user runs it, in its own process; returns the Popen. cache: a persistent
  XLA compilation cache (the resumed run reuses the killed run's executables: same results,
  half the compile time)."""
  cmd = [sys.executable, os.path.join(ROOT, 'launch', 'multiprocess.py'), f'-n={n}',
         f'--devices_per_process={devices}', f'--entry={shlex.join(entry)}', '--', *args]
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_COMPILATION_CACHE_DIR': cache,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def _initial_x(npz):
  """The synthetic images at step 0 (class-balanced real images) of the tiny config."""
  from ddjax.data import init_synthetic
  from ddjax.runtime import pipeline
  cfg = tiny_config(npz, steps=7)
  data = pipeline.load_data(cfg)
  return init_synthetic(cfg.seed, data.x_train, data.y_train, cfg.distill.ipc, data.num_classes,
                        init=cfg.distill.init, label_init=cfg.distill.label_init)['x']


def _distilled(workdir):
  with np.load(os.path.join(workdir, 'distilled.npz')) as f:
    return {k: f[k] for k in ('x', 'y')}


def test_two_processes_killed_and_resumed_equal_one_process_four_devices(tiny_npz, tmp_path):
  config = tmp_path / 'tiny_config.py'
  config.write_text(CONFIG.format(tests=os.path.join(ROOT, 'tests'), npz=tiny_npz))
  killer = tmp_path / 'killer.py'
  killer.write_text(KILLER)
  one, two, cache = str(tmp_path / 'one'), str(tmp_path / 'two'), str(tmp_path / 'xla_cache')
  # the reference and the run that gets killed, side by side
  ref = _start(1, 4, [f'--config={config}', f'--workdir={one}'], cache)
  killed = _start(2, 2, [f'--config={config}', f'--workdir={two}'], cache, entry=(str(killer),))
  code, out, err = _finish(ref)
  assert code == 0, err[-3000:]
  code, _, err = _finish(killed)
  assert code != 0, 'process 1 killed itself, so the launcher must report a failure'
  assert sorted(os.listdir(os.path.join(two, 'checkpoints'))) == ['3'], err[-3000:]
  assert not os.path.exists(os.path.join(two, 'distilled.npz'))

  code, out, err = _finish(_start(2, 2, [f'--config={config}', f'--workdir={two}'], cache))
  assert code == 0, err[-3000:]
  assert out.count('[frepo] step 7/7') == 1       # progress from process 0 only
  assert '[frepo] resumed from checkpoint at step 3' in out

  results = json.load(open(os.path.join(two, 'results.json')))
  assert results['distill']['processes'] == 2 and results['distill']['devices'] == 4
  assert results['distill']['resumed_from'] == 3
  ref_results = json.load(open(os.path.join(one, 'results.json')))
  assert ref_results['distill']['processes'] == 1
  a, b = _distilled(one), _distilled(two)
  for k in ('x', 'y'):   # cross-process all-reduces sum in another order: float tolerance
    np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-4)
  # the evaluation networks, split over the processes, test as the one-process run's (trained
  # with the same keys on near-equal sets: equal counts of correct test images)
  assert out.count('[eval] model ') == 2 and '[eval] model 2/3' not in out   # process 0: 1, 3
  for block in ('eval', 'krr_eval'):
    assert len(results[block]['accs']) == 3
    np.testing.assert_allclose(results[block]['accs'], ref_results[block]['accs'], atol=1e-9)
  moved = np.abs(a['x'] - _initial_x(tiny_npz)).max()
  assert moved > 100 * 1e-4, moved       # the tolerance is far below what 7 steps change

  # metrics.jsonl written by process 0 alone: 1..k before the kill (k >= 3), then 4..7 resumed
  ref_m = files.read_jsonl(os.path.join(one, 'metrics.jsonl'))
  two_m = files.read_jsonl(os.path.join(two, 'metrics.jsonl'))
  steps = [m['step'] for m in two_m]
  k = len(steps) - 4
  assert k >= 3 and steps == list(range(1, k + 1)) + [4, 5, 6, 7], steps
  np.testing.assert_allclose([m['meta_loss'] for m in two_m[-4:]],
                             [m['meta_loss'] for m in ref_m[3:]], rtol=1e-3)


def _dry(cmd, **env):
  """The lines a recipe prints with --dry-run, each split as the shell would."""
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60,
                        env={**os.environ, **env})
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.strip().splitlines()]


def _check_config_flags(argv):
  """Every --config.* flag names a key of the schema, and the distributed block they give is
  valid and starts JAX's runtime with exactly those settings."""
  from ddjax import config as config_lib
  from ddjax.infra import distributed
  cfg = config_lib.base_config()
  for flag in argv:
    if flag.startswith('--config.'):
      key, value = flag[len('--config.'):].split('=', 1)
      assert key in config_lib._keys(cfg), key
      *path, leaf = key.split('.')
      node = cfg
      for part in path:
        node = node[part]
      node[leaf] = type(node[leaf])(ast.literal_eval(value)) if leaf == 'local_device_ids' else (
          type(node[leaf])(value))
  assert distributed.config_errors(cfg.distributed) == []
  return distributed.init_kwargs(cfg.distributed, environ={})


def test_local_launcher_command_lines():
  script = [sys.executable, 'launch/multiprocess.py']
  lines = _dry(script + ['-n', '2', '--devices_per_process=3', '--port=4321', '--dry_run', '--',
                         '--config=configs/frepo.py', '--workdir=runs/x y'],
               XLA_FLAGS='--xla_cpu_foo=1 --xla_force_host_platform_device_count=8')
  assert len(lines) == 2
  for i, line in enumerate(lines):
    env = dict(a.split('=', 1) for a in line[:2])
    assert env == {'JAX_PLATFORMS': 'cpu',
                   'XLA_FLAGS': '--xla_cpu_foo=1 --xla_force_host_platform_device_count=3'}
    assert line[3:] == ['-m', 'ddjax.main', '--config=configs/frepo.py', '--workdir=runs/x y',
                        '--config.distributed.coordinator_address=localhost:4321',
                        '--config.distributed.num_processes=2',
                        f'--config.distributed.process_id={i}']
    kwargs = _check_config_flags(line[3:])
    assert kwargs == {'coordinator_address': 'localhost:4321', 'num_processes': 2,
                      'process_id': i, 'initialization_timeout': 300}
  # one process: the plain command, nothing distributed
  (line,) = _dry(script + ['-n', '1', '--devices_per_process=4', '--dry_run', '--',
                          '--config=c.py'])
  assert line[3:] == ['-m', 'ddjax.main', '--config=c.py'] and 'distributed' not in ' '.join(line)
  assert _check_config_flags(line[3:]) is None
  # GPUs: process i owns GPUs 2i, 2i + 1
  cmds = multiprocess.process_commands(2, 2, ['--config=c.py'], port=1, platform='gpu',
                                       python='python')
  assert [env for env, _ in cmds] == [{}, {}]
  assert [argv[-1] for _, argv in cmds] == ['--config.distributed.local_device_ids=(0,1,)',
                                            '--config.distributed.local_device_ids=(2,3,)']
  assert _check_config_flags(cmds[1][1])['local_device_ids'] == [2, 3]


def test_cluster_recipes_command_lines():
  (srun,) = _dry(['bash', 'launch/slurm.sbatch', '--dry-run', '--config=configs/frepo.py:paper',
                  '--workdir=/shared/a b'])
  assert srun == ['srun', '--kill-on-bad-exit=1', 'python', '-m', 'ddjax.main',
                  '--config=configs/frepo.py:paper', '--workdir=/shared/a b',
                  '--config.distributed.initialize=on']
  assert _check_config_flags(srun) == {'initialization_timeout': 300}   # SLURM fills in the rest
  sbatch = open(os.path.join(ROOT, 'launch', 'slurm.sbatch')).read()
  assert '#SBATCH --ntasks-per-node=4' in sbatch and '#SBATCH --gpus-per-node=4' in sbatch

  archive, scp, install = _dry(['bash', 'launch/tpu_vm.sh', '--dry-run', 'tpu1', 'zone-a',
                                'setup'])
  assert archive[:2] == ['git', 'archive'] and scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm',
                                                             'scp']
  assert '--worker=all' in scp and '--worker=all' in install
  assert install[-1].endswith('DDJAX_JAX_EXTRA=tpu bash launch/setup.sh')
  (run,) = _dry(['bash', 'launch/tpu_vm.sh', '--dry-run', 'tpu1', 'zone-a', 'run',
                 '--config=configs/frepo.py', '--workdir=/mnt/a b'])
  assert run[:8] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'tpu1', '--zone=zone-a',
                     '--worker=all']
  assert run[8].startswith('--command=')
  remote = shlex.split(run[8][len('--command='):])
  assert remote == ['cd', '~/ddjax', '&&', 'python', '-m', 'ddjax.main',
                    '--config=configs/frepo.py', '--workdir=/mnt/a b',
                    '--config.distributed.initialize=on']

  (single,) = _dry(['bash', 'launch/gpu_node.sh', '--dry-run', '--config=configs/frepo.py'])
  assert single == ['python', '-m', 'ddjax.main', '--config=configs/frepo.py']
  lines = _dry(['bash', 'launch/gpu_node.sh', '--dry-run', '--config=configs/frepo.py'],
               DDJAX_PROCESSES='2', DDJAX_GPUS='4')
  assert [line[-1] for line in lines] == ['--config.distributed.local_device_ids=(0,1,)',
                                          '--config.distributed.local_device_ids=(2,3,)']
  assert [_check_config_flags(line)['process_id'] for line in lines] == [0, 1]


def test_when_jax_distributed_starts():
  from ddjax.config import base_config
  from ddjax.infra.distributed import config_errors, init_kwargs
  dist = base_config().distributed
  assert init_kwargs(dist, {}) is None                      # one process: never initialised
  assert init_kwargs(dist, {'SLURM_NTASKS': '8'}) is None   # the batch script's own shell
  assert init_kwargs(dist, {'SLURM_STEP_NUM_TASKS': '1'}) is None
  assert init_kwargs(dist, {'SLURM_STEP_NUM_TASKS': '8'}) == {'initialization_timeout': 300}
  assert init_kwargs(dist, {'OMPI_COMM_WORLD_SIZE': '2'}) == {'initialization_timeout': 300}
  assert init_kwargs(dist, {'JAX_COORDINATOR_ADDRESS': 'h:1'}) == {'initialization_timeout': 300}
  dist.initialize = 'on'
  assert init_kwargs(dist, {}) == {'initialization_timeout': 300}   # TPU VMs: JAX detects all
  dist.initialize, dist.num_processes = 'off', 4
  assert init_kwargs(dist, {'SLURM_STEP_NUM_TASKS': '8'}) is None
  dist.initialize, dist.process_id = 'auto', 4
  assert any('process_id=4' in e for e in config_errors(dist))
  dist.process_id = 1
  assert any('coordinator_address' in e for e in config_errors(dist))
  dist.coordinator_address, dist.cluster_detection = 'localhost:7', 'mpi4py'
  assert config_errors(dist) == []
  assert init_kwargs(dist, {}) == {'coordinator_address': 'localhost:7', 'num_processes': 4,
                                   'process_id': 1, 'cluster_detection_method': 'mpi4py',
                                   'initialization_timeout': 300}
