"""Trading statistics of an equity curve, its positions and its trade list (host arrays).

Annualisation follows the calendar when ``timestamps`` are given (:func:`annualisation`):

- elapsed years are ``(last timestamp - first timestamp) / 365.25 days``, holes included;
- the bar frequency is ``365.25 days / spacing``, the spacing being the most common gap between
  consecutive timestamps (the grid: 5 minutes for the store, 1 day for daily bars). Every gap must
  be a whole multiple of it. A store's short holes are filled bars on the grid, and a long hole (a
  new ``segment``) is a gap of many grid steps: both are accepted. A long hole adds one return (the
  position was held across it, so its PnL is real) and its time counts in the elapsed years, but it
  adds no bars to the Sharpe's sample. A gap that is not a multiple of the grid (5-minute bars with
  a 7-minute step, mixed bar sizes) is refused with a DataError.

An explicit ``bars_per_year`` overrides the calendar: annualisation is then by bar count, with
``years = bars / bars_per_year`` (``bars = len(equity) - 1``), and the timestamps, if any, only
date the drawdown (no grid check). Without timestamps or an override, a 24/7 market of 5-minute
bars is assumed: 12 * 24 * 365 = 105,120 bars a year (``schema.BARS_PER_YEAR``; crypto trades on
weekends, so there is no 252-day calendar). On the store's 5-minute grid the calendar gives
105,192 bars a year (365.25 days), 0.07% more, since it counts leap days.

Conventions, so that the numbers can be checked by hand:

- bar returns are ``equity[t] / equity[t-1] - 1``; volatility uses the sample standard deviation
  (``ddof=1``) times ``sqrt(bars_per_year)``, and Sharpe is their mean over that standard deviation
  times ``sqrt(bars_per_year)``;
- ``risk_free`` is an annual rate, turned into a per-bar rate
  ``(1 + rf) ** (1 / bars_per_year) - 1`` and subtracted from every bar return for Sharpe and
  Sortino (volatility stays that of the raw returns);
- Sortino divides by the downside deviation ``sqrt(mean(min(excess, 0) ** 2))`` over all bars;
- ``skewness`` and ``kurtosis`` (non-excess: 3 for a normal) are the bar returns' population
  moments, as the Deflated Sharpe Ratio takes them (``None`` for flat equity);
- the annualised return is geometric over the elapsed years:
  ``(equity[-1] / equity[0]) ** (1 / years) - 1``; turnover per year is the summed
  ``|change of position|`` over ``years``;
- max drawdown is a positive fraction of the running peak; its duration is the longest time spent
  under a previous peak (from the peak bar to the first bar back at or above it, or to the last
  bar if it never recovers), as backtesting.py and empyrical report it.

Degenerate cases never give NaN: the returned dict is JSON-ready. Flat equity (zero volatility)
gives Sharpe 0.0 and Sortino 0.0; no losing bar with a positive mean gives Sortino ``None``
(unbounded); no drawdown gives Calmar ``None``; no trades gives win rate, profit factor and
expectancy ``None``; trades with no loss give profit factor ``None``; an annualised return too
large for a float (a short, explosive series) gives ``None``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema

BARS_PER_YEAR = schema.BARS_PER_YEAR
YEAR = pd.Timedelta(days=365.25)


def _finite_or_none(value) -> float | None:
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def drawdown(equity) -> np.ndarray:
  """Drawdown of each bar as a positive fraction of the running peak; equity [time] -> [time]."""
  equity = np.asarray(equity, dtype=np.float64)
  peak = np.maximum.accumulate(equity)
  return 1.0 - equity / peak


def max_drawdown_duration(equity) -> tuple[int, int, int]:
  """Longest underwater stretch of equity [time]: (bars, start index of the peak, end index)."""
  equity = np.asarray(equity, dtype=np.float64)
  peak = np.maximum.accumulate(equity)
  at_peak = equity >= peak
  peak_index = np.maximum.accumulate(np.where(at_peak, np.arange(equity.size), 0))
  # A stretch under water ends at the first bar back at the peak, or at the last bar.
  ends = np.flatnonzero(at_peak[1:] & ~at_peak[:-1]) + 1
  if not at_peak[-1]:
    ends = np.append(ends, equity.size - 1)
  if ends.size == 0:
    return 0, 0, 0
  starts = peak_index[ends - 1]
  longest = int(np.argmax(ends - starts))
  return int(ends[longest] - starts[longest]), int(starts[longest]), int(ends[longest])


def _trade_pnls(trades) -> np.ndarray:
  if trades is None:
    return np.zeros(0)
  if isinstance(trades, pd.DataFrame):
    if 'pnl' not in trades:
      raise errors.DataError(errors.describe('trading_stats: trades', 'no "pnl" column',
                                             'pass the trade list of a BacktestResult'))
    trades = trades['pnl']
  return np.asarray(trades, dtype=np.float64).ravel()


def annualisation(timestamps, bars: int, bars_per_year: float | None = None,
                  where: str = 'trading_stats') -> tuple[float, float]:
  """``(bars_per_year, years)`` of ``bars`` values at ``timestamps`` [bars] (or None) by the
  calendar rules of the module docstring; an explicit ``bars_per_year`` annualises by bar count."""
  if bars_per_year is not None and not bars_per_year > 0:
    raise errors.ConfigError(errors.describe(
        f'{where}: bars_per_year', f'{bars_per_year!r} is invalid',
        'use a positive number (105120 for 24/7 5-minute bars), or None to take it from the '
        'timestamps'))
  times = None if timestamps is None else pd.DatetimeIndex(timestamps)
  if times is not None and len(times) != bars:
    raise errors.DataError(errors.describe(where, f'{len(times)} timestamps for {bars} bars',
                                           'pass one timestamp per bar'))
  if times is None or bars_per_year is not None:
    frequency = BARS_PER_YEAR if bars_per_year is None else float(bars_per_year)
    return frequency, (bars - 1) / frequency
  nanoseconds = times.as_unit('ns').asi8
  steps = np.diff(nanoseconds)
  if steps.size and steps.min() <= 0:
    row = int(np.flatnonzero(steps <= 0)[0]) + 1
    raise errors.DataError(errors.describe(
        where, f'timestamps are not strictly increasing (bar {row}, {times[row]})',
        'sort the bars by time and drop duplicates'))
  years = (nanoseconds[-1] - nanoseconds[0]) / YEAR.value
  values, counts = np.unique(steps, return_counts=True)
  grid = int(values[np.argmax(counts)])  # the most common step; ties go to the shortest
  off_grid = np.flatnonzero(steps % grid)
  if off_grid.size:
    row = int(off_grid[0]) + 1
    raise errors.DataError(errors.describe(
        where, f'{off_grid.size} of {steps.size} bar spacings are not a multiple of the '
        f'{pd.Timedelta(grid)} grid (first: {pd.Timedelta(int(steps[row - 1]))} before bar {row}, '
        f'{times[row]})', 'put the bars on one regular grid (data.klines.regularize fills short '
        'holes and starts a segment after long ones), or pass bars_per_year to annualise by bar '
        'count'))
  return YEAR.value / grid, years


def trading_stats(equity, positions, *, bars_per_year: float | None = None, trades=None,
                  fees_paid: float = 0.0, risk_free: float = 0.0, timestamps=None) -> dict:
  """JSON-ready performance statistics of equity [time] and position weights [time].

  ``trades`` is a DataFrame with a ``pnl`` column (or a sequence of trade PnLs); ``timestamps``
  [time] (optional) annualise by the calendar and add the drawdown duration as a time span;
  ``bars_per_year`` overrides the bar frequency. See the module docstring.
  """
  equity = np.asarray(equity, dtype=np.float64).ravel()
  positions = np.asarray(positions, dtype=np.float64).ravel()
  if equity.size < 2:
    raise errors.DataError(errors.describe('trading_stats', f'{equity.size} equity values',
                                           'pass at least 2 bars'))
  if positions.size != equity.size:
    raise errors.DataError(errors.describe(
        'trading_stats', f'{equity.size} equity values but {positions.size} positions',
        'pass one position per bar'))
  if not (np.all(np.isfinite(equity)) and np.all(np.isfinite(positions))):
    raise errors.DataError(errors.describe('trading_stats', 'non-finite equity or positions'))
  if equity[0] <= 0:
    raise errors.DataError(errors.describe('trading_stats', f'initial equity {equity[0]}',
                                           'equity must start positive'))
  bars = equity.size - 1
  bars_per_year, years = annualisation(timestamps, equity.size, bars_per_year)
  # Once equity reaches 0 (ruin) it stays there; returns after that are 0, not 0/0.
  previous = equity[:-1]
  returns = np.divide(equity[1:], previous, out=np.ones(bars), where=previous > 0) - 1.0
  bar_risk_free = (1.0 + risk_free) ** (1.0 / bars_per_year) - 1.0
  excess = returns - bar_risk_free
  total_return = equity[-1] / equity[0] - 1.0
  growth = equity[-1] / equity[0]
  with np.errstate(over='ignore'):  # a huge growth over a few bars annualises to inf -> None
    annual_return = float(np.power(growth, 1.0 / years) - 1.0) if growth > 0 else -1.0
  volatility = returns.std(ddof=1) if bars > 1 else 0.0
  if volatility > 0:
    sharpe = excess.mean() / volatility * math.sqrt(bars_per_year)
  else:
    sharpe = 0.0
  downside = math.sqrt(np.mean(np.minimum(excess, 0.0) ** 2))
  if downside > 0:
    sortino = excess.mean() / downside * math.sqrt(bars_per_year)
  else:
    sortino = 0.0 if excess.mean() <= 0 or volatility == 0 else None
  spread = returns.std() if bars > 1 else 0.0
  skewness = kurtosis = None
  if spread > 0:
    standardised = (returns - returns.mean()) / spread
    skewness, kurtosis = float(np.mean(standardised ** 3)), float(np.mean(standardised ** 4))
  drawdowns = drawdown(equity)
  max_drawdown = float(drawdowns.max())
  duration_bars, peak_bar, end_bar = max_drawdown_duration(equity)
  duration = None
  if timestamps is not None:
    times = pd.DatetimeIndex(timestamps)
    duration = str(times[end_bar] - times[peak_bar])
  pnls = _trade_pnls(trades)
  wins, losses = pnls[pnls > 0], pnls[pnls < 0]
  previous_positions = np.concatenate([[0.0], positions[:-1]])
  return {
      'bars': int(equity.size),
      'years': float(years),
      'bars_per_year': float(bars_per_year),
      'initial_equity': float(equity[0]),
      'final_equity': float(equity[-1]),
      'total_return': float(total_return),
      'annual_return': _finite_or_none(annual_return),
      'annual_volatility': float(volatility * math.sqrt(bars_per_year)),
      'sharpe': _finite_or_none(sharpe),
      'sortino': _finite_or_none(sortino),
      'skewness': skewness,
      'kurtosis': kurtosis,
      'calmar': (_finite_or_none(annual_return / max_drawdown)
                 if max_drawdown > 0 and math.isfinite(annual_return) else None),
      'max_drawdown': max_drawdown,
      'max_drawdown_duration_bars': duration_bars,
      'max_drawdown_duration': duration,
      'trades': int(pnls.size),
      'win_rate': float(wins.size / pnls.size) if pnls.size else None,
      'profit_factor': float(wins.sum() / -losses.sum()) if losses.size else None,
      'expectancy': float(pnls.mean()) if pnls.size else None,
      'exposure': float(np.mean(positions != 0)),
      'turnover_per_year': float(np.abs(positions - previous_positions).sum() / years),
      'fees_paid': float(fees_paid),
  }
