"""Tests for data/features.py: TA-Lib cross-checks, causality, warm-up masking and the schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib  # a declared test dependency (setup.cfg [test]): never skip the cross-checks

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import schema
from tests.conftest import SHARED_DATA
from tests.conftest import require_shared_data


BTC_PARQUET = SHARED_DATA / 'binance-spot-5m' / 'BTC_USDT-5m.parquet'
WARMUP = features.WARMUP_BARS
FLAT_START, FLAT_LENGTH = 5 * 288, 60  # Zero-volume filled bars opening the sixth UTC day.


def synthetic_klines(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
  """A seeded random walk of 5-minute bars with consistent OHLC, plus a run of filled bars."""
  rng = np.random.default_rng(seed)
  close = 20_000.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-3, rows)))
  open_ = np.concatenate([[close[0]], close[:-1]]) * np.exp(rng.normal(0.0, 3e-4, rows))
  high = np.maximum(open_, close) * (1.0 + rng.exponential(1e-3, rows))
  low = np.minimum(open_, close) * (1.0 - rng.exponential(1e-3, rows))
  volume = rng.lognormal(2.0, 0.7, rows)
  observed = np.ones(rows, dtype=bool)
  # Bars missing in the source are filled flat at the previous close with zero volume.
  if rows > FLAT_START + FLAT_LENGTH:
    flat = slice(FLAT_START, FLAT_START + FLAT_LENGTH)
    open_[flat] = high[flat] = low[flat] = close[flat] = close[FLAT_START - 1]
    volume[flat] = 0.0
    observed[flat] = False
  return pd.DataFrame({
      schema.TIMESTAMP: pd.date_range('2021-01-01', periods=rows, freq='5min', tz='UTC'),
      'open': open_, 'high': high, 'low': low, 'close': close, 'volume': volume,
      'quote_volume': volume * close,
      schema.OBSERVED: observed,
      schema.SEGMENT: np.zeros(rows, dtype=np.int32),
      schema.REGIME: rng.integers(0, 3, rows).astype(np.int8),
  })


def btc_klines(rows: int = 20_000) -> pd.DataFrame:
  """The first rows of the shared Binance BTC/USDT 5-minute data, as a kline frame."""
  frame = pd.read_parquet(require_shared_data(BTC_PARQUET)).iloc[:rows]
  frame = frame.rename(columns={'date': schema.TIMESTAMP}).drop(columns=['source'])
  frame[schema.OBSERVED] = True
  frame[schema.SEGMENT] = np.int32(0)
  return frame.reset_index(drop=True)


@pytest.fixture(scope='module', params=['synthetic', 'btc'])
def klines(request) -> pd.DataFrame:
  return synthetic_klines() if request.param == 'synthetic' else btc_klines()


@pytest.fixture(scope='module')
def computed(klines) -> pd.DataFrame:
  return features.compute_features(klines)


def _ohlcv(frame: pd.DataFrame) -> tuple[np.ndarray, ...]:
  return tuple(frame[name].to_numpy(np.float64) for name in schema.OHLCV)


def _assert_close(actual, expected, mask=None, rtol=1e-6, atol=0.0):
  """Compares rows from WARMUP on (and where ``mask`` is True)."""
  actual = np.asarray(actual, dtype=np.float64)[WARMUP:]
  expected = np.asarray(expected, dtype=np.float64)[WARMUP:]
  if mask is not None:
    actual, expected = actual[mask[WARMUP:]], expected[mask[WARMUP:]]
  assert len(actual) > 1000
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def test_trend_matches_talib(klines, computed):
  close = klines['close'].to_numpy(np.float64)
  for period in (10, 20, 50):
    _assert_close(computed[f'SMA_{period}'], talib.SMA(close, period))
  for period in (12, 26):
    _assert_close(computed[f'EMA_{period}'], talib.EMA(close, period))
  macd, signal, histogram = talib.MACD(close, fastperiod=12, slowperiod=26, signalperiod=9)
  # MACD crosses zero: its float32 rounding is relative to the price, not to itself.
  atol = 1e-7 * np.median(close)
  _assert_close(computed['MACD'], macd, atol=atol)
  _assert_close(computed['MACD_signal'], signal, atol=atol)
  _assert_close(computed['MACD_hist'], histogram, atol=atol)


def test_momentum_matches_talib(klines, computed):
  _, high, low, close, _ = _ohlcv(klines)
  _assert_close(computed['RSI_14'], talib.RSI(close, 14))
  fast_k, fast_d = talib.STOCHF(high, low, close, fastk_period=14, fastd_period=3, fastd_matype=0)
  # TA-Lib writes 0 on a zero 14-bar range where we write 50: compare where K and D are unaffected.
  channel = talib.MAX(high, 14) - talib.MIN(low, 14)
  flat = pd.Series(channel == 0).rolling(3, min_periods=1).max().to_numpy() > 0
  _assert_close(computed['Stochastic_K'], fast_k, mask=~flat, atol=1e-9)
  _assert_close(computed['Stochastic_D'], fast_d, mask=~flat, atol=1e-9)
  if flat[WARMUP:].any():
    rows = np.flatnonzero(channel == 0)
    np.testing.assert_array_equal(computed['Stochastic_K'].to_numpy()[rows], 50.0)


def test_volatility_bands_match_talib(klines, computed):
  _, high, low, close, _ = _ohlcv(klines)
  upper, middle, lower = talib.BBANDS(close, timeperiod=20, nbdevup=2, nbdevdn=2, matype=0)
  _assert_close(computed['BB_upper'], upper)
  _assert_close(computed['BB_middle'], middle)
  _assert_close(computed['BB_lower'], lower)
  _assert_close(computed['BB_width'], (upper - lower) / middle, atol=1e-12)
  _assert_close(computed['ATR_14'], talib.ATR(high, low, close, 14))
  _assert_close(computed['ATR_period_high'], talib.MAX(high, 14), rtol=1e-7)
  _assert_close(computed['ATR_period_low'], talib.MIN(low, 14), rtol=1e-7)


def test_obv_changes_match_talib(klines, computed):
  _, _, _, close, volume = _ohlcv(klines)
  obv = computed['OBV'].to_numpy()
  assert obv[0] == 0.0
  # The level is float32: a step is exact to a couple of ulps of the running total.
  tolerance = 2.0 * np.spacing(np.abs(obv[1:])).astype(np.float64)
  step = np.diff(obv.astype(np.float64))
  expected = np.diff(talib.OBV(close, volume))
  assert np.all(np.abs(step - expected) <= tolerance + 1e-6 * np.abs(expected))


def test_volume_features_match_independent_computation(klines, computed):
  _, high, low, close, volume = _ohlcv(klines)
  # TA-Lib leaves a ~1e-15 residue on all-zero windows, where ours is exactly 0.
  _assert_close(computed['volume_ma'], talib.SMA(volume, 20), atol=1e-9)
  volume_ma = np.concatenate(
      [np.full(19, np.nan), np.lib.stride_tricks.sliding_window_view(volume, 20).mean(axis=1)])
  _assert_close(computed['volume_ma'], volume_ma)
  expected_ratio = np.where(volume_ma == 0, 1.0, volume / np.where(volume_ma == 0, 1.0, volume_ma))
  _assert_close(computed['volume_ma_ratio'], expected_ratio)
  windows = np.lib.stride_tricks.sliding_window_view(volume, 48)
  mean, std = windows.mean(axis=1), windows.std(axis=1)
  zscore = np.full(len(volume), np.nan)
  zscore[47:] = np.where(std == 0, 0.0, (volume[47:] - mean) / np.where(std == 0, 1.0, std))
  _assert_close(computed['volume_zscore'], zscore, rtol=1e-5, atol=1e-5)

  # VWAP with a plain loop over the first rows.
  rows = 2000
  day = klines[schema.TIMESTAMP].dt.floor('D').to_numpy()
  vwap = np.empty(rows)
  price_volume = day_volume = 0.0
  for row in range(rows):
    if row == 0 or day[row] != day[row - 1]:
      price_volume = day_volume = 0.0
    price_volume += (high[row] + low[row] + close[row]) / 3.0 * volume[row]
    day_volume += volume[row]
    vwap[row] = price_volume / day_volume if day_volume > 0 else close[row]
  np.testing.assert_allclose(computed['VWAP'].to_numpy()[:rows], vwap, rtol=1e-6)


def test_price_returns_and_shape_match_independent_computation(klines, computed):
  open_, high, low, close, _ = _ohlcv(klines)
  _assert_close(computed['price_ma_ratio'], close / talib.SMA(close, 20))
  returns = {}
  for period in (1, 3, 12, 60):
    returns[period] = np.concatenate(
        [np.full(period, np.nan), close[period:] / close[:-period] - 1.0])
    _assert_close(computed[f'returns_{period}'], returns[period], rtol=1e-5, atol=1e-9)
  for period in (12, 48, 240):
    windows = np.lib.stride_tricks.sliding_window_view(returns[1], period)
    expected = np.concatenate([np.full(period - 1, np.nan), windows.std(axis=1)])
    _assert_close(computed[f'volatility_{period}'], expected, rtol=1e-5, atol=1e-10)
  log_return = np.log(close[1:] / close[:-1])
  np.testing.assert_allclose(
      computed['log_return'].to_numpy()[1:], log_return, rtol=1e-5, atol=1e-9)
  assert np.isnan(computed['log_return'].iloc[0])
  expected_shape = {
      'hl_range': (high - low) / close,
      'candle_body': (close - open_) / open_,
      'upper_shadow': (high - np.maximum(open_, close)) / close,
      'lower_shadow': (np.minimum(open_, close) - low) / close,
  }
  for name, expected in expected_shape.items():
    np.testing.assert_allclose(computed[name].to_numpy(), expected, rtol=1e-5, atol=1e-10)
    if name != 'candle_body':
      assert (computed[name] >= 0).all()


def test_time_features(klines, computed):
  timestamps = klines[schema.TIMESTAMP]
  hour, day_of_week = timestamps.dt.hour.to_numpy(), timestamps.dt.dayofweek.to_numpy()
  np.testing.assert_array_equal(computed['hour'].to_numpy(), hour)
  np.testing.assert_array_equal(computed['day_of_week'].to_numpy(), day_of_week)
  trading = (day_of_week < 5) & (hour >= 13) & (hour < 21)
  np.testing.assert_array_equal(computed['is_trading_hour'].to_numpy(), trading.astype(np.float32))


def test_filled_bars_give_defined_values():
  computed = features.compute_features(synthetic_klines())
  flat = slice(FLAT_START, FLAT_START + FLAT_LENGTH)
  close = computed['close'].to_numpy()
  # The day opens with zero-volume bars: VWAP is the close until volume arrives.
  np.testing.assert_array_equal(computed['VWAP'].to_numpy()[flat], close[flat].astype(np.float32))
  # 20+ zero-volume bars: volume_ma is 0 and its ratio is 1.
  last_flat = FLAT_START + FLAT_LENGTH - 1
  assert computed['volume_ma'].iloc[last_flat] == 0.0
  assert computed['volume_ma_ratio'].iloc[last_flat] == 1.0
  # 14+ flat bars: the stochastic range is 0, K is 50; the Bollinger std is exactly 0.
  assert computed['Stochastic_K'].iloc[last_flat] == 50.0
  assert computed['BB_upper'].iloc[last_flat] == computed['BB_lower'].iloc[last_flat]
  # 48+ equal volumes and returns: the rolling std is exactly 0, not a rounding residue.
  assert computed['volume_zscore'].iloc[last_flat] == 0.0
  assert computed['volatility_48'].iloc[last_flat] == 0.0
  assert computed[schema.VALID].iloc[flat].all()


@pytest.mark.parametrize('cut', [0, 1, 13, 299, 300, 1234, FLAT_START + 5, 2998])
def test_features_are_causal(cut):
  klines = synthetic_klines()
  before = features.compute_features(klines)
  rng = np.random.default_rng(cut)
  future = np.arange(len(klines)) > cut
  changed = klines.copy()
  # Scale each price of each future bar by its own factor, then restore low <= open, close <= high.
  scaled = {
      name: klines.loc[future, name].to_numpy() * np.exp(rng.normal(0.0, 0.05, future.sum()))
      for name in ('open', 'high', 'low', 'close', 'volume')}
  body_high = np.maximum(scaled['open'], scaled['close'])
  body_low = np.minimum(scaled['open'], scaled['close'])
  scaled['high'] = np.maximum(scaled['high'], body_high)
  scaled['low'] = np.minimum(scaled['low'], body_low)
  for name, values in scaled.items():
    changed.loc[future, name] = values
  after = features.compute_features(changed)
  for name in features.DERIVED_FEATURES:
    past_before = before[name].to_numpy()[:cut + 1]
    past_after = after[name].to_numpy()[:cut + 1]
    np.testing.assert_array_equal(past_after, past_before, err_msg=name)  # NaN == NaN here.
    if cut < len(klines) - 2 and name not in features.KNOWN_FUTURE_FEATURES:
      assert not np.array_equal(
          after[name].to_numpy()[cut + 2:], before[name].to_numpy()[cut + 2:], equal_nan=True)
  np.testing.assert_array_equal(
      after[schema.VALID].to_numpy()[:cut + 1], before[schema.VALID].to_numpy()[:cut + 1])


def test_warmup_rows_of_every_segment_are_invalid():
  klines = synthetic_klines()
  segment = np.zeros(len(klines), dtype=np.int32)
  segment[1000:] = 1
  segment[2500:] = 2
  segment[2700:] = 3  # Shorter than the warm-up: never valid.
  klines[schema.SEGMENT] = segment
  valid = features.compute_features(klines)[schema.VALID].to_numpy()
  expected = np.ones(len(klines), dtype=bool)
  for start in (0, 1000, 2500):
    expected[start:start + WARMUP] = False
  expected[2700:] = False
  np.testing.assert_array_equal(valid, expected)


def test_valid_rows_are_finite(computed):
  valid = computed[schema.VALID].to_numpy()
  assert valid.dtype == bool and valid.sum() > 1000
  assert not valid[:WARMUP].any()
  values = computed.loc[valid, list(features.FEATURES)].to_numpy(np.float64)
  assert np.isfinite(values).all()


def test_non_finite_features_are_invalid():
  klines = synthetic_klines()
  for name in ('open', 'low', 'close'):
    klines.loc[1000, name] = 0.0  # A zero price: divisions give inf and NaN.
  computed = features.compute_features(klines)
  valid = computed[schema.VALID].to_numpy()
  assert valid[999] and not valid[1000] and not valid[1001] and valid[2000]
  values = computed.loc[valid, list(features.FEATURES)].to_numpy(np.float64)
  assert np.isfinite(values).all()


@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_non_finite_input_raises_data_error(value):
  klines = synthetic_klines(rows=400)
  klines.loc[123, 'volume'] = value
  with pytest.raises(errors.DataError, match="'volume'.*row 123"):
    features.compute_features(klines)


@pytest.mark.parametrize('column', features.REQUIRED_COLUMNS)
def test_missing_column_raises_schema_error(column):
  klines = synthetic_klines(rows=400).drop(columns=[column])
  with pytest.raises(errors.SchemaError, match=f"'{column}'.* — "):
    features.compute_features(klines)


def test_naive_timestamps_raise_schema_error():
  klines = synthetic_klines(rows=400)
  klines[schema.TIMESTAMP] = klines[schema.TIMESTAMP].dt.tz_localize(None)
  with pytest.raises(errors.SchemaError, match='timestamp'):
    features.compute_features(klines)


def test_unsorted_timestamps_raise_data_error():
  klines = synthetic_klines(rows=400).iloc[::-1].reset_index(drop=True)
  with pytest.raises(errors.DataError, match='not strictly increasing'):
    features.compute_features(klines)


def test_output_columns_and_dtypes(klines, computed):
  assert list(computed.columns) == [
      *klines.columns, *features.DERIVED_FEATURES, schema.VALID]
  assert sorted(name for name in computed.columns if name in features.FEATURES) == sorted(
      features.FEATURES)
  assert len(features.FEATURES) == 44 and len(features.DERIVED_FEATURES) == 39
  for name in features.DERIVED_FEATURES:
    assert computed[name].dtype == np.float32, name
  assert computed[schema.VALID].dtype == bool
  # Input columns pass through unchanged.
  pd.testing.assert_frame_equal(computed[list(klines.columns)], klines)


def test_empty_frame():
  computed = features.compute_features(synthetic_klines(rows=400).iloc[:0])
  assert len(computed) == 0
  assert set(features.FEATURES) <= set(computed.columns)
