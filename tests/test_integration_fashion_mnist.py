"""Real data: a short FRePo + ISA run on Fashion-MNIST beats a random real subset of the same size
under the same evaluation protocol. Skipped when the Debian files are absent (CI installs them)."""
import os

import pytest

from ddjax.runtime import pipeline

DEBIAN = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(DEBIAN) or os.environ.get('DDJAX_DATA')),
                       reason='Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)'),
]


def _cfg(config_name, steps):
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      config_name, os.path.join(root, 'configs', config_name + '.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.distill.ipc = 1
  if cfg.method != 'random_subset':
    cfg.distill.steps = steps
  cfg.distill.batch_size = 256
  cfg.eval.num_models = 2
  cfg.eval.steps = 300
  cfg.eval.krr = False
  cfg.log.every = 50
  cfg.checkpoint.every = 1000
  return cfg


def test_frepo_isa_beats_random_subset_on_fashion_mnist(tmp_path):
  distilled = pipeline.run(_cfg('frepo_isa', 250), str(tmp_path / 'isa'))
  baseline = pipeline.run(_cfg('random_subset', 0), str(tmp_path / 'random'))
  # one real image per class gives ~45-55%; 250 FRePo+ISA steps already give ~60%
  assert distilled['eval']['acc_mean'] > baseline['eval']['acc_mean'] + 0.04, (distilled, baseline)
  assert distilled['eval']['acc_mean'] > 0.55


def _dm_cfg(method, steps):
  cfg = _cfg('dm', steps)
  cfg.method = method
  cfg.model.width = 64                   # a cheaper DM network for CI; DM's own is 128 wide
  cfg.distill.batch_per_class = 64       # 64 real images per class
  cfg.eval.model.width = 64
  cfg.eval.steps = 300
  return cfg


def test_dm_beats_random_subset_on_fashion_mnist(tmp_path):
  distilled = pipeline.run(_dm_cfg('dm', 120), str(tmp_path / 'dm'))
  baseline = pipeline.run(_dm_cfg('random_subset', 0), str(tmp_path / 'random'))
  # same initial images (DM starts from the random subset), same evaluation (DC's, with DSA)
  assert distilled['eval']['acc_mean'] > baseline['eval']['acc_mean'] + 0.03, (distilled, baseline)


def test_dsa_beats_random_subset_on_fashion_mnist(tmp_path):
  # gradient matching (DC's code path, with DSA) from the same real initial images, same evaluation
  cfg = _dm_cfg('dc', 0)
  cfg.dc.iterations = 40
  cfg.distill.lr = 0.1                   # DC / DSA's image learning rate (DM's is 1.0)
  cfg.model.width = 32
  cfg.eval.model.width = 32
  cfg.distill.batch_per_class = 32       # 32 real images per class
  distilled = pipeline.run(cfg, str(tmp_path / 'dsa'))
  base = _dm_cfg('random_subset', 0)
  base.eval.model.width = 32
  baseline = pipeline.run(base, str(tmp_path / 'random'))
  assert distilled['distill']['steps'] == 40
  assert distilled['eval']['acc_mean'] > baseline['eval']['acc_mean'] + 0.03, (distilled, baseline)
