"""Streaming features: one closed kline in, the 44 features of its bar out, no history recomputed.

A :class:`SymbolStream` holds, for one symbol, the rolling state behind every feature of
``data.features.FEATURES``: ring buffers of the last values each window needs (at most 241 for
``volatility_240``), the running EMAs and Wilder averages, OBV, the UTC day's VWAP sums. ``push``
takes a kline, applies the hole handling of ``data.klines.regularize`` (a hole of at most
``fill_limit_bars`` bars becomes zero-volume bars at the previous close, ``observed=False``; a
longer one starts a new segment whose first ``features.WARMUP_BARS`` rows are invalid) and returns
the :class:`StreamBar`s: the filler bars first, then the bar itself.

Equal to the batch path, bit for bit. Pushing every bar of a kline frame gives exactly the rows of
``compute_features(regularize(frame)[0])``: the same float32 features, ``valid`` and ``observed``.
The batch path computes its rolling means and stds with pandas' online algorithms
(Kahan-compensated sums, Welford's variance with a recompute when cancellation is detected) and its
recursive averages with pandas' ``ewm``; ``serve/rolling.py`` replays those very algorithms one
value at a time, in the same float64 operation order, so the two paths cannot drift apart by a
rounding.

The running sums carry their rounding residue from the first bar on, and OBV its running offset,
so bit-identity holds when the stream starts at the batch frame's first bar (``push_frame(history,
keep_rows=False)`` catches up). A stream started later agrees to float32 rounding only (a few
ulps; OBV by a constant offset, which the windows remove: docs/results/serve.md has the figures).
tests/test_serve_stream.py holds the two paths equal: change ``data/features.py`` and this module
together.

Bad input is refused before anything changes (:class:`BarRejected`, one line naming the symbol, the
bar and the fix): a bar out of order, a duplicate, a NaN or infinite value, a missing column, a time
off the interval grid, OHLC that ``klines.validate`` would refuse. The stream then goes on as if the
bar had never been pushed.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import datetime
import math
from typing import Any, Mapping

from absl import logging
import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import features as features_lib
from quantum_alpha_jax.data import klines as klines_lib
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.serve import rolling

FEATURES = features_lib.FEATURES
WARMUP_BARS = features_lib.WARMUP_BARS
# Time keys a kline may carry, first match wins: int nanoseconds; a tz-aware timestamp (a kline
# frame's ``timestamp``); epoch seconds, milliseconds or microseconds (a Binance dump's open_time).
TIME_KEYS = ('open_time_ns', schema.TIMESTAMP, 'open_time')

# Where the derived features sit in a row: compute_features checks those for finiteness (the OHLCV
# columns it checks in float64, and they are refused unless finite).
_DERIVED_POSITIONS = tuple(FEATURES.index(name) for name in features_lib.DERIVED_FEATURES)


class BarRejected(errors.DataError):
  """A kline the stream refuses; the stream's state is exactly as before the push.

  ``reason`` names the kind, for a caller that treats some as routine (a duplicate while following
  a growing file): 'out_of_order', 'duplicate', 'off_grid', 'bad_time', 'missing_column',
  'not_a_number', 'non_finite', 'inconsistent'.
  """

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason

  def __reduce__(self):  # pickles with its reason (across processes)
    return type(self), (str(self), self.reason)


@dataclasses.dataclass(frozen=True)
class StreamBar:
  """One bar on the regular grid and its features, as the batch path's row for it.

  ``gap`` is set on the first bar after a hole (on the filler bars' successor for a filled hole, on
  the first bar of the new segment for a longer one); ``new_segment`` on the first bar of a segment
  after a hole longer than the fill limit. ``extra`` holds ``features.EXTRA_FEATURES`` when the
  klines carry the trade count and taker-buy volume, else None.
  """

  open_time_ns: int
  open: float
  high: float
  low: float
  close: float
  volume: float
  observed: bool  # False for a hole-filling bar
  features: np.ndarray  # [44] float32, FEATURES order (identical to compute_features' row)
  valid: bool  # compute_features' `valid` flag for this row
  new_segment: bool = False
  gap: klines_lib.Gap | None = None
  extra: np.ndarray | None = None

  @property
  def timestamp(self) -> pd.Timestamp:
    """The bar's open time (UTC)."""
    return pd.Timestamp(self.open_time_ns, tz='UTC')


