"""The backtest engine against a float64 reference loop, backtesting.py and hand-worked fills."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax import errors
from quantum_alpha_jax import fills
from quantum_alpha_jax.backtest import crosscheck
from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.backtest import report
from quantum_alpha_jax.backtest import run_backtest


def reference_backtest(target, open_price, close, fee_rate=0.001, slippage_bps=0.0,
                       capital=10_000.0, threshold=None, observed=None):
  """The engine's rules as a plain Python float64 loop: (equity [T], units [T]).

  Where ``observed`` is False nothing trades; a target change seen there waits (``pending``) for
  the next observed open.
  """
  slippage = slippage_bps / 10_000
  cash, units = capital, 0.0
  equity, held_units = [capital], [0.0]
  pending = False
  for bar in range(1, len(target)):
    signal, price = float(target[bar - 1]), float(open_price[bar])
    equity_at_open = cash + units * price
    pending = pending or signal != (float(target[bar - 2]) if bar >= 2 else 0.0)
    if observed is not None and not observed[bar]:
      act = False
    elif threshold is None:
      act, pending = pending, False
    else:
      weight = units * price / equity_at_open
      act = (abs(signal - weight) > threshold or (signal == 0 and units != 0)
             or signal * units < 0)
    if act:
      if signal == 0:
        trade = -units
        fill = price * (1 + slippage * np.sign(trade))
      else:
        side = np.sign(signal * equity_at_open / price - units)
        fill = price * (1 + slippage * side)
        trade = signal * equity_at_open / fill - units
        if np.sign(trade) != side:
          trade = 0.0
      cash -= trade * fill + fee_rate * abs(trade) * fill
      units += trade
    equity.append(cash + units * float(close[bar]))
    held_units.append(units)
  return np.array(equity), np.array(held_units)


def round_trips(units) -> int:
  """Trades opened: a move from flat to a position, or a flip of side."""
  previous = np.r_[0.0, units[:-1]]
  return int(np.sum((units != 0) & (np.sign(units) != np.sign(previous))))


def market(bars=3000, seed=0, levels=(-1.0, -0.5, 0.0, 0.5, 1.0), switch=0.02):
  """Random-walk prices with gaps at the open, and a persistent random target [bars]."""
  rng = np.random.default_rng(seed)
  close = 30_000 * np.exp(np.cumsum(rng.normal(0, 0.003, bars)))
  open_price = np.r_[30_000.0, close[:-1]] * np.exp(rng.normal(0, 0.0005, bars))
  choice = np.asarray(levels)[rng.integers(0, len(levels), bars)]
  keep = rng.random(bars) > switch
  target = pd.Series(np.where(keep, np.nan, choice)).ffill().fillna(0.0).to_numpy(copy=True)
  target[0] = 0.0
  target[-3:] = 0.0
  return target, open_price, close


@pytest.mark.parametrize('slippage_bps', [0.0, 5.0])
@pytest.mark.parametrize('threshold', [None, 0.05])
def test_engine_matches_reference_loop(slippage_bps, threshold):
  target, open_price, close = market(6000, seed=1)
  result = run_backtest(target, open_price, close, slippage_bps=slippage_bps, allow_short=True,
                        rebalance_threshold=threshold)
  equity, units = reference_backtest(target, open_price, close, 0.001, slippage_bps,
                                     threshold=threshold)
  np.testing.assert_allclose(result.equity, equity, rtol=1e-11)
  np.testing.assert_allclose(result.units, units, rtol=1e-11, atol=1e-15)
  assert result.stats['trades'] == round_trips(units) > 50
  assert result.stats['final_equity'] == pytest.approx(equity[-1], rel=1e-12)
  # Every trade's PnL (net of fees) adds up to the equity change.
  assert result.trades['pnl'].sum() == pytest.approx(equity[-1] - equity[0], rel=1e-9)
  assert result.trades['fees'].sum() == pytest.approx(result.stats['fees_paid'], rel=1e-12)


def test_year_of_bars_keeps_float64_accuracy():
  """105,120 steps: float32 would drift ~1e-4; the x64 scan matches numpy to 1e-10."""
  target, open_price, close = market(105_120, seed=2, levels=(0.0, 0.5, 1.0), switch=0.002)
  result = run_backtest(target, open_price, close)
  equity, _ = reference_backtest(target, open_price, close, 0.001, engine.DEFAULT_SLIPPAGE_BPS)
  np.testing.assert_allclose(result.equity, equity, rtol=1e-10)
  assert result.equity.dtype == np.float64


def test_no_look_ahead_oracle_earns_nothing():
  """Prices move only in the gap before every even bar's open; within a bar they stand still.

  An oracle that knows, at bar t's close, the move to bar t+1 would compound every up move if it
  were filled at bar t's close. Filled at bar t+1's open it buys after the move and holds through
  the next gap, which is always flat: it must earn exactly nothing.
  """
  rng = np.random.default_rng(3)
  bars = 400
  moves = np.where(np.arange(bars) % 2 == 0, rng.normal(0, 0.01, bars), 0.0)
  moves[0] = 0.0
  level = 100 * np.exp(np.cumsum(moves))
  open_price = close = level
  next_return = np.r_[close[1:] / close[:-1] - 1, 0.0]
  oracle = (next_return > 0).astype(float)
  assert oracle.sum() > 50
  result = run_backtest(oracle, open_price, close, fee_rate=0.0, slippage_bps=0.0)
  np.testing.assert_allclose(result.equity, 10_000.0, rtol=1e-12)
  # Filled at the signal bar's close instead, the same oracle would have compounded every up move.
  at_close = 10_000 * np.prod(1 + np.where(oracle[:-1] > 0, next_return[:-1], 0.0))
  assert at_close > 2 * 10_000
  # With costs it only loses them, as the next-open reference loop says; the last target is never
  # filled.
  costly = run_backtest(oracle, open_price, close, allow_short=False)
  equity, _ = reference_backtest(oracle, open_price, close, 0.001, engine.DEFAULT_SLIPPAGE_BPS)
  np.testing.assert_allclose(costly.equity, equity, rtol=1e-12)
  assert costly.equity[-1] < 10_000
  changed_last = oracle.copy()
  changed_last[-1] = 1 - changed_last[-1]
  assert np.array_equal(run_backtest(changed_last, open_price, close).equity,
                        run_backtest(oracle, open_price, close).equity)


def test_target_at_bar_t_only_moves_equity_after_t():
  target, open_price, close = market(500, seed=4, levels=(0.0, 1.0))
  base = run_backtest(target, open_price, close).equity
  for bar in (10, 200, 497):
    changed = target.copy()
    changed[bar] = 0.5
    equity = run_backtest(changed, open_price, close).equity
    assert np.array_equal(equity[:bar + 1], base[:bar + 1])
    assert not np.array_equal(equity[bar + 1:], base[bar + 1:])


def test_fees_on_one_round_trip_are_exact():
  open_price = np.array([100.0, 100.0, 104.0, 107.0, 110.0, 111.0])
  close = np.array([100.0, 102.0, 105.0, 108.0, 109.0, 112.0])
  target = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
  free = run_backtest(target, open_price, close, fee_rate=0.0, slippage_bps=0.0)
  paid = run_backtest(target, open_price, close, fee_rate=0.001, slippage_bps=0.0)
  # Buy 100 units at bar 1's open (100): fee 10. Sell 100 at bar 4's open (110): fee 11.
  assert free.equity[-1] == pytest.approx(11_000.0, rel=1e-14)
  assert paid.equity[-1] == pytest.approx(11_000.0 - 10.0 - 11.0, rel=1e-14)
  assert paid.stats['fees_paid'] == pytest.approx(21.0, rel=1e-14)
  np.testing.assert_allclose(paid.equity[1:4], 100 * close[1:4] - 10.0, rtol=1e-14)
  trade = paid.trades.iloc[0]
  assert len(paid.trades) == 1 and trade['closed'] and trade['direction'] == 'long'
  assert (trade['entry_bar'], trade['exit_bar']) == (1, 4)
  assert (trade['entry_price'], trade['exit_price'], trade['size']) == pytest.approx(
      (100, 110, 100))
  assert trade['pnl'] == pytest.approx(979.0) and trade['fees'] == pytest.approx(21.0)
  # 10 bp slippage: buy at 100.1 (99.9001 units), sell at 109.89.
  slipped = run_backtest(target, open_price, close, fee_rate=0.001, slippage_bps=10.0)
  units = 10_000 / 100.1
  expected = (-units * 100.1 * 0.001 + units * (109.89 - 100.1) - units * 109.89 * 0.001
              + 10_000)
  assert slipped.equity[-1] == pytest.approx(expected, rel=1e-13)


def test_short_selling():
  open_price = np.array([100.0, 100.0, 95.0, 90.0, 90.0])
  close = np.array([100.0, 98.0, 92.0, 91.0, 90.0])
  target = np.array([-1.0, -1.0, 0.0, 0.0, 0.0])
  result = run_backtest(target, open_price, close, slippage_bps=0.0, allow_short=True)
  # Sell 100 units at bar 1's open, 100 (fee 10); buy them back at bar 3's open, 90 (fee 9).
  assert result.units[1] == pytest.approx(-100.0)
  assert result.equity[1] == pytest.approx(10_000 - 10 + 100 * (100 - 98))
  assert result.equity[2] == pytest.approx(10_000 - 10 + 100 * (100 - 92))
  assert result.equity[-1] == pytest.approx(10_000 - 10 - 9 + 100 * 10)
  assert result.trades.iloc[0]['direction'] == 'short'
  assert result.trades.iloc[0]['pnl'] == pytest.approx(981.0)
  with pytest.raises(errors.ConfigError, match='bar 0.*allow_short'):
    run_backtest(target, open_price, close)


def test_partial_resizes_stay_one_trade_and_flips_split():
  open_price = np.array([100.0, 100.0, 110.0, 120.0, 130.0, 125.0, 125.0])
  close = open_price.copy()
  target = np.array([0.5, 1.0, 0.25, -0.5, 0.0, 0.0, 0.0])
  result = run_backtest(target, open_price, close, fee_rate=0.0, slippage_bps=0.0,
                        allow_short=True)
  trades = result.trades
  assert list(trades['direction']) == ['long', 'short'] and trades['closed'].all()
  assert list(trades['entry_bar']) == [1, 4] and list(trades['exit_bar']) == [4, 5]
  equity, units = reference_backtest(target, open_price, close, 0.0, 0.0)
  np.testing.assert_allclose(result.units, units, rtol=1e-13)
  assert trades.iloc[0]['size'] == pytest.approx(abs(units).max())
  assert trades['pnl'].sum() == pytest.approx(equity[-1] - 10_000, rel=1e-12)


def test_open_trade_at_the_end_is_marked_at_the_last_close():
  timestamps = pd.date_range('2024-01-01', periods=5, freq='5min', tz='UTC')
  result = run_backtest([1.0] * 5, [100.0, 100, 101, 102, 103], [100.0, 101, 102, 103, 104],
                        timestamps, fee_rate=0.0, slippage_bps=0.0)
  trade = result.trades.iloc[0]
  assert not trade['closed'] and pd.isna(trade['exit_time'])
  assert trade['entry_time'] == timestamps[1] and trade['exit_price'] == 104.0
  assert trade['pnl'] == pytest.approx(400.0)
  np.testing.assert_allclose(result.equity, result.buy_and_hold_equity)
  as_nanoseconds = run_backtest([1.0] * 5, [100.0] * 5, [100.0] * 5,
                                timestamps.as_unit('ns').asi8)
  assert as_nanoseconds.trades.iloc[0]['entry_time'] == timestamps[1]


def test_buy_and_hold_and_constant_target_do_not_churn():
  target, open_price, close = market(800, seed=5)
  result = run_backtest(np.full(800, 0.5), open_price, close, slippage_bps=0.0)
  assert np.count_nonzero(result.traded_units) == 1  # drift is not rebalanced by default
  hold = result.buy_and_hold_equity
  units = 10_000 / open_price[1]
  np.testing.assert_allclose(hold[1:], units * close[1:] - 10.0, rtol=1e-12)
  assert result.buy_and_hold_stats['trades'] == 1
  assert result.buy_and_hold_stats['exposure'] == pytest.approx(799 / 800)
  # The closed-form buy-and-hold is the engine's constant target of 1.
  slipped = run_backtest(np.ones(800), open_price, close, slippage_bps=7.0)
  np.testing.assert_allclose(slipped.buy_and_hold_equity, slipped.equity, rtol=1e-13)
  assert slipped.buy_and_hold_stats == slipped.stats
  churn = run_backtest(np.full(800, 0.5), open_price, close, rebalance_threshold=0.0)
  assert np.count_nonzero(churn.traded_units) > 700
  del target


def test_invalid_inputs_are_clear_errors():
  target, open_price, close = market(50, seed=6, levels=(0.0, 1.0))
  with_nan = close.copy()
  with_nan[7] = np.nan
  with pytest.raises(errors.DataError, match=r'close.*first at bar 7'):
    run_backtest(target, open_price, with_nan)
  nan_target = target.copy()
  nan_target[3] = np.nan
  with pytest.raises(errors.DataError, match='target'):
    run_backtest(nan_target, open_price, close)
  with pytest.raises(errors.DataError, match='49 bars but target has 50'):
    run_backtest(target, open_price[:-1], close)
  negative = open_price.copy()
  negative[11] = 0.0
  with pytest.raises(errors.DataError, match='non-positive.*bar 11'):
    run_backtest(target, negative, close)
  too_big = target.copy()
  too_big[9] = 1.5
  with pytest.raises(errors.ConfigError, match='bar 9'):
    run_backtest(too_big, open_price, close, allow_short=True)
  with pytest.raises(errors.ConfigError, match='fee_rate'):
    run_backtest(target, open_price, close, fee_rate=-0.1)
  with pytest.raises(errors.DataError, match='timestamps'):
    run_backtest(target, open_price, close, pd.date_range('2024-01-01', periods=3, freq='5min'))


def daily_market(days=3 * 365, seed=11):
  """Daily closes with a drift (Sharpe about 1), a switching target, and a few missing days."""
  rng = np.random.default_rng(seed)
  dates = pd.date_range('2020-01-01', periods=days, freq='D', tz='UTC')
  keep = np.ones(days, bool)
  keep[rng.choice(np.arange(5, days - 5), 20, replace=False)] = False  # holes of whole days
  close = 100 * np.exp(np.cumsum(rng.normal(0.0008, 0.02, days)))[keep]
  open_price = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.002, keep.sum()))
  target = (rng.random(keep.sum()) < 0.8).astype(float)
  target = pd.Series(target).rolling(10, min_periods=1).max().to_numpy()  # few switches
  return target, open_price, close, dates[keep]


def test_daily_bars_annualise_by_the_calendar():
  """The issue's case: daily bars used to annualise with 105,120 bars a year (Sharpe ~17x)."""
  target, open_price, close, dates = daily_market()
  result = run_backtest(target, open_price, close, dates)
  equity, _ = reference_backtest(target, open_price, close, 0.001, engine.DEFAULT_SLIPPAGE_BPS)
  np.testing.assert_allclose(result.equity, equity, rtol=1e-11)
  # Independent: the equity on every calendar day (carried over the missing days), daily returns,
  # sqrt(365.25) days a year; the annual return compounds over the calendar span.
  daily = pd.Series(equity, index=dates).asfreq('D').ffill().pct_change().dropna()
  sharpe = daily.mean() / daily.std() * np.sqrt(365.25)
  assert 0.3 < sharpe < 3
  assert result.stats['sharpe'] == pytest.approx(sharpe, rel=0.05)
  years = (dates[-1] - dates[0]) / pd.Timedelta(days=365.25)
  assert result.stats['years'] == pytest.approx(years, rel=1e-12)
  assert result.stats['bars_per_year'] == pytest.approx(365.25)
  assert result.stats['annual_return'] == pytest.approx(
      (equity[-1] / equity[0]) ** (1 / years) - 1, rel=1e-9)
  hold = pd.Series(result.buy_and_hold_equity, index=dates).asfreq('D').ffill().pct_change()
  assert result.buy_and_hold_stats['sharpe'] == pytest.approx(
      hold.mean() / hold.std() * np.sqrt(365.25), rel=0.05)
  # Per bar, the mean / std scaled by sqrt(bars a year of the grid), as documented.
  per_bar = pd.Series(equity).pct_change().dropna()
  assert result.stats['sharpe'] == pytest.approx(
      per_bar.mean() / per_bar.std() * np.sqrt(365.25), rel=1e-9)


