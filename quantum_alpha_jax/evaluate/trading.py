"""Trading statistics of an equity curve, its positions and its trade list (host arrays).

Annualisation assumes a 24/7 market of 5-minute bars: 12 * 24 * 365 = 105,120 bars a year
(``schema.BARS_PER_YEAR``; crypto trades on weekends, so there is no 252-day calendar). Pass
``bars_per_year`` for other bar sizes.

Conventions, so that the numbers can be checked by hand:

- bar returns are ``equity[t] / equity[t-1] - 1``; volatility uses the sample standard deviation
  (``ddof=1``) times ``sqrt(bars_per_year)``;
- ``risk_free`` is an annual rate, turned into a per-bar rate
  ``(1 + rf) ** (1 / bars_per_year) - 1`` and subtracted from every bar return for Sharpe and
  Sortino (volatility stays that of the raw returns);
- Sortino divides by the downside deviation ``sqrt(mean(min(excess, 0) ** 2))`` over all bars;
- the annualised return is geometric: ``(equity[-1] / equity[0]) ** (bars_per_year / bars) - 1``
  with ``bars = len(equity) - 1``;
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


def trading_stats(equity, positions, *, bars_per_year: float = BARS_PER_YEAR, trades=None,
                  fees_paid: float = 0.0, risk_free: float = 0.0, timestamps=None) -> dict:
  """JSON-ready performance statistics of equity [time] and position weights [time].

  ``trades`` is a DataFrame with a ``pnl`` column (or a sequence of trade PnLs); ``timestamps``
  [time] (optional) adds the drawdown duration as a time span. See the module docstring.
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
  # Once equity reaches 0 (ruin) it stays there; returns after that are 0, not 0/0.
  previous = equity[:-1]
  returns = np.divide(equity[1:], previous, out=np.ones(bars), where=previous > 0) - 1.0
  bar_risk_free = (1.0 + risk_free) ** (1.0 / bars_per_year) - 1.0
  excess = returns - bar_risk_free
  total_return = equity[-1] / equity[0] - 1.0
  growth = equity[-1] / equity[0]
  with np.errstate(over='ignore'):  # a huge growth over a few bars annualises to inf -> None
    annual_return = float(np.power(growth, bars_per_year / bars) - 1.0) if growth > 0 else -1.0
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
  drawdowns = drawdown(equity)
  max_drawdown = float(drawdowns.max())
  duration_bars, peak_bar, end_bar = max_drawdown_duration(equity)
  duration = None
  if timestamps is not None:
    times = pd.DatetimeIndex(timestamps)
    if len(times) != equity.size:
      raise errors.DataError(errors.describe(
          'trading_stats', f'{len(times)} timestamps for {equity.size} bars'))
    duration = str(times[end_bar] - times[peak_bar])
  pnls = _trade_pnls(trades)
  wins, losses = pnls[pnls > 0], pnls[pnls < 0]
  previous_positions = np.concatenate([[0.0], positions[:-1]])
  return {
      'bars': int(equity.size),
      'initial_equity': float(equity[0]),
      'final_equity': float(equity[-1]),
      'total_return': float(total_return),
      'annual_return': _finite_or_none(annual_return),
      'annual_volatility': float(volatility * math.sqrt(bars_per_year)),
      'sharpe': _finite_or_none(sharpe),
      'sortino': _finite_or_none(sortino),
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
      'turnover_per_year': float(np.abs(positions - previous_positions).sum()
                                 * bars_per_year / equity.size),
      'fees_paid': float(fees_paid),
  }
