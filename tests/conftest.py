"""Shared test fixtures: seeded kline frames and the path to the real sample data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import synthetic

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


def make_klines(rows: int = 2000, seed: int = 0, start: str = '2023-01-01',
                extras: bool = False) -> pd.DataFrame:
  """A seeded random-walk kline frame on the 5-minute grid with consistent OHLC."""
  rng = np.random.default_rng(seed)
  close = 20000.0 * np.exp(np.cumsum(rng.normal(0, 0.002, rows)))
  open_ = np.concatenate([[20000.0], close[:-1]])
  high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.001, rows)))
  low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.001, rows)))
  frame = pd.DataFrame({
      schema.TIMESTAMP: pd.date_range(start, periods=rows, freq='5min', tz='UTC').as_unit('ns'),
      'open': open_, 'high': high, 'low': low, 'close': close,
      'volume': rng.lognormal(3, 1, rows)})
  if extras:
    frame['quote_volume'] = frame.volume * frame.close
    frame['count'] = np.round(frame.volume * 10) + 1
    frame['taker_buy_volume'] = frame.volume * 0.5
    frame['taker_buy_quote_volume'] = frame.quote_volume * 0.5
  frame[schema.OBSERVED] = True
  frame[schema.SEGMENT] = np.zeros(rows, dtype=np.int32)
  return frame


def require_shared_data(path: Path = SHARED_DATA) -> Path:
  """``path`` if it exists. Otherwise fail under CI (the environment variable ``CI`` set: CI places
  ``shared/`` beside the checkout, so a missing path there is a broken setup) and skip elsewhere,
  naming the path and how to provide it."""
  if path.exists():
    return path
  message = (f'real sample data not found at {path}: put the shared data beside the checkout '
             f'({SHARED_DATA.parent} holding data/) or link it there')
  if os.environ.get('CI'):
    pytest.fail(f'{message} (CI is set, so the real-data checks must run)', pytrace=False)
  pytest.skip(message)


@pytest.fixture
def shared_data() -> Path:
  return require_shared_data()


@pytest.fixture(scope='session')
def drifting_market() -> dict[str, pd.DataFrame]:
  """Four weeks of a market whose regimes drift hard: the recent past predicts the next 2 hours.

  Feature frames by symbol (2024-01-01 .. 2024-01-29); shared by the forecaster tests. Read-only.
  """
  parameters = synthetic.MarketParameters(annual_drift=(150.0, -150.0, 0.0),
                                          annual_volatility=(0.3, 0.3, 0.3),
                                          mean_dwell_hours=(24.0, 24.0, 24.0))
  frames = synthetic.generate_market(('BTCUSDT', 'ETHUSDT'), start='2024-01-01', end='2024-01-29',
                                     seed=4, parameters=parameters)
  return {symbol: features.compute_features(frame) for symbol, frame in frames.items()}


BARS_PER_YEAR = 105_120


@pytest.fixture(scope='session')
def learnable_market() -> dict[str, pd.DataFrame]:
  """Eight weeks of a market where beating the naive forecasts takes a model.

  Bull and bear drift 0.3 sigma a bar (annual volatility 0.4): over a few bars the last return is a
  weak guide and the encoder window's momentum a fair one. Sideways regimes last twice as long, are
  calm (volatility 0.1) and revert fast (half-life 30 minutes) towards the price's slow average, so
  there momentum points the wrong way. A model that reads the volatility and the distance from the
  averages can follow the trend or fade it; no naive rule does both. Measured at horizon 6 on the
  test split (2024-02-02 .. 02-23, 1998 non-overlapping windows): momentum 0.632, persistence
  0.573, always-up 0.520, reversal 0.368; the quick TFT 0.70, the quick LSTM 0.69.
  Feature frames by symbol (2024-01-01 .. 2024-02-23); read-only.
  """
  drift = 0.3 * 0.4 * np.sqrt(BARS_PER_YEAR)  # 0.3 sigma a bar, annualised.
  parameters = synthetic.MarketParameters(annual_drift=(drift, -drift, 0.0),
                                          annual_volatility=(0.4, 0.4, 0.1),
                                          mean_dwell_hours=(24.0, 24.0, 48.0),
                                          sideways_reversion_half_life_hours=0.5)
  frames = synthetic.generate_market(('BTCUSDT', 'ETHUSDT'), start='2024-01-01', end='2024-02-23',
                                     seed=4, parameters=parameters)
  return {symbol: features.compute_features(frame) for symbol, frame in frames.items()}


# The learnable market's splits, in time order (a purge of a window is left by make_datasets).
LEARNABLE_SPLITS = {'train': ('2024-01-01', '2024-01-29'),
                    'validation': ('2024-01-29', '2024-02-02'),
                    'test': ('2024-02-02', '2024-02-23')}
# Non-overlapping direction accuracy a forecaster must add to the best naive baseline: about 2.5
# standard errors of the paired difference on ~2,000 windows; a model that copies any naive rule
# scores a margin of 0.
NAIVE_MARGIN = 0.03


def best_naive_accuracy(report: dict) -> tuple[str, float]:
  """The naive baseline with the highest non-overlapping direction accuracy in an Oracle-format
  ``report`` (the hindsight best on that split: a stricter bar than the one chosen on train)."""
  honest = report['direction_accuracy_non_overlapping']
  name = max((n for n in honest if n != 'oracle' and isinstance(honest[n], dict)
              and honest[n].get('accuracy') is not None), key=lambda n: honest[n]['accuracy'])
  return name, honest[name]['accuracy']
