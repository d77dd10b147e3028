"""The method registry: a method defined outside the package runs end to end through the CLI with
its own config block; capabilities decide which wrappers and transforms compose with it; nothing
in the package checks a method's name."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import example_method  # noqa: F401  (registers linear_krr and pixel_means)
from conftest import tiny_config
from ddjax import config as config_lib
from ddjax import registry
from ddjax import transforms as T
from ddjax.distill import step as step_lib
from ddjax.distill.bilp import AdaptivePruning
from ddjax.runtime import pipeline
from ddjax.infra import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, 'tests')

USER_CONFIG = '''
import example_method          # the user's module registers its methods
from ddjax.config import method_config


def get_config(preset=''):
  cfg = method_config('linear_krr', preset)
  cfg.data.update(name='npz', dir={npz!r})
  cfg.distill.update(ipc=2, steps=8, batch_size=30)
  cfg.eval.model.update(width=8, depth=2)
  cfg.eval.update(num_models=1, steps=10)
  cfg.log.every, cfg.checkpoint.every = 1, 4
  cfg.bilp.update(adaptive_beta=0.5, adaptive_every=2)   # BiLP's ITE pruning on the user's loss
  return cfg
'''


def _cli(*args, timeout=300):
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([ROOT, TESTS]), 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'ddjax.main', *args], capture_output=True,
                        text=True, cwd=ROOT, env=env, timeout=timeout)


def test_user_method_runs_through_the_cli_with_bilp_adaptive_pruning(tiny_npz, tmp_path):
  config = tmp_path / 'my_config.py'
  config.write_text(USER_CONFIG.format(npz=tiny_npz))
  workdir = tmp_path / 'run'
  proc = _cli(f'--config={config}', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(workdir / 'results.json'))
  assert results['method'] == 'linear_krr' and results['adaptive_pruning']['adaptive_beta'] == 0.5
  assert 0 <= results['eval']['acc_mean'] <= 1
  metrics = files.read_jsonl(str(workdir / 'metrics.jsonl'))
  assert len(metrics) == 8
  assert all(0 < m['kept'] < 30 for m in metrics)        # BiLP's window dropped some rows
  saved = json.load(open(workdir / 'config.json'))
  assert saved['linear_krr'] == {'reg': 1e-3}            # its own block, with its default
  # the method's own validation runs before any compute
  bad = _cli(f'--config={config}', '--config.linear_krr.reg=0', f'--workdir={tmp_path / "b"}')
  assert bad.returncode != 0 and 'linear_krr.reg must be > 0' in bad.stderr
  assert 'Traceback' not in bad.stderr and not (tmp_path / 'b').exists()


def _pixel_means_config(npz):
  cfg = tiny_config(npz)
  cfg.method = 'pixel_means'
  registry.get('pixel_means').configure(cfg, '')
  cfg.eval.num_models = 0
  return cfg


def test_capabilities_refuse_what_a_method_cannot_take(tiny_npz):
  cfg = _pixel_means_config(tiny_npz)
  config_lib.validate(cfg)
  cfg.bilp.adaptive_beta = 0.3
  with pytest.raises(config_lib.ConfigError, match=r"additive form.*method='pixel_means'"):
    config_lib.validate(cfg)
  cfg.bilp.adaptive_beta = 0.0
  cfg.transform.drop_easiest = 0.2
  with pytest.raises(config_lib.ConfigError, match=r"method='pixel_means' returns no per-example"):
    config_lib.validate(cfg)
  # the same rules hold for the library objects, whatever the config says
  pm = example_method.PixelMeans(3)
  with pytest.raises(ValueError, match='PixelMeans declares neither'):
    AdaptivePruning(pm, 24)
  opt = step_lib.make_syn_optimizer('adam', 1e-2, 1e-2, 10)
  with pytest.raises(ValueError, match=r'drop_easiest\(0.2\).*PixelMeans'):
    step_lib.make_step(pm, T.chain(T.drop_easiest(0.2), T.isa(1.0)), opt, jnp.arange(3))


def test_per_class_user_method_distils_in_process(tiny_npz, tmp_path):
  cfg = _pixel_means_config(tiny_npz)
  cfg.distill.steps = 30
  cfg.distill.lr = 0.5
  cfg.distill.optimizer = 'sgd'
  cfg.distill.schedule = 'constant'
  cfg.log.every = 5
  pipeline.run(cfg, str(tmp_path / 'pm'))
  losses = [m['loss'] for m in files.read_jsonl(str(tmp_path / 'pm' / 'metrics.jsonl'))]
  assert losses[-1] < 0.5 * losses[0], losses


def test_user_set_builder_builds_its_set_without_steps(tiny_npz, tmp_path):
  """A set builder is its own kind: the pipeline calls `build` once, takes no steps although the
  config asks for some, and keeps its `report` in results.json."""
  cfg = tiny_config(tiny_npz)
  cfg.method = 'class_means'
  cfg.eval.num_models = 0
  assert cfg.distill.steps > 0
  results = pipeline.run(cfg, str(tmp_path / 'cm'))
  data = pipeline.load_data(cfg)
  assert results['distill']['steps'] == 0
  assert results['cost']['steps'] == 0 and results['cost']['seconds'] > 0   # building is timed
  assert results['build'] == {'images_averaged': len(data.y_train) // 2}
  assert not (tmp_path / 'cm' / 'metrics.jsonl').exists()
  with np.load(tmp_path / 'cm' / 'distilled.npz') as f:
    x, classes = f['x'], f['classes']
  for c in range(data.num_classes):         # a mean of real images of its class, nearer to that
    own = data.x_train[data.y_train == c].mean(0)            # class's mean than to the others'
    others = [data.x_train[data.y_train == o].mean(0) for o in range(data.num_classes) if o != c]
    for xi in x[classes == c]:
      assert np.abs(xi - own).mean() < min(np.abs(xi - m).mean() for m in others)


def test_registry_errors_name_what_exists():
  with pytest.raises(registry.RegistryError, match="method='nope' is not registered; choose one "
                                                   "of \\('cda', 'datm', 'dc', 'dm', .*'frepo', .*"
                                                   "'kip', 'mtt', 'ncfm', 'pad'"):
    registry.get('nope')
  with pytest.raises(registry.RegistryError, match='already registered'):
    registry.register(registry.Method(name='frepo', build=None, distiller_class=object))
  with pytest.raises(config_lib.ConfigError, match=r"unknown preset 'gpu' for method 'frepo'"):
    config_lib.method_config('frepo', 'gpu')
  assert 'linear_krr' in config_lib.METHODS and 'linear_krr' in config_lib.base_config()


def test_no_method_names_are_checked_outside_the_registry():
  """The CLI, the config and the pipeline name no method; wrappers find no concrete class."""
  package = os.path.join(ROOT, 'ddjax')
  offenders = []
  methods = "|".join(registry.names())
  pattern = re.compile(r"(cfg\.method\s*(==|!=|in\b)|\bmethod\s*(==|!=|in \()\s*'(%s)'|isinstance\([^)]*\b"
                       r"(FRePo|KIP|RFAD|DC|DM|RandomSubset)\b)" % methods)
  for root, _, names in os.walk(package):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        for i, line in enumerate(open(path), 1):
          if pattern.search(line):
            offenders.append(f'{os.path.relpath(path, ROOT)}:{i}: {line.strip()}')
  assert not offenders, offenders


PROTOCOL_CONFIG = '''
import example_protocol        # the user's module registers its protocol
from ddjax.config import method_config


def get_config(preset=''):
  cfg = method_config('random_subset', preset)
  cfg.data.update(name='npz', dir={npz!r})
  cfg.distill.update(ipc=2)
  cfg.eval.protocol = 'nearest'
  cfg.nearest.metric = 'cosine'
  return cfg
'''


def test_user_protocol_registers_from_outside_and_judges_the_set(tiny_npz, tmp_path):
  """A protocol from the user's module: the CLI accepts its name and its block, the run calls
  it on the exported set (its accuracy is 1-NN computed here from distilled.npz), and its own
  validation refuses a bad value before any compute."""
  import example_protocol
  config = tmp_path / 'proto_config.py'
  config.write_text(PROTOCOL_CONFIG.format(npz=tiny_npz))
  workdir = tmp_path / 'run'
  proc = _cli(f'--config={config}', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(workdir / 'results.json'))
  assert results['plan']['protocol'] == 'nearest' and results['eval']['protocol'] == 'nearest'
  syn = np.load(workdir / 'distilled.npz')        # the set as the protocol saw it
  cfg = config_lib.method_config('random_subset')
  cfg.data.update(name='npz', dir=tiny_npz)
  data = pipeline.load_data(cfg)
  expected = np.mean(example_protocol.nearest_predictions(syn['x'], syn['y'], data.x_test,
                                                          'cosine') == data.y_test)
  assert results['eval']['acc_mean'] == pytest.approx(expected, abs=1e-9)
  bad = _cli(f'--config={config}', '--config.nearest.metric=l1', f'--workdir={tmp_path / "b"}')
  assert bad.returncode != 0 and "nearest.metric='l1' is not one of" in bad.stderr
  assert not (tmp_path / 'b').exists()


def test_a_run_visits_the_registry_once(tiny_npz, tmp_path, monkeypatch):
  """After `ddjax.run` resolves its plan, nothing below asks the registry again: every lookup
  function raises from then on, and the run (distill, export, evaluate) still completes."""
  resolved = []
  original = registry.resolve

  def resolve_once(cfg, facts):
    plan = original(cfg, facts)
    resolved.append(plan)

    def refuse(*args, **kwargs):
      raise AssertionError('the registry was asked again after the plan was resolved')
    for name in ('get', 'get_protocol', 'methods', 'protocols', 'names', 'resolve',
                 'protocol_name', 'blocks', 'config_blocks'):
      monkeypatch.setattr(registry, name, refuse)
    return plan

  monkeypatch.setattr(registry, 'resolve', resolve_once)
  cfg = tiny_config(tiny_npz)          # FRePo: steps, lr and KRR regulariser from its plan
  results = pipeline.run(cfg, str(tmp_path / 'run'))
  assert len(resolved) == 1
  assert results['plan'] == resolved[0].to_dict()
  assert results['plan']['krr_reg'] == cfg.frepo.reg and results['distill']['steps'] == 6
