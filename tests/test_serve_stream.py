"""Tests for serve/stream.py and serve/rolling.py: bar-by-bar features equal to the batch path,
bit for bit, and bad bars refused without touching the state."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import klines
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.serve import rolling
from quantum_alpha_jax.serve import stream
from tests.conftest import SHARED_DATA
from tests.conftest import make_klines
from tests.conftest import require_shared_data

FILL_LIMIT = 72
STEP_NS = schema.BAR_NANOSECONDS


def _raw(rows: int = 1500, seed: int = 3, extras: bool = True,
         holes: tuple[tuple[int, int], ...] = ()) -> pd.DataFrame:
  """Seeded raw klines (timestamp + OHLCV [+ extras]), with the given [start, end) rows dropped."""
  frame = make_klines(rows, seed=seed, extras=extras)
  frame = frame.drop(columns=[schema.OBSERVED, schema.SEGMENT])
  if extras:
    rng = np.random.default_rng(seed)
    frame['taker_buy_volume'] = frame.volume * rng.uniform(0.2, 0.8, rows)
  # A flat, silent stretch: windows of equal values (the exact-zero std branch).
  frame.loc[200:260, ['open', 'high', 'low', 'close']] = frame.close[199]
  frame.loc[200:260, 'volume'] = 0.0
  if extras:
    frame.loc[200:260, ['count', 'taker_buy_volume']] = 0.0
  keep = np.ones(rows, dtype=bool)
  for start, end in holes:
    keep[start:end] = False
  return frame.loc[keep].reset_index(drop=True)


def _batch(raw: pd.DataFrame, fill_limit: int = FILL_LIMIT) -> pd.DataFrame:
  """The store's build path: regularize, then compute_features over the whole frame."""
  regular, _ = klines.regularize(raw, fill_limit_bars=fill_limit)
  return features.compute_features(regular)


def _bits(values: np.ndarray) -> np.ndarray:
  """float32 values as their bit patterns, every NaN folded into one pattern."""
  values = np.where(np.isnan(values), np.float32(np.nan), values).astype(np.float32)
  return values.view(np.uint32)


def _assert_rows_equal(bars: list[stream.StreamBar], batch: pd.DataFrame) -> None:
  """Every row bit-identical in float32, with ``valid``, ``observed`` and the times equal."""
  assert len(bars) == len(batch)
  np.testing.assert_array_equal([bar.open_time_ns for bar in bars],
                                schema.timestamps_ns(batch))
  got = np.stack([bar.features for bar in bars])
  want = batch[list(features.FEATURES)].to_numpy(np.float32)
  differing = _bits(got) != _bits(want)
  if differing.any():
    row, column = np.argwhere(differing)[0]
    raise AssertionError(
        f'{int(differing.sum())} cells differ; first {features.FEATURES[column]} at row {row}: '
        f'stream {got[row, column]!r}, batch {want[row, column]!r}')
  np.testing.assert_array_equal([bar.valid for bar in bars], batch[schema.VALID])
  np.testing.assert_array_equal([bar.observed for bar in bars], batch[schema.OBSERVED])
  if all(name in batch for name in features.EXTRA_FEATURES):
    extra = np.stack([bar.extra for bar in bars])
    np.testing.assert_array_equal(
        _bits(extra), _bits(batch[list(features.EXTRA_FEATURES)].to_numpy(np.float32)))
  else:
    assert all(bar.extra is None for bar in bars)


def _push_all(stream_: stream.SymbolStream, raw: pd.DataFrame) -> list[stream.StreamBar]:
  """Pushes the frame one kline (a plain dict, as a live feed gives it) at a time."""
  bars = []
  for row in raw.to_dict('records'):
    bars += stream_.push(row)
  return bars


def _real(name: str, start: str, end: str) -> pd.DataFrame:
  """A slice of the shared real Binance data as raw klines."""
  path = require_shared_data(SHARED_DATA / 'binance-spot-5m' / f'{name}_USDT-5m.parquet')
  frame = pd.read_parquet(path, filters=[('date', '>=', pd.Timestamp(start, tz='UTC')),
                                         ('date', '<', pd.Timestamp(end, tz='UTC'))])
  return frame.rename(columns={'date': schema.TIMESTAMP}).drop(columns=['source']).reset_index(
      drop=True)


