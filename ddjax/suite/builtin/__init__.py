"""The built-in axes of the evaluation suite, each registered by its own module."""
import importlib

for _name in ('accuracy', 'cross_arch', 'robust_scores', 'continual', 'privacy', 'adversarial'):
  try:
    importlib.import_module(f'ddjax.suite.builtin.{_name}')
  except ModuleNotFoundError as e:          # an axis module not present in this build
    if e.name != f'ddjax.suite.builtin.{_name}':
      raise
