"""A year of 5-minute bars (105,120) through run_backtest, and backtesting.py on the same signals.

  python -m benchmarks.backtest [--bars 105120] [--switch 0.01] [--repeats 10]

The signal is random but persistent: each bar it is redrawn from {0, 0.5, 1} with probability
``--switch``. Prints the jit compile time on its own (the first call less a steady one), the steady time of the whole run_backtest
(the scan, the trade list, stats and buy-and-hold) and of the scan alone, then backtesting.py's time
on the same orders (aligned as in backtest/engine.py's docstring) and the ratio. Targets: <= 1 s
and >= 10x backtesting.py.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from quantum_alpha_jax.backtest import crosscheck
from quantum_alpha_jax.backtest import engine

TARGET_SECONDS = 1.0
TARGET_SPEEDUP = 10.0


def make_market(bars: int, switch: float, seed: int):
  """Random-walk open/close [bars] and a persistent random target [bars] in {0, 0.5, 1}."""
  rng = np.random.default_rng(seed)
  close = 30_000 * np.exp(np.cumsum(rng.normal(0, 0.002, bars)))
  open_price = np.r_[30_000.0, close[:-1]] * np.exp(rng.normal(0, 0.0003, bars))
  draws = rng.choice([0.0, 0.5, 1.0], bars)
  target = pd.Series(np.where(rng.random(bars) < switch, draws, np.nan)).ffill().fillna(0.0)
  target = target.to_numpy(copy=True)
  target[0] = 0.0  # backtesting.py first acts at bar 1's close
  return target, open_price, close


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--bars', type=int, default=105_120)
  parser.add_argument('--switch', type=float, default=0.01)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--reference-repeats', type=int, default=3)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  target, open_price, close = make_market(args.bars, args.switch, args.seed)
  timestamps = pd.date_range('2023-01-01', periods=args.bars, freq='5min', tz='UTC')
  options = dict(fee_rate=0.001, slippage_bps=0.0)

  print(f'{args.bars:,} bars, {int(np.count_nonzero(np.diff(target))):,} target changes')
  start = time.perf_counter()
  result = engine.run_backtest(target, open_price, close, timestamps, **options)
  first_seconds = time.perf_counter() - start
  whole, scan = [], []
  for _ in range(args.repeats):
    start = time.perf_counter()
    result = engine.run_backtest(target, open_price, close, timestamps, **options)
    whole.append(time.perf_counter() - start)
    start = time.perf_counter()
    engine.simulate(target, open_price, 10_000.0, 0.001, 0.0, None)
    scan.append(time.perf_counter() - start)
  whole_seconds, scan_seconds = statistics.median(whole), statistics.median(scan)
  print(f'first run_backtest call {first_seconds:.3f} s: jit compile '
        f'{first_seconds - whole_seconds:.3f} s + run')
  print(f'run_backtest, steady (median of {args.repeats}): {whole_seconds:.4f} s '
        f'(target <= {TARGET_SECONDS:g} s); the scan alone {scan_seconds:.4f} s')
  print(f'  final equity {result.equity[-1]:,.4f}, {result.stats["trades"]:,} trades')
  try:
    import backtesting  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    print('backtesting.py is not installed (pip install backtesting): no comparison')
    return
  runs = [crosscheck.run_backtesting_py(target, open_price, close, options['fee_rate'])
          for _ in range(args.reference_repeats)]
  seconds = statistics.median(run['seconds'] for run in runs)
  final_equity, trades = runs[0]['final_equity'], runs[0]['trades']
  print(f'backtesting.py {backtesting.__version__} (median of {len(runs)}): {seconds:.3f} s, '
        'final equity '
        f'{final_equity:,.4f}, {trades:,} closed trades '
        f'(relative difference {abs(final_equity / result.equity[-1] - 1):.1e})')
  print(f'speed-up: {seconds / whole_seconds:.1f}x (target >= {TARGET_SPEEDUP:g}x)')


if __name__ == '__main__':
  main()
