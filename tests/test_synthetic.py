"""Tests for the synthetic regime-switching market (quantum_alpha_jax/data/synthetic.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import synthetic

EXPECTED_DTYPES = {
    'timestamp': 'datetime64[ns, UTC]',
    **{name: 'float64' for name in (*schema.OHLCV, *schema.EXTRA_KLINE_COLUMNS)},
    'observed': 'bool',
    'segment': 'int32',
    'regime': 'int8',
}
BULL, BEAR, SIDEWAYS = (schema.REGIMES.index(name) for name in ('bull', 'bear', 'sideways'))


@pytest.fixture(scope='module')
def short_market():
  return synthetic.generate_market(start='2021-03-01', end='2021-04-12', seed=3)


@pytest.fixture(scope='module')
def default_market():
  """The default market (2 symbols x 6 years); generation takes well under a second."""
  return synthetic.generate_market()


def _log_returns(frame: pd.DataFrame) -> np.ndarray:
  """Close-to-close log returns, the first bar's taken from its open."""
  return np.log(frame['close'].to_numpy() / frame['open'].to_numpy())


def _autocorrelation(values: np.ndarray, lag: int) -> float:
  return float(np.corrcoef(values[:-lag], values[lag:])[0, 1])


def _run_lengths(labels: np.ndarray) -> np.ndarray:
  """Lengths of the maximal runs of equal labels, [runs]."""
  boundaries = np.flatnonzero(np.diff(labels) != 0) + 1
  return np.diff(np.concatenate([[0], boundaries, [labels.size]]))


def test_schema_columns_dtypes_and_grid(short_market):
  assert list(short_market) == ['BTCUSDT', 'ETHUSDT']
  expected_rows = 42 * 24 * 12
  for frame in short_market.values():
    assert tuple(frame.columns) == synthetic.COLUMNS
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == EXPECTED_DTYPES
    assert isinstance(frame.index, pd.RangeIndex) and len(frame) == expected_rows
    timestamps = frame['timestamp']
    assert timestamps.iloc[0] == pd.Timestamp('2021-03-01', tz='UTC')
    assert timestamps.iloc[-1] == pd.Timestamp('2021-04-11 23:55', tz='UTC')
    nanoseconds = timestamps.dt.tz_convert(None).to_numpy().astype('datetime64[ns]')
    nanoseconds = nanoseconds.astype(np.int64)
    assert np.all(np.diff(nanoseconds) == schema.BAR_NANOSECONDS)
    assert np.all(nanoseconds % schema.BAR_NANOSECONDS == 0)
    assert not frame.isna().any().any()
    assert frame['observed'].all() and (frame['segment'] == 0).all()
    assert set(np.unique(frame['regime'])) <= set(range(len(schema.REGIMES)))


def test_bars_are_consistent(short_market):
  for frame in short_market.values():
    open_, high, low, close = (frame[name].to_numpy() for name in ('open', 'high', 'low', 'close'))
    np.testing.assert_array_equal(open_[1:], close[:-1])  # Exactly, not approximately.
    assert np.all(low > 0)
    assert np.all(low <= np.minimum(open_, close)) and np.all(np.maximum(open_, close) <= high)
    assert np.all(high > low)
    volume = frame['volume'].to_numpy()
    assert np.all(volume > 0)
    quote = frame['quote_volume'].to_numpy()
    assert np.all(quote >= volume * low * (1 - 1e-12))
    assert np.all(quote <= volume * high * (1 + 1e-12))
    count = frame['count'].to_numpy()
    assert np.all(count >= 1) and np.all(count == np.round(count))
    fraction = frame['taker_buy_volume'].to_numpy() / volume
    assert np.all((fraction > 0) & (fraction < 1))
    np.testing.assert_allclose(
        frame['taker_buy_quote_volume'] / frame['taker_buy_volume'], quote / volume, rtol=1e-12)
    # Taker buying leans towards up bars.
    assert np.corrcoef(fraction, _log_returns(frame))[0, 1] > 0.3


