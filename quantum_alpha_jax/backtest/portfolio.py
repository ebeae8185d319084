"""Several target series over several symbols: per-symbol backtests and an equal-capital portfolio.

``frame`` holds one row per (symbol, bar) with ``symbol``, ``timestamp`` (UTC), ``open`` and
``close``, sorted by symbol then time; each strategy is a target array aligned with its rows. Each
symbol is backtested on its own by ``engine.run_backtest`` with ``initial_capital / n_symbols``; an
optional bool ``observed`` column (the store's) defers fills at hole-filling bars to the next
observed open. Stats are annualised by the calendar of the timestamps (see
:mod:`quantum_alpha_jax.evaluate.trading`) unless ``bars_per_year`` is passed.
The portfolio's equity is the sum of the symbols' equity curves on the union of their timestamps
(a symbol's equity is carried forward over its holes; before its first bar it holds its cash), so
its stats are those of a trader who split the capital equally at the start and never rebalanced
across symbols. Buy-and-hold is the same split, each part bought at the first open.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.evaluate import trading

TABLE_STATS = (('total_return', 'total return'), ('annual_return', 'annual return'),
               ('sharpe', 'Sharpe'), ('sortino', 'Sortino'), ('max_drawdown', 'max drawdown'),
               ('calmar', 'Calmar'), ('win_rate', 'win rate'), ('profit_factor', 'profit factor'),
               ('trades', 'trades'), ('exposure', 'exposure'), ('fees_paid', 'fees paid'))


@dataclasses.dataclass
class PortfolioResult:
  """One strategy: the per-symbol backtests and the equal-capital portfolio."""
  by_symbol: dict[str, engine.BacktestResult]
  equity: pd.Series  # portfolio equity on the union of timestamps
  buy_and_hold_equity: pd.Series
  stats: dict
  buy_and_hold_stats: dict
  trades: pd.DataFrame  # every symbol's trades, with a 'symbol' column


def check_frame(frame: pd.DataFrame) -> None:
  missing = [c for c in ('symbol', 'timestamp', 'open', 'close') if c not in frame.columns]
  if missing:
    raise errors.DataError(errors.describe('portfolio frame', f'missing columns {missing}',
                                           'pass symbol, timestamp, open and close per bar'))
  for symbol, group in frame.groupby('symbol', sort=False):
    times = pd.DatetimeIndex(group['timestamp'])
    if not times.is_monotonic_increasing or times.has_duplicates:
      raise errors.DataError(errors.describe(
          f'portfolio frame, {symbol}', 'timestamps are unsorted or duplicated',
          'sort by symbol and timestamp and drop duplicates'))


def _equity_series(results: Mapping[str, engine.BacktestResult], attribute: str,
                   capital: float) -> pd.Series:
  parts = []
  for symbol, result in results.items():
    parts.append(pd.Series(getattr(result, attribute), index=result.timestamps, name=symbol))
  joined = pd.concat(parts, axis=1).sort_index().ffill()
  return joined.fillna(capital).sum(axis=1)


def run(frame: pd.DataFrame, target: np.ndarray, *, initial_capital: float =
        engine.DEFAULT_INITIAL_CAPITAL, **backtest_kwargs) -> PortfolioResult:
  """Backtests ``target [rows]`` (aligned with ``frame``) symbol by symbol, then the portfolio."""
  check_frame(frame)
  target = np.asarray(target, np.float64)
  if target.shape != (len(frame),):
    raise errors.DataError(errors.describe('portfolio target', f'shape {target.shape}',
                                           f'one target per frame row: ({len(frame)},)'))
  symbols = list(pd.unique(frame['symbol']))
  capital = initial_capital / len(symbols)
  by_symbol, trades = {}, []
  for symbol in symbols:
    rows = np.flatnonzero((frame['symbol'] == symbol).to_numpy())
    part = frame.iloc[rows]
    observed = part['observed'].to_numpy() if 'observed' in part else None
    result = engine.run_backtest(target[rows], part['open'].to_numpy(), part['close'].to_numpy(),
                                 part['timestamp'].to_numpy(), initial_capital=capital,
                                 observed=observed, **backtest_kwargs)
    by_symbol[symbol] = result
    trades.append(result.trades.assign(symbol=symbol))
  equity = _equity_series(by_symbol, 'equity', capital)
  hold = _equity_series(by_symbol, 'buy_and_hold_equity', capital)
  weights = pd.concat([pd.Series(np.abs(r.target_held), index=r.timestamps) for r in
                       by_symbol.values()], axis=1).reindex(equity.index).fillna(0.0).mean(axis=1)
  all_trades = pd.concat(trades, ignore_index=True)
  fees = float(sum(r.fees.sum() for r in by_symbol.values()))
  bars_per_year = backtest_kwargs.get('bars_per_year')
  stats = trading.trading_stats(equity.to_numpy(), weights.to_numpy(), trades=all_trades,
                                fees_paid=fees, timestamps=equity.index,
                                bars_per_year=bars_per_year)
  hold_stats = trading.trading_stats(hold.to_numpy(), np.ones(len(hold)), timestamps=hold.index,
                                     bars_per_year=bars_per_year)
  return PortfolioResult(by_symbol, equity, hold, stats, hold_stats, all_trades)


def comparison_table(results: Mapping[str, PortfolioResult], symbol: str | None = None
                     ) -> pd.DataFrame:
  """Strategies as rows (plus buy-and-hold), stats as columns, for the portfolio or one symbol."""
  records, hold = [], None
  for name, result in results.items():
    stats = result.stats if symbol is None else result.by_symbol[symbol].stats
    hold = result.buy_and_hold_stats if symbol is None else result.by_symbol[symbol].buy_and_hold_stats
    records.append({'strategy': name, **{label: stats.get(key) for key, label in TABLE_STATS}})
  if hold is not None:
    records.append({'strategy': 'buy and hold',
                    **{label: hold.get(key) for key, label in TABLE_STATS}})
  return pd.DataFrame.from_records(records).set_index('strategy')