# ------------------------------------------------------------------------------------------------
# Equality with the batch path.


@pytest.mark.parametrize('extras', [True, False])
def test_stream_equals_batch_bit_for_bit_across_short_and_long_holes(extras):
  # A hole of 5 bars and one of FILL_LIMIT bars (filled), one of FILL_LIMIT + 1 (a new segment),
  # and a long one.
  raw = _raw(extras=extras, holes=((400, 405), (600, 600 + FILL_LIMIT), (900, 901 + FILL_LIMIT),
                                   (1300, 1340)))
  batch = _batch(raw, fill_limit=FILL_LIMIT)
  assert batch[schema.SEGMENT].nunique() == 2
  assert (~batch[schema.OBSERVED]).sum() == 5 + FILL_LIMIT + 40
  bars = _push_all(stream.SymbolStream('BTCUSDT', fill_limit_bars=FILL_LIMIT), raw)
  _assert_rows_equal(bars, batch)
  assert batch[schema.VALID].any() and not batch[schema.VALID].all()


def test_stream_equals_batch_with_a_small_fill_limit():
  # The 40-bar hole splits the series under a fill limit of 12; the 5-bar hole is filled.
  raw = _raw(holes=((400, 405), (700, 740)))
  batch = _batch(raw, fill_limit=12)
  assert batch[schema.SEGMENT].nunique() == 2
  _assert_rows_equal(_push_all(stream.SymbolStream('BTCUSDT', fill_limit_bars=12), raw), batch)


@pytest.mark.parametrize('name, start, end', [
    ('BTC', '2023-03-20', '2023-03-27'),  # the real 16-bar outage of 2023-03-24, filled
    ('ETH', '2023-03-21', '2023-03-26'),
    ('ETH', '2021-07-15', '2021-08-08'),  # a real 5365-bar hole: a new segment
])
def test_stream_equals_batch_on_real_binance_data(name, start, end):
  raw = _real(name, start, end)
  batch = _batch(raw)
  assert (~batch[schema.OBSERVED]).any() or batch[schema.SEGMENT].nunique() > 1
  bars = stream.SymbolStream(f'{name}USDT').push_frame(raw)
  _assert_rows_equal(bars, batch)


# The batch path's float32 cast warns of the overflow; the stream's does not.
@pytest.mark.filterwarnings('ignore:overflow encountered in cast:RuntimeWarning')
def test_float32_overflow_invalidates_rows_as_the_batch_does():
  # A volume beyond float32's range: where the previous close repeats, OBV stays finite and only the
  # volume column overflows (batch: still valid); on the next bars OBV and the volume averages do.
  raw = _raw(rows=700)
  raw.loc[500, ['open', 'high', 'low', 'close']] = raw.close[499]
  raw.loc[500, 'volume'] = 1e39
  raw.loc[650, 'volume'] = 1e39
  batch = _batch(raw)
  assert batch[schema.VALID][500] and not batch[schema.VALID][650]
  _assert_rows_equal(_push_all(stream.SymbolStream('BTCUSDT'), raw), batch)


def test_catching_up_keeps_only_the_last_row():
  raw = _raw(rows=600, holes=((300, 305),))
  caught_up = stream.SymbolStream('BTCUSDT')
  assert caught_up.push_frame(raw.iloc[:500], keep_rows=False)[0].open_time_ns == (
      schema.timestamps_ns(raw)[499])
  rest = _push_all(caught_up, raw.iloc[500:])
  rows = _push_all(stream.SymbolStream('BTCUSDT'), raw)
  assert len(rest) == len(raw) - 500
  for got, want in zip(rest, rows[-len(rest):]):
    np.testing.assert_array_equal(_bits(got.features), _bits(want.features))


# ------------------------------------------------------------------------------------------------
# The replayed pandas algorithms, in float64: the float32 rows hide most last-bit slips on a short
# series, which would surface only after months of bars.


