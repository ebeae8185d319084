"""The ensemble backtest experiment: saved models → per-bar signals → ablation → report.

1. Each model named in ``config.checkpoints`` (an empty path switches it off) is loaded from its
   run directory (the ``load`` of its entry in :mod:`quantum_alpha_jax.tasks.registry`) and
   produces its per-bar signals over ``config.split`` of ``config.data`` (the entry's
   ``bar_signals``: each row reads bars up to its own only; columns ``signal_columns``).
2. The bars are the price grid of the split: every bar of the store opening in
   ``[start, end)`` of ``config.split``, whatever the models (buy-and-hold runs on the same
   bars). Each model's signals are joined onto that grid (a left join): a model never removes a
   bar, and whether a bar has a model's signal depends on bars up to it alone (its past window is
   usable: not in a segment's warm-up after a data hole, nor the first ``window - 1`` bars).
3. The ensemble rule (``backtest/ensemble.py``) turns the signals into targets for the full
   ensemble and every ablation row whose models are loaded; at a bar where one of a row's models
   has no signal that row is flat (no position, decided from the past alone). The causal
   heuristics of the Strategist's behaviour mixture (trend following, mean reversion;
   ``data/trajectories.py``) run on the same bars, flat where the bar's features are not usable. Every target series is backtested per symbol with equal capital and summed
   into a portfolio (``backtest/portfolio.py``), after fees and slippage, beside buy-and-hold.
4. Walk-forward: the same targets re-evaluated in calendar windows (``backtest/walkforward.py``),
   with the mean and spread of each statistic.

Outputs in the workdir: ``results.json``, ``trades.csv`` (the ensemble's trades), ``report.md``
(ablation, per-symbol and walk-forward tables, pictures), ``equity.png`` (every strategy's
portfolio equity beside buy-and-hold), ``signals.parquet`` and, per symbol, the engine's report of
the ensemble (equity, drawdown, positions over price, monthly returns).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

from absl import logging
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax import artifacts
from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import ensemble
from quantum_alpha_jax.backtest import portfolio
from quantum_alpha_jax.backtest import report as report_lib
from quantum_alpha_jax.backtest import walkforward
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.train import checkpoint as checkpoint_lib

HEURISTICS = ('trend', 'mean_reversion')


def _columns(name: str) -> tuple[str, ...]:
  """The signal columns of model ``name`` (its registry entry's ``signal_columns``)."""
  return registry.get(name).signal_columns


def _check_workdir(name: str, workdir: pathlib.Path) -> None:
  if not (workdir / 'checkpoints').is_dir():
    raise errors.ConfigError(errors.describe(
        f'config.checkpoints.{name}', f'{workdir} holds no trained run',
        f'train it first (python -m experiments.{name} --config=configs/{name}.py[:quick] '
        f'--workdir={workdir}), or set --config.checkpoints.{name}="" to leave it out'))


def run_model(workdir: str | pathlib.Path, role: str) -> str:
  """The registered model of the run in ``workdir`` (its ``results.json``'s ``model``), or
  ``role`` for a run that has none yet."""
  path = pathlib.Path(workdir) / 'results.json'
  if path.is_file():
    try:
      return str(json.loads(path.read_text()).get('model') or role)
    except json.JSONDecodeError:
      return role
  return role


def model_signals(name: str, workdir: str | pathlib.Path, data_config: ml_collections.ConfigDict,
                  split: str, *, batch_size: int = 1024, progress: bool = True) -> pd.DataFrame:
  """The per-bar signals of the run saved in ``workdir`` over ``split`` of ``data_config``, for
  the ensemble's role ``name``. Any registered model whose signals have the role's columns fills
  it: an LSTM or linear forecaster's run in the Oracle's place, found by its own name
  (:func:`run_model`) in the task registry."""
  if name not in ensemble.COMPONENTS:
    raise errors.ConfigError(errors.describe('config.checkpoints', f'unknown model {name!r}',
                                             f'use {ensemble.COMPONENTS}'))
  workdir = pathlib.Path(workdir)
  _check_workdir(name, workdir)
  model = run_model(workdir, name)
  entry = registry.get(model)
  if tuple(entry.signal_columns) != tuple(_columns(name)):
    raise errors.ConfigError(errors.describe(
        f'config.checkpoints.{name}', f'{workdir} is a {model} run, whose signals '
        f'{tuple(entry.signal_columns)} cannot stand for the {name}\'s {_columns(name)}',
        f'give a run of a model with the {name}\'s signals'))
  task, params, config = entry.load(workdir)
  return entry.bar_signals(task, params, config, checkpoint_lib.read_run_record(workdir),
                           data_config, split, batch_size=batch_size, progress=progress)


def split_range(data_config: ml_collections.ConfigDict, name: str) -> windows.Split:
  """The time range ``[start, end)`` of split ``name`` of ``data_config.splits``."""
  splits = {split.name: split for split in windows.splits_from_config(data_config.splits)}
  if name not in splits:
    raise errors.ConfigError(errors.describe('config.split', f'no split {name!r}',
                                             f'use one of {sorted(splits)}'))
  return splits[name]


def join_signals(signals: Mapping[str, pd.DataFrame], frames: Mapping[str, pd.DataFrame],
                 split: windows.Split | None = None) -> pd.DataFrame:
  """One row per bar of ``frames`` opening inside ``split`` (every bar when None): the price
  grid, which no model changes. Each row carries the bar's open, close, ``observed`` and
  ``usable`` flags (the store's ``valid``: the features are usable) and raw features, and every
  model's signal columns, NaN where the model has no signal for the bar (a left join). Sorted by
  symbol, then time."""
  if not signals:
    raise errors.ConfigError(errors.describe(
        'config.checkpoints', 'no model to backtest', 'give at least one checkpoint directory'))
  parts = []
  for symbol, frame in frames.items():
    times = pd.to_datetime(frame[schema.TIMESTAMP], utc=True)
    inside = np.ones(len(frame), bool) if split is None else (
        (times >= split.start) & (times < split.end)).to_numpy()
    part = frame.loc[inside, [schema.TIMESTAMP, 'open', 'close', *FEATURES]]
    part = part.loc[:, ~part.columns.duplicated()].assign(symbol=symbol)
    part[schema.OBSERVED] = (frame.loc[inside, schema.OBSERVED].to_numpy(bool)
                             if schema.OBSERVED in frame else True)
    part['usable'] = (frame.loc[inside, schema.VALID].to_numpy(bool) if schema.VALID in frame
                      else np.isfinite(part[list(FEATURES)].to_numpy(np.float64)).all(1))
    parts.append(part)
  joined = pd.concat(parts, ignore_index=True)
  joined[schema.TIMESTAMP] = pd.to_datetime(joined[schema.TIMESTAMP], utc=True)
  joined = joined.sort_values(['symbol', schema.TIMESTAMP], kind='stable').reset_index(drop=True)
  where = f'the {split.name!r} split' if split is not None else 'the data'
  if len(joined) < 2:
    raise errors.DataError(errors.describe(
        'backtest', f'{where} holds {len(joined)} bars of {sorted(frames)}',
        'widen the split or check that the store covers it'))
  for name, frame in signals.items():
    part = frame[['symbol', schema.TIMESTAMP, *_columns(name)]].assign(
        **{schema.TIMESTAMP: pd.to_datetime(frame[schema.TIMESTAMP], utc=True)})
    joined = joined.merge(part, on=['symbol', schema.TIMESTAMP], how='left', validate='1:1')
    if joined[_columns(name)[0]].isna().all():
      raise errors.DataError(errors.describe(
          'backtest', f'the {name} has a signal for none of the {len(joined)} bars of {where}',
          'check that every checkpoint was trained on the same symbols and that the split has '
          'data'))
  return joined


def signal_coverage(joined: pd.DataFrame, names: tuple[str, ...]) -> dict[str, float]:
  """The share of the grid's bars at which each model has a signal (the others are flat)."""
  return {name: float(joined[_columns(name)[0]].notna().mean()) for name in names}


def strategy_targets(joined: pd.DataFrame, config: ml_collections.ConfigDict,
                     available: tuple[str, ...]) -> dict[str, np.ndarray]:
  """Targets ``[rows]`` of the ensemble, every ablation row with its models loaded, and the
  heuristics (computed per symbol, causally, from flat). A row is flat at a bar where one of its
  models has no signal; a heuristic, where the bar's features are not ``usable``."""
  from quantum_alpha_jax.data import trajectories  # pylint: disable=g-import-not-at-top

  targets: dict[str, np.ndarray] = {}
  for name, rule in ensemble.ablation_configs(config.ensemble, available).items():
    targets[name] = np.zeros(len(joined))
    needed = ensemble.required_signals(rule)
    for _, rows in joined.groupby('symbol', sort=False).indices.items():
      part = {column: joined[column].to_numpy(np.float64)[rows] for column in needed}
      has_signal = np.all([np.isfinite(part[column]) for column in needed], axis=0)
      targets[name][rows] = ensemble.positions(part, rule, available=has_signal)
  usable = joined['usable'].to_numpy(bool)
  for name in HEURISTICS:
    target = np.zeros(len(joined))
    for _, rows in joined.groupby('symbol', sort=False).indices.items():
      target[rows] = trajectories.heuristic_positions(
          name, joined[list(FEATURES)].to_numpy()[rows], bool(config.ensemble.allow_short))
    targets[f'heuristic: {name}'] = np.where(usable, target, 0.0)
  return targets


def plot_equity_comparison(results: Mapping[str, portfolio.PortfolioResult], path: pathlib.Path
                           ) -> pathlib.Path:
  figure, axis = plt.subplots(figsize=(11, 5))
  for name, result in results.items():
    axis.plot(result.equity.index, result.equity.to_numpy(), lw=2.0 if name == 'ensemble' else 1.0,
              label=name)
  first = next(iter(results.values()))
  axis.plot(first.buy_and_hold_equity.index, first.buy_and_hold_equity.to_numpy(), 'k--', lw=1.2,
            label='buy and hold')
  axis.set_ylabel('portfolio equity')
  axis.set_title('Equal-capital portfolio after fees: every strategy beside buy-and-hold')
  axis.legend(fontsize=8, ncol=2)
  axis.grid(alpha=0.3)
  figure.autofmt_xdate()
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """The whole experiment (module docstring); returns the JSON-ready results."""
  from quantum_alpha_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ensemble.check_config(ml_collections.ConfigDict(
      dict(config.ensemble.to_dict(), use_strategist=True)))
  signals = {}
  for name in ensemble.COMPONENTS:
    path = config.checkpoints.get(name) or ''
    if path:
      logging.info('Signals of %s from %s', name, path)
      signals[name] = model_signals(name, path, config.data, config.split,
                                    batch_size=config.batch_size, progress=config.progress)
  frames = data_lib.load_frames(config.data)
  joined = join_signals(signals, frames, split_range(config.data, config.split))
  coverage = signal_coverage(joined, tuple(signals))
  logging.info('Bars with a signal: %s (flat elsewhere)',
               ', '.join(f'{name} {share:.1%}' for name, share in coverage.items()))
  joined.drop(columns=list(FEATURES)).to_parquet(workdir / 'signals.parquet')
  targets = strategy_targets(joined, config, tuple(signals))
  if not any(name in ensemble.ABLATIONS for name in targets):
    raise errors.ConfigError(errors.describe(
        'config.checkpoints', f'the loaded models {tuple(signals)} make no ablation row',
        'load the Strategist, the Oracle or the Guardian'))
  costs = dict(fee_rate=config.costs.fee_rate, slippage_bps=config.costs.slippage_bps,
               allow_short=bool(config.ensemble.allow_short),
               rebalance_threshold=config.costs.rebalance_threshold)
  prices = joined[['symbol', 'timestamp', 'open', 'close', schema.OBSERVED]]
  results = {name: portfolio.run(prices, target, initial_capital=config.costs.initial_capital,
                                 **costs) for name, target in targets.items()}
  headline = next(name for name in ensemble.ABLATIONS if name in results)
  main = results[headline]

  tables = {'Ablation (equal-capital portfolio)': portfolio.comparison_table(results)}
  for symbol in main.by_symbol:
    tables[f'Ablation, {symbol}'] = portfolio.comparison_table(results, symbol)
  walk = {}
  for symbol, rows in joined.groupby('symbol', sort=False).indices.items():
    walk[symbol] = walkforward.walk_forward(
        {name: target[rows] for name, target in targets.items()},
        joined['open'].to_numpy()[rows], joined['close'].to_numpy()[rows],
        joined['timestamp'].to_numpy()[rows], observed=joined[schema.OBSERVED].to_numpy()[rows],
        frequency=config.walk_forward.frequency,
        min_bars=config.walk_forward.min_bars, **costs)
    tables[f'Walk-forward ({config.walk_forward.frequency}), {symbol}'] = (
        walkforward.summary_table(walk[symbol]))

  symbol_reports = {}
  for symbol, result in main.by_symbol.items():
    paths = report_lib.write_report(result, workdir / symbol, title=f'{headline}, {symbol}')
    symbol_reports[symbol] = {key: str(path.relative_to(workdir)) for key, path in paths.items()}
  equity_png = plot_equity_comparison(results, workdir / 'equity.png')
  main.trades.to_csv(workdir / 'trades.csv', index=False)

  span = {'start': str(joined['timestamp'].min()), 'end': str(joined['timestamp'].max()),
          'bars': int(len(joined)), 'symbols': list(main.by_symbol), 'signal_coverage': coverage}
  payload = {
      'experiment': 'backtest', 'workdir': str(workdir), 'headline': headline, 'span': span,
      'models': {name: str(config.checkpoints[name]) for name in signals},
      'portfolio': {name: result.stats for name, result in results.items()},
      'buy_and_hold': main.buy_and_hold_stats,
      'by_symbol': {symbol: {name: result.by_symbol[symbol].stats for name, result in
                             results.items()} | {'buy_and_hold': main.by_symbol[symbol]
                                                 .buy_and_hold_stats}
                    for symbol in main.by_symbol},
      'walk_forward': walk, 'reports': symbol_reports, 'config': config.to_dict(),
  }
  lines = [f'# Ensemble backtest: {headline}', '',
           f'{span["bars"]:,} bars of {", ".join(span["symbols"])}, {span["start"]} to '
           f'{span["end"]} (every bar of the {config.split} split, for every strategy). '
           'Targets are decided at each bar\'s close from signals that read that bar and earlier '
           'ones, and filled at the next open; a strategy is flat at a bar where one of its '
           'models has no signal (bars with a signal: '
           f'{", ".join(f"{k} {v:.1%}" for k, v in coverage.items())}); fee '
           f'{config.costs.fee_rate:.3%} per side, slippage {config.costs.slippage_bps:g} bp, '
           f'capital {config.costs.initial_capital:,.0f} split equally over the symbols. '
           f'Models: {", ".join(f"{k} ({v})" for k, v in payload["models"].items())}.', '',
           '![equity](equity.png)', '']
  for name, table in tables.items():
    lines += [f'## {name}', '', report_lib.markdown_table(table), '']
  lines += ['## Per symbol', '']
  for symbol, paths in symbol_reports.items():
    lines.append(f'- {symbol}: [report]({paths["report"]}), [trades]({paths["trades"]})')
  lines += ['', 'Numbers: [results.json](results.json); the ensemble\'s trades: '
            '[trades.csv](trades.csv); per-bar signals: signals.parquet.', '']
  (workdir / 'report.md').write_text('\n'.join(lines))
  payload['report'] = str(workdir / 'report.md')
  payload['plots'] = {'equity': str(equity_png)}
  payload['results_json'] = str(artifacts.write_results(workdir, payload))
  return artifacts.json_ready(payload)


def format_results(results: Mapping[str, Any]) -> str:
  """A short table: portfolio total return, Sharpe and max drawdown of every strategy."""
  lines = [f'Backtest {results["span"]["start"]} .. {results["span"]["end"]} '
           f'({results["span"]["bars"]:,} bars, after fees)',
           f'  {"strategy":<28} {"return":>9} {"Sharpe":>8} {"max DD":>8} {"trades":>7}']
  rows = list(results['portfolio'].items()) + [('buy and hold', results['buy_and_hold'])]
  for name, stats in rows:
    value = lambda key, pattern: (pattern.format(stats[key]) if stats.get(key) is not None
                                  else '—')
    lines.append(f'  {name:<28} {value("total_return", "{:+.2%}"):>9} '
                 f'{value("sharpe", "{:.2f}"):>8} {value("max_drawdown", "{:.2%}"):>8} '
                 f'{value("trades", "{:d}"):>7}')
  lines.append(f'report: {results["report"]}')
  return '\n'.join(lines)