def test_start_prices_are_2019_levels():
  market = synthetic.generate_market(start='2019-01-01', end='2019-01-02')
  assert market['BTCUSDT']['open'].iloc[0] == 3700.0
  assert market['ETHUSDT']['open'].iloc[0] == 130.0


def test_span_is_snapped_to_the_grid_in_utc():
  market = synthetic.generate_market(
      symbols='BTCUSDT', start='2021-06-01 01:02',
      end=pd.Timestamp('2021-06-01 05:00', tz='UTC+02:00'))
  timestamps = market['BTCUSDT']['timestamp']
  assert timestamps.iloc[0] == pd.Timestamp('2021-06-01 01:05', tz='UTC')
  assert timestamps.iloc[-1] == pd.Timestamp('2021-06-01 02:55', tz='UTC')


def test_deterministic_and_seed_dependent():
  span = {'start': '2020-05-01', 'end': '2020-05-22'}
  first = synthetic.generate_market(seed=7, **span)
  second = synthetic.generate_market(seed=7, **span)
  other = synthetic.generate_market(seed=8, **span)
  for symbol in first:
    pd.testing.assert_frame_equal(first[symbol], second[symbol], check_exact=True)
    assert not np.array_equal(first[symbol]['close'], other[symbol]['close'])
  # A symbol's frame does not depend on which other symbols are generated with it.
  alone = synthetic.generate_market(symbols=('ETHUSDT',), seed=7, **span)
  pd.testing.assert_frame_equal(alone['ETHUSDT'], first['ETHUSDT'], check_exact=True)


def test_default_span(default_market):
  for frame in default_market.values():
    assert len(frame) == 6 * 365 * 288 + 2 * 288  # Two leap days (2020, 2024).
    assert frame['timestamp'].iloc[0] == pd.Timestamp('2019-01-01', tz='UTC')
    assert frame['timestamp'].iloc[-1] == pd.Timestamp('2024-12-31 23:55', tz='UTC')
    assert np.all(frame['close'] > 0) and np.all(np.isfinite(frame['close']))


def test_fat_tails_and_volatility_clustering(default_market):
  for frame in default_market.values():
    returns = _log_returns(frame)
    assert stats.kurtosis(returns, fisher=False) > 10  # Gaussian: 3.
    magnitudes = np.abs(returns)
    absolute_autocorrelations = [_autocorrelation(magnitudes, lag) for lag in range(1, 13)]
    raw_autocorrelations = [_autocorrelation(returns, lag) for lag in range(1, 13)]
    assert min(absolute_autocorrelations) > 0.1, absolute_autocorrelations
    assert max(np.abs(raw_autocorrelations)) < 0.02, raw_autocorrelations


def test_regime_drift_and_volatility_ordering(default_market):
  for symbol, frame in default_market.items():
    returns = pd.Series(_log_returns(frame))
    by_regime = returns.groupby(frame['regime'].to_numpy())
    mean, volatility = by_regime.mean(), by_regime.std()
    assert mean[BULL] > mean[SIDEWAYS] > mean[BEAR], (symbol, mean.to_dict())
    assert volatility[BEAR] > volatility[BULL] > volatility[SIDEWAYS], (
        symbol, volatility.to_dict())
    # Per bar the trend is small against the noise (not trivially predictable)...
    assert abs(mean[BULL]) < 0.05 * volatility[BULL]
    # ... but visible over a day: about +1% a day in bull, -1% in bear.
    assert mean[BULL] * 288 > 0.005 and mean[BEAR] * 288 < -0.005


def test_regime_dwell_times_and_shares(default_market):
  parameters = synthetic.MarketParameters()
  stationary = synthetic.stationary_distribution(parameters)
  for frame in default_market.values():
    regime = frame['regime'].to_numpy()
    runs = _run_lengths(regime)
    median_hours = np.median(runs) / 12
    assert 2 < median_hours < 10 * 24, median_hours
    assert np.mean(runs) / 12 < 5 * 24
    shares = np.bincount(regime, minlength=3) / regime.size
    np.testing.assert_allclose(shares, stationary, atol=0.08)
  agreement = np.mean(default_market['BTCUSDT']['regime'] == default_market['ETHUSDT']['regime'])
  assert 0.9 < agreement < 1.0  # Shared regimes with rare symbol-specific deviations.


