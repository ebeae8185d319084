"""Column names and constants shared by ingest, features, the store and the windows.

The canonical *kline frame* that every reader returns and every later stage consumes is a pandas
DataFrame with a RangeIndex and these columns:

- ``timestamp``: ``datetime64[ns, UTC]``, the bar's **open** time, strictly increasing, on the
  5-minute grid (after :func:`quantum_alpha_jax.data.klines.regularize`).
- ``open, high, low, close, volume``: float64 (volume in the base asset).
- optional ``quote_volume, count, taker_buy_volume, taker_buy_quote_volume``: float64, kept when the
  source has them (Binance public dumps, the synthetic market).
- ``observed``: bool. False on a bar that was missing in the source and filled explicitly as a
  zero-volume bar at the previous close (never a fake trade).
- ``segment``: int32. A run of bars with no hole longer than the fill limit; it increments after
  every longer hole (for example the months missing from the real 2020 data).
- optional ``regime``: int8, the synthetic market's true regime (index into ``REGIMES``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SCHEMA_VERSION = 2  # 2: optional EXTRA_FEATURES beside the Binance extra columns

TIMESTAMP = 'timestamp'
OHLCV = ('open', 'high', 'low', 'close', 'volume')
EXTRA_KLINE_COLUMNS = ('quote_volume', 'count', 'taker_buy_volume', 'taker_buy_quote_volume')
OBSERVED = 'observed'
SEGMENT = 'segment'
REGIME = 'regime'
VALID = 'valid'  # written by features: False during each segment's warm-up

REGIMES = ('bull', 'bear', 'sideways')

BAR = pd.Timedelta(minutes=5)
BAR_NANOSECONDS = 5 * 60 * 1_000_000_000
# 24/7 market: 12 bars an hour * 24 hours * 365 days.
BARS_PER_YEAR = 105_120

# Symbols the project knows how to name; the synthetic market generates these.
KNOWN_SYMBOLS = ('BTCUSDT', 'ETHUSDT')


def timestamps_ns(frame: pd.DataFrame, where: str = 'frame') -> np.ndarray:
  """The ``timestamp`` column as int64 nanoseconds since the epoch (UTC), whatever its unit.

  Naive timestamps are refused (SchemaError): they are ambiguous, and the time features need UTC.
  """
  column = frame[TIMESTAMP]
  if not isinstance(column.dtype, pd.DatetimeTZDtype):
    from quantum_alpha_jax.errors import SchemaError, describe
    raise SchemaError(describe(
        where, f'column {TIMESTAMP!r} has dtype {column.dtype}, expected datetime64[ns, UTC]',
        'convert it with pd.to_datetime(..., utc=True) (naive times are ambiguous)'))
  return pd.DatetimeIndex(column).as_unit('ns').asi8


def to_timestamps(nanoseconds) -> pd.DatetimeIndex:
  """int64 nanoseconds since the epoch -> ``DatetimeIndex`` in UTC with ns unit."""
  return pd.to_datetime(nanoseconds, unit='ns', utc=True).as_unit('ns')


def to_utc(value, where: str = 'config') -> pd.Timestamp:
  """A date or timestamp (naive = UTC, aware = converted) as a UTC ``pd.Timestamp``; ConfigError
  when it does not parse."""
  from quantum_alpha_jax.errors import ConfigError, describe
  try:
    timestamp = pd.Timestamp(value)
  except (TypeError, ValueError) as error:
    raise ConfigError(describe(
        where, f'cannot parse {value!r} as a timestamp ({error})',
        "use an ISO date such as '2021-01-01' or '2021-01-01T00:00:00Z'")) from None
  if timestamp is pd.NaT:
    raise ConfigError(describe(where, 'timestamp is NaT', 'give a real date'))
  if timestamp.tzinfo is None:
    return timestamp.tz_localize('UTC').as_unit('ns')
  return timestamp.tz_convert('UTC').as_unit('ns')
