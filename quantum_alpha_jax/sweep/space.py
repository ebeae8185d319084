"""The search space of a sweep, declared in its config, and a trial's overrides of a model config.

``config.space`` maps a dotted key of the model's config to a range:

- ``('log', low, high)``: a float drawn log-uniformly from [low, high] (low > 0);
- ``('float', low, high)`` or ``('float', low, high, step)``: a float from [low, high];
- ``('int', low, high)`` or ``('int', low, high, step)``: an integer from [low, high];
- ``('choice', (a, b, ...))``: one of the listed values.

Every key must name an existing setting of the model's config; a range must be non-empty.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Mapping

import ml_collections

from quantum_alpha_jax.errors import ConfigError, describe

KINDS = ('log', 'float', 'int', 'choice')


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every leaf of ``config`` as a dotted key."""
  keys = []
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      keys += flat_keys(value, f'{prefix}{key}.')
    else:
      keys.append(f'{prefix}{key}')
  return keys


def lookup(tree: Any, key: str) -> Any:
  """``tree['a']['b']`` for ``key = 'a.b'`` (mappings or ConfigDicts); KeyError if absent."""
  value = tree
  for part in key.split('.'):
    if isinstance(value, (Mapping, ml_collections.ConfigDict)) and part in value:
      value = value[part]
    else:
      raise KeyError(key)
  return value


def _unknown_key(key: str, config: ml_collections.ConfigDict, where: str) -> ConfigError:
  keys = flat_keys(config)
  close = difflib.get_close_matches(key, keys, n=3)
  hint = f'did you mean {", ".join(close)}?' if close else 'use a dotted key of the model config'
  return ConfigError(describe(f'{where}[{key!r}]', f'no such setting in the model config', hint))


def parse(space: Mapping[str, Any], config: ml_collections.ConfigDict,
          where: str = 'config.space') -> dict[str, tuple]:
  """``space`` checked against the model ``config``: ``{key: (kind, ...)}`` with plain values.
  A :class:`ConfigError` names the first unknown key, unknown kind or empty range."""
  parsed = {}
  if not space:
    raise ConfigError(describe(where, 'is empty', "declare at least one range, e.g. "
                               "{'train.optimizer.learning_rate': ('log', 1e-4, 1e-2)}"))
  for key, entry in dict(space).items():
    try:
      lookup(config, key)
    except KeyError:
      raise _unknown_key(key, config, where) from None
    entry = tuple(entry) if isinstance(entry, (list, tuple)) else (entry,)
    kind = entry[0] if entry else None
    name = f'{where}[{key!r}]'
    if kind not in KINDS:
      raise ConfigError(describe(name, f'unknown kind {kind!r}', f'use one of {KINDS}'))
    if kind == 'choice':
      if len(entry) != 2 or not isinstance(entry[1], (list, tuple)) or not entry[1]:
        raise ConfigError(describe(name, f'{entry} has no values to choose from',
                                   "write ('choice', (a, b, ...))"))
      parsed[key] = ('choice', tuple(entry[1]))
      continue
    if len(entry) not in (3, 4) or (kind == 'log' and len(entry) != 3):
      raise ConfigError(describe(name, f'{entry} is not a range',
                                 f"write ('{kind}', low, high" + (')' if kind == 'log' else
                                                                  '[, step])')))
    low, high = entry[1], entry[2]
    if kind == 'int' and not all(isinstance(v, int) for v in entry[1:]):
      raise ConfigError(describe(name, f'{entry}: an int range needs integer bounds',
                                 "use ('float', low, high) for real numbers"))
    if not low < high:
      raise ConfigError(describe(name, f'empty range: low {low} is not below high {high}',
                                 'give low < high, or fix the setting in config.overrides'))
    if kind == 'log' and low <= 0:
      raise ConfigError(describe(name, f'a log range needs low > 0, got {low}',
                                 "use ('float', low, high) for a range through zero"))
    parsed[key] = (kind, *entry[1:])
  return parsed


def canonical(space: Mapping[str, tuple]) -> str:
  """The parsed space as sorted JSON (stored with the study; compared on resume)."""
  return json.dumps({key: list(entry) for key, entry in sorted(space.items())}, sort_keys=True,
                    default=list)


def suggest(trial: Any, space: Mapping[str, tuple]) -> dict[str, Any]:
  """One value per key from an ``optuna.Trial`` (or the fixed params of a retried trial)."""
  values = {}
  for key, entry in space.items():
    kind = entry[0]
    if kind == 'choice':
      values[key] = trial.suggest_categorical(key, list(entry[1]))
    elif kind == 'log':
      values[key] = trial.suggest_float(key, entry[1], entry[2], log=True)
    elif kind == 'float':
      values[key] = trial.suggest_float(key, entry[1], entry[2],
                                        step=entry[3] if len(entry) > 3 else None)
    else:
      values[key] = trial.suggest_int(key, entry[1], entry[2],
                                      step=entry[3] if len(entry) > 3 else 1)
  return values


def apply(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
          where: str = 'config.overrides') -> ml_collections.ConfigDict:
  """A copy of ``config`` with each dotted key of ``overrides`` set (types as the config's)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    parent, _, leaf = key.rpartition('.')
    try:
      node = lookup(config, parent) if parent else config
      lookup(node, leaf)
    except KeyError:
      raise _unknown_key(key, config, where) from None
    current = node[leaf]
    if isinstance(current, tuple) and isinstance(value, list):
      value = tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    node[leaf] = value
  return config
