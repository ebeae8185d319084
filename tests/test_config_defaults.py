"""configs/common.py writes the library's defaults out as plain values (configs import no library
module, tests/test_imports.py); this test keeps the two copies equal, so a default changed on one
side only fails here, naming the block and the keys that differ."""

from __future__ import annotations

from typing import Any, Mapping

from configs import common
from quantum_alpha_jax import cli
from quantum_alpha_jax import fills
from quantum_alpha_jax.backtest import ensemble
from quantum_alpha_jax.rl import ddpg
from quantum_alpha_jax.rl import experiment as rl_experiment
from quantum_alpha_jax.rl import market
from quantum_alpha_jax.rl import ppo
from quantum_alpha_jax.train import loop
from quantum_alpha_jax.train import state as state_lib


def _flat(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """``{'a.b': value}`` of a nested mapping (a ConfigDict's ``to_dict()``)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def test_config_defaults_equal_the_library_defaults():
  pairs = {
      'optimizer_config': (common.optimizer_config(), state_lib.optimizer_config()),
      'train_config': (common.train_config(), loop.train_config()),
      'ensemble_config': (common.ensemble_config(), ensemble.ensemble_config()),
      'rl_env_config': (common.rl_env_config(), market.env_config()),
      'rl_train_config': (common.rl_train_config(), rl_experiment.train_config()),
      'ppo_agent': (common.ppo_agent(), ppo.config()),
      'ddpg_agent': (common.ddpg_agent(), ddpg.config()),
  }
  differences = []
  for name, (config, library) in pairs.items():
    ours, theirs = _flat(config.to_dict()), _flat(library.to_dict())
    for key in sorted(set(ours) | set(theirs)):
      if ours.get(key, '<missing>') != theirs.get(key, '<missing>'):
        differences.append(f'{name}.{key}: configs/common.py {ours.get(key, "<missing>")!r}, '
                           f'library {theirs.get(key, "<missing>")!r}')
    if not differences and config != library:  # what to_dict() cannot show (e.g. locking)
      differences.append(f'{name}: the ConfigDicts differ')
  constants = {
      'ENSEMBLE_COMPONENTS': (common.ENSEMBLE_COMPONENTS, ensemble.COMPONENTS),
      'FEE_RATE': (common.FEE_RATE, fills.DEFAULT_FEE_RATE),
      'SLIPPAGE_BPS': (common.SLIPPAGE_BPS, fills.DEFAULT_SLIPPAGE_BPS),
      'INITIAL_CAPITAL': (common.INITIAL_CAPITAL, fills.DEFAULT_INITIAL_CAPITAL),
      'default_workdir': (common.default_workdir('oracle-quick'),
                          cli.default_workdir('oracle-quick')),
  }
  differences += [f'{name}: configs/common.py {ours!r}, library {theirs!r}'
                  for name, (ours, theirs) in constants.items() if ours != theirs]
  assert not differences, ('configs/common.py and the library disagree; change both sides '
                           'together:\n  ' + '\n  '.join(differences))
