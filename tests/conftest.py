"""Shared test fixtures: seeded kline frames and the path to the real sample data."""

from __future__ import annotations

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


@pytest.fixture
def shared_data() -> Path:
  if not SHARED_DATA.exists():
    pytest.skip(f'real sample data not found at {SHARED_DATA}')
  return SHARED_DATA


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
