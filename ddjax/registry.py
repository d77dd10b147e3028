"""What a run can be made of: methods (distillers and set builders) and evaluation protocols, each
registered from its own module, and the `Plan` a method resolves a config into, once per run.

    register(Method(
        name='kip',
        build=lambda cfg, data, plan: KIP(...),   # -> a Distiller or a SetBuilder
        distiller_class=KIP,                     # declares the kind and capabilities
        blocks=(ConfigBlock('kip', kip_block),),  # its config blocks, defaults, signed keys
        configure=configure,                     # its defaults on the whole config, per preset
        validate=validate,                       # cfg -> [error message, ...]
        plan=lambda cfg, facts: {'krr_reg': cfg.kip.reg},   # what it resolves differently
        protocol='frepo'))                       # its evaluation protocol

    plan = resolve(cfg, facts)   # at the start of ddjax.run; nothing below asks the registry again

Nothing outside a method's or a protocol's module names it: `ddjax.config` builds the schema from
the registered blocks and runs their validation, the pipeline reads the plan. A method or a
protocol defined outside the package registers the same way from the user's module, imported
(e.g. by the user's config file) before the run.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import ml_collections

ConfigDict = ml_collections.ConfigDict

# The package's own methods and protocols register from the modules of these packages, all
# imported on first use of the registry: a new module there is found without being listed.
BUILTIN_PACKAGES = ('ddjax.distill', 'ddjax.evaluate.protocols')
BUILTIN_PACKAGE = BUILTIN_PACKAGES[0]

PRESETS = ('', 'cpu', 'paper')
DISTILLER = 'distiller'        # takes distillation steps on a meta-loss
SET_BUILDER = 'set_builder'    # builds its set once, with no meta-loss (RDED, random subset)


def _no_errors(cfg: ConfigDict) -> list[str]:
  del cfg
  return []


@dataclasses.dataclass(frozen=True)
class ConfigBlock:
  """A config block a method or a protocol declares: cfg.<name> with `defaults()`'s keys.

  signed_keys: keys of the block ('name.key') whose numbers may be negative (-1: auto / last);
    every other number of a config must be >= 0. validate(cfg) -> [error message, ...]: the
    block's own rules, run whenever the run's method or protocol declares the block. Several
    methods may declare the same block (a family's shared block, e.g. the trajectory methods'
    `expert`): the first registration's defaults are the schema's.
  """
  name: str
  defaults: Callable[[], ConfigDict]
  signed_keys: tuple[str, ...] = ()
  validate: Callable[[ConfigDict], list[str]] = _no_errors


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered method.

  Attributes:
    name: the value of `cfg.method`.
    build: build(cfg, data, plan) -> a Distiller (`ddjax.distill.base`) or, for a set builder, an
      object whose `build_set(syn, key)` makes the set; `data` is a `ddjax.data.PreparedData`.
    distiller_class: the class `build` returns; its class attributes declare the kind
      (`kind`: 'distiller' or 'set_builder') and capabilities (`record`, `additive_form`), so they
      are known before any data is loaded.
    blocks: the method's config blocks (`ConfigBlock`), added to every config's schema.
    configure: configure(cfg, preset) sets the method's defaults on a base config for a preset
      ('' = the CPU default, 'cpu' the same, 'paper' the paper's setting).
    presets: the presets `configure` accepts.
    validate: validate(cfg) -> list of error messages (run when cfg.method is this method).
    plan: plan(cfg, facts) -> {Plan field: value} for what this method resolves differently from
      the config's plain values (`Plan`; `facts` a `DataFacts`).
    protocol: the evaluation protocol `eval.protocol='auto'` means.
    description: one line for listings.
  """
  name: str
  build: Callable[..., Any]
  distiller_class: type
  blocks: tuple[ConfigBlock, ...] = ()
  configure: Callable[[ConfigDict, str], None] = lambda cfg, preset: None
  presets: tuple[str, ...] = PRESETS
  validate: Callable[[ConfigDict], list[str]] = _no_errors
  plan: Callable[[ConfigDict, Any], dict] = lambda cfg, facts: {}
  protocol: str = 'frepo'
  description: str = ''

  @property
  def kind(self) -> str:
    return getattr(self.distiller_class, 'kind', DISTILLER)


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What a plan may depend on from the data: image_shape (H, W, C) and the number of classes."""
  image_shape: tuple[int, int, int]
  num_classes: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """One run, resolved once from its config and the data's facts (`resolve`), written to
  results.json under 'plan' and passed down: nothing below `ddjax.run` asks the registry again.

  Attributes:
    method: cfg.method. kind: 'distiller' or 'set_builder'.
    steps: distillation steps of the run (0: none; a set builder's is 0).
    lr: the images' learning rate. label_lr: the labels'.
    extra_params: {key: (initial value, learning rate)}: further learned entries of the set
      (RFAD's Platt temperature, trajectory matching's step size `syn_lr`), () scalars.
    krr_reg: the regulariser of KRR evaluations of this method's sets.
    protocol: the evaluation protocol's name (eval.protocol, 'auto' resolved to the method's).
    patch_factor: patches per side the method's images are stitched from (RDED; 1 otherwise).
    build: build(cfg, data, plan) -> the distiller or set builder (not serialised).
    distiller_class: the class `build` returns (its declared capabilities; not serialised).
    evaluator: the registered `Protocol` named by `protocol` (not serialised).
  """
  method: str
  kind: str
  steps: int
  lr: float
  label_lr: float
  extra_params: dict = dataclasses.field(default_factory=dict)
  krr_reg: float = 1e-6
  protocol: str = 'frepo'
  patch_factor: int = 1
  build: Callable[..., Any] | None = dataclasses.field(default=None, compare=False, repr=False)
  distiller_class: type | None = dataclasses.field(default=None, compare=False, repr=False)
  evaluator: Protocol | None = dataclasses.field(default=None, compare=False, repr=False)

  def to_dict(self) -> dict:
    """The JSON-able fields (results.json's 'plan')."""
    return {'method': self.method, 'kind': self.kind, 'steps': self.steps, 'lr': self.lr,
            'label_lr': self.label_lr,
            'extra_params': {k: {'init': v, 'lr': lr} for k, (v, lr) in self.extra_params.items()},
            'krr_reg': self.krr_reg, 'protocol': self.protocol,
            'patch_factor': self.patch_factor}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A registered evaluation protocol: how networks are trained from scratch on a set.

  Attributes:
    name: the value of `eval.protocol`.
    settings: settings(n, num_classes, overrides) -> the `EvalProtocol` fields of a set of n
      images (`ddjax.evaluate.protocols.get_protocol`), derived values following `overrides`.
    evaluate: evaluate(cfg, data, syn, plan, key) -> (results entries, one summary line): trains
      eval.num_models networks on the set `syn` (a dict of arrays) and tests them on data's test
      split. It reads from the set what the protocol needs (a learned step size, soft labels)
      and from its own blocks what else it needs (a teacher).
    blocks: the protocol's own config blocks (`ConfigBlock`).
    train: train(cfg, data, syn, plan, key, model, overrides) -> variables of ONE fresh `model`
      trained on `syn` under the protocol (`plan.evaluator` is this protocol: its settings come
      from there, as in `evaluate`), `overrides` being `EvalProtocol` field overrides
      (augment=False, another loss): what the evaluation suite (`ddjax.suite`) trains its
      networks with, on any architecture. None for a protocol that trains no network (1-NN); the
      suite then reports its `evaluate` accuracy alone.
    reads_image_files: whether the protocol's official code reads sets back from image files,
      so `eval.clip_pixels='auto'` clips the set to the data's pixel range first.
    description: one line for listings.
  """
  name: str
  settings: Callable[..., dict]
  evaluate: Callable[..., tuple[dict, str]]
  blocks: tuple[ConfigBlock, ...] = ()
  reads_image_files: bool = False
  description: str = ''
  train: Callable[..., Any] | None = None


_METHODS: dict[str, Method] = {}
_PROTOCOLS: dict[str, Protocol] = {}
_loaded = False


class RegistryError(ValueError):
  """A method or protocol registered twice, or one that does not exist."""


def _origin(thing) -> str:
  target = thing.distiller_class if isinstance(thing, Method) else thing.evaluate
  return getattr(target, '__module__', '?')


def _register(table: dict, thing, what: str, replace: bool):
  if not replace and thing.name in table and table[thing.name] is not thing:
    raise RegistryError(f'a {what} named {thing.name!r} is already registered (from '
                        f'{_origin(table[thing.name])}); pick another name or pass replace=True.')
  table[thing.name] = thing
  return thing


def register(method: Method, replace: bool = False) -> Method:
  """Add `method` to the registry (its module calls this at import). `replace`: allow a new
  definition under an existing name (a re-imported user module)."""
  return _register(_METHODS, method, 'method', replace)


def register_protocol(protocol: Protocol, replace: bool = False) -> Protocol:
  """Add an evaluation protocol (its module calls this at import)."""
  return _register(_PROTOCOLS, protocol, 'protocol', replace)


def _load_builtins() -> None:
  global _loaded
  if not _loaded:
    _loaded = True
    for name in BUILTIN_PACKAGES:
      package = importlib.import_module(name)
      for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f'{name}.{info.name}')


def _ordered(table: dict, builtin) -> dict:
  """The package's own entries first (alphabetically), then the user's in registration order."""
  _load_builtins()
  own = [t for t in table.values() if builtin(t)]
  order = sorted(own, key=lambda t: t.name) + [t for t in table.values() if not builtin(t)]
  return {t.name: t for t in order}


def methods() -> dict[str, Method]:
  """Every registered method by name: the package's own first, then the user's."""
  return _ordered(_METHODS, lambda m: _origin(m).startswith(BUILTIN_PACKAGES[0] + '.'))


def protocols() -> dict[str, Protocol]:
  """Every registered evaluation protocol by name: the package's own first, then the user's."""
  return _ordered(_PROTOCOLS, lambda p: _origin(p).startswith(BUILTIN_PACKAGES[1] + '.'))


def names() -> tuple[str, ...]:
  return tuple(methods())


def protocol_names() -> tuple[str, ...]:
  return tuple(protocols())


def get(name: str) -> Method:
  """The method called `name`, or RegistryError listing the registered ones."""
  all_methods = methods()
  if name not in all_methods:
    raise RegistryError(f'method={name!r} is not registered; choose one of {tuple(all_methods)} '
                        '(a method of your own registers with ddjax.registry.register from a '
                        'module your config file imports).')
  return all_methods[name]


def get_protocol(name: str) -> Protocol:
  """The evaluation protocol called `name`, or RegistryError listing the registered ones."""
  all_protocols = protocols()
  if name not in all_protocols:
    raise RegistryError(f'eval.protocol={name!r} is not registered; choose one of '
                        f'{("auto",) + tuple(all_protocols)} (a protocol of your own registers '
                        'with ddjax.registry.register_protocol from a module your config file '
                        'imports).')
  return all_protocols[name]


def blocks() -> dict[str, ConfigBlock]:
  """{block name: block} of every registered method and protocol (first registration wins)."""
  out: dict[str, ConfigBlock] = {}
  for thing in list(methods().values()) + list(protocols().values()):
    for block in thing.blocks:
      out.setdefault(block.name, block)
  return out


def config_blocks() -> dict[str, ConfigDict]:
  """{block name: block with defaults} of every registered method and protocol."""
  return {name: block.defaults() for name, block in blocks().items()}


def signed_keys() -> tuple[str, ...]:
  """The keys of registered blocks whose numbers may be negative."""
  return tuple(k for block in blocks().values() for k in block.signed_keys)


def protocol_name(cfg: ConfigDict) -> str:
  """eval.protocol with 'auto' resolved to the method's own."""
  if cfg.eval.protocol == 'auto':
    return get(cfg.method).protocol
  return cfg.eval.protocol


def resolve(cfg: ConfigDict, facts: DataFacts) -> Plan:
  """The run's `Plan`: the config's plain values, overridden by what the method resolves
  (`Method.plan`). Called once, at the start of `ddjax.run`."""
  method = get(cfg.method)
  values = dict(method=method.name, kind=method.kind, steps=int(cfg.distill.steps),
                lr=float(cfg.distill.lr), label_lr=float(cfg.distill.label_lr),
                extra_params={}, krr_reg=1e-6, protocol=protocol_name(cfg), patch_factor=1)
  overrides = dict(method.plan(cfg, facts))
  unknown = sorted(set(overrides) - set(values) - {'method', 'kind'})
  if unknown:
    raise RegistryError(f'method {method.name!r}: its plan returns unknown field(s) {unknown}; '
                        f'allowed: {sorted(set(values) - {"method", "kind"})}.')
  values.update(overrides)
  if method.kind == SET_BUILDER:
    values['steps'] = 0
  values['extra_params'] = {k: (float(v), float(lr)) for k, (v, lr) in
                            values['extra_params'].items()}
  values['steps'], values['patch_factor'] = int(values['steps']), int(values['patch_factor'])
  values['lr'], values['krr_reg'] = float(values['lr']), float(values['krr_reg'])
  return Plan(**values, build=method.build, distiller_class=method.distiller_class,
              evaluator=get_protocol(values['protocol']))