def test_store_holes_are_accepted_and_span_the_calendar():
  """5-minute bars as the store holds them: filled bars on the grid and a long hole (a segment)."""
  from quantum_alpha_jax.data import klines  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(12)
  times = pd.date_range('2024-01-01', periods=3000, freq='5min', tz='UTC')
  keep = np.ones(3000, bool)
  keep[100:103] = False  # filled (within fill_limit_bars)
  keep[1000:2000] = False  # a long hole: a new segment
  close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, 3000)))
  source = pd.DataFrame({'timestamp': times, 'open': close, 'high': close * 1.001,
                         'low': close * 0.999, 'close': close, 'volume': 1.0})[keep]
  frame, _ = klines.regularize(source.reset_index(drop=True), fill_limit_bars=72)
  assert frame['segment'].nunique() == 2 and (~frame['observed']).sum() == 3
  target = np.r_[0.0, np.ones(len(frame) - 1)]
  result = run_backtest(target, frame['open'], frame['close'], frame['timestamp'],
                        observed=frame['observed'].to_numpy())
  span = frame['timestamp'].iloc[-1] - frame['timestamp'].iloc[0]
  assert result.stats['years'] == pytest.approx(span / pd.Timedelta(days=365.25), rel=1e-12)
  assert result.stats['bars_per_year'] == pytest.approx(365.25 * 288)
  returns = pd.Series(result.equity).pct_change().dropna()
  assert result.stats['sharpe'] == pytest.approx(
      returns.mean() / returns.std() * np.sqrt(365.25 * 288), rel=1e-9)


