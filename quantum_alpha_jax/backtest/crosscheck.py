"""The same target series through backtesting.py (an independent engine), for tests and benchmarks.

Alignment with ``engine.run_backtest`` (see its docstring): market orders fill at the next open
(``trade_on_close=False``), commission on each fill's notional, no slippage; backtesting.py trades
whole units, so ``FractionalBacktest`` trades satoshis (``FRACTIONAL_UNIT``) at scaled prices, and
the strategy orders this engine's unit sizes (target × equity at the next open ÷ that open).
``margin=0.5`` lets it pay the fee of an all-in order. backtesting.py is in the ``test`` and
``bench`` extras, not the core install.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

FRACTIONAL_UNIT = 1e-8  # backtesting.py trades whole units: trade satoshis at prices scaled down


def run_backtesting_py(target: np.ndarray, open_price: np.ndarray, close: np.ndarray,
                       fee_rate: float, cash: float = 10_000.0) -> dict[str, float]:
  """backtesting.py on ``target [bars]`` at ``open_price``/``close [bars]``: final equity, closed
  trades (it books each partial resize as a trade) and the seconds its run took."""
  from backtesting import Strategy  # pylint: disable=g-import-not-at-top
  from backtesting.lib import FractionalBacktest  # pylint: disable=g-import-not-at-top

  class FollowTargets(Strategy):
    """At bar i's close, orders target[i] × (equity at bar i+1's open) ÷ that open, in units."""

    def init(self):
      self.last_target = 0.0

    def next(self):
      bar = len(self.data) - 1
      if bar + 1 >= len(target) or target[bar] == self.last_target:
        return
      self.last_target = target[bar]
      held = self.position.size
      next_open = open_price[bar + 1] * FRACTIONAL_UNIT
      equity_at_open = self.equity + held * (next_open - self.data.Close[-1])
      delta = int(round(target[bar] * equity_at_open / next_open)) - held
      if delta > 0:
        self.buy(size=delta)
      elif delta < 0:
        self.sell(size=-delta)

  data = pd.DataFrame({'Open': open_price, 'High': np.maximum(open_price, close),
                       'Low': np.minimum(open_price, close), 'Close': close, 'Volume': 1.0},
                      index=pd.date_range('2023-01-01', periods=len(close), freq='5min'))
  backtest = FractionalBacktest(data, FollowTargets, cash=cash, commission=fee_rate, margin=0.5,
                                trade_on_close=False, hedging=False, exclusive_orders=False,
                                fractional_unit=FRACTIONAL_UNIT)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    start = time.perf_counter()
    stats = backtest.run()
    seconds = time.perf_counter() - start
  return {'final_equity': float(stats['Equity Final [$]']), 'trades': int(stats['# Trades']),
          'seconds': seconds}
