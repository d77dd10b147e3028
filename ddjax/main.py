r"""ddjax command line: a config file -> `ddjax.run` into --workdir. Nothing else lives here.

    python -m ddjax.main --config=configs/frepo_isa.py [--workdir=runs/x] [--config.distill.ipc=10]
    python -m ddjax.main --config=configs/frepo_isa.py:paper      # the paper's GPU-scale setting
    python -m ddjax.main ... --restart                            # discard the workdir's old run

Re-running with the same --workdir resumes from the last checkpoint. Errors are printed as one
line on stderr with exit status 1 (--debug shows the traceback). A config file may import a
module beside it (`from my_method import ...`): its directory is put on `sys.path` first.
"""
from __future__ import annotations

import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

DEFAULT_CONFIG = 'configs/frepo_isa.py'
config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Config file (and :preset).',
                                lock_config=True)
flags.DEFINE_string('workdir', '', 'Output directory; default runs/<method>_<dataset>_ipc<k>.')
flags.DEFINE_bool('restart', False, "Delete the workdir's previous run and start over.")
flags.DEFINE_bool('debug', False, 'Show Python tracebacks of errors.')

# Messages of the wrappers absl and ml_collections put around an error (they hold a whole
# traceback or only point at an earlier error): the message is taken from what they wrap.
_WRAPPERS = ('Traceback (most recent call last)',
             'Configuration is not available because of an earlier failure')


def _chain(e: BaseException) -> list[BaseException]:
  """`e` and the exceptions it wraps, outermost first (`raise ... from`, or raised while
  handling another)."""
  out = []
  while e is not None and all(e is not x for x in out):
    out.append(e)
    e = e.__cause__ if e.__cause__ is not None else (
        None if e.__suppress_context__ else e.__context__)
  return out


def _text(e: BaseException) -> str:
  """The message of `e`: a KeyError's unquoted (str() quotes it), a repr-ed message unescaped."""
  if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
    text = e.args[0]
  else:
    text = str(e)
  if '\\n' in text and len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
    text = text[1:-1].replace('\\n', '\n').replace("\\'", "'")
  return text.strip()


def _message(e: BaseException) -> str:
  """The outermost message of a chain of wrapped exceptions (ddjax's own context: the file, the
  key, what to do), followed by each wrapped message it does not already contain (the
  underlying cause), in parentheses. Wrappers that hold only a traceback are skipped."""
  texts = []
  for x in _chain(e):
    text = _text(x)
    if text and not any(w in str(x) for w in _WRAPPERS):
      texts.append(text)
  if not texts:
    return type(e).__name__
  out = texts[0]
  for text in texts[1:]:
    if text not in out:
      out += f' ({text})'
  return out


def fail(e: BaseException, what: str = '') -> None:
  """Exit with status 1 and `error: <what><message of e>` on one line (--debug: raise e)."""
  if '--debug' in sys.argv:
    raise e
  sys.exit(f'error: {what}{_message(e)}')


def config_path(argv) -> str | None:
  """The file of --config in `argv` (without its :preset; the last one, as absl reads them), or
  None when it is not given."""
  path = None
  for i, arg in enumerate(argv):
    m = re.match(r'^--?config(=(.*))?$', arg)
    if m:
      value = m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else '')
      path = value.split(':', 1)[0]
  return path


def config_file_error(path: str | None) -> str:
  """What is wrong with the config file `path` before it is loaded ('' when nothing is)."""
  if path is None:
    return ''
  if not path:
    return '--config is empty; pass a config file, e.g. --config=configs/frepo.py.'
  if not os.path.exists(path):
    return (f'config file {path} does not exist (--config={path}, relative to {os.getcwd()}); '
            'pass the path of a config file, e.g. --config=configs/frepo.py.')
  if not os.path.isfile(path):
    return f'config file {path} is not a file; pass a .py file with get_config().'
  return ''


def config_value_error(cfg, path: str | None) -> str:
  """What is wrong with the loaded config (what get_config returned; '' when nothing is)."""
  import ml_collections
  if isinstance(cfg, ml_collections.ConfigDict):
    return ''
  where = f'config file {path}' if path else 'the config file'
  error = getattr(cfg, '_error', None)          # ml_collections' stand-in for a failed load
  if isinstance(error, BaseException):
    return f'{where} could not be loaded: {_message(error)}'
  what = 'None' if cfg is None else f'a {type(cfg).__name__}'
  return (f'{where}: get_config() returned {what}, not a ConfigDict; end it with `return cfg` '
          "(e.g. cfg = ddjax.config.method_config('frepo')).")


def override_errors(argv) -> list[str]:
  """The --config.KEY=... overrides of `argv` whose KEY the schema lacks, each with the closest
  key (ddjax.config.unknown_key_error)."""
  from ddjax.config import unknown_key_error
  errors = []
  for arg in argv:
    m = re.match(r'^--?(?:no)?config\.([^=]+)(=.*)?$', arg)
    if m:
      error = unknown_key_error(m.group(1))
      if error:
        errors.append(f'{error} (from {arg})')
  return errors


def _put_beside_on_path(path: str) -> None:
  """The config file's directory first on sys.path, as for a script: it may import its
  neighbours (a method module next to the config)."""
  directory = os.path.dirname(os.path.abspath(path))
  if directory not in sys.path:
    sys.path.insert(0, directory)


class CommandLineError(ValueError):
  """A config file or flag that cannot be read: the message says which and what to do."""


def parse_flags(argv):
  path = config_path(argv)
  problem = config_file_error(path or DEFAULT_CONFIG)
  if problem:
    fail(CommandLineError(problem))
  if path:
    _put_beside_on_path(path)
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)   # ml_collections' warning of a None config: ours below
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - absl wraps config-file errors in many types
    from ddjax.config import ConfigError
    chain = _chain(e)
    if any(isinstance(x, ConfigError) for x in chain):
      fail(e)
    unknown = override_errors(argv)
    if unknown:
      fail(CommandLineError('; '.join(unknown)))
    if isinstance(e, flags.Error) and not any(_WRAPPERS[0] in str(x) for x in chain):
      fail(e, 'bad command line: ')
    inner = chain[-1]                            # raised by the config file's own code
    fail(e, f'config file {path or DEFAULT_CONFIG} failed to load: {type(inner).__name__}: ')
  finally:
    absl_logger.setLevel(level)
  problem = config_value_error(flags.FLAGS.config, path or DEFAULT_CONFIG)
  if problem:
    fail(CommandLineError(problem))
  return rest


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)   # keep Orbax's per-save INFO lines off the console
  from ddjax import run
  from ddjax.data import DatasetNotFoundError
  from ddjax.infra.checkpoint import CheckpointError
  try:   # config, data and workdir problems fail before compute; divergence names a checkpoint
    run(flags.FLAGS.config, flags.FLAGS.workdir or None, restart=flags.FLAGS.restart)
  except (ValueError, FloatingPointError, DatasetNotFoundError, CheckpointError, ImportError,
          OSError) as e:   # ImportError: an optional extra (tfds, tensorboard) missing; OSError:
    fail(e)                # a file or directory the system refuses (the message names it)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
