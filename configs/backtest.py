"""The ensemble backtest. ``get_config('')``, ``'quick'`` or ``'real'``.

Each variant reads the checkpoints of the same variant (``checkpoints/<model>[-quick|-real]``,
written by ``experiments.oracle``, ``experiments.guardian`` and ``experiments.strategist``) and
backtests its data's test split. ``--config.checkpoints.guardian=""`` leaves a model out.

- default: the seed-config models on the synthetic market's test half-year (2024-H2).
- quick:   the quick models on the quick market's last five days; seconds on a CPU.
- real:    the real-data models on the real BTC/ETH store's test split, 2023-H2.
"""

import ml_collections

from configs import common
from configs import data
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/backtest.py: unknown variant {arg!r} — use "", "quick" or "real"')
  suffix = f'-{arg}' if arg else ''
  config = ml_collections.ConfigDict()
  config.name = 'backtest' + suffix
  config.data = data.get_config(arg)
  config.split = 'test'
  config.checkpoints = ml_collections.ConfigDict({
      name: str(common.default_workdir(name + suffix)) for name in common.ENSEMBLE_COMPONENTS})
  config.ensemble = common.ensemble_config()
  config.costs = ml_collections.ConfigDict({
      'fee_rate': 0.001, 'slippage_bps': 1.0, 'initial_capital': 10_000.0,
      'rebalance_threshold': ml_collections.config_dict.placeholder(float)})
  config.walk_forward = ml_collections.ConfigDict({'frequency': 'MS', 'min_bars': 288 * 7})
  config.batch_size = 1024
  config.progress = True
  if arg == 'quick':
    # Five test days: walk forward day by day.
    config.walk_forward.update(frequency='D', min_bars=144)
    config.ensemble.oracle.uncertainty_halflife_bars = 72
  return config
