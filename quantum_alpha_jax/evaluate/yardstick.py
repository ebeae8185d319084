"""Each model beside its best naive baseline and the synthetic market's ceiling, in one table.

Reads the ``test`` reports the tasks write to ``results.json`` and the Bayes reference of
``evaluate/ceiling.py`` for the same split, and lines up one headline figure per model:

- **Guardian**: regime accuracy against the true regimes; naive: the strongest of the majority
  class and the two past-only rules on this split; ceiling: the forward filter's accuracy.
- **Oracle**: direction accuracy at the horizon on non-overlapping windows; naive: the strongest of
  always-up, persistence, momentum, reversal and the train mean on this split; ceiling: the filter's
  ``P(up) > 0.5``.
- **Strategist**: total return after fees over the split (mean over symbols); naive: the strongest
  of buy-and-hold and the behaviour heuristics on this split; ceiling: the filter's policy (the
  long-only or long-short variant the Strategist trades).

"Beats" means the paired block-bootstrap interval of the gain (``evaluate/intervals.py``, calendar
days as blocks) lies above zero. ``share_of_attainable_edge`` = (model - naive) / (ceiling - naive):
0 is the naive baseline, 1 the ceiling (None when the ceiling does not beat the naive baseline).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _share(model: float, naive: float, ceiling: float | None) -> float | None:
  if ceiling is None or not ceiling > naive:
    return None
  return float((model - naive) / (ceiling - naive))


def _row(model: str, metric: str, value: float, naive_name: str, naive: float,
         comparison: Mapping[str, Any] | None, ceiling: float | None) -> dict[str, Any]:
  return {'model': model, 'metric': metric, 'value': float(value),
          'best_naive': naive_name, 'best_naive_value': float(naive),
          'gain': dict(comparison) if comparison else None,
          'beats_best_naive': bool(comparison and comparison['low'] > 0),
          'ceiling': ceiling, 'share_of_attainable_edge': _share(value, naive, ceiling)}


def guardian_row(report: Mapping[str, Any], ceiling: Mapping[str, Any] | None) -> dict[str, Any]:
  """The Guardian's test ``report`` (``results['test']``) beside the filter's regime accuracy."""
  versus = report['versus_best_baseline']
  naive = report['baselines'][versus['baseline']]['accuracy']
  top = ceiling['regime']['filter']['accuracy'] if ceiling else None
  return _row('Guardian', 'regime accuracy', report['guardian']['accuracy'], versus['baseline'],
              naive, versus, top)


def oracle_row(report: Mapping[str, Any], ceiling: Mapping[str, Any] | None,
               title: str = 'Oracle') -> dict[str, Any]:
  """The Oracle's (or LSTM's) test report beside the filter's direction accuracy."""
  honest = report['direction_accuracy_non_overlapping']
  versus = report['versus_best_baseline']
  top = ceiling['direction']['filter']['accuracy'] if ceiling else None
  row = _row(title, f'direction accuracy at {honest["horizon"]} bars (non-overlapping)',
             honest['oracle']['accuracy'], versus['baseline'],
             honest[versus['baseline']]['accuracy'], versus, top)
  row['pinball'] = {'model': report['pinball_loss'],
                    'climatology': report['baselines']['climatology']['pinball_loss'],
                    'ceiling': ceiling['pinball']['filter'] if ceiling else None}
  return row


def strategist_row(report: Mapping[str, Any], ceiling: Mapping[str, Any] | None,
                   allow_short: bool = False) -> dict[str, Any]:
  """The Strategist's test report beside the filter policy's return after fees."""
  versus = report['versus_best_baseline']
  mean = lambda per_symbol: float(np.mean([s['total_return'] for s in per_symbol.values()]))
  naive_name = versus['baseline']
  naive = mean(report['buy_and_hold'] if naive_name == 'buy_and_hold'
               else report['heuristics'][naive_name])
  top = None
  if ceiling:
    top = ceiling['policy']['long_short' if allow_short else 'long_only']['test']['total_return']
  row = _row('Strategist', 'total return after fees (mean over symbols)',
             mean(report['strategist']), naive_name, naive, versus, top)
  row['conditioning_spearman'] = report['conditioning_curve'].get('spearman_target_vs_realised')
  row['gain_in_value_units'] = False  # the gain is in daily log return, the value a total return
  return row