def test_off_grid_spacing_is_refused_and_bars_per_year_overrides():
  target, open_price, close = market(60, seed=13, levels=(0.0, 1.0))
  times = pd.date_range('2024-01-01', periods=60, freq='5min', tz='UTC')
  skewed = times.as_unit('ns').asi8.copy()
  skewed[30:] += 2 * 60 * 10**9  # one 7-minute step on a 5-minute grid
  with pytest.raises(errors.DataError, match=r'not a multiple of the 0 days 00:05:00 grid.*'
                     r'regularize.*bars_per_year'):
    run_backtest(target, open_price, close, skewed)
  with pytest.raises(errors.DataError, match='not strictly increasing'):
    run_backtest(target, open_price, close, times[::-1])
  # The explicit override annualises by bar count, as before, and accepts any timestamps.
  equity, _ = reference_backtest(target, open_price, close, 0.001, engine.DEFAULT_SLIPPAGE_BPS)
  returns = pd.Series(equity).pct_change().dropna()
  for timestamps in (skewed, None):
    result = run_backtest(target, open_price, close, timestamps, bars_per_year=252)
    assert result.stats['sharpe'] == pytest.approx(
        returns.mean() / returns.std() * np.sqrt(252), rel=1e-9)
    assert result.stats['annual_return'] == pytest.approx(
        (equity[-1] / equity[0]) ** (252 / 59) - 1, rel=1e-9)
    assert result.stats['bars_per_year'] == 252 and result.config['bars_per_year'] == 252
  with pytest.raises(errors.ConfigError, match='bars_per_year'):
    run_backtest(target, open_price, close, times, bars_per_year=0)


