"""Walk-forward windows: calendar cuts, fresh capital per window, and the spread summary."""

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.backtest import walkforward


def _market(days=75, seed=0):
  times = pd.date_range('2024-01-15', periods=days * 288, freq='5min', tz='UTC')
  rng = np.random.default_rng(seed)
  close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, times.size)))
  open_price = np.concatenate([[100.0], close[:-1]])
  return times, open_price, close


def test_monthly_windows_follow_the_calendar_and_restart_from_fresh_capital():
  times, open_price, close = _market()
  cuts = walkforward.windows(times, 'MS', min_bars=288)
  # 2024-01-15 .. 2024-03-29: January (17 days), February (29), March (29).
  assert [str(start.date()) for start, _ in cuts] == ['2024-01-01', '2024-02-01', '2024-03-01']
  assert [index.size for _, index in cuts] == [17 * 288, 29 * 288, 29 * 288]
  assert all(times[index[0]].day == (15 if k == 0 else 1) for k, (_, index) in enumerate(cuts))
  target = (np.arange(times.size) // 500 % 2).astype(float)
  report = walkforward.walk_forward({'toggle': target}, open_price, close, times)
  february = cuts[1][1]
  alone = engine.run_backtest(target[february], open_price[february], close[february],
                              times[february])
  assert report['windows'][1]['toggle']['total_return'] == pytest.approx(
      alone.stats['total_return'], rel=1e-12)
  returns = [row['toggle']['total_return'] for row in report['windows']]
  assert report['summary']['toggle']['total_return']['mean'] == pytest.approx(np.mean(returns))
  assert report['summary']['toggle']['total_return']['std'] == pytest.approx(np.std(returns, ddof=1))
  beat = np.mean([row['toggle']['total_return'] > row['buy_and_hold']['total_return']
                  for row in report['windows']])
  assert report['beat_buy_and_hold']['toggle'] == beat
  table = walkforward.summary_table(report)
  assert list(table.index) == ['toggle', 'buy_and_hold']
  # Hole-filling bars pass through to each window's backtest: no fill at them.
  observed = np.random.default_rng(1).random(times.size) > 0.3
  holes = walkforward.walk_forward({'toggle': target}, open_price, close, times,
                                   observed=observed)
  alone = engine.run_backtest(target[february], open_price[february], close[february],
                              times[february], observed=observed[february])
  assert holes['windows'][1]['toggle']['total_return'] == pytest.approx(
      alone.stats['total_return'], rel=1e-12)
  assert holes['windows'][1]['toggle']['total_return'] != pytest.approx(
      report['windows'][1]['toggle']['total_return'], rel=1e-6)


def test_too_short_a_period_and_a_bad_frequency_are_clear_errors():
  times, open_price, close = _market(days=2)
  with pytest.raises(errors.DataError, match='no MS window'):
    walkforward.walk_forward({'x': np.zeros(times.size)}, open_price, close, times,
                             min_bars=10_000)
  with pytest.raises(errors.ConfigError, match='frequency'):
    walkforward.windows(times, 'not-a-frequency')