def _hard_series(rows: int = 6000, seed: int = 5) -> np.ndarray:
  """A long series hard on running sums: a large offset with small moves, jumps of many orders of
  magnitude, runs of equal values, zeros and a leading NaN (as returns_1 has)."""
  rng = np.random.default_rng(seed)
  values = 3e4 + np.cumsum(rng.normal(0.0, 1e-3, rows))
  values[rng.integers(0, rows, 60)] *= 1e6
  values[1000:1300] = values[999]
  values[2000:2100] = 0.0
  values[3000:3500] = rng.normal(0.0, 1e-9, 500)
  values[0] = np.nan
  return values


@pytest.mark.parametrize('window', [3, 20, 48, 240])
def test_rolling_mean_and_variance_replay_pandas_bit_for_bit(window):
  values = _hard_series()
  mean, variance = rolling.RollingMean(window), rolling.RollingVariance(window)
  got_mean = np.array([mean.push(value) for value in values.tolist()])
  got_variance = np.array([variance.push(value) for value in values.tolist()])
  batch = pd.Series(values).rolling(window)
  np.testing.assert_array_equal(got_mean, batch.mean().to_numpy())
  np.testing.assert_array_equal(got_variance, batch.var(ddof=0).to_numpy())


@pytest.mark.parametrize('alpha', [2.0 / 13, 2.0 / 27, 2.0 / 10, 1.0 / 14])
def test_recursive_average_replays_pandas_ewm_bit_for_bit(alpha):
  values = _hard_series()[1:]
  values[:30] = values[0]  # the average equals the value: pandas leaves it alone
  average = rolling.Ewm(alpha)
  np.testing.assert_array_equal(
      [average.push(value) for value in values.tolist()],
      pd.Series(values).ewm(alpha=alpha, adjust=False).mean().to_numpy())


def test_session_sums_replay_pandas_grouped_cumsum_bit_for_bit():
  raw = _raw(rows=3000, extras=False)
  raw['volume'] *= np.exp(np.random.default_rng(2).normal(0.0, 3.0, len(raw)))
  s = stream.SymbolStream('BTCUSDT')
  sums = []
  for row in raw.to_dict('records'):
    s.push(row)
    sums.append((s._day_price_volume, s._day_volume))
  typical = (raw.high + raw.low + raw.close) / 3.0
  day = schema.timestamps_ns(raw) // (86_400 * 10**9)
  expected = pd.DataFrame({'price_volume': typical * raw.volume, 'volume': raw.volume}).groupby(
      day, sort=False).cumsum()
  np.testing.assert_array_equal(np.array(sums), expected.to_numpy())


def test_log_return_uses_numpy_log_bit_for_bit():
  # numpy's vectorised log and libm's differ in the last bit on a few percent of values.
  ratios = np.exp(np.random.default_rng(0).normal(0.0, 3e-3, 100_000))
  np.testing.assert_array_equal([rolling.numpy_log(ratio) for ratio in ratios.tolist()],
                                np.log(ratios))


def test_pushing_the_regularised_frame_gives_the_same_rows():
  # A frame already on the grid (the store's rows, filler bars included) replays the same.
  raw = _raw(holes=((400, 405),))
  regular, _ = klines.regularize(raw, fill_limit_bars=FILL_LIMIT)
  bars = stream.SymbolStream('BTCUSDT').push_frame(regular)
  _assert_rows_equal(bars, features.compute_features(regular))


