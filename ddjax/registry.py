"""The method registry: every distiller registers itself from its own module.

A `Method` is what the config, the pipeline and the CLI know about a method, and all they know:

    register(Method(
        name='kip',
        build=lambda cfg, data: KIP(...),     # -> a ddjax.distill.base.Distiller
        block='kip', block_defaults=kip_block,  # its config block cfg.kip with defaults
        configure=configure,                   # its defaults on the whole config, per preset
        validate=validate,                     # cfg -> [error message, ...]
        distiller_class=KIP,                   # declares record kind / additive form
        ...))

Nothing outside a method's module names the method: `ddjax.config` builds the schema from the
registered blocks, validation runs the method's own rules, the pipeline calls `build`, `steps`,
`extra_params` and `krr_reg`. A method defined outside the package registers the same way from the
user's module, imported (e.g. by the user's config file) before the run.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import ml_collections

ConfigDict = ml_collections.ConfigDict

# The package's own methods register from the modules of this package, all imported on first use
# of the registry: a new module there is found without being listed anywhere.
BUILTIN_PACKAGE = 'ddjax.distill'

PRESETS = ('', 'cpu', 'paper')


def _no_errors(cfg: ConfigDict) -> list[str]:
  del cfg
  return []


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered method.

  Attributes:
    name: the value of `cfg.method`.
    build: build(cfg, data) -> Distiller; `data` is a `ddjax.data.PreparedData`.
    distiller_class: the class `build` returns; its class attributes declare the capabilities
      (`record`, `additive_form`), so they are known before any data is loaded.
    block: name of the method's own config block (None: it has none); block_defaults() returns
      that block with its defaults (added to every config, like the shared blocks).
    configure: configure(cfg, preset) sets the method's defaults on a base config for a preset
      ('' = the CPU default, 'cpu' the same, 'paper' the paper's setting).
    presets: the presets `configure` accepts.
    validate: validate(cfg) -> list of error messages (run when cfg.method is this method).
    steps: steps(cfg) -> the number of ddjax steps of a run (DC: iterations x outer loop).
    lr: lr(cfg) -> the images' learning rate of a run (FRePo's CPU default: by IPC when
      distill.lr is 0).
    extra_params: extra_params(cfg) -> {key: (initial value, learning rate)}, further learned
      entries of the synthetic set (RFAD's Platt temperature).
    krr_reg: krr_reg(cfg) -> the regulariser of KRR evaluations of this method's sets.
    eval_protocol: the evaluation protocol `eval.protocol='auto'` means.
    patch_factor: patch_factor(cfg, image_shape (H, W, C)) -> the patches per side this method's
      images are stitched from (RDED); the 'rded' protocol's students shuffle and crop them at
      > 1 (`ddjax.augment.patches`). 1 for every other method.
    description: one line for listings.
  """
  name: str
  build: Callable[[ConfigDict, Any], Any]
  distiller_class: type
  block: str | None = None
  block_defaults: Callable[[], ConfigDict] | None = None
  configure: Callable[[ConfigDict, str], None] = lambda cfg, preset: None
  presets: tuple[str, ...] = PRESETS
  validate: Callable[[ConfigDict], list[str]] = _no_errors
  steps: Callable[[ConfigDict], int] = lambda cfg: cfg.distill.steps
  lr: Callable[[ConfigDict], float] = lambda cfg: cfg.distill.lr
  extra_params: Callable[[ConfigDict], dict[str, tuple[Any, float]]] = lambda cfg: {}
  krr_reg: Callable[[ConfigDict], float] = lambda cfg: 1e-6
  eval_protocol: str = 'frepo'
  patch_factor: Callable[[ConfigDict, tuple], int] = lambda cfg, image_shape: 1
  description: str = ''


_METHODS: dict[str, Method] = {}
_loaded = False


class RegistryError(ValueError):
  """A method registered twice, or one that does not exist."""


def register(method: Method, replace: bool = False) -> Method:
  """Add `method` to the registry (its module calls this at import). `replace`: allow a new
  definition under an existing name (a re-imported user module)."""
  if not replace and method.name in _METHODS and _METHODS[method.name] is not method:
    raise RegistryError(f'a method named {method.name!r} is already registered (from '
                        f'{_METHODS[method.name].distiller_class.__module__}); pick another name '
                        'or pass replace=True.')
  if method.block is not None and method.block_defaults is None:
    raise RegistryError(f'method {method.name!r} names config block {method.block!r} but gives '
                        'no block_defaults.')
  _METHODS[method.name] = method
  return method


def _load_builtins() -> None:
  global _loaded
  if not _loaded:
    _loaded = True
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
      importlib.import_module(f'{BUILTIN_PACKAGE}.{info.name}')


def methods() -> dict[str, Method]:
  """Every registered method by name: the package's own first (alphabetically), then the user's
  in registration order."""
  _load_builtins()
  own = lambda m: m.distiller_class.__module__.startswith(BUILTIN_PACKAGE + '.')
  order = sorted((m for m in _METHODS.values() if own(m)), key=lambda m: m.name)
  order += [m for m in _METHODS.values() if not own(m)]
  return {m.name: m for m in order}


def names() -> tuple[str, ...]:
  return tuple(methods())


def get(name: str) -> Method:
  """The method called `name`, or RegistryError listing the registered ones."""
  all_methods = methods()
  if name not in all_methods:
    raise RegistryError(f'method={name!r} is not registered; choose one of {tuple(all_methods)} '
                        '(a method of your own registers with ddjax.registry.register from a '
                        'module your config file imports).')
  return all_methods[name]


def config_blocks() -> dict[str, ConfigDict]:
  """{block name: block with defaults} of every registered method that has one."""
  out = {}
  for m in methods().values():
    if m.block is not None and m.block not in out:
      out[m.block] = m.block_defaults()
  return out
