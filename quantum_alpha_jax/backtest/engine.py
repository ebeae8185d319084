"""A single-asset backtest: target weights decided at each bar's close, filled at the next open.

Semantics (one asset, cash and units, no leverage beyond the fee, no borrowing cost):

- ``target[t]`` is the fraction of equity to hold, decided at the CLOSE of bar ``t`` (long-only in
  [0, 1]; with ``allow_short`` in [-1, 1], a negative weight is a short sale). It is filled at the
  OPEN of bar ``t + 1`` and never at the close of the bar whose features produced it; the target
  of the last bar is never filled. Nothing is held during bar 0.
- State is ``(cash, units)``, starting at ``(initial_capital, 0)``. At bar ``t + 1``'s open, equity
  is marked at the open price, ``equity_open = cash + units * open``; the desired holding is
  ``target[t] * equity_open / fill_price`` units (fractional units allowed), and the difference is
  traded. The fill price is ``open * (1 + slippage * sign(trade))``, slippage being
  ``slippage_bps / 10_000`` (adverse: buys pay more, sells get less). The fee,
  ``fee_rate * |trade units| * fill_price``, is paid from cash, so a target of 1 leaves cash at
  about ``-fee`` (a tiny unfinanced amount, charged no interest). When slippage makes the re-sized
  order cross the current holding, no trade happens. A target of 0 always closes the position
  exactly. If equity at the open is not positive the position is closed and nothing is bought.
- Filled bars. A bar that fills a hole in the source (``observed[t]`` False: zero volume, its open
  copies the previous close, ``data/klines.py``) is not a price anyone could trade at, so no fill
  ever happens at its open. A fill due there is deferred to the open of the next observed bar,
  which trades towards the latest target (the one decided at the close just before it), as if the
  target had changed there whenever it changed at any skipped open. ``observed`` defaults to all
  True; pass the store's ``observed`` column with store data.
- Equity is marked at every close: ``equity[t] = cash[t] + units[t] * close[t]``.
- Rebalancing. ``rebalance_threshold=None`` (the default): trade only on the bar after the target
  changes (``target[t] != target[t - 1]``, with a flat start), so a constant target never churns
  fees while the weight drifts with the price. A number ``h >= 0``: trade whenever
  ``|target - current weight at the open| > h``; going flat or flipping side always trades.
- Annualisation (the stats' annual return, Sharpe, Sortino, turnover): by the calendar when
  ``timestamps`` are given (elapsed years and the bar grid from the timestamps, an off-grid spacing
  refused), else 105,120 bars a year; ``bars_per_year`` overrides it with bar-count annualisation
  (:mod:`quantum_alpha_jax.evaluate.trading`).
- Defaults: fee 0.001 per side (Binance spot taker, 0.1%) on traded notional, slippage 1 bp
  (a conservative allowance for the spread and the open's print on liquid pairs), capital 10,000.

Numerics: the simulation (:mod:`quantum_alpha_jax.fills`) is a jitted ``jax.lax.scan`` run in
float64 under the thread-local ``jax.enable_x64(True)`` context, so the process-wide float32 default
is left alone and equity over a year of 5-minute bars (105,120 steps) carries no float32 round-off;
it matches a float64 Python loop to 1e-10 relative or better (tests/test_backtest.py).

Trades. A trade runs from opening a position from flat to returning to flat, or to a sign flip
(which closes one trade and opens the next at the same fill; the fill's fee is split between the two
by units). Partial resizes adjust the open trade: entry and exit prices are unit-weighted averages
of the adding and reducing fills, ``size`` is the largest absolute holding, ``pnl`` is the realised
cash flow net of every fee of the trade. A trade still open at the end is marked at the last close
(``closed`` False, ``exit_time`` NaT).

Cross-check with backtesting.py (tests/test_backtest.py, benchmarks/backtest.py): its market
orders also fill at the next open (``trade_on_close=False``) and its ``commission`` is charged on
each fill's notional, as here. Aligned by: slippage 0 (its ``spread`` is charged once per round
trip, ours on every fill), ``FractionalBacktest`` so units are fractional (satoshis at prices
scaled by 1e-8), orders sized in units by this engine's rule (target * equity at the next open /
next open, rounded to a satoshi) instead of its own ``size=fraction`` rule (which nets the
commission out of the size), ``margin`` < 1 so that the fee of an all-in order is not refused, and
a flat first bar (its strategy first acts at bar 1's close). Final equity then agrees to ~1e-9.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.evaluate import trading
from quantum_alpha_jax.fills import DEFAULT_FEE_RATE
from quantum_alpha_jax.fills import DEFAULT_INITIAL_CAPITAL
from quantum_alpha_jax.fills import DEFAULT_SLIPPAGE_BPS
from quantum_alpha_jax.fills import observed_flags
from quantum_alpha_jax.fills import simulate

TRADE_COLUMNS = ('direction', 'entry_bar', 'exit_bar', 'entry_time', 'exit_time', 'entry_price',
                 'exit_price', 'size', 'pnl', 'fees', 'return', 'bars_held', 'closed')


@dataclasses.dataclass
class BacktestResult:
  """Everything a backtest produced; arrays are [time], one value per bar."""
  equity: np.ndarray  # marked at each close
  units: np.ndarray  # held during the bar (after the fill at its open)
  weight: np.ndarray  # units * close / equity, marked at each close
  target_held: np.ndarray  # the last filled target: the weight aimed at during the bar
  cash: np.ndarray
  fees: np.ndarray  # fee paid at each bar's open
  fill_price: np.ndarray  # NaN where nothing traded
  traded_units: np.ndarray  # signed units traded at each bar's open
  close: np.ndarray
  timestamps: pd.DatetimeIndex | None
  trades: pd.DataFrame
  stats: dict
  buy_and_hold_equity: np.ndarray
  buy_and_hold_stats: dict
  config: dict[str, Any]


def _check_series(values, name: str, length: int | None = None) -> np.ndarray:
  try:
    array = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise errors.DataError(errors.describe(f'run_backtest: {name}',
                                           f'not numeric ({error})')) from None
  if array.ndim != 1:
    raise errors.DataError(errors.describe(f'run_backtest: {name}',
                                           f'shape {array.shape}, expected [time]'))
  if length is not None and array.size != length:
    raise errors.DataError(errors.describe(
        f'run_backtest: {name}', f'{array.size} bars but target has {length}',
        'pass target, open, close (and timestamps) for the same bars'))
  bad = np.flatnonzero(~np.isfinite(array))
  if bad.size:
    raise errors.DataError(errors.describe(
        f'run_backtest: {name}', f'{bad.size} NaN/inf values (first at bar {bad[0]})',
        'fill or drop those bars, or set the target to 0 where the model has no signal'))
  return array


def _check_config(fee_rate, slippage_bps, initial_capital, rebalance_threshold, bars_per_year):
  checks = [
      ('fee_rate', fee_rate, 0 <= fee_rate < 1, 'use a rate per side such as 0.001 (0.1%)'),
      ('slippage_bps', slippage_bps, 0 <= slippage_bps < 10_000, 'use basis points, e.g. 1'),
      ('initial_capital', initial_capital, initial_capital > 0, 'use a positive amount'),
      ('rebalance_threshold', rebalance_threshold,
       rebalance_threshold is None or rebalance_threshold >= 0, 'use None or a weight >= 0'),
      ('bars_per_year', bars_per_year, bars_per_year is None or bars_per_year > 0,
       'use None to annualise by the timestamps\' calendar, or a positive bar count such as 105120 '
       'for 24/7 5-minute bars'),
  ]
  for name, value, valid, fix in checks:
    if not valid:
      raise errors.ConfigError(errors.describe(f'run_backtest: {name}', f'{value!r} is invalid',
                                               fix))


def _timestamps(timestamps, length: int) -> pd.DatetimeIndex | None:
  if timestamps is None:
    return None
  if isinstance(timestamps, (pd.DatetimeIndex, pd.Series)):
    times = pd.DatetimeIndex(timestamps)
  elif np.issubdtype(np.asarray(timestamps).dtype, np.integer):
    times = schema.to_timestamps(np.asarray(timestamps))
  else:
    times = pd.DatetimeIndex(timestamps)
  if len(times) != length:
    raise errors.DataError(errors.describe(
        'run_backtest: timestamps', f'{len(times)} timestamps for {length} bars',
        'pass one timestamp per bar'))
  return times


def trade_list(units, traded_units, fill_price, fees, close,
               timestamps: pd.DatetimeIndex | None = None) -> pd.DataFrame:
  """The round trips of a simulation (see the module docstring); inputs [time]."""
  records = []
  current = None

  def open_trade(bar, held, share):
    return {'direction': 'long' if held > 0 else 'short', 'entry_bar': bar, 'held': held,
            'size': abs(held), 'added_units': abs(held), 'added_value': abs(held) * fill_price[bar],
            'removed_units': 0.0, 'removed_value': 0.0, 'cash_flow': -held * fill_price[bar],
            'fees': fees[bar] * share}

  def close_trade(trade, exit_bar, closed):
    exit_price = (trade['removed_value'] / trade['removed_units'] if trade['removed_units'] > 0
                  else np.nan)
    pnl = trade['cash_flow'] - trade['fees']
    if not closed:  # mark what is left at the last close
      pnl += trade['held'] * close[-1]
      remaining = abs(trade['held'])
      exit_price = ((trade['removed_value'] + remaining * close[-1])
                    / (trade['removed_units'] + remaining))
    records.append({
        'direction': trade['direction'], 'entry_bar': trade['entry_bar'],
        'exit_bar': exit_bar if closed else -1,
        'entry_price': trade['added_value'] / trade['added_units'], 'exit_price': exit_price,
        'size': trade['size'], 'pnl': pnl, 'fees': trade['fees'],
        'return': pnl / trade['added_value'],
        'bars_held': (exit_bar if closed else len(close) - 1) - trade['entry_bar'],
        'closed': closed})

  for bar in np.flatnonzero(traded_units != 0):
    before, after, delta, price = units[bar - 1], units[bar], traded_units[bar], fill_price[bar]
    if current is None:
      current = open_trade(bar, after, 1.0)
    elif np.sign(after) == np.sign(before) and abs(after) > abs(before):  # add
      current['held'] = after
      current['size'] = max(current['size'], abs(after))
      current['added_units'] += abs(delta)
      current['added_value'] += abs(delta) * price
      current['cash_flow'] -= delta * price
      current['fees'] += fees[bar]
    else:  # reduce, close, or close and flip
      reduced = min(abs(delta), abs(before))
      share = reduced / abs(delta)
      current['removed_units'] += reduced
      current['removed_value'] += reduced * price
      current['cash_flow'] += np.sign(before) * reduced * price
      current['fees'] += fees[bar] * share
      if after == 0 or np.sign(after) != np.sign(before):
        close_trade(current, bar, True)
        current = open_trade(bar, after, 1.0 - share) if after != 0 else None
      else:
        current['held'] = after
  if current is not None:
    close_trade(current, len(close) - 1, False)
  frame = pd.DataFrame.from_records(records, columns=[c for c in TRADE_COLUMNS
                                                      if c not in ('entry_time', 'exit_time')])
  frame = frame.astype({'entry_bar': np.int64, 'exit_bar': np.int64, 'bars_held': np.int64,
                        'closed': bool})
  if timestamps is not None:
    closed = frame['closed'].to_numpy()
    exit_bars = np.where(closed, frame['exit_bar'].to_numpy(), 0)
    frame.insert(3, 'entry_time', timestamps[frame['entry_bar'].to_numpy()])
    frame.insert(4, 'exit_time', pd.Series(timestamps[exit_bars]).where(closed))
  return frame


def buy_and_hold_state(open_price, initial_capital: float, fee_rate: float,
                       slippage_bps: float, observed=None) -> dict[str, np.ndarray]:
  """:func:`simulate` of a constant target of 1 in closed form: one buy at the first observed open
  from bar 1 on (flat throughout when there is none); [time]."""
  bars = len(open_price)
  observed = observed_flags(observed, (bars,), 'buy_and_hold_state')
  later = np.flatnonzero(observed[1:])
  first = int(later[0]) + 1 if later.size else bars
  fill = open_price[min(first, bars - 1)] * (1.0 + slippage_bps / 10_000)
  units = initial_capital / fill if first < bars else 0.0
  fee = fee_rate * units * fill
  flat_then = lambda before, after: np.r_[np.full(first, before), np.full(bars - first, after)]
  traded = np.zeros(bars)
  traded[first:first + 1] = units
  return {
      'cash': flat_then(initial_capital, initial_capital - units * fill - fee),
      'units': flat_then(0.0, units),
      'target_held': flat_then(0.0, 1.0),
      'traded_units': traded,
      'fill_price': np.where(traded != 0, fill, np.nan),
      'fees': np.where(traded != 0, fee, 0.0),
  }


def _account(state, close, timestamps, bars_per_year):
  """(equity, weight, trades, stats) of a simulated state."""
  equity = state['cash'] + state['units'] * close
  weight = np.divide(state['units'] * close, equity, out=np.zeros_like(equity), where=equity > 0)
  trades = trade_list(state['units'], state['traded_units'], state['fill_price'], state['fees'],
                      close, timestamps)
  stats = trading.trading_stats(equity, state['target_held'], bars_per_year=bars_per_year,
                                trades=trades, fees_paid=float(state['fees'].sum()),
                                timestamps=timestamps)
  return equity, weight, trades, stats


def run_backtest(target, open, close, timestamps=None, *,  # pylint: disable=redefined-builtin
                 fee_rate: float = DEFAULT_FEE_RATE, slippage_bps: float = DEFAULT_SLIPPAGE_BPS,
                 initial_capital: float = DEFAULT_INITIAL_CAPITAL, allow_short: bool = False,
                 rebalance_threshold: float | None = None,
                 bars_per_year: float | None = None, observed=None) -> BacktestResult:
  """Backtests target weights [time] (decided at each close) on open, close [time] prices.

  Fills at the next observed bar's open with fees and slippage; also runs buy-and-hold (buy at the
  first observed open from bar 1, same costs, never rebalanced). timestamps [time]: datetimes or
  int64 ns since the epoch (UTC), which annualise the stats by the calendar unless
  ``bars_per_year`` is given. observed [time] bool: False at bars that fill a hole (default all
  True).
  """
  _check_config(fee_rate, slippage_bps, initial_capital, rebalance_threshold, bars_per_year)
  target = _check_series(target, 'target')
  if target.size < 2:
    raise errors.DataError(errors.describe('run_backtest', f'{target.size} bars',
                                           'a backtest needs at least 2 bars'))
  open_price = _check_series(open, 'open', target.size)
  close = _check_series(close, 'close', target.size)
  for name, prices in (('open', open_price), ('close', close)):
    bad = np.flatnonzero(prices <= 0)
    if bad.size:
      raise errors.DataError(errors.describe(
          f'run_backtest: {name}', f'{bad.size} non-positive prices (first {prices[bad[0]]} at bar '
          f'{bad[0]})', 'prices must be positive; check the data source'))
  low = -1.0 if allow_short else 0.0
  outside = np.flatnonzero((target < low) | (target > 1.0))
  if outside.size:
    raise errors.ConfigError(errors.describe(
        'run_backtest: target', f'{outside.size} targets outside [{low:g}, 1] (first '
        f'{target[outside[0]]} at bar {outside[0]})',
        'clip the policy output' + ('' if allow_short else ', or pass allow_short=True to short')))
  times = _timestamps(timestamps, target.size)
  observed = observed_flags(observed, target.shape, 'run_backtest')
  state = simulate(target, open_price, initial_capital, fee_rate, slippage_bps,
                   rebalance_threshold, observed)
  equity, weight, trades, stats = _account(state, close, times, bars_per_year)
  hold_state = buy_and_hold_state(open_price, initial_capital, fee_rate, slippage_bps, observed)
  hold_equity, _, _, hold_stats = _account(hold_state, close, times, bars_per_year)
  return BacktestResult(
      equity=equity, units=state['units'], weight=weight, target_held=state['target_held'],
      cash=state['cash'], fees=state['fees'], fill_price=state['fill_price'],
      traded_units=state['traded_units'], close=close, timestamps=times, trades=trades,
      stats=stats, buy_and_hold_equity=hold_equity, buy_and_hold_stats=hold_stats,
      config={'fee_rate': fee_rate, 'slippage_bps': slippage_bps,
              'initial_capital': initial_capital, 'bars_per_year': stats['bars_per_year'],
              'allow_short': allow_short, 'rebalance_threshold': rebalance_threshold})