@pytest.mark.parametrize('interval', ['1m', '1h'])
def test_other_intervals_fill_and_split_on_their_own_grid(interval):
  raw = _raw(rows=900, holes=((400, 405), (600, 700)))
  step = klines.INTERVALS[interval]
  raw[schema.TIMESTAMP] = pd.Timestamp('2023-01-01', tz='UTC') + step * (
      (raw[schema.TIMESTAMP] - raw[schema.TIMESTAMP][0]) // schema.BAR)
  regular, _ = klines.regularize(raw, fill_limit_bars=FILL_LIMIT, interval=interval)
  assert regular[schema.SEGMENT].nunique() == 2 and (~regular[schema.OBSERVED]).sum() == 5
  bars = _push_all(stream.SymbolStream('BTCUSDT', interval=interval), raw)
  _assert_rows_equal(bars, features.compute_features(regular))


def test_time_keys_give_the_same_rows():
  raw = _raw(rows=400, extras=False)
  times = schema.timestamps_ns(raw)
  by_timestamp = _push_all(stream.SymbolStream('BTCUSDT'), raw)
  by_ns = _push_all(stream.SymbolStream('BTCUSDT'),
                    raw.drop(columns=[schema.TIMESTAMP]).assign(open_time_ns=times))
  by_ms = _push_all(stream.SymbolStream('BTCUSDT'),
                    raw.drop(columns=[schema.TIMESTAMP]).assign(open_time=times // 1_000_000))
  for other in (by_ns, by_ms):
    assert [b.open_time_ns for b in other] == [b.open_time_ns for b in by_timestamp]
    np.testing.assert_array_equal(_bits(np.stack([b.features for b in other])),
                                  _bits(np.stack([b.features for b in by_timestamp])))


# ------------------------------------------------------------------------------------------------
# Holes and warm-up.


def test_filled_hole_emits_filler_bars_first():
  raw = _raw(rows=400, holes=((350, 353),))
  s = stream.SymbolStream('BTCUSDT')
  _push_all(s, raw.iloc[:350])
  bars = s.push(raw.iloc[350].to_dict())
  assert [bar.observed for bar in bars] == [False, False, False, True]
  assert all(bar.close == bar.open == bar.high == bar.low == raw.close[349] and bar.volume == 0
             for bar in bars[:3])
  assert bars[-1].gap.missing_bars == 3 and bars[-1].gap.filled and not bars[-1].new_segment
  assert all(bar.gap is None for bar in bars[:3])
  assert s.warmup_remaining == 0


def test_long_gap_starts_a_new_segment_and_says_how_long_the_warmup_takes():
  raw = _raw(rows=1200, holes=((500, 500 + FILL_LIMIT + 1),))
  s = stream.SymbolStream('BTCUSDT')
  assert s.warmup_remaining == features.WARMUP_BARS
  bars = _push_all(s, raw.iloc[:500])
  assert s.warmup_remaining == 0 and bars[-1].valid
  first = s.push(raw.iloc[500].to_dict())
  assert len(first) == 1 and first[0].new_segment and not first[0].valid
  assert first[0].gap.missing_bars == FILL_LIMIT + 1 and not first[0].gap.filled
  assert s.warmup_remaining == features.WARMUP_BARS - 1
  rest = _push_all(s, raw.iloc[501:])
  segment = first + rest
  assert [bar.valid for bar in segment] == [i >= features.WARMUP_BARS for i in range(len(segment))]
  assert not any(bar.new_segment for bar in rest) and s.warmup_remaining == 0


# ------------------------------------------------------------------------------------------------
# Bad input.


def _bad_bars(raw: pd.DataFrame, at: int) -> dict[str, tuple[dict, str]]:
  """Bad klines to push after row ``at - 1``, with the reason each must be refused for."""
  good = raw.iloc[at].to_dict()
  previous = raw.iloc[at - 1].to_dict()
  earlier = raw.iloc[at - 2].to_dict()
  half_step = pd.Timedelta(minutes=2)
  without_close = {k: v for k, v in good.items() if k != 'close'}
  return {
      'duplicate': (previous, 'duplicate'),
      'out of order': (earlier, 'out_of_order'),
      'NaN close': ({**good, 'close': float('nan')}, 'non_finite'),
      'inf volume': ({**good, 'volume': float('inf')}, 'non_finite'),
      'NaN trade count': ({**good, 'count': float('nan')}, 'non_finite'),
      'missing close': (without_close, 'missing_column'),
      'missing count': ({k: v for k, v in good.items() if k != 'count'}, 'missing_column'),
      'missing time': ({k: v for k, v in good.items() if k != schema.TIMESTAMP}, 'missing_column'),
      'off the grid': ({**good, schema.TIMESTAMP: good[schema.TIMESTAMP] + half_step}, 'off_grid'),
      'naive time': ({**good, schema.TIMESTAMP: good[schema.TIMESTAMP].tz_localize(None)},
                     'bad_time'),
      'text price': ({**good, 'high': 'n/a'}, 'not_a_number'),
      'high below low': ({**good, 'high': good['low'] * 0.99}, 'inconsistent'),
      'negative volume': ({**good, 'volume': -1.0}, 'inconsistent'),
      # A bad bar after a long hole: neither the gap nor a new segment may be recorded.
      'NaN after a long hole': ({**good, 'open': float('nan'), schema.TIMESTAMP:
                                 good[schema.TIMESTAMP] + 200 * schema.BAR}, 'non_finite'),
  }


BAD_CASES = ('duplicate', 'out of order', 'NaN close', 'inf volume', 'NaN trade count',
             'missing close', 'missing count', 'missing time', 'off the grid', 'naive time',
             'text price', 'high below low', 'negative volume', 'NaN after a long hole')


@pytest.mark.parametrize('case', BAD_CASES)
def test_bad_bar_is_refused_in_one_line_and_leaves_the_state_untouched(case):
  raw = _raw(rows=700, holes=((650, 655),))
  at = 640
  bad, reason = _bad_bars(raw, at)[case]
  reference = _push_all(stream.SymbolStream('ETHUSDT'), raw)

  s = stream.SymbolStream('ETHUSDT')
  bars = _push_all(s, raw.iloc[:at])
  remaining = s.warmup_remaining
  with pytest.raises(stream.BarRejected) as raised:
    s.push(bad)
  message = str(raised.value)
  assert raised.value.reason == reason
  assert '\n' not in message and message.startswith('ETHUSDT') and ' — ' in message
  assert set(_bad_bars(raw, at)) == set(BAD_CASES)
  if reason not in ('missing_column', 'bad_time'):
    assert pd.Timestamp(bad[schema.TIMESTAMP]).strftime('%Y-%m-%d %H:%M') in message
  assert s.warmup_remaining == remaining and s.last_gap is None
  bars += _push_all(s, raw.iloc[at:])  # the hole at 650 is filled as if nothing had happened
  assert len(bars) == len(reference)
  for got, want in zip(bars, reference):
    assert (got.open_time_ns, got.observed, got.valid) == (want.open_time_ns, want.observed,
                                                           want.valid)
    np.testing.assert_array_equal(_bits(got.features), _bits(want.features))
    np.testing.assert_array_equal(_bits(got.extra), _bits(want.extra))


def test_a_rejected_first_bar_leaves_a_fresh_stream():
  raw = _raw(rows=400)
  s = stream.SymbolStream('BTCUSDT')
  with pytest.raises(stream.BarRejected):
    s.push({k: v for k, v in raw.iloc[0].to_dict().items() if k != 'taker_buy_volume'} | {
        'close': float('nan')})
  assert s.extras is None and s.last_open_time_ns is None
  _assert_rows_equal(_push_all(s, raw), _batch(raw))


def test_bad_configuration_is_refused():
  with pytest.raises(klines.ConfigError):
    stream.SymbolStream('BTCUSDT', fill_limit_bars=-1)
  with pytest.raises(klines.ConfigError):
    stream.SymbolStream('BTCUSDT', interval='7m')
  with pytest.raises(klines.DataError):
    stream.SymbolStream('btc')


def test_an_update_interrupted_midway_refuses_further_bars(monkeypatch):
  # Nothing the checks let through can fail; if something ever did (a bug, a KeyboardInterrupt),
  # the half-updated state must not go on producing rows.
  raw = _raw(rows=400)
  s = stream.SymbolStream('BTCUSDT')
  _push_all(s, raw.iloc[:350])

  class Interrupted:
    def push(self, value):
      raise KeyboardInterrupt

  monkeypatch.setattr(s, '_atr', Interrupted())  # the ATR comes midway through the update
  with pytest.raises(KeyboardInterrupt):
    s.push(raw.iloc[350].to_dict())
  monkeypatch.undo()
  with pytest.raises(klines.DataError, match='half-updated') as raised:
    s.push(raw.iloc[351].to_dict())
  assert not isinstance(raised.value, stream.BarRejected)


def test_rejection_survives_pickling_with_its_reason():
  error = pickle.loads(pickle.dumps(stream.BarRejected('BTCUSDT bar 2023-01-01 00:00: x — y',
                                                       'duplicate')))
  assert error.reason == 'duplicate' and str(error) == 'BTCUSDT bar 2023-01-01 00:00: x — y'