@pytest.mark.parametrize('threshold', [None, 0.0])
def test_filled_bars_never_fill(threshold):
  """Bars 2 and 3 fill a hole (their open copies bar 1's close): the buy decided at bar 1's close
  waits for bar 4's open; the sale decided at bar 4's close fills at bar 5's open."""
  open_price = np.array([100.0, 101.0, 102.0, 102.0, 104.0, 110.0])
  close = np.array([100.5, 102.0, 102.0, 102.0, 105.0, 111.0])
  observed = np.array([True, True, False, False, True, True])
  target = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
  result = run_backtest(target, open_price, close, fee_rate=0.001, slippage_bps=0.0,
                        rebalance_threshold=threshold, observed=observed)
  units = 10_000 / 104.0  # all in at bar 4's open; the fee (10) is paid from cash
  expected = [10_000.0] * 4 + [units * 105.0 - 10.0, units * 110.0 * (1 - 0.001) - 10.0]
  np.testing.assert_allclose(result.equity, expected, rtol=1e-12)
  np.testing.assert_array_equal(np.flatnonzero(result.traded_units), [4, 5])
  assert result.fill_price[4] == 104.0 and result.trades.iloc[0]['entry_bar'] == 4
  # Buy-and-hold defers its buy too (bar 1 filled here): it buys at bar 2's open.
  early_hole = np.array([True, False, True, True, True, True])
  hold = run_backtest(target, open_price, close, slippage_bps=0.0, observed=early_hole)
  np.testing.assert_allclose(hold.buy_and_hold_equity[2:], 10_000 / 102.0 * close[2:] - 10.0,
                             rtol=1e-12)
  assert hold.buy_and_hold_equity[1] == 10_000.0


