import importlib.util
import os

# Tests run on CPU in float32; keep XLA from grabbing every core's worth of threads per test.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The suite compiles hundreds of small XLA programs whose run time is negligible; LLVM's backend
# optimisations dominate their cost (BiLP's DC per-sample step: 22.6 s to compile at the default
# level, 5.6 s at level 0; three BiLP tests 242 s -> 76 s; the one compute-heavy F-MNIST test
# is ~20 % slower). Subprocesses (multi-process runs, notebook kernels) inherit it. A level the
# user set in XLA_FLAGS wins.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_backend_optimization_level=0').strip()

import numpy as np
import pytest

TINY_CLASSES = 3
TINY_SHAPE = (12, 12, 1)


def make_tiny_arrays(seed=0, per_class=40, test_per_class=30):
  """A learnable 3-class image problem: each class brightens its own band of rows, plus noise."""
  rng = np.random.default_rng(seed)

  def split(n):
    y = np.repeat(np.arange(TINY_CLASSES), n)
    x = rng.uniform(0.0, 0.35, size=(len(y),) + TINY_SHAPE)
    for c in range(TINY_CLASSES):
      x[y == c, 4 * c:4 * c + 4, :, :] += 0.5
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)

  (x_tr, y_tr), (x_te, y_te) = split(per_class), split(test_per_class)
  return x_tr, y_tr, x_te, y_te


@pytest.fixture
def tiny_npz(tmp_path):
  """Path of a tiny .npz dataset in ddjax's npz layout."""
  x_tr, y_tr, x_te, y_te = make_tiny_arrays()
  path = tmp_path / 'tiny.npz'
  np.savez(path, x_train=(x_tr[..., 0] * 255).astype(np.uint8), y_train=y_tr,
           x_test=(x_te[..., 0] * 255).astype(np.uint8), y_test=y_te)
  return str(path)


def tiny_config(npz_path, **distill):
  """A ddjax.main config for the tiny dataset that runs in seconds."""
  from ddjax.config import base_config
  cfg = base_config()
  cfg.data.name = 'npz'
  cfg.data.dir = npz_path
  cfg.model.width = 8
  cfg.model.depth = 2
  cfg.eval.model.width = 8
  cfg.eval.model.depth = 2
  cfg.distill.ipc = 2
  cfg.distill.steps = 6
  cfg.distill.batch_size = 32
  cfg.frepo.num_models = 3
  cfg.frepo.max_online_updates = 4
  cfg.eval.num_models = 1
  cfg.eval.steps = 20
  cfg.checkpoint.every = 3
  cfg.log.every = 1
  cfg.distill.update(distill)
  return cfg


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_shipped_config(name, preset=''):
  """configs/<name>.py's get_config(preset), loaded by path as the CLI does."""
  spec = importlib.util.spec_from_file_location(f'shipped_{name}',
                                                os.path.join(ROOT, 'configs', name + '.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def run_shipped(name, workdir, overrides):
  """ddjax.run of a shipped config with dotted-key overrides ({'distill.ipc': 2}), in process."""
  from ddjax.runtime import pipeline
  cfg = load_shipped_config(name)
  for key, value in overrides.items():
    *path, leaf = key.split('.')
    node = cfg
    for part in path:
      node = node[part]
    node[leaf] = value
  return pipeline.run(cfg, str(workdir))


def run_killed_and_resumed(cfg, tmp_path, monkeypatch, kill_at=5):
  """Run `cfg` straight to the end in tmp_path/straight; run it again in tmp_path/interrupted,
  killed (KeyboardInterrupt from the real-batch sampler) at step `kill_at`, then resumed.
  -> (straight workdir, interrupted workdir, the resumed run's results)."""
  from ddjax.runtime import loop, pipeline
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  pipeline.run(cfg, straight)
  real_sampler = loop.make_sampler

  def crashing_sampler(*args, **kwargs):
    sample = real_sampler(*args, **kwargs)

    def sample_or_crash(step):
      if step == kill_at:
        raise KeyboardInterrupt(f'simulated kill at step {kill_at}')
      return sample(step)
    return sample_or_crash

  monkeypatch.setattr(loop, 'make_sampler', crashing_sampler)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(cfg, interrupted)
  monkeypatch.setattr(loop, 'make_sampler', real_sampler)
  return straight, interrupted, pipeline.run(cfg, interrupted)
