"""ddjax: dataset distillation in JAX/Flax. See README.md and docs/ARCHITECTURE.md.

    import ddjax
    cfg = ddjax.method_config('frepo')       # a registered method's defaults (or a config file)
    results = ddjax.run(cfg, 'runs/frepo')     # data -> prune -> distill -> export -> evaluate

`ddjax.register(ddjax.Method(...))` adds a method of your own (see README, "Adding a method").
"""
__version__ = '0.1.0'

from ddjax.infra import host_memory as _host_memory
from ddjax.infra import xla_flags as _xla_flags

_xla_flags.apply_defaults()   # before JAX's CPU backend starts; see ddjax/infra/xla_flags.py
_host_memory.apply_defaults()  # before its worker threads start; see ddjax/infra/host_memory.py

_LAZY = {
    'run': ('ddjax.runtime.pipeline', 'run'),
    'method_config': ('ddjax.config', 'method_config'),
    'base_config': ('ddjax.config', 'base_config'),
    'register': ('ddjax.registry', 'register'),
    'Method': ('ddjax.registry', 'Method'),
    'ConfigBlock': ('ddjax.registry', 'ConfigBlock'),
    'Protocol': ('ddjax.registry', 'Protocol'),
    'register_protocol': ('ddjax.registry', 'register_protocol'),
    'Distiller': ('ddjax.distill.base', 'Distiller'),
    'SetBuilder': ('ddjax.distill.base', 'SetBuilder'),
    'evaluate_set': ('ddjax.suite.runner', 'evaluate_set'),
    'Axis': ('ddjax.suite.axes', 'Axis'),
    'register_axis': ('ddjax.suite.axes', 'register_axis'),
}


def __getattr__(name: str):
  """Imported on first use, so `import ddjax.config` stays light."""
  if name in _LAZY:
    import importlib
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f'module ddjax has no attribute {name!r}')