class SymbolStream:
  """The rolling feature state of one symbol: ``push`` one closed kline, get its feature row(s).

  Equal, bar for bar, to ``compute_features(regularize(frame)[0])`` over the pushed bars (see the
  module docstring). ``warmup_remaining`` says how many more bars will be invalid by warm-up.
  """

  def __init__(self, symbol: str, *, fill_limit_bars: int = 72, interval: str = '5m'):
    klines_lib.check_symbol(symbol, where='SymbolStream')
    klines_lib.check_fill_limit(fill_limit_bars)
    if interval not in klines_lib.INTERVALS:
      raise errors.ConfigError(errors.describe(
          'SymbolStream', f'interval {interval!r} is not supported',
          f'use one of {", ".join(klines_lib.INTERVALS)}'))
    self.symbol = symbol
    self.fill_limit_bars = int(fill_limit_bars)
    self.interval = interval
    self.step_ns = int(klines_lib.INTERVALS[interval].value)
    self.extras: bool | None = None  # fixed by the first bar: does it carry count and taker-buy?
    self.last_open_time_ns: int | None = None
    self.bars = 0  # rows emitted, filler bars included
    self.segment = 0
    self.bars_in_segment = 0
    self.last_gap: klines_lib.Gap | None = None
    self._broken: str | None = None  # what interrupted an update, if one ever did
    self._previous_close = math.nan
    self._closes = collections.deque(maxlen=61)  # returns_60 reads c[t-60]
    self._highs = collections.deque(maxlen=14)
    self._lows = collections.deque(maxlen=14)
    self._sma = {period: rolling.RollingMean(period) for period in (10, 20, 50)}
    self._ema_12 = rolling.Ewm(2.0 / (12 + 1))
    self._ema_26 = rolling.Ewm(2.0 / (26 + 1))
    self._macd_signal = rolling.Ewm(2.0 / (9 + 1))
    self._average_gain = rolling.Ewm(1.0 / 14)
    self._average_loss = rolling.Ewm(1.0 / 14)
    self._atr = rolling.Ewm(1.0 / 14)
    self._stochastic_d = rolling.RollingMean(3)
    self._close_variance = rolling.RollingVariance(20)
    self._close_run = rolling.EqualRun()
    self._obv = 0.0
    self._volume_ma = rolling.RollingMean(20)
    self._volume_mean_48 = rolling.RollingMean(48)
    self._volume_variance_48 = rolling.RollingVariance(48)
    self._volume_run = rolling.EqualRun()
    self._day = None
    self._day_price_volume = self._day_price_volume_compensation = 0.0
    self._day_volume = self._day_volume_compensation = 0.0
    self._return_variance = {period: rolling.RollingVariance(period) for period in (12, 48, 240)}
    self._return_run = rolling.EqualRun()
    self._trades_mean = rolling.RollingMean(48)
    self._trades_variance = rolling.RollingVariance(48)
    self._trades_run = rolling.EqualRun()

  @property
  def warmup_remaining(self) -> int:
    """Bars still to come in this segment before its rows turn valid (0 once warm)."""
    return max(0, WARMUP_BARS - self.bars_in_segment)

  def push(self, kline: Mapping[str, Any]) -> list[StreamBar]:
    """Adds one closed kline; returns the filler bars of the hole before it (if any), then its row.

    Raises BarRejected, leaving the stream untouched, for a kline the batch loader would refuse.
    """
    time_ns = self._open_time_ns(kline)
    values = self._kline_values(kline, time_ns)
    observed = kline.get(schema.OBSERVED, True)
    observed = bool(True if observed is None else observed)
    return self._push_checked(time_ns, values, observed)

  def push_frame(self, frame: pd.DataFrame, *, keep_rows: bool = True) -> list[StreamBar]:
    """Pushes every row of a kline frame (``timestamp`` + OHLCV [+ ``observed``, extras]) in
    order, as ``klines.read_klines`` or ``klines.regularize`` returns it; returns the rows, or only
    the last one with ``keep_rows=False`` (catching up on years of history without keeping them).

    Stops at the first bad row with BarRejected; the rows before it stay pushed.
    """
    if schema.TIMESTAMP not in frame.columns:
      raise BarRejected(errors.describe(
          f'{self.symbol} push_frame', f'no {schema.TIMESTAMP!r} column (has '
          f'{", ".join(map(str, frame.columns))})',
          'pass a kline frame as data.klines returns it'), 'missing_column')
    times = schema.timestamps_ns(frame, f'{self.symbol} push_frame')
    columns = [name for name in (*schema.OHLCV, *features_lib.EXTRA_SOURCE_COLUMNS)
               if name in frame.columns]
    arrays = {name: frame[name].to_numpy(np.float64, na_value=np.nan) for name in columns}
    observed = (frame[schema.OBSERVED].to_numpy(bool) if schema.OBSERVED in frame.columns
                else np.ones(len(frame), dtype=bool))
    rows = [dict(zip(columns, values))
            for values in zip(*(arrays[name].tolist() for name in columns))]
    out = []
    for time_ns, row, seen in zip(times.tolist(), rows, observed.tolist()):
      values = self._kline_values(row, time_ns)
      if keep_rows:
        out += self._push_checked(time_ns, values, seen)
      else:
        out = self._push_checked(time_ns, values, seen)[-1:]
    return out

  # ----------------------------------------------------------------------------------------------
  # Checks: everything that can refuse a bar runs before the state changes.

  def _where(self, time_ns: int) -> str:
    return f'{self.symbol} bar {_time_text(time_ns)}'

  def _open_time_ns(self, kline: Mapping[str, Any]) -> int:
    """The kline's open time as int nanoseconds (see TIME_KEYS)."""
    key = next((k for k in TIME_KEYS if k in kline), None)
    if key is None:
      raise BarRejected(errors.describe(
          f'{self.symbol} bar', f'no open time (keys: {", ".join(map(str, kline))})',
          f'give the bar one of {", ".join(TIME_KEYS)}'), 'missing_column')
    value = kline[key]
    try:
      if key == 'open_time_ns':
        return _whole_number(value)
      if isinstance(value, (pd.Timestamp, datetime.datetime, np.datetime64)):
        timestamp = pd.Timestamp(value)
        if timestamp.tzinfo is None:
          raise BarRejected(errors.describe(
              f'{self.symbol} bar {timestamp}', 'the open time has no time zone',
              'give UTC times (pd.Timestamp(..., tz="UTC")): naive times are ambiguous'),
              'bad_time')
        return int(timestamp.as_unit('ns').value)
      if key == schema.TIMESTAMP:
        raise TypeError(f'{type(value).__name__}')
      number = _whole_number(value)
      if number >= 10**14:  # microseconds (as klines: 1e14 ms would be the year 5138)
        return number * 1_000
      if number < 10**11:  # seconds (1e11 ms is 1973)
        return number * 1_000_000_000
      return number * 1_000_000
    except (TypeError, ValueError, OverflowError) as error:
      raise BarRejected(errors.describe(
          f'{self.symbol} bar', f'open time {key}={value!r} is not a time ({error})',
          'give open_time_ns as int nanoseconds, timestamp as a UTC pd.Timestamp, or open_time '
          'as epoch milliseconds'), 'bad_time') from None

  def _kline_values(self, kline: Mapping[str, Any], time_ns: int) -> tuple[float, ...]:
    """OHLCV (+ count, taker-buy volume when the stream carries extras) as checked floats."""
    if self.extras is None:
      extras = all(name in kline for name in features_lib.EXTRA_SOURCE_COLUMNS)
    else:
      extras = self.extras
    names = schema.OHLCV + (features_lib.EXTRA_SOURCE_COLUMNS if extras else ())
    missing = [name for name in names if name not in kline]
    if missing:
      raise BarRejected(errors.describe(
          self._where(time_ns),
          f'missing column(s) {", ".join(missing)} (has {", ".join(map(str, kline))})',
          f'give every bar {", ".join(names)}'
          + (' (this stream started with the trade count and taker-buy volume)' if extras else '')),
          'missing_column')
    values = []
    for name in names:
      try:
        value = float(kline[name])
      except (TypeError, ValueError):
        raise BarRejected(errors.describe(
            self._where(time_ns), f'{name}={kline[name]!r} is not a number',
            'repair the bar at its source (prices and volumes are numbers)'),
            'not_a_number') from None
      if value - value != 0.0:
        raise BarRejected(errors.describe(
            self._where(time_ns), f'{name} is {value} (NaN or infinite)',
            'repair or re-download the bar; NaNs are never filled silently'), 'non_finite')
      values.append(value)
    open_, high, low, close, volume = values[:5]
    for bad, problem in (
        (low > high, 'high < low'),
        (low > min(open_, close), 'low above open or close'),
        (high < max(open_, close), 'high below open or close'),
        (open_ <= 0.0, 'non-positive open'),
        (close <= 0.0, 'non-positive close'),
        (volume < 0.0, 'negative volume'),
    ):
      if bad:
        raise BarRejected(errors.describe(
            self._where(time_ns), f'{problem} (open {open_}, high {high}, low {low}, close '
            f'{close}, volume {volume})', 'the bar is corrupt: re-download it or drop it'),
            'inconsistent')
    return tuple(values)

  def _push_checked(self, time_ns: int, values: tuple[float, ...], observed: bool
                    ) -> list[StreamBar]:
    """Refuses a bad time, else fills the hole before the bar and emits its row."""
    if time_ns % self.step_ns:
      raise BarRejected(errors.describe(
          self._where(time_ns), f'open time is off the {self.interval} grid',
          f'push closed {self.interval} klines by their open time'), 'off_grid')
    last = self.last_open_time_ns
    missing = 0
    if last is not None:
      if time_ns == last:
        raise BarRejected(errors.describe(
            self._where(time_ns), 'duplicate: this bar was already pushed',
            'push each closed bar once (skip bars already seen when re-reading a growing file)'),
            'duplicate')
      if time_ns < last:
        raise BarRejected(errors.describe(
            self._where(time_ns), f'out of order: the stream is already at {_time_text(last)}',
            'push bars in time order; a late bar cannot be inserted into the past'),
            'out_of_order')
      missing = (time_ns - last) // self.step_ns - 1
    if self._broken is not None:
      raise errors.DataError(errors.describe(
          self._where(time_ns), f'the stream\'s state was left half-updated by an internal error '
          f'({self._broken})', 'start a new SymbolStream and catch it up on the history '
          '(push_frame(history, keep_rows=False)), and report the error'))
    # From here on nothing refuses: the state changes.
    try:
      return self._fill_and_advance(time_ns, values, observed, last, missing)
    except BaseException as error:  # never expected: the checks above leave nothing to fail
      self._broken = f'{type(error).__name__}: {error}'
      raise

  def _fill_and_advance(self, time_ns: int, values: tuple[float, ...], observed: bool,
                        last: int | None, missing: int) -> list[StreamBar]:
    """The filler bars of the hole before the bar (or a new segment), then the bar's row."""
    if self.extras is None:
      self.extras = len(values) > 5
    out = []
    gap = None
    new_segment = False
    if missing > 0:
      step = self.step_ns
      gap = klines_lib.Gap(start=pd.Timestamp(last + step, tz='UTC'),
                           end=pd.Timestamp(time_ns - step, tz='UTC'), missing_bars=int(missing),
                           filled=missing <= self.fill_limit_bars)
      self.last_gap = gap
      if gap.filled:
        close = self._previous_close
        filler = (close, close, close, close, 0.0) + ((0.0, 0.0) if self.extras else ())
        for index in range(1, missing + 1):
          out.append(self._advance(last + index * step, filler, False, False, None))
      else:
        new_segment = True
        self.segment += 1
        self.bars_in_segment = 0
        logging.warning(
            '%s: a hole of %d bars (%s .. %s) is longer than the fill limit (%d): a new segment '
            'starts at %s; its first %d bars (%.1f h) are warm-up, invalid', self.symbol, missing,
            gap.start, gap.end, self.fill_limit_bars, pd.Timestamp(time_ns, tz='UTC'),
            WARMUP_BARS, WARMUP_BARS * self.step_ns / features_lib.NANOSECONDS_PER_HOUR)
    out.append(self._advance(time_ns, values, observed, new_segment, gap))
    return out

  # ----------------------------------------------------------------------------------------------
  # The update: the formulas of data/features.py, in its float64 operation order.

  def _advance(self, time_ns: int, values: tuple[float, ...], observed: bool, new_segment: bool,
               gap: klines_lib.Gap | None) -> StreamBar:
    open_, high, low, close, volume = values[:5]
    first = self.bars == 0
    previous_close = self._previous_close  # NaN on the first bar
    closes = self._closes
    closes.append(close)
    self._highs.append(high)
    self._lows.append(low)

    # Trend.
    sma_10 = self._sma[10].push(close)
    middle = self._sma[20].push(close)
    sma_50 = self._sma[50].push(close)
    ema_12 = self._ema_12.push(close)
    ema_26 = self._ema_26.push(close)
    macd = ema_12 - ema_26
    macd_signal = self._macd_signal.push(macd)

    # Momentum.
    change = 0.0 if first else close - previous_close
    average_gain = self._average_gain.push(change if change > 0.0 else 0.0)
    average_loss = self._average_loss.push(-change if -change > 0.0 else 0.0)
    gain_plus_loss = average_gain + average_loss
    rsi = 50.0 if gain_plus_loss == 0 else 100.0 * average_gain / gain_plus_loss
    if len(self._highs) == 14:
      highest_high = max(self._highs)
      lowest_low = min(self._lows)
      channel = highest_high - lowest_low
      stochastic_k = 50.0 if channel == 0 else 100.0 * (close - lowest_low) / channel
    else:
      highest_high = lowest_low = stochastic_k = math.nan
    stochastic_d = self._stochastic_d.push(stochastic_k)

    # Volatility bands.
    close_run = self._close_run.push(close)
    band = 2.0 * rolling.standard_deviation(self._close_variance.push(close), close_run, 20)
    reference = close if first else previous_close
    true_range = max(high - low, abs(high - reference), abs(low - reference))
    atr = self._atr.push(true_range)

    # Volume.
    sign = 1.0 if change > 0.0 else (-1.0 if change < 0.0 else 0.0)
    obv = sign * volume if first else self._obv + sign * volume
    self._obv = obv
    volume_ma = self._volume_ma.push(volume)
    day = time_ns // features_lib.NANOSECONDS_PER_DAY
    if day != self._day:
      self._day = day
      self._day_price_volume = self._day_price_volume_compensation = 0.0
      self._day_volume = self._day_volume_compensation = 0.0
    # groupby(day).cumsum(): Kahan-compensated running sums that restart every UTC day.
    y = (high + low + close) / 3.0 * volume - self._day_price_volume_compensation
    t = self._day_price_volume + y
    self._day_price_volume_compensation = t - self._day_price_volume - y
    self._day_price_volume = t
    y = volume - self._day_volume_compensation
    t = self._day_volume + y
    self._day_volume_compensation = t - self._day_volume - y
    self._day_volume = t
    vwap = close if t == 0 else self._day_price_volume / t

    # Returns and realised volatility.
    count = len(closes)
    returns_1 = close / closes[-2] - 1.0 if count > 1 else math.nan
    returns_3 = close / closes[-4] - 1.0 if count > 3 else math.nan
    returns_12 = close / closes[-13] - 1.0 if count > 12 else math.nan
    returns_60 = close / closes[-61] - 1.0 if count > 60 else math.nan
    return_run = self._return_run.push(returns_1)
    variance = self._return_variance
    volatility_12 = rolling.standard_deviation(variance[12].push(returns_1), return_run, 12)
    volatility_48 = rolling.standard_deviation(variance[48].push(returns_1), return_run, 48)
    volatility_240 = rolling.standard_deviation(variance[240].push(returns_1), return_run, 240)

    # Time.
    hour = (time_ns // features_lib.NANOSECONDS_PER_HOUR) % 24
    day_of_week = (day + features_lib.EPOCH_DAY_OF_WEEK) % 7
    session_start, session_end = features_lib.TRADING_HOURS
    trading = 1.0 if day_of_week < 5 and session_start <= hour < session_end else 0.0

    # Candle shape.
    log_return = math.nan if first else rolling.numpy_log(close / previous_close)
    volume_run = self._volume_run.push(volume)
    volume_mean = self._volume_mean_48.push(volume)
    volume_std = rolling.standard_deviation(self._volume_variance_48.push(volume), volume_run, 48)
    volume_zscore = 0.0 if volume_std == 0 else (volume - volume_mean) / volume_std

    row = (
        sma_10, middle, sma_50, ema_12, ema_26, macd, macd_signal, macd - macd_signal,
        rsi, stochastic_k, stochastic_d,
        middle + band, middle, middle - band, rolling.divide(2.0 * band, middle), atr, highest_high,
        lowest_low,
        obv, volume_ma, 1.0 if volume_ma == 0 else volume / volume_ma, vwap,
        close, open_, high, low, volume, rolling.divide(close, middle),
        returns_1, returns_3, returns_12, returns_60, volatility_12, volatility_48, volatility_240,
        float(hour), float(day_of_week), trading,
        log_return, (high - low) / close, (close - open_) / open_,
        (high - max(open_, close)) / close, (min(open_, close) - low) / close, volume_zscore,
    )
    # The C cast rounds like numpy's astype (and, unlike np.array, warns of no overflow).
    row = array.array('f', row)
    total = sum(row)  # in float64: 44 finite float32 values cannot overflow it
    finite = total - total == 0.0 or all(math.isfinite(row[i]) for i in _DERIVED_POSITIONS)
    features = np.frombuffer(row, dtype=np.float32)
    extra = None
    if self.extras:
      extra = self._extra_features(volume, values[5], values[6])
      finite = finite and math.isfinite(extra[0]) and math.isfinite(extra[1])

    position = self.bars_in_segment
    self.bars_in_segment = position + 1
    self.bars += 1
    self.last_open_time_ns = time_ns
    self._previous_close = close
    return StreamBar(open_time_ns=time_ns, open=open_, high=high, low=low, close=close,
                     volume=volume, observed=observed, features=features,
                     valid=finite and position >= WARMUP_BARS, new_segment=new_segment, gap=gap,
                     extra=extra)

  def _extra_features(self, volume: float, count: float, taker_buy_volume: float) -> np.ndarray:
    """``features.EXTRA_FEATURES`` of the newest bar (see features._extra_features)."""
    ratio = taker_buy_volume / volume if volume > 0 else 0.5
    trades = float(np.log1p(count if count > 0.0 else 0.0))
    run = self._trades_run.push(trades)
    mean = self._trades_mean.push(trades)
    std = rolling.standard_deviation(self._trades_variance.push(trades), run, 48)
    zscore = 0.0 if std == 0 else (trades - mean) / std
    return np.frombuffer(array.array('f', (ratio, zscore)), dtype=np.float32)


def _time_text(time_ns: int) -> str:
  """``2023-03-24 12:35`` (UTC), as the kline errors print times."""
  return pd.Timestamp(time_ns, tz='UTC').strftime('%Y-%m-%d %H:%M')


def _whole_number(value: Any) -> int:
  """An int from an int-like value; a float must be whole (epoch times are integers)."""
  if isinstance(value, bool):
    raise TypeError('a bool')
  if isinstance(value, (int, np.integer)):
    return int(value)
  number = float(value)
  if not math.isfinite(number) or number != round(number):
    raise ValueError('not a whole number')
  return int(number)
