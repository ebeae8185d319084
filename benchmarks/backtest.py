"""A year of 5-minute bars (105,120) through run_backtest, backtesting.py and vectorbt, side by side.

  python -m benchmarks.backtest [--bars 105120] [--switch 0.01] [--repeats 10]
                                [--reference-repeats 3] [--seed 0] [--rounds 3] [--threads 2]

The signal is random but persistent: each bar it is redrawn from {0, 0.5, 1} with probability
``--switch``. Three children, alternated by ``benchmarks.side_by_side.alternate`` for ``--rounds``
rounds on the same pinned CPUs:

- ``ours``: ``engine.run_backtest`` (the float64 scan, the trade list, stats and buy-and-hold), the
  first call (jit compile + run) and the median of ``--repeats`` steady calls, and the scan alone;
- ``backtesting``: backtesting.py on the same orders (``crosscheck.run_backtesting_py``: aligned as
  in backtest/engine.py's docstring, next-open fills), median of ``--reference-repeats`` runs;
- ``vectorbt``: ``vbt.Portfolio.from_orders`` on the same target series, ``size_type=
  'targetpercent'``, the same fee, orders placed at bar t+1 at its open (``price=open``) and equity
  marked at the closes (``pf.value()``), median of ``--repeats`` calls. vectorbt is numba-compiled:
  one untimed warm-up call in the child first compiles it (or loads numba's on-disk cache), and that
  time is reported apart, not in the median.

Final equity must agree: backtesting.py to ~1e-9 (satoshi rounding). vectorbt sizes a
``targetpercent`` order so that the fee fits in the cash it has (it buys ``1/(1+fee)`` of an all-in
order), where this engine lets cash go to ``-fee``; so each child also runs once with fee 0, where
the rules coincide and the three agree to ~1e-12. Targets: <= 1 s and >= 10x backtesting.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings

import numpy as np
import pandas as pd

from benchmarks import side_by_side

TARGET_SECONDS = 1.0
TARGET_SPEEDUP = 10.0
FEE_RATE = 0.001
INITIAL_CAPITAL = 10_000.0


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


def _ours(args, target, open_price, close) -> dict:
  from quantum_alpha_jax.backtest import engine  # pylint: disable=g-import-not-at-top
  timestamps = pd.date_range('2023-01-01', periods=args.bars, freq='5min', tz='UTC')
  options = dict(fee_rate=FEE_RATE, slippage_bps=0.0, initial_capital=INITIAL_CAPITAL)
  start = time.perf_counter()
  result = engine.run_backtest(target, open_price, close, timestamps, **options)
  first_seconds = time.perf_counter() - start
  whole, scan = [], []
  for _ in range(args.repeats):
    start = time.perf_counter()
    result = engine.run_backtest(target, open_price, close, timestamps, **options)
    whole.append(time.perf_counter() - start)
    start = time.perf_counter()
    engine.simulate(target, open_price, INITIAL_CAPITAL, FEE_RATE, 0.0, None)
    scan.append(time.perf_counter() - start)
  free = engine.run_backtest(target, open_price, close, timestamps,
                             **dict(options, fee_rate=0.0))
  seconds = statistics.median(whole)
  return {'seconds': seconds, 'scan_seconds': statistics.median(scan),
          'compile_seconds': first_seconds - seconds, 'final_equity': float(result.equity[-1]),
          'final_equity_no_fee': float(free.equity[-1]), 'trades': int(result.stats['trades'])}


def _backtesting(args, target, open_price, close) -> dict:
  import backtesting  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.backtest import crosscheck  # pylint: disable=g-import-not-at-top
  runs = [crosscheck.run_backtesting_py(target, open_price, close, FEE_RATE, INITIAL_CAPITAL)
          for _ in range(args.reference_repeats)]
  free = crosscheck.run_backtesting_py(target, open_price, close, 0.0, INITIAL_CAPITAL)
  return {'seconds': statistics.median(run['seconds'] for run in runs),
          'final_equity': runs[0]['final_equity'], 'final_equity_no_fee': free['final_equity'],
          'trades': runs[0]['trades'], 'version': backtesting.__version__}


def vectorbt_orders(target: np.ndarray) -> np.ndarray:
  """Order sizes (fraction of equity) per bar for vectorbt: the target decided at bar t's close is
  ordered at bar t+1 (filled at its open), only when it changed (a flat start); NaN = no order."""
  decided = np.r_[0.0, target[:-1]]
  before = np.r_[0.0, decided[:-1]]
  return np.where(decided != before, decided, np.nan)


def _vectorbt(args, target, open_price, close) -> dict:
  import vectorbt as vbt  # pylint: disable=g-import-not-at-top
  size = vectorbt_orders(target)

  def run(fee_rate):
    portfolio = vbt.Portfolio.from_orders(
        close=close, size=size, size_type='targetpercent', price=open_price, fees=fee_rate,
        init_cash=INITIAL_CAPITAL, freq='5min')
    return np.asarray(portfolio.value()), portfolio

  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    start = time.perf_counter()
    run(FEE_RATE)  # numba compile, or load of numba's on-disk cache
    warmup_seconds = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      value, portfolio = run(FEE_RATE)
      times.append(time.perf_counter() - start)
    free, _ = run(0.0)
  return {'seconds': statistics.median(times), 'warmup_seconds': warmup_seconds,
          'final_equity': float(value[-1]), 'final_equity_no_fee': float(free[-1]),
          'trades': int(portfolio.trades.count()), 'version': vbt.__version__}


CHILDREN = {'ours': _ours, 'backtesting': _backtesting, 'vectorbt': _vectorbt}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--bars', type=int, default=105_120)
  parser.add_argument('--switch', type=float, default=0.01)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--reference-repeats', type=int, default=3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--peers', default='backtesting,vectorbt')
  parser.add_argument('--child', choices=sorted(CHILDREN), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    side_by_side.apply_threads()
    side_by_side.emit(CHILDREN[args.child](args, *make_market(args.bars, args.switch, args.seed)))
    return

  target = make_market(args.bars, args.switch, args.seed)[0]
  print(f'{args.bars:,} bars, {int(np.count_nonzero(np.diff(target))):,} target changes, fee '
        f'{FEE_RATE:g} per side, no slippage, fills at the next open')
  peers = [name for name in args.peers.split(',') if name]
  unknown = sorted(set(peers) - set(CHILDREN) | ({'ours'} & set(peers)))
  if unknown:
    raise SystemExit(f'--peers: unknown {unknown}; choose from backtesting,vectorbt')
  missing = [name for name in peers if importlib.util.find_spec(name) is None]
  if missing:
    print(f'not installed, left out: {", ".join(missing)} (pip install -e .[bench])')
    peers = [name for name in peers if name not in missing]
  common = [f'--{k.replace("_", "-")}={getattr(args, k)}' for k in
            ('bars', 'switch', 'repeats', 'reference_repeats', 'seed')]
  sides = {name: ['-m', 'benchmarks.backtest', '--child', name, *common]
           for name in ['ours', *peers]}
  threads = len(side_by_side.cpu_list(args.threads))
  results = side_by_side.alternate(sides, args.rounds, threads)
  ours = results['ours']
  median = side_by_side.median
  print(f'\n{threads} threads, {args.rounds} alternating rounds, medians:')
  print(f'{"engine":22s} {"seconds":>9s} {"final equity":>14s} {"rel. diff":>9s} '
        f'{"no-fee equity":>14s} {"rel. diff":>9s} {"trades":>7s}  {"ours ahead":>10s}')
  for name, runs in results.items():
    first = runs[0]
    label = name if name == 'ours' else f'{name} {first["version"]}'
    difference = abs(first['final_equity'] / ours[0]['final_equity'] - 1)
    free = abs(first['final_equity_no_fee'] / ours[0]['final_equity_no_fee'] - 1)
    ratio = ('' if name == 'ours' else
             f'{side_by_side.median_ratio(ours, runs, "seconds", higher_is_better=False):9.1f}x')
    print(f'{label:22s} {median(runs, "seconds"):9.4f} {first["final_equity"]:14.4f} '
          f'{difference:9.1e} {first["final_equity_no_fee"]:14.4f} {free:9.1e} '
          f'{first["trades"]:7d}  {ratio:>10s}')
  print(f'\nours: first call {median(ours, "compile_seconds"):.3f} s of jit compile; steady '
        f'{median(ours, "seconds"):.4f} s (target <= {TARGET_SECONDS:g} s), the scan alone '
        f'{median(ours, "scan_seconds"):.4f} s')
  if 'vectorbt' in results:
    print(f'vectorbt: warm-up call (numba compile or cache load, not timed above) '
          f'{median(results["vectorbt"], "warmup_seconds"):.2f} s')
  if 'backtesting' in results:
    ratio = side_by_side.median_ratio(ours, results['backtesting'], 'seconds', False)
    print(f'speed-up over backtesting.py: {ratio:.1f}x (target >= {TARGET_SPEEDUP:g}x)')


if __name__ == '__main__':
  main()
