"""A backtest's report: PNG plots (matplotlib, Agg), results.json, trades.csv and report.md."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import matplotlib.ticker  # pylint: disable=g-import-not-at-top
import numpy as np
import pandas as pd

from quantum_alpha_jax.backtest.engine import BacktestResult
from quantum_alpha_jax.evaluate import trading
from quantum_alpha_jax.artifacts import json_ready

MAX_POINTS = 20_000  # longer series are subsampled evenly for drawing

# (key, label, format) of the strategy vs buy-and-hold table.
STATS_ROWS = (
    ('final_equity', 'final equity', '{:,.2f}'),
    ('total_return', 'total return', '{:.2%}'),
    ('annual_return', 'annualised return', '{:.2%}'),
    ('annual_volatility', 'annualised volatility', '{:.2%}'),
    ('sharpe', 'Sharpe', '{:.3f}'),
    ('sortino', 'Sortino', '{:.3f}'),
    ('calmar', 'Calmar', '{:.3f}'),
    ('max_drawdown', 'max drawdown', '{:.2%}'),
    ('max_drawdown_duration_bars', 'max drawdown duration (bars)', '{:,}'),
    ('max_drawdown_duration', 'max drawdown duration', '{}'),
    ('trades', 'trades', '{:,}'),
    ('win_rate', 'win rate', '{:.2%}'),
    ('profit_factor', 'profit factor', '{:.3f}'),
    ('expectancy', 'expectancy per trade', '{:,.2f}'),
    ('exposure', 'exposure', '{:.2%}'),
    ('turnover_per_year', 'turnover per year', '{:,.1f}'),
    ('fees_paid', 'fees paid', '{:,.2f}'),
)


def _axis_values(result: BacktestResult) -> tuple[np.ndarray, np.ndarray]:
  """(x values, indices) of the bars to draw: timestamps when known, else bar numbers."""
  indices = np.arange(0, len(result.equity), max(1, len(result.equity) // MAX_POINTS))
  if result.timestamps is None:
    return indices, indices
  return result.timestamps[indices].tz_convert(None).to_numpy(), indices


def _save(figure, path: Path) -> Path:
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def plot_equity(result: BacktestResult, path: str | Path, title: str = '') -> Path:
  """Strategy equity against buy-and-hold (log scale). Returns the PNG path."""
  x, indices = _axis_values(result)
  figure, axis = plt.subplots(figsize=(12, 4))
  axis.plot(x, result.equity[indices], label='strategy', color='#1f77b4', linewidth=1)
  axis.plot(x, result.buy_and_hold_equity[indices], label='buy and hold', color='#7f7f7f',
            linewidth=1)
  axis.set_yscale('log')
  axis.set_ylabel('equity')
  axis.set_title(title or 'Equity', loc='left')
  axis.legend()
  return _save(figure, Path(path))


def plot_drawdown(result: BacktestResult, path: str | Path) -> Path:
  """Drawdown (fraction of the running peak) of the strategy and of buy-and-hold."""
  x, indices = _axis_values(result)
  figure, axis = plt.subplots(figsize=(12, 3))
  axis.fill_between(x, -trading.drawdown(result.equity)[indices], color='#d62728', alpha=0.5,
                    label='strategy', linewidth=0)
  axis.plot(x, -trading.drawdown(result.buy_and_hold_equity)[indices], color='#7f7f7f',
            linewidth=0.8, label='buy and hold')
  axis.set_ylabel('drawdown')
  axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
  axis.set_title('Drawdown', loc='left')
  axis.legend(loc='lower left')
  return _save(figure, Path(path))


def plot_positions(result: BacktestResult, path: str | Path) -> Path:
  """Close price with the held target weight beneath it."""
  x, indices = _axis_values(result)
  figure, (price_axis, weight_axis) = plt.subplots(2, 1, figsize=(12, 5), sharex=True,
                                                   gridspec_kw={'height_ratios': [2, 1]})
  price_axis.plot(x, result.close[indices], color='black', linewidth=0.8)
  price_axis.set_ylabel('close')
  price_axis.set_title('Price and position', loc='left')
  held = result.target_held[indices]
  weight_axis.fill_between(x, held, where=held > 0, color='#2ca02c', step='post', linewidth=0)
  weight_axis.fill_between(x, held, where=held < 0, color='#d62728', step='post', linewidth=0)
  weight_axis.set_ylabel('target weight')
  weight_axis.set_ylim(min(-0.05, held.min() - 0.05), 1.05)
  return _save(figure, Path(path))


def monthly_returns(result: BacktestResult) -> pd.DataFrame | None:
  """Calendar-month returns (UTC) of strategy and buy-and-hold; None without timestamps."""
  if result.timestamps is None:
    return None
  times = result.timestamps.tz_convert('UTC').tz_localize(None)
  frame = pd.DataFrame({'strategy': result.equity, 'buy_and_hold': result.buy_and_hold_equity},
                       index=times)
  month_end = frame.groupby(times.to_period('M')).last()
  previous = month_end.shift(1)
  previous.iloc[0] = frame.iloc[0]
  return month_end / previous - 1.0


def plot_monthly_returns(result: BacktestResult, path: str | Path) -> Path | None:
  """Bar chart of monthly returns, strategy beside buy-and-hold; None without timestamps."""
  months = monthly_returns(result)
  if months is None:
    return None
  figure, axis = plt.subplots(figsize=(max(8, 0.45 * len(months) + 2), 3.5))
  positions = np.arange(len(months))
  axis.bar(positions - 0.2, months['strategy'], width=0.4, label='strategy', color='#1f77b4')
  axis.bar(positions + 0.2, months['buy_and_hold'], width=0.4, label='buy and hold',
           color='#7f7f7f')
  axis.axhline(0, color='black', linewidth=0.6)
  axis.set_xticks(positions, [str(m) for m in months.index], rotation=60, fontsize=8)
  axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
  axis.set_title('Monthly returns', loc='left')
  axis.legend()
  return _save(figure, Path(path))


def _format(value, pattern: str) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return 'n/a'
  return pattern.format(value)


def _with_index(frame: pd.DataFrame) -> pd.DataFrame:
  """The frame with its index as a column, unless the index is an unnamed RangeIndex."""
  if frame.index.name is None and isinstance(frame.index, pd.RangeIndex):
    return frame
  return frame.reset_index()


def markdown_table(frame: pd.DataFrame, float_format: str = '{:.4g}') -> str:
  """A GitHub-flavoured markdown table of a DataFrame (index included when it is named)."""
  frame = _with_index(frame)
  cells = [[_format(v, float_format) if isinstance(v, (float, np.floating)) else str(v)
            for v in row] for row in frame.itertuples(index=False)]
  lines = ['| ' + ' | '.join(str(c) for c in frame.columns) + ' |',
           '|' + '---|' * len(frame.columns)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in cells]
  return '\n'.join(lines)


def stats_table(result: BacktestResult) -> str:
  """Markdown table of the strategy's stats beside buy-and-hold's."""
  lines = ['| | strategy | buy and hold |', '|---|---:|---:|']
  for key, label, pattern in STATS_ROWS:
    lines.append(f'| {label} | {_format(result.stats.get(key), pattern)} | '
                 f'{_format(result.buy_and_hold_stats.get(key), pattern)} |')
  return '\n'.join(lines)


def write_report(result: BacktestResult, directory: str | Path, title: str = 'Backtest',
                 extra_tables: Mapping[str, pd.DataFrame] | None = None) -> dict[str, Path]:
  """Writes results.json (no NaN), trades.csv, the PNG plots and report.md into ``directory``.

  ``extra_tables`` (e.g. an ablation) are added to report.md and results.json. Returns name -> path.
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paths = {
      'equity': plot_equity(result, directory / 'equity.png', title),
      'drawdown': plot_drawdown(result, directory / 'drawdown.png'),
      'positions': plot_positions(result, directory / 'positions.png'),
  }
  monthly = plot_monthly_returns(result, directory / 'monthly_returns.png')
  if monthly is not None:
    paths['monthly_returns'] = monthly
  paths['trades'] = directory / 'trades.csv'
  result.trades.to_csv(paths['trades'], index=False)
  extra_tables = dict(extra_tables or {})
  span = {'bars': len(result.equity)}
  if result.timestamps is not None:
    span.update(start=str(result.timestamps[0]), end=str(result.timestamps[-1]))
  results = json_ready({
      'title': title, 'span': span, 'config': result.config, 'strategy': result.stats,
      'buy_and_hold': result.buy_and_hold_stats,
      'tables': {name: _with_index(table).to_dict(orient='records')
                 for name, table in extra_tables.items()},
  })
  paths['results'] = directory / 'results.json'
  paths['results'].write_text(json.dumps(results, indent=2, allow_nan=False) + '\n')
  config = result.config
  lines = [f'# {title}', '',
           f'{len(result.equity):,} bars'
           + (f', {result.timestamps[0]} to {result.timestamps[-1]}'
              if result.timestamps is not None else '')
           + f'. Fills at the next bar\'s open; fee {config["fee_rate"]:.4%} per side, slippage '
           f'{config["slippage_bps"]:g} bp, initial capital {config["initial_capital"]:,.0f}'
           + (', shorts allowed' if config['allow_short'] else ', long only') + '.', '',
           '## Strategy vs buy and hold', '', stats_table(result), '']
  for name, image in paths.items():
    if image.suffix == '.png':
      lines += [f'![{name.replace("_", " ")}]({image.name})', '']
  if monthly is None:
    lines += ['(No timestamps were given, so there is no monthly chart.)', '']
  for name, table in extra_tables.items():
    lines += [f'## {name}', '', markdown_table(table), '']
  lines += [f'Trades: [{paths["trades"].name}]({paths["trades"].name}); '
            f'numbers: [{paths["results"].name}]({paths["results"].name}).', '']
  paths['report'] = directory / 'report.md'
  paths['report'].write_text('\n'.join(lines))
  return paths