def format_yardstick(rows: list[Mapping[str, Any]], ceiling: Mapping[str, Any] | None) -> str:
  """The table for people: model, best naive, gain with its interval, ceiling, share of edge."""
  lines = []
  if ceiling:
    settings = ceiling['settings']
    lines.append(f'Test split [{settings["start"]}, {settings["end"]}) of the synthetic market '
                 f'(preset {settings.get("preset")}; Bayes filter '
                 f'{"exact" if ceiling["filter_exact"] else "approximate"})')
  else:
    lines.append('Test split (no ceiling: the store is not synthetic)')
  lines.append(f'  {"model":<11} {"metric":<48} {"value":>7}  {"best naive (this split)":<38} '
               f'{"gain [95% CI, day blocks]":<34} {"ceiling":>8} {"edge":>6}')
  for row in rows:
    gain = row['gain']
    interval = (f'{gain["difference"]:+.4f} [{gain["low"]:+.4f}, {gain["high"]:+.4f}]'
                if gain else '—')
    verdict = ' beats' if row['beats_best_naive'] else ''
    ceiling_value = '—' if row['ceiling'] is None else f'{row["ceiling"]:.4f}'
    share = row['share_of_attainable_edge']
    naive = f'{row["best_naive"]} {row["best_naive_value"]:.4f}'
    lines.append(f'  {row["model"]:<11} {row["metric"]:<48} {row["value"]:>7.4f}  {naive:<38} '
                 f'{interval + verdict:<34} {ceiling_value:>8} '
                 f'{"—" if share is None else f"{share:.0%}":>6}')
    if 'pinball' in row:
      pinball = row['pinball']
      top = '—' if pinball['ceiling'] is None else f'{pinball["ceiling"]:.6f}'
      lines.append(f'  {"":<11} pinball loss: model {pinball["model"]:.6f}, climatology '
                   f'{pinball["climatology"]:.6f}, ceiling {top}')
    # A constant target (one return token, as with selection='best') has no conditioning curve.
    if row.get('conditioning_spearman') is not None and np.isfinite(row['conditioning_spearman']):
      lines.append(f'  {"":<11} conditioning curve Spearman (target vs realised return): '
                   f'{row["conditioning_spearman"]:+.2f}')
  lines.append('  edge: (model - best naive) / (ceiling - best naive); the gain is paired on the '
               'same windows or days, the best naive chosen on this split (the harshest choice)')
  return '\n'.join(lines)


def plot_yardstick(rows: list[Mapping[str, Any]]) -> Any:
  """One panel per model: best naive, model and ceiling as bars, the model's bar annotated with
  its gain and interval. Returns the matplotlib figure (the caller saves it)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.8), squeeze=False)
  for axis, row in zip(axes[0], rows):
    names = [f'naive\n({row["best_naive"].replace("_", " ")})', row['model'],
             'ceiling\n(Bayes filter)']
    values = [row['best_naive_value'], row['value'],
              row['ceiling'] if row['ceiling'] is not None else np.nan]
    colours = ['#9e9e9e', '#1f77b4' if row['beats_best_naive'] else '#d62728', '#2ca02c']
    axis.bar(range(3), values, color=colours)
    gain = row['gain']
    if gain and not row.get('gain_in_value_units', True):
      axis.annotate(f'{gain["metric"]}\n{gain["difference"]:+.4f} [{gain["low"]:+.4f}, '
                    f'{gain["high"]:+.4f}]', (1, row['value']), ha='center', va='bottom',
                    fontsize=7, xytext=(0, 4), textcoords='offset points')
    elif gain:
      axis.errorbar(1, row['best_naive_value'] + gain['difference'],
                    yerr=[[gain['difference'] - gain['low']], [gain['high'] - gain['difference']]],
                    color='black', capsize=6, linewidth=1.5)
    axis.set_xticks(range(3), names, fontsize=8)
    finite = [v for v in values if np.isfinite(v)]
    low = min(finite + [0.0])
    axis.set_ylim(low - 0.05 * abs(low), max(finite) * 1.12 if max(finite) > 0 else 0.1)
    share = row['share_of_attainable_edge']
    axis.set_title(f'{row["model"]}: {row["metric"]}\n'
                   + ('edge taken: —' if share is None else f'edge taken: {share:.0%}'),
                   fontsize=9)
    axis.grid(axis='y', alpha=0.3)
  figure.suptitle('Each model beside its best naive baseline and the ceiling (test split; '
                  'whisker: paired 95% interval of the gain)', fontsize=10)
  figure.tight_layout()
  return figure
