"""Models by name: ``get('oracle')`` is the :class:`~quantum_alpha_jax.tasks.protocol.TaskEntry`
that ``quantum_alpha_jax/tasks/oracle`` registered when imported.

A task module registers itself (``register(name, ...)`` at import), so adding a model touches no
shared code: :func:`get` imports ``quantum_alpha_jax.tasks.<name>`` on first use, and
:func:`names` finds every module of the package that registers one.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.tasks.protocol import TaskEntry

_ENTRIES: dict[str, TaskEntry] = {}
_PACKAGE = 'quantum_alpha_jax.tasks'
# Modules of the package that hold shared code, never a model.
_SHARED = frozenset({'protocol', 'registry', 'runner', 'prediction', 'saved', 'forecast'})


def _module(entry: TaskEntry) -> str | None:
  """The module that defines an entry's task (where its ``make_task`` lives)."""
  return getattr(entry.make_task, '__module__', None)


def register(name: str, **members: Any) -> TaskEntry:
  """Registers the model ``name`` (the :class:`TaskEntry` fields as keywords) and returns its
  entry; a second model under a taken name is an error (a module re-imported replaces its own)."""
  entry = TaskEntry(name=name, **members)
  existing = _ENTRIES.get(name)
  if existing is not None and _module(existing) != _module(entry):
    raise ConfigError(describe(f'tasks.registry.register({name!r})', 'the name is taken by '
                               f'{_module(existing)}', 'give the new model another name'))
  _ENTRIES[name] = entry
  return entry


def names() -> tuple[str, ...]:
  """Every registered model, after importing each model module of the package (sorted)."""
  package = importlib.import_module(_PACKAGE)
  for module in pkgutil.iter_modules(package.__path__):
    if module.name not in _SHARED and not module.name.startswith('_'):
      importlib.import_module(f'{_PACKAGE}.{module.name}')
  return tuple(sorted(_ENTRIES))


def get(name: str) -> TaskEntry:
  """The entry of model ``name``; a :class:`ConfigError` naming the models there are otherwise."""
  if name not in _ENTRIES:
    if not isinstance(name, str) or not re.fullmatch(r'[a-z][a-z0-9_]*', name) or name in _SHARED:
      raise ConfigError(describe('model', f'unknown model {name!r}: not a model name',
                                 f'use one of {", ".join(names())}'))
    try:
      importlib.import_module(f'{_PACKAGE}.{name}')
    except ModuleNotFoundError as error:
      if error.name != f'{_PACKAGE}.{name}':
        raise
  if name not in _ENTRIES:
    raise ConfigError(describe('model', f'unknown model {name!r} (no quantum_alpha_jax/tasks/'
                               f'{name} registers one)', f'use one of {", ".join(names())}'))
  return _ENTRIES[name]


def find_export(export: str) -> tuple[TaskEntry, Any]:
  """``(entry, builder)`` of the deployable function named ``export``: a model's own export (its
  name) or one more it declares (``TaskEntry.exports``, e.g. ``'strategist_step'``); a
  :class:`ConfigError` listing the exports there are otherwise."""
  candidates = [export] if export in _ENTRIES else []
  if not candidates:
    try:
      get(export)
      candidates = [export]
    except ConfigError:
      pass
  for name in candidates + [name for name in names() if name != export]:
    entry = _ENTRIES[name]
    builder = entry.export_builder(export) if export in entry.exports() else None
    if builder is not None:
      return entry, builder
  known = sorted(e for name in names() for e in _ENTRIES[name].exports())
  raise ConfigError(describe('export', f'no exporter for {export!r}',
                             f'use one of {", ".join(known)} (a task declares its exports in '
                             'export_fns)'))
