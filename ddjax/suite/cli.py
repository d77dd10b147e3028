"""`python -m ddjax.evaluate`: judge a set on the suite's axes.

    python -m ddjax.evaluate --set=runs/frepo_isa_fashion_mnist_ipc1_seed0 --out=runs/judged
    python -m ddjax.evaluate --set=distilled_images/ --config=configs/frepo.py --preset=full
    python -m ddjax.evaluate --set=... --suite.axes=accuracy,cross_arch \\
        --suite.cross_arch.archs=LeNet,MLP --suite.num_models=3

--set: a ddjax workdir, a distilled.npz or an image folder (with labels.npy for soft labels).
--config: a ddjax config file for a foreign set's data and method (`--config.data.name=...`
overrides as in `python -m ddjax.main`). --suite.<key>: the suite's settings
(`ddjax.suite.runner.suite_config`), the preset's defaults first. --list: the registered axes.
"""
from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from ddjax.infra import artifacts
from ddjax.suite import axes as axes_lib
from ddjax.suite.runner import evaluate_set, suite_config


def _preset(argv) -> str:
  for i, a in enumerate(argv):
    if a.startswith('--preset='):
      return a.split('=', 1)[1]
    if a == '--preset' and i + 1 < len(argv):
      return argv[i + 1]
  return 'quick'


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  from ddjax.main import fail
  try:
    suite = suite_config(_preset(argv))
  except ValueError as e:
    fail(e)
  f = flags.FlagValues()          # its own flags, beside ddjax.main's
  flags.DEFINE_string('set', None, 'the set: a ddjax workdir, a distilled.npz or an image folder',
                      flag_values=f)
  flags.DEFINE_string('out', None, 'output directory (default <set>_suite)', flag_values=f)
  flags.DEFINE_string('preset', 'quick', 'quick | full', flag_values=f)
  flags.DEFINE_bool('restart', False, 'discard a previous suite in --out', flag_values=f)
  flags.DEFINE_bool('list', False, 'list the registered axes and exit', flag_values=f)
  flags.DEFINE_bool('debug', False, 'raise errors with their traceback', flag_values=f)
  config_flags.DEFINE_config_file('config', None, 'a ddjax config file (foreign sets)',
                                  lock_config=True, flag_values=f)
  config_flags.DEFINE_config_dict('suite', suite, 'the suite settings', lock_config=True,
                                  flag_values=f)
  try:
    f(argv)
  except (flags.Error, ValueError, AttributeError, KeyError) as e:
    fail(e)

  def run():
    if f.list:
      for name in axes_lib.axis_names():
        print(f'{name:16s} {axes_lib.get_axis(name).description}')
      return
    if not f.set:
      fail(ValueError('--set is required: a ddjax workdir, a distilled.npz or an image folder'))
    out = f.out or f.set.rstrip('/').removesuffix('.npz') + '_suite'
    overrides = artifacts.flatten(f.suite.to_dict())
    try:
      evaluate_set(f.set, out, preset=f.preset, config=f.config, overrides=overrides,
                   restart=f.restart)
    except (ValueError, OSError) as e:
      fail(e)

  run()

