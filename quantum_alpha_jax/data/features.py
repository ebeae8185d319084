"""The 44 causal technical features, listed once in ``FEATURES``.

Every feature at bar t depends on bars <= t only (see tests/test_features.py, which perturbs the
future and checks the past is unchanged). Warm-up rows, where a look-back is not yet full, are
flagged ``valid=False`` and must never reach training.

:func:`compute_features` adds the 39 derived features (``DERIVED_FEATURES``: every feature that is
not already an OHLCV column) and the ``valid`` flag to a kline frame. Definitions, with ``c, o, h,
l, v`` the close, open, high, low and volume of bar t, ``c[t-1]`` the previous close, rolling
windows ending at (and including) bar t, and ``std`` always the population std (ddof=0):

- ``SMA_n = mean(c over n bars)``; ``EMA_n``: recursive, ``alpha = 2 / (n + 1)``, seeded with the
  first close (pandas ``ewm(adjust=False)``).
- ``MACD = EMA_12 - EMA_26``; ``MACD_signal = EMA_9(MACD)``; ``MACD_hist = MACD - MACD_signal``.
- ``RSI_14``: Wilder averages of gains ``max(c - c[t-1], 0)`` and losses ``max(c[t-1] - c, 0)``
  (recursive, ``alpha = 1/14``); ``RSI = 100 - 100 / (1 + gain / loss)``, computed as
  ``100 * gain / (gain + loss)``: 100 when the loss is 0 and the gain is not, 50 when both are 0.
- ``Stochastic_K = 100 * (c - LL_14) / (HH_14 - LL_14)`` (50 when the range is 0), with ``HH_14``
  the highest high and ``LL_14`` the lowest low over 14 bars; ``Stochastic_D = SMA_3(K)`` (the fast
  stochastic, TA-Lib ``STOCHF(14, 3)``).
- ``BB_middle = SMA_20``; ``BB_upper/lower = BB_middle +/- 2 std_20(c)``;
  ``BB_width = (BB_upper - BB_lower) / BB_middle``.
- ``TR = max(h - l, |h - c[t-1]|, |l - c[t-1]|)`` (``h - l`` on the first bar); ``ATR_14``: Wilder
  average of TR (``alpha = 1/14``). ``ATR_period_high = HH_14``, ``ATR_period_low = LL_14``: the
  channel of the 14 bars the ATR is measured over.
- ``OBV = cumsum(sign(c - c[t-1]) * v)``, 0 on the first bar. Only its changes carry meaning: the
  windows normalise it relative to an anchor bar.
- ``volume_ma = SMA_20(v)``; ``volume_ma_ratio = v / volume_ma`` (1 when ``volume_ma`` is 0).
- ``VWAP``: session VWAP that restarts at 00:00 UTC, ``sum(p * v) / sum(v)`` over the bars of the
  UTC day so far, ``p = (h + l + c) / 3``; equal to ``c`` while the day's volume is still 0.
- ``price_ma_ratio = c / SMA_20``.
- ``returns_n = c / c[t-n] - 1`` for n in 1, 3, 12, 60.
- ``volatility_n = std(returns_1 over n bars)`` for n in 12, 48, 240 (per bar, not annualised).
- ``hour``: UTC hour 0..23 of the bar's open time; ``day_of_week``: 0 (Monday) .. 6 (Sunday);
  ``is_trading_hour``: 1 on Monday..Friday for bars opening in [13:00, 21:00) UTC, the US equity
  session, when crypto volume and volatility peak (crypto trades 24/7, so this is a liquidity
  session flag), else 0.
- ``log_return = log(c / c[t-1])``; ``hl_range = (h - l) / c``; ``candle_body = (c - o) / o``;
  ``upper_shadow = (h - max(o, c)) / c``; ``lower_shadow = (min(o, c) - l) / c``;
  ``volume_zscore = (v - mean_48(v)) / std_48(v)``, 0 where the std is 0.

A rolling std over a window whose values are all equal (a run of filled zero-volume bars, a flat
price) is exactly 0; pandas' online variance would otherwise leave a residue of ~1e-8 relative to
the window's recent history.

Everything is computed in float64 over the whole series at once, not per segment, and the derived
columns are cast to float32 at the end. Rolling windows reach back at most 241 bars (volatility_240
over returns_1), so after ``WARMUP_BARS`` = 300 bars of a segment they hold no bar from before its
start. The recursive averages keep a weight of ``(1 - alpha) ** 300`` on bars before the segment:
9.5e-11 for EMA_26 (smaller for the faster ones) and 2.2e-10 for the Wilder averages (RSI, ATR),
far below float32 resolution (6e-8). ``OBV`` keeps its running offset across segments (harmless, see
above). VWAP restarts daily, and 300 bars are 25 hours, so a valid bar's VWAP day lies inside its
segment. The first ``WARMUP_BARS`` rows of every segment are therefore flagged ``valid=False``, as
is any row where one of the 44 features is NaN or infinite (a zero price, say). A NaN or infinite
OHLCV input is refused with a DataError instead: it would poison OBV and the recursive averages for
the rest of the series.

``serve/stream.py`` computes the same rows one bar at a time for the decision service, replaying
the pandas algorithms used here (rolling mean and variance, ``ewm``, the grouped cumulative sum) in
the same float64 operation order; tests/test_serve_stream.py holds the two paths equal bit for bit.
Change a formula, a pandas call or an operation order here and the stream must change with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema

# The one list. Order is the model's input order; the store, the windows, the normalisation stats
# and the ONNX metadata all follow it.
FEATURES = (
    # Trend
    'SMA_10', 'SMA_20', 'SMA_50', 'EMA_12', 'EMA_26', 'MACD', 'MACD_signal', 'MACD_hist',
    # Momentum
    'RSI_14', 'Stochastic_K', 'Stochastic_D',
    # Volatility bands
    'BB_upper', 'BB_middle', 'BB_lower', 'BB_width', 'ATR_14', 'ATR_period_high', 'ATR_period_low',
    # Volume
    'OBV', 'volume_ma', 'volume_ma_ratio', 'VWAP',
    # Price
    'close', 'open', 'high', 'low', 'volume', 'price_ma_ratio',
    # Returns
    'returns_1', 'returns_3', 'returns_12', 'returns_60',
    # Realised volatility
    'volatility_12', 'volatility_48', 'volatility_240',
    # Time (known in advance)
    'hour', 'day_of_week', 'is_trading_hour',
    # Six more, all from OHLCV
    'log_return', 'hl_range', 'candle_body', 'upper_shadow', 'lower_shadow', 'volume_zscore',
)
assert len(FEATURES) == 44 and len(set(FEATURES)) == 44

# Features that are known for future bars (they depend on the timestamp only): the TFT's
# known-future inputs.
KNOWN_FUTURE_FEATURES = ('hour', 'day_of_week', 'is_trading_hour')

# How the windows make each feature stationary before z-scoring (see data/windows.py):
#   price       -> log(x / anchor close)              price levels
#   price_diff  -> x / anchor close                   differences of prices (MACD, ATR)
#   volume      -> log((x + 1e-12) / (anchor volume_ma + 1e-12))
#   obv         -> (x - anchor OBV) / (anchor volume_ma * window length + 1e-12)
#   none        -> x                                  already scale-free
FEATURE_KINDS = {
    **{name: 'price' for name in (
        'SMA_10', 'SMA_20', 'SMA_50', 'EMA_12', 'EMA_26', 'BB_upper', 'BB_middle', 'BB_lower',
        'ATR_period_high', 'ATR_period_low', 'VWAP', 'close', 'open', 'high', 'low')},
    **{name: 'price_diff' for name in ('MACD', 'MACD_signal', 'MACD_hist', 'ATR_14')},
    **{name: 'volume' for name in ('volume', 'volume_ma')},
    'OBV': 'obv',
}
FEATURE_KINDS = {name: FEATURE_KINDS.get(name, 'none') for name in FEATURES}

# Rows at the start of every segment that are flagged invalid: the longest look-back is 240 bars
# (volatility_240 over returns_1); the extra bars let the EMA/Wilder recursions forget their seed
# ((25/27)**300 < 1e-10 for EMA_26).
WARMUP_BARS = 300

# Optional inputs from the extra kline columns that Binance dumps (and the synthetic market) carry
# and freqtrade's OHLCV files do not; added only when the source has them, never among the 44:
#   taker_buy_ratio = taker_buy_volume / volume (0.5 when the volume is 0): order-flow imbalance
#   trades_zscore   = (log1p(count) - mean_48) / std_48 (0 where the std is 0): trade intensity
EXTRA_FEATURES = ('taker_buy_ratio', 'trades_zscore')
EXTRA_SOURCE_COLUMNS = ('count', 'taker_buy_volume')

# The features compute_features adds; the OHLCV features are the kline columns themselves.
DERIVED_FEATURES = tuple(name for name in FEATURES if name not in schema.OHLCV)
assert len(DERIVED_FEATURES) == 39

# Columns compute_features reads.
REQUIRED_COLUMNS = (schema.TIMESTAMP, *schema.OHLCV, schema.SEGMENT)

NANOSECONDS_PER_HOUR = 3_600 * 1_000_000_000
NANOSECONDS_PER_DAY = 24 * NANOSECONDS_PER_HOUR
EPOCH_DAY_OF_WEEK = 3  # 1970-01-01 was a Thursday.
TRADING_HOURS = (13, 21)  # [start, end) in UTC: the US equity session.


def compute_features(klines: pd.DataFrame) -> pd.DataFrame:
  """Returns ``klines`` plus the 39 derived features (float32) and the ``valid`` flag.

  Input columns pass through unchanged; see the module docstring for every definition.
  """
  _check_columns(klines)
  timestamp_nanoseconds = _timestamp_nanoseconds(klines[schema.TIMESTAMP])
  open_, high, low, close, volume = (
      _finite_column(klines, name) for name in schema.OHLCV)
  with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
    derived = _derived_features(timestamp_nanoseconds, open_, high, low, close, volume)
    names = DERIVED_FEATURES
    if all(column in klines.columns for column in EXTRA_SOURCE_COLUMNS):
      derived.update(_extra_features(volume, *(
          _finite_column(klines, name) for name in EXTRA_SOURCE_COLUMNS)))
      names += EXTRA_FEATURES
  derived = {name: derived[name].astype(np.float32) for name in names}

  finite = np.ones(len(klines), dtype=bool)
  for name in FEATURES + (EXTRA_FEATURES if 'trades_zscore' in derived else ()):
    finite &= np.isfinite(derived[name] if name in derived else klines[name].to_numpy(np.float64))
  segment = klines[schema.SEGMENT].to_numpy()
  valid = finite & (_position_in_segment(segment) >= WARMUP_BARS)

  new_columns = pd.DataFrame({**derived, schema.VALID: valid}, index=klines.index)
  kept = klines.drop(columns=[name for name in new_columns.columns if name in klines.columns])
  return pd.concat([kept, new_columns], axis=1)


def _derived_features(
    timestamp_nanoseconds: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
) -> dict[str, np.ndarray]:
  """The derived features in float64, keyed by name (formulas in the module docstring)."""
  derived = {}
  previous_close = _shift(close, 1)

  # Trend.
  for period in (10, 20, 50):
    derived[f'SMA_{period}'] = _rolling_mean(close, period)
  for period in (12, 26):
    derived[f'EMA_{period}'] = _ema(close, 2.0 / (period + 1))
  macd = derived['EMA_12'] - derived['EMA_26']
  macd_signal = _ema(macd, 2.0 / (9 + 1))
  derived['MACD'] = macd
  derived['MACD_signal'] = macd_signal
  derived['MACD_hist'] = macd - macd_signal

  # Momentum.
  change = np.diff(close, prepend=close[:1])  # 0 on the first bar.
  average_gain = _ema(np.maximum(change, 0.0), 1.0 / 14)
  average_loss = _ema(np.maximum(-change, 0.0), 1.0 / 14)
  gain_plus_loss = average_gain + average_loss
  derived['RSI_14'] = np.where(gain_plus_loss == 0, 50.0, 100.0 * average_gain / gain_plus_loss)
  highest_high = _rolling_max(high, 14)
  lowest_low = _rolling_min(low, 14)
  channel = highest_high - lowest_low
  stochastic_k = np.where(channel == 0, 50.0, 100.0 * (close - lowest_low) / channel)
  derived['Stochastic_K'] = stochastic_k
  derived['Stochastic_D'] = _rolling_mean(stochastic_k, 3)

  # Volatility bands.
  middle = derived['SMA_20']
  band = 2.0 * _rolling_std(close, 20)
  derived['BB_upper'] = middle + band
  derived['BB_middle'] = middle
  derived['BB_lower'] = middle - band
  derived['BB_width'] = 2.0 * band / middle
  previous_close_or_close = np.concatenate([close[:1], close[:-1]])
  true_range = np.maximum.reduce([
      high - low,
      np.abs(high - previous_close_or_close),
      np.abs(low - previous_close_or_close),
  ])
  derived['ATR_14'] = _ema(true_range, 1.0 / 14)
  derived['ATR_period_high'] = highest_high
  derived['ATR_period_low'] = lowest_low

  # Volume.
  derived['OBV'] = np.cumsum(np.sign(change) * volume)
  volume_ma = _rolling_mean(volume, 20)
  derived['volume_ma'] = volume_ma
  derived['volume_ma_ratio'] = np.where(volume_ma == 0, 1.0, volume / volume_ma)
  derived['VWAP'] = _session_vwap(timestamp_nanoseconds, high, low, close, volume)

  # Price.
  derived['price_ma_ratio'] = close / middle

  # Returns and realised volatility.
  for period in (1, 3, 12, 60):
    derived[f'returns_{period}'] = close / _shift(close, period) - 1.0
  for period in (12, 48, 240):
    derived[f'volatility_{period}'] = _rolling_std(derived['returns_1'], period)

  # Time.
  hour = (timestamp_nanoseconds // NANOSECONDS_PER_HOUR) % 24
  day_of_week = (timestamp_nanoseconds // NANOSECONDS_PER_DAY + EPOCH_DAY_OF_WEEK) % 7
  derived['hour'] = hour.astype(np.float64)
  derived['day_of_week'] = day_of_week.astype(np.float64)
  derived['is_trading_hour'] = (
      (day_of_week < 5) & (hour >= TRADING_HOURS[0]) & (hour < TRADING_HOURS[1])
  ).astype(np.float64)

  # Candle shape.
  derived['log_return'] = np.log(close / previous_close)
  derived['hl_range'] = (high - low) / close
  derived['candle_body'] = (close - open_) / open_
  derived['upper_shadow'] = (high - np.maximum(open_, close)) / close
  derived['lower_shadow'] = (np.minimum(open_, close) - low) / close
  volume_std = _rolling_std(volume, 48)
  derived['volume_zscore'] = np.where(
      volume_std == 0, 0.0, (volume - _rolling_mean(volume, 48)) / volume_std)
  return derived


def _extra_features(volume: np.ndarray, count: np.ndarray, taker_buy_volume: np.ndarray
                    ) -> dict[str, np.ndarray]:
  """``EXTRA_FEATURES`` from the trade count and taker-buy volume (see their definitions)."""
  ratio = np.where(volume > 0, taker_buy_volume / np.where(volume > 0, volume, 1.0), 0.5)
  trades = np.log1p(np.maximum(count, 0.0))
  trades_std = _rolling_std(trades, 48)
  zscore = np.where(trades_std == 0, 0.0, (trades - _rolling_mean(trades, 48)) / trades_std)
  return {'taker_buy_ratio': ratio, 'trades_zscore': zscore}


def _check_columns(klines: pd.DataFrame) -> None:
  """Raises SchemaError when a column compute_features reads is missing."""
  missing = [name for name in REQUIRED_COLUMNS if name not in klines.columns]
  if missing:
    raise errors.SchemaError(errors.describe(
        'compute_features',
        f'kline frame lacks column(s) {", ".join(map(repr, missing))} '
        f'(has {", ".join(map(str, klines.columns))})',
        f'pass a kline frame with columns {", ".join(REQUIRED_COLUMNS)}, as returned by '
        'quantum_alpha_jax.data.klines (see data/schema.py)'))


def _timestamp_nanoseconds(timestamps: pd.Series) -> np.ndarray:
  """UTC nanoseconds since the epoch as int64, checked to be tz-aware and strictly increasing."""
  nanoseconds = schema.timestamps_ns(timestamps.to_frame(schema.TIMESTAMP), 'compute_features')
  if len(nanoseconds) > 1:
    steps = np.diff(nanoseconds)
    if not np.all(steps > 0):
      row = int(np.argmax(steps <= 0)) + 1
      raise errors.DataError(errors.describe(
          'compute_features',
          f'timestamps are not strictly increasing at row {row} ({timestamps.iloc[row]})',
          'sort and de-duplicate the bars first (quantum_alpha_jax.data.klines)'))
  return nanoseconds


def _finite_column(klines: pd.DataFrame, name: str) -> np.ndarray:
  """The column as float64, checked finite (a NaN or inf would poison OBV and the EMAs)."""
  values = klines[name].to_numpy(dtype=np.float64, na_value=np.nan)
  finite = np.isfinite(values)
  if not finite.all():
    row = int(np.argmin(finite))
    raise errors.DataError(errors.describe(
        'compute_features',
        f'{np.count_nonzero(~finite)} non-finite value(s) in column {name!r} '
        f'(first at row {row}, {klines[schema.TIMESTAMP].iloc[row]}: {values[row]})',
        'drop or repair those bars at ingest (quantum_alpha_jax.data.klines)'))
  return values


def _position_in_segment(segment: np.ndarray) -> np.ndarray:
  """Row index within its run of equal ``segment`` values: [rows] int64."""
  rows = np.arange(len(segment))
  starts = np.ones(len(segment), dtype=bool)
  starts[1:] = segment[1:] != segment[:-1]
  return rows - np.maximum.accumulate(np.where(starts, rows, 0))


def _shift(values: np.ndarray, periods: int) -> np.ndarray:
  """``values[t - periods]``, NaN for the first ``periods`` rows."""
  shifted = np.full(len(values), np.nan)
  shifted[periods:] = values[:len(values) - periods]
  return shifted


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
  """Mean over the last ``window`` rows, NaN until the window is full."""
  return pd.Series(values).rolling(window).mean().to_numpy()


def _rolling_max(values: np.ndarray, window: int) -> np.ndarray:
  """Maximum over the last ``window`` rows, NaN until the window is full."""
  return pd.Series(values).rolling(window).max().to_numpy()


def _rolling_min(values: np.ndarray, window: int) -> np.ndarray:
  """Minimum over the last ``window`` rows, NaN until the window is full."""
  return pd.Series(values).rolling(window).min().to_numpy()


def _rolling_std(values: np.ndarray, window: int) -> np.ndarray:
  """Population std (ddof=0) over the last ``window`` rows; exactly 0 when they are all equal."""
  rolling = pd.Series(values).rolling(window)
  std = rolling.std(ddof=0).to_numpy()
  constant = rolling.max().to_numpy() == rolling.min().to_numpy()
  return np.where(constant, 0.0, std)


def _ema(values: np.ndarray, alpha: float) -> np.ndarray:
  """Recursive average ``y[t] = (1 - alpha) * y[t-1] + alpha * x[t]``, ``y[0] = x[0]``."""
  return pd.Series(values).ewm(alpha=alpha, adjust=False).mean().to_numpy()


def _session_vwap(
    timestamp_nanoseconds: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
) -> np.ndarray:
  """Volume-weighted typical price since 00:00 UTC; the close while the day has no volume."""
  day = timestamp_nanoseconds // NANOSECONDS_PER_DAY
  typical_price = (high + low + close) / 3.0
  frame = pd.DataFrame({'price_volume': typical_price * volume, 'volume': volume})
  cumulative = frame.groupby(day, sort=False).cumsum()
  day_volume = cumulative['volume'].to_numpy()
  return np.where(day_volume == 0, close, cumulative['price_volume'].to_numpy() / day_volume)
