"""The Strategist's trades and what they must beat: per-symbol backtests of its positions, of
buy-and-hold and of the causal heuristics (its own teachers among them) on the same bars, and the
paired comparison with the strongest of them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.tasks.strategist.rollout import OPEN
from quantum_alpha_jax.tasks.strategist.task import StrategistTask


def symbol_grids(arrays: windows.WindowArrays, rows: np.ndarray
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Per symbol, in time order: ``(positions into rows, every bar from the symbol's first to its
  last row (the backtest's grid), where each of those rows lies in the grid)``."""
  symbol = np.asarray(arrays.symbol)[rows]
  out = {}
  for s in np.unique(symbol):
    where = np.flatnonzero(symbol == s)
    grid = np.arange(rows[where[0]], rows[where[-1]] + 1)
    out[arrays.symbols[s]] = (where, grid, rows[where] - grid[0])
  return out


def run_on_grid(task: StrategistTask, arrays: windows.WindowArrays, grid: np.ndarray,
                 targets: np.ndarray) -> engine.BacktestResult:
  return engine.run_backtest(
      targets, np.asarray(arrays.features[grid, OPEN], np.float64),
      np.asarray(arrays.close)[grid], np.asarray(arrays.timestamp)[grid],
      observed=np.asarray(arrays.observed, bool)[grid], fee_rate=task.spec.fee_rate,
      slippage_bps=task.spec.slippage_bps, allow_short=task.spec.allow_short)


def backtest_positions(task: StrategistTask, arrays: windows.WindowArrays, rows: np.ndarray,
                       positions: np.ndarray) -> dict[str, engine.BacktestResult]:
  """Per symbol, ``run_backtest`` of target ``positions [bars]`` aligned with ``rows``, on every
  bar from the symbol's first to its last row: a bar with no position (not usable) is flat."""
  results = {}
  lowest = -1.0 if task.spec.allow_short else 0.0
  for name, (where, grid, slots) in symbol_grids(arrays, rows).items():
    targets = np.zeros(grid.size)
    targets[slots] = np.clip(positions[where], lowest, 1.0)
    results[name] = run_on_grid(task, arrays, grid, targets)
  return results


STATS = ('total_return', 'sharpe', 'max_drawdown', 'win_rate', 'profit_factor', 'trades',
          'exposure', 'annual_return', 'fees_paid',
          # What a sweep's Deflated Sharpe Ratio reads beside the Sharpe (sweep/report.py).
          'bars', 'bars_per_year', 'skewness', 'kurtosis')


def select_stats(result_stats: Mapping[str, Any]) -> dict[str, Any]:
  return {key: result_stats.get(key) for key in STATS}


def heuristic_results(task: StrategistTask, arrays: windows.WindowArrays, rows: np.ndarray,
                      seed: int = 0) -> dict[str, dict[str, engine.BacktestResult]]:
  """The causal heuristics (size 1, from flat) over the whole split, per symbol, on the same grid
  as :func:`backtest_positions` (flat on bars that are not usable): trend, mean reversion, random,
  and every momentum rule among the task's behaviours (the model must beat its own teachers too)."""
  rules = [(name, None) for name in trajectories.HEURISTICS]
  rules += [(name, parameter) for name, policy, parameter, _ in task.spec.behaviour_table
            if policy == 'momentum']
  out = {}
  for name, parameter in rules:
    per_symbol = {}
    for symbol, (where, grid, slots) in symbol_grids(arrays, rows).items():
      targets = np.zeros(grid.size)
      features = arrays.features[rows[where]]
      if parameter is None:
        targets[slots] = trajectories.heuristic_positions(name, features, task.spec.allow_short,
                                                          seed=seed)
      else:
        targets[slots] = trajectories.momentum_levels(
            np.asarray(features, np.float64)[None], np.zeros(1), task.spec.allow_short,
            *parameter)[0]
      per_symbol[symbol] = run_on_grid(task, arrays, grid, targets)
    out[name] = per_symbol
  return out


def daily_log_returns(result: engine.BacktestResult, equity: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """``(day, log return)`` per calendar day (UTC) of an equity curve marked at each close (the
  engine trades from bar 1, so bar 0's equity is the initial capital)."""
  equity = np.asarray(result.equity if equity is None else equity, np.float64)
  step = np.diff(np.log(equity), prepend=np.log(equity[0]))
  days = intervals.day_blocks(result.timestamps.asi8)
  unique, inverse = np.unique(days, return_inverse=True)
  return unique, np.bincount(inverse, weights=step)


def versus_best_policy(strategist_results: Mapping[str, engine.BacktestResult],
                       heuristics: Mapping[str, Mapping[str, engine.BacktestResult]]
                       ) -> dict[str, Any]:
  """The Strategist's mean daily log return (per symbol-day, after fees) minus that of the
  strongest naive policy on this split (buy-and-hold or a heuristic, by mean total return over
  symbols: the harshest choice for the model), with a paired block-bootstrap interval over days."""
  candidates = {'buy_and_hold': {symbol: (result, result.buy_and_hold_equity)
                                 for symbol, result in strategist_results.items()}}
  candidates.update({name: {symbol: (result, result.equity) for symbol, result in per.items()}
                     for name, per in heuristics.items()})
  total = lambda per: float(np.mean([equity[-1] / equity[0] for _, equity in per.values()]))
  best = max(candidates, key=lambda name: total(candidates[name]))
  ours, theirs, days = [], [], []
  for symbol, result in strategist_results.items():
    day, model = daily_log_returns(result)
    other_result, other_equity = candidates[best][symbol]
    _, baseline = daily_log_returns(other_result, other_equity)
    ours.append(model), theirs.append(baseline), days.append(day)
  return {'baseline': best, 'metric': 'daily log return after fees (mean over symbol-days)',
          **intervals.paired_difference(np.concatenate(ours), np.concatenate(theirs),
                                        np.concatenate(days))}


def mean_over_symbols(per_symbol: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
  values = [entry.get(key) for entry in per_symbol.values() if entry.get(key) is not None]
  return float(np.mean(values)) if values else None

