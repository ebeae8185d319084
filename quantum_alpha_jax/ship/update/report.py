"""What the cycles and the walk-forward replay tell people and programs: the decision in a few
lines, the history of every cycle (``results.json`` and ``cycles.png``), the continual model's gain
over the frozen one per period, and the walk-forward table and picture."""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.ship import store as model_store
from quantum_alpha_jax.ship.update import workspace
from quantum_alpha_jax.ship.update.periods import HOLDOUT


def format_decision(record: Mapping[str, Any]) -> str:
  """A few lines for people: the cycle, the metric of candidate, incumbent and baselines, why."""
  metric = record['metric']
  value = lambda metrics: ('—' if not metrics or metrics.get(metric) is None
                           else f'{metrics[metric]:.6g}')
  lines = [f'cycle {record["cycle"]} ({record["mode"]}, data to {record["data_end"]}'
           f'{", " + record["status"] if record.get("status") else ""}): holdout '
           f'{record["splits"][HOLDOUT][0]} .. {record["splits"][HOLDOUT][1]}, '
           f'{record["windows"].get(HOLDOUT, 0)} windows',
           f'  candidate v{record["candidate"]["version"]:<4} {metric} '
           f'{value(record["candidate"]["metrics"])}']
  if record.get('incumbent'):
    lines.append(f'  promoted  v{record["incumbent"]["version"]:<4} {metric} '
                 f'{value(record["incumbent"]["metrics"])}')
  for name, metrics in (record.get('baselines') or {}).items():
    lines.append(f'  {name:<24} {metric} {value(metrics)}')
  lines.append(f'  -> {record["reason"]}')
  return '\n'.join(lines)


def write_history(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]
                  ) -> dict[str, Any]:
  """``results.json`` and ``cycles.png`` in ``workdir``: every decision on ``config.model`` so far
  (candidate, promoted version and baselines on each cycle's holdout), its versions and pointer."""
  paths = workspace.resolve_paths(config, workdir)
  store = model_store.ModelStore(paths.models)
  name, metric = config.model, config.metric
  decisions = store.decisions(name)
  results = {'model': name, 'metric': metric, 'metric_mode': config.metric_mode,
             'promoted': store.promoted(name), 'versions': store.list(name), 'cycles': decisions,
             'config': config.to_dict()}
  if decisions:
    series = {'candidate': [d['candidate']['metrics'].get(metric) for d in decisions],
              'promoted': [((d.get('incumbent') or {}).get('metrics') or {}).get(metric)
                           for d in decisions]}
    for baseline in decisions[-1].get('baselines') or {}:
      series[baseline] = [(d.get('baselines') or {}).get(baseline, {}).get(metric)
                          for d in decisions]
    results['plot'] = str(plot_comparison(
        [d['cycle'] for d in decisions], series, metric, pathlib.Path(workdir) / 'cycles.png',
        first='candidate', second='promoted', xlabel='cycle (end of its data)',
        title=f'{name}: each cycle\'s candidate vs the promoted version on the newest '
              f'{config.holdout_days:g} days'))
  results['results_json'] = str(artifacts.write_results(workdir, results))
  return results


def plot_comparison(labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
                    metric: str, path: pathlib.Path, *, first: str, second: str, title: str,
                    xlabel: str) -> pathlib.Path:
  """``metric`` per period (or cycle) for every series (top, log scale when positive; the series
  other than ``first`` and ``second`` dotted), and ``first - second`` per period (bottom)."""
  x = np.arange(len(labels))
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                    gridspec_kw={'height_ratios': (2, 1)})
  styles = {first: dict(color='tab:blue', linewidth=2.2, marker='o'),
            second: dict(color='tab:red', linewidth=2.2, marker='s')}
  baseline_colors = iter(('tab:gray', 'tab:olive', 'tab:brown', 'tab:purple', 'tab:cyan'))
  as_array = lambda values: np.asarray([np.nan if v is None else v for v in values], np.float64)
  for name, values in series.items():
    style = styles.get(name) or dict(color=next(baseline_colors, 'black'), linestyle=':',
                                     marker='.')
    top.plot(x, as_array(values), label=name, **style)
  if all(v is None or v > 0 for values in series.values() for v in values):
    top.set_yscale('log')  # baselines can be far worse than the models
  top.set_ylabel(metric)
  top.set_title(title)
  top.legend(fontsize=8)
  difference = as_array(series[first]) - as_array(series[second])
  bottom.bar(x, np.nan_to_num(difference),
             color=np.where(np.nan_to_num(difference) <= 0, 'tab:green', 'tab:orange'))
  bottom.axhline(0, color='grey', linewidth=0.8)
  bottom.set_ylabel(f'{first} − {second}')
  bottom.set_title(f'below 0: {first} has the lower {metric}', fontsize=9)
  bottom.set_xticks(x, list(labels), rotation=30, fontsize=8)
  bottom.set_xlabel(xlabel)
  fig.tight_layout()
  return artifacts.save_figure(fig, path, dpi=110)


