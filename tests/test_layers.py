"""The package's layers (docs/ARCHITECTURE.md): a module imports only from its own layer or below.

Every import of a `ddjax` module counts, at module level or inside a function (a lazy import is
still a dependency)."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'ddjax'

# Lowest first. `registry` sits with the methods it registers (it imports none of them by name);
# `config` builds the schema from the registry, so it stands above the methods and protocols.
LAYERS = {
    'infra': 0,
    'data': 1, 'models': 1, 'kernels': 1, 'augment': 1,
    'transforms': 2, 'scoring': 2,
    'registry': 3, 'distill': 3, 'evaluate': 3,
    'config': 4,
    'runtime': 5,
    'main': 6, 'buffer': 6, '__init__': 6, 'suite': 6, 'bench': 6,
}
# Entry points that sit inside a lower part for their `python -m` name but belong to the CLI.
ENTRY_POINTS = {('evaluate', '__main__'): 6}


def _ddjax_imports(path: pathlib.Path):
  """(line, imported ddjax top-level part) of every import in the file."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = ([f'ddjax.{a.name}' for a in node.names] if node.module == 'ddjax'
               else [node.module])
    else:
      continue
    for name in names:
      parts = name.split('.')
      if parts[0] == 'ddjax' and len(parts) > 1:
        yield node.lineno, parts[1]


def _violations(root: pathlib.Path) -> list[str]:
  out = []
  for path in sorted(root.rglob('*.py')):
    parts = path.relative_to(root).with_suffix('').parts
    own = parts[0]
    if own not in LAYERS:
      out.append(f'{path}: top-level part {own!r} has no layer; add it to LAYERS')
      continue
    layer = ENTRY_POINTS.get(tuple(parts), LAYERS[own])
    for line, part in _ddjax_imports(path):
      if part in LAYERS and LAYERS[part] > layer:
        out.append(f'{path.relative_to(root.parent)}:{line} ({own}, layer {layer}) '
                   f'imports ddjax.{part} (layer {LAYERS[part]})')
  return out


def test_no_module_imports_a_higher_layer():
  assert _violations(PACKAGE) == []


def test_the_check_catches_an_upward_import(tmp_path):
  (tmp_path / 'infra').mkdir()
  (tmp_path / 'infra' / 'bad.py').write_text('def f():\n  from ddjax.runtime import loop\n')
  (tmp_path / 'data').mkdir()
  (tmp_path / 'data' / 'ok.py').write_text('from ddjax.infra import files\n')
  found = _violations(tmp_path)
  assert len(found) == 1 and 'imports ddjax.runtime' in found[0]


@pytest.mark.parametrize('part', sorted({p.parts[0] for p in
                                         (q.relative_to(PACKAGE).with_suffix('')
                                          for q in PACKAGE.rglob('*.py'))}))
def test_every_part_of_the_package_has_a_layer(part):
  assert part in LAYERS
