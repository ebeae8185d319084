"""Builds the feature store. ``get_config(arg)``: '' (default), 'quick', 'learnable' or 'real'.

- default: the embedded synthetic market, BTCUSDT + ETHUSDT, 2019-01-01 .. 2025-01-01 (6 years).
- quick:   the synthetic market for four weeks; seconds on a CPU.
- learnable: a year of the synthetic 'learnable' preset (data/synthetic.LEARNABLE), the main job's
           market: identifiable regimes, so a working model beats the naive rules and the Bayes
           filter (evaluate/ceiling.py) shows what is attainable. Eight months of training (the
           Strategist, trained on twelve weeks, overfitted by its 1,000th step and only tied the
           trend rule), and a 115-day test split: ~2,700 non-overlapping 2-hour windows and 115
           days, so a daily paired interval can resolve a policy from trend (on the old 17 test
           days even the filter's own policy could not: benchmarks/ceiling_vs_trend.py).
- real:    the real Binance spot 5-minute candles in ../shared/data/binance-spot-5m/.
"""

from pathlib import Path

import ml_collections

from quantum_alpha_jax.errors import ConfigError

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATA = REPOSITORY.parent / 'shared' / 'data'


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.source = 'synthetic'  # 'synthetic' or 'files'
  config.symbols = ('BTCUSDT', 'ETHUSDT')
  # Synthetic market: bars in [start, end). For files: optional trim (None keeps everything).
  config.start = '2019-01-01'
  config.end = '2025-01-01'
  config.seed = 0
  # Synthetic market preset (data/synthetic.PRESETS): 'realistic' (the default market, close to
  # chance for any model) or 'learnable' (identifiable regimes; evaluate/ceiling.py's yardstick).
  config.synthetic = ml_collections.ConfigDict({'preset': 'realistic'})
  # Files: one entry per symbol, a path or glob (comma-separated for several).
  config.inputs = ml_collections.ConfigDict({'BTCUSDT': '', 'ETHUSDT': ''})
  config.sort = False  # sort unsorted files instead of refusing them
  config.dedupe = False  # drop duplicate timestamps (keeping the last) instead of refusing
  config.drop_last_bar = False  # drop each file's last candle (freqtrade may catch it still open)
  config.fill_limit_bars = 72  # holes up to 6 h become zero-volume bars; longer ones split segments
  config.store_dir = str(REPOSITORY / 'data_store' / 'synthetic')
  # Time splits [start, end) for every model; windows near a boundary are purged (data/windows.py).
  config.splits = ml_collections.ConfigDict({
      'train': ('2019-01-01', '2024-01-01'),
      'validation': ('2024-01-01', '2024-07-01'),
      'test': ('2024-07-01', '2025-01-01')})

  if arg == 'quick':
    config.start = '2024-01-01'
    config.end = '2024-01-29'
    config.store_dir = str(REPOSITORY / 'data_store' / 'quick')
    config.splits.train = ('2024-01-01', '2024-01-19')
    config.splits.validation = ('2024-01-19', '2024-01-24')
    config.splits.test = ('2024-01-24', '2024-01-29')
  elif arg == 'learnable':
    config.synthetic.preset = 'learnable'
    config.start = '2023-07-01'
    config.end = '2024-07-01'
    config.store_dir = str(REPOSITORY / 'data_store' / 'learnable-year')
    config.splits.train = ('2023-07-01', '2024-02-26')
    config.splits.validation = ('2024-02-26', '2024-03-08')
    config.splits.test = ('2024-03-08', '2024-07-01')
  elif arg == 'real':
    config.source = 'files'
    # Optional trim of the files: None keeps everything (override with --config.start=2021-01-01).
    config.start = ml_collections.config_dict.placeholder(str)
    config.end = ml_collections.config_dict.placeholder(str)
    directory = SHARED_DATA / 'binance-spot-5m'
    config.inputs = ml_collections.ConfigDict({
        'BTCUSDT': str(directory / 'BTC_USDT-5m.parquet'),
        'ETHUSDT': str(directory / 'ETH_USDT-5m.parquet')})
    config.store_dir = str(REPOSITORY / 'data_store' / 'real')
    # Validation 2023-H1, test 2023-H2; later periods are kept out for independent evaluation.
    config.splits.train = ('2019-01-01', '2023-01-01')
    config.splits.validation = ('2023-01-01', '2023-07-01')
    config.splits.test = ('2023-07-01', '2024-01-01')
  elif arg:
    raise ConfigError(f'configs/data.py: unknown variant {arg!r} — use "", "quick", "learnable" or "real"')
  return config