@pytest.mark.parametrize('threshold', [None, 0.05])
def test_filled_bars_match_the_reference_loop(threshold):
  target, open_price, close = market(4000, seed=14, levels=(-1.0, 0.0, 0.5, 1.0), switch=0.05)
  rng = np.random.default_rng(14)
  observed = rng.random(4000) > 0.15
  result = run_backtest(target, open_price, close, slippage_bps=3.0, allow_short=True,
                        rebalance_threshold=threshold, observed=observed)
  equity, units = reference_backtest(target, open_price, close, 0.001, 3.0, threshold=threshold,
                                     observed=observed)
  np.testing.assert_allclose(result.equity, equity, rtol=1e-11)
  np.testing.assert_allclose(result.units, units, rtol=1e-11, atol=1e-15)
  assert not np.any(result.traded_units[~observed])
  assert np.count_nonzero(result.traded_units) > 100
  batch = fills.simulate_batch(np.stack([target, target]), np.stack([open_price, open_price]),
                               slippage_bps=3.0, observed=np.stack([observed, observed]))
  if threshold is None:
    np.testing.assert_allclose(batch['units'][1], units, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize('levels', [(-1.0, 0.0, 1.0), (-1.0, -0.3, 0.0, 0.4, 1.0)])
def test_matches_backtesting_py(levels):
  target, open_price, close = market(3000, seed=7, levels=levels)
  ours = run_backtest(target, open_price, close, fee_rate=0.001, slippage_bps=0.0,
                      allow_short=True)
  reference = crosscheck.run_backtesting_py(target, open_price, close, 0.001)
  final_equity, trade_count = reference['final_equity'], reference['trades']
  # Orders rounded to whole satoshis: ~1e-9 relative.
  assert ours.equity[-1] == pytest.approx(final_equity, rel=1e-7)
  assert abs(ours.equity[-1] / 10_000 - 1) > 1e-3  # the comparison is not trivially flat
  if len(levels) == 3:  # no partial resizes: backtesting.py counts the same round trips
    assert ours.stats['trades'] == trade_count > 20


def test_write_report(tmp_path):
  target, open_price, close = market(9000, seed=8)
  timestamps = pd.date_range('2024-01-01', periods=9000, freq='5min', tz='UTC')
  result = run_backtest(target, open_price, close, timestamps, allow_short=True)
  ablation = pd.DataFrame({'variant': ['full', 'no fees'], 'sharpe': [0.5, np.nan]})
  paths = report.write_report(result, tmp_path / 'report', 'Test run', {'ablation': ablation})
  for name in ('equity', 'drawdown', 'positions', 'monthly_returns', 'trades', 'results',
               'report'):
    assert paths[name].exists() and paths[name].stat().st_size > 0, name

  def refuse(constant):
    raise AssertionError(f'{constant} in results.json')

  results = json.loads(paths['results'].read_text(), parse_constant=refuse)
  assert results['strategy']['final_equity'] == pytest.approx(result.equity[-1])
  assert results['tables']['ablation'][1]['sharpe'] is None
  assert len(pd.read_csv(paths['trades'])) == len(result.trades)
  text = paths['report'].read_text()
  for needle in ('![equity](equity.png)', '![monthly returns](monthly_returns.png)',
                 '| Sharpe |', '## ablation', '| no fees | n/a |'):
    assert needle in text
  untimed = run_backtest(target[:300], open_price[:300], close[:300], allow_short=True)
  untimed_paths = report.write_report(untimed, tmp_path / 'untimed')
  assert 'monthly_returns' not in untimed_paths
  assert 'no monthly chart' in untimed_paths['report'].read_text()
  months = report.monthly_returns(result)
  assert len(months) == 2  # 9000 bars from 1 January: January and part of February
  assert (1 + months['strategy']).prod() == pytest.approx(result.equity[-1] / 10_000)
