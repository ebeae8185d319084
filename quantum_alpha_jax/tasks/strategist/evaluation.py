"""The Strategist on one split: the free-running rollout's imitation scores, its backtest beside
buy-and-hold and the heuristics, and the conditioning curve (realised against target return).
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from quantum_alpha_jax.backtest import report as report_lib
from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.tasks.strategist.baselines import backtest_positions
from quantum_alpha_jax.tasks.strategist.baselines import heuristic_results
from quantum_alpha_jax.tasks.strategist.baselines import mean_over_symbols
from quantum_alpha_jax.tasks.strategist.baselines import select_stats
from quantum_alpha_jax.tasks.strategist.baselines import versus_best_policy
from quantum_alpha_jax.tasks.strategist.imitation import behaviour_imitation
from quantum_alpha_jax.tasks.strategist.imitation import imitation
from quantum_alpha_jax.tasks.strategist.imitation import teacher_forced_imitation
from quantum_alpha_jax.tasks.strategist.plots import plot_conditioning_curve
from quantum_alpha_jax.tasks.strategist.rollout import Rollout
from quantum_alpha_jax.tasks.strategist.rollout import rollout
from quantum_alpha_jax.tasks.strategist.rollout import split_rows
from quantum_alpha_jax.tasks.strategist.task import StrategistTask


def conditioning_curve(task: StrategistTask, result: Rollout, arrays: windows.WindowArrays
                       ) -> list[dict[str, Any]]:
  """Per target return: the realised discounted return of each episode (from the rollout's own
  fills), its mean and the mean undiscounted episode return, and the per-symbol backtest."""
  spec = task.spec
  curve = []
  # The reward of a bar's decision is paid at the next bar (also across an episode boundary, where
  # the position carries on); the last decision before a flat start is never paid.
  for index, target in enumerate(result.targets):
    reward = np.full(result.reward[index].shape, np.nan)
    reward[:-1] = result.reward[index, 1:]
    reward[:-1][result.flat_start[1:]] = np.nan
    realised, totals = [], []
    for episode in np.unique(result.episode):
      where = np.flatnonzero(result.episode == episode)
      if where.size < task.model.context_length:
        continue  # a cut-short episode at the end of a run
      values = reward[where] / spec.reward_scale
      values = np.where(np.isnan(values), 0.0, values)
      discounts = spec.discount ** np.arange(values.size)
      realised.append(float(np.sum(discounts * values)))
      totals.append(float(np.sum(values)))
    backtests = backtest_positions(task, arrays, result.rows, result.position[index])
    per_symbol = {name: select_stats(r.stats) for name, r in backtests.items()}
    curve.append({
        'target_return': float(target), 'episodes': len(realised),
        'mean_realised_return': float(np.mean(realised)) if realised else None,
        'median_realised_return': float(np.median(realised)) if realised else None,
        'mean_episode_log_return': float(np.mean(totals)) if totals else None,
        'backtest': per_symbol,
        'mean_total_return': mean_over_symbols(per_symbol, 'total_return'),
        'mean_sharpe': mean_over_symbols(per_symbol, 'sharpe'),
        'exposure': mean_over_symbols(per_symbol, 'exposure'),
    })
  return curve



def evaluate(task: StrategistTask, params: Any, split: windows.SplitData,
             train_quantiles: Mapping[str, float], directory: str | pathlib.Path, *,
             conditioning_quantiles: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 0.99),
             curve_max_bars: int = 0, batch_size: int = 64, imitation_max_episodes: int = 0,
             progress: bool = True, seed: int = 0) -> dict[str, Any]:
  """The Strategist on one split: the free-running rollout's agreement with the hindsight oracle
  (and, labelled diagnostic only, the teacher-forced score), its backtest beside buy-and-hold and
  the heuristics, and the conditioning curve (JSON-ready); writes the curve PNG and a backtest
  report per symbol under ``directory``."""

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  arrays, rows, name = split_rows(split)
  report: dict[str, Any] = {'bars': int(rows.size)}
  # The conditioned rollout over the whole split.
  main = rollout(task, params, arrays, rows, [task.target_return], batch_size=batch_size,
                 progress=progress)
  report['rollout'] = {'target_return': task.target_return, 'seconds': main.seconds,
                       'bars_per_second': rows.size / max(main.seconds, 1e-9),
                       'note': 'seconds include the jit compile of the rollout'}
  report['imitation'] = imitation(task, arrays, main)
  report['imitation_behaviour'] = behaviour_imitation(task, arrays, main)
  report['imitation_teacher_forced'] = teacher_forced_imitation(
      task, params, arrays, rows, max_episodes=imitation_max_episodes, seed=seed)
  backtests = backtest_positions(task, arrays, rows, main.position[0])
  report['strategist'] = {symbol: select_stats(result.stats) for symbol, result in backtests.items()}
  report['buy_and_hold'] = {symbol: select_stats(result.buy_and_hold_stats)
                            for symbol, result in backtests.items()}
  heuristics = heuristic_results(task, arrays, rows, seed=seed)
  report['heuristics'] = {name: {symbol: select_stats(result.stats) for symbol, result in per.items()}
                          for name, per in heuristics.items()}
  report['versus_best_baseline'] = versus_best_policy(backtests, heuristics)
  best = max(report['heuristics'], key=lambda h: mean_over_symbols(
      report['heuristics'][h], 'sharpe') or -math.inf)
  report['best_heuristic'] = {'name': best, 'chosen_by': 'mean Sharpe over symbols on this split',
                              'stats': report['heuristics'][best]}
  report['actions'] = {name: float(np.mean(main.action[0] == index))
                       for index, name in enumerate(trajectories.ACTIONS)}
  plots = {}
  for symbol, result in backtests.items():
    report_lib.write_report(result, directory / f'backtest_{symbol}',
                            title=f'Strategist on {name} {symbol}')
    plots[f'backtest_{symbol}'] = str(directory / f'backtest_{symbol}')
  # Realised return against the conditioning return.
  targets = [train_quantiles[f'{level:g}'] for level in conditioning_quantiles
             if f'{level:g}' in train_quantiles]
  curve_rollout = rollout(task, params, arrays, rows, targets, batch_size=batch_size,
                          max_bars_per_symbol=curve_max_bars, progress=progress)
  report['conditioning_curve'] = {
      'quantiles_of_training_returns': list(conditioning_quantiles),
      'max_bars_per_symbol': curve_max_bars or None, 'seconds': curve_rollout.seconds,
      'points': conditioning_curve(task, curve_rollout, arrays)}
  realised = [p['mean_realised_return'] for p in report['conditioning_curve']['points']]
  if len(realised) > 1 and None not in realised and np.ptp(realised) > 0:
    report['conditioning_curve']['spearman_target_vs_realised'] = float(
        pd.Series(targets).corr(pd.Series(realised), method='spearman'))
  plots['conditioning_curve'] = str(plot_conditioning_curve(
      report['conditioning_curve']['points'], train_quantiles,
      directory / 'conditioning_curve.png'))
  report['plots'] = plots
  return report