def test_cross_asset_correlation(default_market):
  correlation = np.corrcoef(
      _log_returns(default_market['BTCUSDT']), _log_returns(default_market['ETHUSDT']))[0, 1]
  assert 0.6 < correlation < 0.9, correlation
  ratio = np.std(_log_returns(default_market['ETHUSDT'])) / np.std(
      _log_returns(default_market['BTCUSDT']))
  assert 1.1 < ratio < 1.4, ratio


def test_volume_tracks_absolute_returns(default_market):
  for frame in default_market.values():
    magnitudes = np.abs(_log_returns(frame))
    assert stats.spearmanr(frame['volume'], magnitudes).statistic > 0.2
    count_per_volume = frame['count'] / frame['volume']
    assert count_per_volume.std() / count_per_volume.mean() < 0.3


def test_intraday_and_weekend_seasonality(default_market):
  for frame in default_market.values():
    magnitudes = pd.Series(np.abs(_log_returns(frame)))
    hour = frame['timestamp'].dt.hour
    weekend = frame['timestamp'].dt.dayofweek >= 5
    peak, night = (hour >= 13) & (hour < 16), hour < 4
    assert magnitudes[peak].mean() > 1.3 * magnitudes[night].mean()
    assert frame['volume'][peak].mean() > 1.3 * frame['volume'][night].mean()
    assert magnitudes[weekend].mean() < magnitudes[~weekend].mean()
    assert frame['volume'][weekend].mean() < frame['volume'][~weekend].mean()


def test_transition_matrix_matches_dwell_times():
  parameters = synthetic.MarketParameters()
  matrix = synthetic.transition_matrix(parameters)
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
  np.testing.assert_allclose(
      np.diag(matrix), 1.0 - 1.0 / (12 * np.asarray(parameters.mean_dwell_hours)))
  stationary = synthetic.stationary_distribution(parameters)
  np.testing.assert_allclose(stationary @ matrix, stationary, atol=1e-12)


def test_linear_recurrence_matches_a_loop():
  rng = np.random.default_rng(0)
  length = 5000  # Several chunks, the last one partial.
  coefficients = 0.9 + 0.2 * rng.random(length)
  offsets = rng.standard_normal(length)
  expected = np.empty(length)
  value = 2.5
  for index in range(length):
    value = coefficients[index] * value + offsets[index]
    expected[index] = value
  np.testing.assert_allclose(
      synthetic.linear_recurrence(coefficients, offsets, initial=2.5), expected, rtol=1e-10,
      atol=1e-10)


def test_unknown_symbol_is_a_data_error():
  with pytest.raises(errors.DataError, match='XRPUSDT') as raised:
    synthetic.generate_market(symbols=('BTCUSDT', 'XRPUSDT'), start='2021-01-01', end='2021-01-02')
  for known in schema.KNOWN_SYMBOLS:
    assert known in str(raised.value)
  assert ' — ' in str(raised.value)


@pytest.mark.parametrize('start, end', [
    ('2021-01-02', '2021-01-01'),
    ('2021-01-01', '2021-01-01'),
    ('2021-01-01 00:01', '2021-01-01 00:04'),  # No bar opens in between.
    ('not a date', '2021-01-01'),
])
def test_bad_span_is_a_config_error(start, end):
  with pytest.raises(errors.ConfigError):
    synthetic.generate_market(start=start, end=end)


def test_bad_parameters_are_config_errors():
  with pytest.raises(errors.ConfigError, match='alpha'):
    synthetic.MarketParameters(garch_alpha=0.1, garch_beta=0.95)
  with pytest.raises(errors.ConfigError, match='degrees_of_freedom'):
    synthetic.MarketParameters(student_t_degrees_of_freedom=2.0)
  with pytest.raises(errors.ConfigError):
    synthetic.generate_market(seed=-1, start='2021-01-01', end='2021-01-02')
