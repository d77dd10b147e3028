r"""ddjax command line: a config file -> `ddjax.run` into --workdir. Nothing else lives here.

    python -m ddjax.main --config=configs/frepo_isa.py [--workdir=runs/x] [--config.distill.ipc=10]
    python -m ddjax.main --config=configs/frepo_isa.py:paper      # the paper's GPU-scale setting
    python -m ddjax.main ... --restart                            # discard the workdir's old run

Re-running with the same --workdir resumes from the last checkpoint. Errors are printed as one
line on stderr with exit status 1 (--debug shows the traceback).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', 'configs/frepo_isa.py', 'Config file (and :preset).',
                                lock_config=True)
flags.DEFINE_string('workdir', '', 'Output directory; default runs/<method>_<dataset>_ipc<k>.')
flags.DEFINE_bool('restart', False, "Delete the workdir's previous run and start over.")
flags.DEFINE_bool('debug', False, 'Show Python tracebacks of errors.')


def _message(e: BaseException) -> str:
  """The innermost message of a chain of wrapped exceptions, unquoted."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  text = str(e).replace('\\n', '\n').replace("\\'", "'")
  if len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
    text = text[1:-1]
  return text


def fail(e: BaseException, what: str = '') -> None:
  if '--debug' in sys.argv:
    raise e
  sys.exit(f'error: {what}{_message(e)}')


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - absl wraps config-file errors in many types
    from ddjax.config import ConfigError
    known = any(isinstance(x, ConfigError) for x in (e, e.__cause__, e.__context__))
    fail(e, '' if known else 'bad command line: ')


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)   # keep Orbax's per-save INFO lines off the console
  from ddjax import run
  from ddjax.data import DatasetNotFoundError
  from ddjax.infra.checkpoint import CheckpointError
  try:   # config, data and workdir problems fail before compute; divergence names a checkpoint
    run(flags.FLAGS.config, flags.FLAGS.workdir or None, restart=flags.FLAGS.restart)
  except (ValueError, FloatingPointError, DatasetNotFoundError, CheckpointError,
          ImportError) as e:       # ImportError: an optional extra (tfds, tensorboard) missing
    fail(e)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
