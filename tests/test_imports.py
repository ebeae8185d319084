"""The one-way flow, checked: no import arrow in the package runs back up (DESIGN.md, issue #17).

Every ``.py`` under ``quantum_alpha_jax/`` is parsed with :mod:`ast` (nothing is imported, so a
module that is slow or broken to import is still checked) and every import statement is read,
function-local ones included. A layer is the first name under the package (``data``, ``train``,
``artifacts``...). The forbidden arrows are the ones whose absence the design promises:

- data and evaluate know nothing of training (``data -> train``, ``evaluate -> train``);
- models are pure functions of (params, inputs) (``models -> data``, ``models -> train``);
- data builds its trajectories without the backtest (``data -> backtest``; the shared fill model
  is the bottom-floor ``fills``);
- the library never reaches into the entry points (``* -> experiments``);
- the bottom floor stays at the bottom: ``artifacts`` imports only ``errors`` and ``distributed``,
  ``fills`` and ``distributed`` only ``errors``, ``errors`` nothing.

The store builder (data/pipeline.py) stays a light process: importing it loads neither jax, Grain
nor matplotlib, although it writes through ``artifacts``.

Configs describe runs with plain values: ``configs/*.py`` import nothing of the library but
``errors`` (their shared defaults live in ``configs/common.py``, checked against the library's by
tests/test_config_defaults.py).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from typing import Iterator

import pytest

PACKAGE = 'quantum_alpha_jax'
ROOT = pathlib.Path(__file__).resolve().parents[1]

# (importing layer, imported layer); '*' is any layer of the package.
FORBIDDEN = (
    ('data', 'train'),
    ('evaluate', 'train'),
    ('models', 'data'),
    ('models', 'train'),
    ('data', 'backtest'),
    ('*', 'experiments'),
)
# A bottom-floor module and the only layers of the package it may import.
BOTTOM_FLOOR = {
    'errors': (),
    'distributed': ('errors',),
    'fills': ('errors',),
    'artifacts': ('errors', 'distributed'),
}
# Files whose arrows are known and being removed ({path: {imported layer}}), each with the issue
# that removes it; only run-level code (run/load of a saved run) may ever stand here. Empty since
# saved-run evaluation moved to tasks/saved.py (#17).
ALLOWED: dict[str, set[str]] = {}
# What configs/*.py may import of the library.
CONFIG_ALLOWED = ('errors',)


def imported_modules(path: pathlib.Path, package: tuple[str, ...] = ()) -> Iterator[tuple[int, str]]:
  """``(line, dotted module)`` of every import in the file at ``path``, function-local ones
  included; ``from a import b`` yields ``a.b`` (``b`` may be a module), and relative imports are
  resolved against ``package``, the dotted package that holds the file."""
  tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ''
      if node.level:
        base = list(package[:len(package) - (node.level - 1)])
        module = '.'.join(base + ([node.module] if node.module else []))
      for alias in node.names:
        yield node.lineno, module if alias.name == '*' else f'{module}.{alias.name}'


def layer_of(module: str, package: str = PACKAGE) -> str | None:
  """The package layer a dotted module belongs to (``quantum_alpha_jax.train.loop`` → ``train``),
  ``experiments`` for the entry points, None for anything else (the standard library, jax...)."""
  names = module.split('.')
  if names[0] == 'experiments':
    return 'experiments'
  if names[0] != package or len(names) < 2:
    return None
  return names[1]


def violations(root: pathlib.Path = ROOT, package: str = PACKAGE,
               allowed: dict[str, set[str]] | None = None) -> list[str]:
  """``file:line: layer -> layer (module)`` for every forbidden arrow in ``root/package``."""
  allowed = ALLOWED if allowed is None else allowed
  found = []
  for path in sorted((root / package).rglob('*.py')):
    relative = path.relative_to(root).as_posix()
    source_layer = path.relative_to(root / package).parts[0].removesuffix('.py')
    holder = path.relative_to(root).parent.parts  # the dotted package holding the file
    for line, module in imported_modules(path, holder):
      target = layer_of(module, package)
      if target is None or target == source_layer:
        continue
      if target in allowed.get(relative, ()):
        continue
      forbidden = any(source in ('*', source_layer) and target == imported
                      for source, imported in FORBIDDEN)
      if source_layer in BOTTOM_FLOOR and target not in BOTTOM_FLOOR[source_layer]:
        forbidden = True
      if forbidden:
        found.append(f'{relative}:{line}: {source_layer} -> {target} ({module})')
  return found


def test_no_import_runs_back_up():
  found = violations()
  assert not found, ('imports against the one-way flow (tests/test_imports.py docstring); move '
                     'the shared piece down to a lower layer or pass it in:\n  '
                     + '\n  '.join(found))


def test_the_store_builder_loads_neither_jax_nor_matplotlib():
  # A fresh interpreter: the test process has long loaded everything.
  heavy = ('jax', 'grain', 'matplotlib')
  code = (f'import sys; import {PACKAGE}.data.pipeline; '
          f'print(sorted(name for name in {heavy!r} if name in sys.modules))')
  loaded = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
  assert loaded == '[]', (f'importing data/pipeline.py loads {loaded}: import them where they are '
                          'used (artifacts loads jax and matplotlib on first use)')


def test_configs_import_no_library_module():
  found = []
  for path in sorted((ROOT / 'configs').glob('*.py')):
    for line, module in imported_modules(path):
      target = layer_of(module)
      if target is not None and target not in CONFIG_ALLOWED:
        found.append(f'{path.relative_to(ROOT).as_posix()}:{line}: {module}')
  assert not found, ('configs import library modules; put the value in configs/common.py (and '
                     'its check in tests/test_config_defaults.py):\n  ' + '\n  '.join(found))


@pytest.mark.parametrize('statement, arrow', [
    ('from quantum_alpha_jax.train import writers', 'data -> train'),
    ('import quantum_alpha_jax.backtest.engine as engine', 'data -> backtest'),
    ('from quantum_alpha_jax import train', 'data -> train'),
    ('from .. import train', 'data -> train'),
    ('from experiments import main', 'data -> experiments'),
])
def test_the_walk_finds_function_local_and_relative_imports(tmp_path, statement, arrow):
  # A small package laid out like the real one, the arrow hidden inside a function.
  data = tmp_path / PACKAGE / 'data'
  data.mkdir(parents=True)
  (tmp_path / PACKAGE / '__init__.py').write_text('')
  (data / '__init__.py').write_text('')
  (data / 'reader.py').write_text(f'import numpy\n\n\ndef read():\n  {statement}\n')
  found = violations(tmp_path, allowed={})
  assert len(found) == 1 and found[0].startswith(f'{PACKAGE}/data/reader.py:5: {arrow} ('), found


def test_no_library_file_is_over_500_lines():
  """A file over 500 lines holds more than one job: split it by job (DESIGN.md)."""
  long = {str(path.relative_to(ROOT)): count for path in (ROOT / PACKAGE).rglob('*.py')
          if (count := len(path.read_text(encoding='utf-8').splitlines())) > 500}
  assert not long, f'split these by job: {long}'