def series_summary(values: Sequence[float | None]) -> dict[str, Any]:
  """Count, mean, std (ddof 1), min and max of the finite values [periods]; None where empty."""
  values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if len(values) == 0:
    return {'periods': 0, 'mean': None, 'std': None, 'min': None, 'max': None}
  return {'periods': int(len(values)), 'mean': float(values.mean()),
          'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          'min': float(values.min()), 'max': float(values.max())}


def continual_vs_frozen(continual: Sequence[float | None], frozen: Sequence[float | None],
                        metric_mode: str) -> dict[str, Any]:
  """The gain of the continual model over the frozen one per period [periods], summarised.

  gain = frozen - continual for a metric to minimise (the other way round to maximise), so a
  positive gain means continual is better. Period 0's frozen model is the continual one, so the
  mean, std and the shares better / worse all count the later periods only.
  """
  sign = 1.0 if metric_mode == 'min' else -1.0
  gains = [None if c is None or f is None else sign * (f - c)
           for c, f in list(zip(continual, frozen))[1:]]
  compared = [g for g in gains if g is not None and math.isfinite(g)]
  share = lambda keep: float(np.mean([keep(g) for g in compared])) if compared else None
  return {**series_summary(gains), 'share_better': share(lambda g: g > 0),
          'share_worse': share(lambda g: g < 0),
          'note': 'gain = frozen - continual for a metric to minimise (the other way round to '
                  'maximise): positive means continual is better; period 0 (the same model) is '
                  'left out of the mean, std and shares alike'}


def continual_vs_frozen_sentence(gain: Mapping[str, Any]) -> str:
  """One line: continual better / worse / tied with frozen by ``|mean gain|``, over the periods
  after the first (``gain``: ``results['continual_vs_frozen']`` of
  :func:`.walkforward.simulate`)."""
  mean = gain['mean']
  spread = (f'mean gain {mean:+.4g} ± {gain["std"]:.2g} (std) over the {gain["periods"]} periods '
            f'after the first; continual better in {gain["share_better"]:.0%}, worse in '
            f'{gain["share_worse"]:.0%} of them')
  if mean == 0:
    return f'continual tied with frozen: {spread}'
  word = 'better' if mean > 0 else 'worse'
  return f'continual {word} than frozen by {abs(mean):.4g}: {spread}'


def format_simulation(results: Mapping[str, Any]) -> str:
  """The per-period table and the mean ± spread of each series."""
  metric = results['metric']
  names = list(results['summary'])
  cell = lambda value: f'{value:>14.6g}' if value is not None else f'{"—":>14}'
  lines = [f'Walk-forward {results["model"]}, {metric} per period ({results["metric_mode"]} is '
           'better):',
           f'{"period":<10}  {"windows":>7}  ' + '  '.join(f'{n[:14]:>14}' for n in names)]
  for period in results['periods']:
    values = [period['continual'].get(metric), period['frozen'].get(metric)] + [
        period['baselines'][n].get(metric) for n in names[2:]]
    lines.append(f'{period["start"][:10]:<10}  {period["windows"]:>7}  '
                 + '  '.join(cell(v) for v in values))
  for statistic in ('mean', 'std'):
    lines.append(f'{statistic:<10}  {"":>7}  ' + '  '.join(
        cell(summary[statistic]) for summary in results['summary'].values()))
  gain = results['continual_vs_frozen']
  if gain['mean'] is not None:
    lines.append(continual_vs_frozen_sentence(gain))
  lines.append(f'results: {results.get("results_json")}; plot: {results.get("plot")}')
  return '\n'.join(lines)
