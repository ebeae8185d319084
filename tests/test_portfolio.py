"""Equal-capital portfolio over symbols, checked against the per-symbol engine runs."""

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.backtest import portfolio


def _frame(seed=0, n=2000, hole=None):
  rng = np.random.default_rng(seed)
  parts = []
  for symbol, start in (('BTCUSDT', 30_000.0), ('ETHUSDT', 2_000.0)):
    times = pd.date_range('2024-01-01', periods=n, freq='5min', tz='UTC')
    close = start * np.exp(np.cumsum(rng.normal(0, 0.003, n)))
    part = pd.DataFrame({'symbol': symbol, 'timestamp': times,
                         'open': np.concatenate([[start], close[:-1]]), 'close': close})
    if hole is not None and symbol == 'ETHUSDT':
      part = part.drop(part.index[hole]).reset_index(drop=True)
    parts.append(part)
  return pd.concat(parts, ignore_index=True)


def test_portfolio_is_the_sum_of_half_capital_runs():
  frame = _frame()
  target = np.where(np.arange(len(frame)) // 100 % 2 == 0, 1.0, 0.25)
  result = portfolio.run(frame, target, initial_capital=10_000.0)
  totals = []
  for symbol in ('BTCUSDT', 'ETHUSDT'):
    rows = (frame['symbol'] == symbol).to_numpy()
    alone = engine.run_backtest(target[rows], frame['open'][rows], frame['close'][rows],
                                frame['timestamp'][rows], initial_capital=5_000.0)
    np.testing.assert_allclose(result.by_symbol[symbol].equity, alone.equity, rtol=1e-12)
    totals.append(alone.equity[-1])
  assert result.equity.iloc[-1] == pytest.approx(sum(totals), rel=1e-12)
  assert result.stats['total_return'] == pytest.approx(sum(totals) / 10_000.0 - 1, rel=1e-9)
  assert result.stats['trades'] == sum(len(r.trades) for r in result.by_symbol.values())
  table = portfolio.comparison_table({'toggle': result})
  assert list(table.index) == ['toggle', 'buy and hold']


def test_holes_carry_equity_forward_and_bad_frames_are_refused():
  frame = _frame(hole=slice(500, 520))
  result = portfolio.run(frame, np.ones(len(frame)))
  assert len(result.equity) == 2000 and np.all(np.isfinite(result.equity))
  eth = result.by_symbol['ETHUSDT']
  at = pd.Timestamp('2024-01-01', tz='UTC') + pd.Timedelta(minutes=5 * 510)
  btc_part = pd.Series(result.by_symbol['BTCUSDT'].equity,
                       index=result.by_symbol['BTCUSDT'].timestamps)[at]
  assert result.equity[at] == pytest.approx(btc_part + eth.equity[499], rel=1e-12)
  with pytest.raises(errors.DataError, match='missing columns'):
    portfolio.run(frame.drop(columns='open'), np.ones(len(frame)))
  shuffled = frame.iloc[::-1].reset_index(drop=True)
  with pytest.raises(errors.DataError, match='unsorted'):
    portfolio.run(shuffled, np.ones(len(frame)))


def test_observed_column_defers_fills_and_stats_follow_the_calendar():
  frame = _frame(n=600)
  rng = np.random.default_rng(3)
  frame['observed'] = rng.random(len(frame)) > 0.2
  target = np.where(np.arange(len(frame)) // 37 % 2 == 0, 1.0, 0.0)
  result = portfolio.run(frame, target, initial_capital=10_000.0)
  for symbol in ('BTCUSDT', 'ETHUSDT'):
    rows = (frame['symbol'] == symbol).to_numpy()
    alone = engine.run_backtest(target[rows], frame['open'][rows], frame['close'][rows],
                                frame['timestamp'][rows], initial_capital=5_000.0,
                                observed=frame['observed'][rows].to_numpy())
    np.testing.assert_allclose(result.by_symbol[symbol].equity, alone.equity, rtol=1e-12)
    assert not result.by_symbol[symbol].traded_units[~frame['observed'][rows].to_numpy()].any()
  returns = result.equity.pct_change().dropna()
  assert result.stats['sharpe'] == pytest.approx(
      returns.mean() / returns.std() * np.sqrt(365.25 * 288), rel=1e-9)
