"""Walk-forward re-evaluation: the same target series backtested window by window.

A single test period gives one Sharpe ratio, and one number says little about a 5-minute strategy.
:func:`walk_forward` cuts the period into consecutive calendar windows (``frequency``: a pandas
offset alias, e.g. ``'MS'`` for months or ``'W-MON'`` for weeks), backtests each window from fresh
capital (flat at its start, so no position carries over), and reports each window's stats beside
buy-and-hold's over the same bars, then the mean, standard deviation, median and the share of
windows in which the strategy beat buy-and-hold. Retraining month by month is
``experiments.update``'s walk-forward simulation; this re-evaluates fixed signals.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import engine

STATS = ('total_return', 'sharpe', 'max_drawdown', 'win_rate', 'trades', 'exposure')


def windows(timestamps: pd.DatetimeIndex, frequency: str = 'MS', min_bars: int = 288
            ) -> list[tuple[pd.Timestamp, np.ndarray]]:
  """``(window start, bar indices)`` of the calendar windows with at least ``min_bars`` bars."""
  times = pd.DatetimeIndex(timestamps)
  try:
    offset = pd.tseries.frequencies.to_offset(frequency)
    first = offset.rollback(times[0].normalize())
    edges = pd.date_range(first, times[-1] + offset, freq=offset)
  except (ValueError, TypeError) as error:
    raise errors.ConfigError(errors.describe(
        'walk_forward.frequency', f'{frequency!r} is not a usable pandas frequency ({error})',
        "use 'MS' (months) or 'W-MON' (weeks)")) from None
  bounds = np.searchsorted(times.asi8, edges.as_unit(times.unit).asi8)
  result = []
  for start, low, high in zip(edges[:-1], bounds[:-1], bounds[1:]):
    if high - low >= min_bars:
      result.append((pd.Timestamp(start), np.arange(low, high)))
  return result


def walk_forward(targets: Mapping[str, np.ndarray], open_price, close, timestamps, *,
                 frequency: str = 'MS', min_bars: int = 288, stats: Sequence[str] = STATS,
                 observed=None, **backtest_kwargs) -> dict:
  """Per-window stats of each named target series ``[time]`` and of buy-and-hold.

  ``observed`` [time] bool (the store's column; default all True) defers fills at hole-filling bars
  to the next observed open; each window is annualised by its own calendar.

  Returns ``{'windows': [{'start', 'bars', name: {stat: value}}...], 'summary': {name: {stat:
  {'mean', 'std', 'median'}}, 'beat_buy_and_hold': {name: fraction}}}`` (JSON-ready).
  """
  times = pd.DatetimeIndex(pd.to_datetime(np.asarray(timestamps), utc=True))
  open_price, close = np.asarray(open_price, np.float64), np.asarray(close, np.float64)
  observed = np.ones(len(times), bool) if observed is None else np.asarray(observed, bool)
  cuts = windows(times, frequency, min_bars)
  if not cuts:
    raise errors.DataError(errors.describe(
        'walk_forward', f'no {frequency} window with at least {min_bars} bars in '
        f'{len(times)} bars', 'use a longer period or a shorter frequency'))
  rows = []
  for start, index in cuts:
    row = {'start': str(start.date()), 'bars': int(index.size)}
    hold = None
    for name, target in targets.items():
      result = engine.run_backtest(np.asarray(target)[index], open_price[index], close[index],
                                   times[index], observed=observed[index], **backtest_kwargs)
      row[name] = {key: result.stats.get(key) for key in stats}
      hold = result.buy_and_hold_stats
    row['buy_and_hold'] = {key: hold.get(key) for key in stats}
    rows.append(row)
  summary, beat = {}, {}
  for name in [*targets, 'buy_and_hold']:
    summary[name] = {}
    for key in stats:
      values = np.asarray([row[name][key] for row in rows if row[name][key] is not None], float)
      summary[name][key] = ({'mean': float(values.mean()), 'std': float(values.std(ddof=1))
                             if values.size > 1 else 0.0, 'median': float(np.median(values))}
                            if values.size else None)
    if name != 'buy_and_hold':
      beat[name] = float(np.mean([row[name]['total_return'] > row['buy_and_hold']['total_return']
                                  for row in rows]))
  return {'frequency': frequency, 'windows': rows, 'summary': summary, 'beat_buy_and_hold': beat}


def summary_table(report: Mapping) -> pd.DataFrame:
  """One row per strategy: mean ± std of each stat over the windows, and the share beating B&H."""
  records = []
  for name, values in report['summary'].items():
    record = {'strategy': name}
    for key, entry in values.items():
      record[key] = (f'{entry["mean"]:.4g} ± {entry["std"]:.2g}' if entry else '—')
    record['beats buy-and-hold'] = (f'{report["beat_buy_and_hold"][name]:.0%}'
                                    if name in report['beat_buy_and_hold'] else '—')
    records.append(record)
  return pd.DataFrame.from_records(records).set_index('strategy')
