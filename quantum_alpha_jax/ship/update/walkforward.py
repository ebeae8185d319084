"""The walk-forward replay of the update policy over history (:func:`simulate`).

At each boundary of ``config.simulation`` (monthly by default), the continually-updated model is
fine-tuned (or retrained) on the trailing window and evaluated on the period up to the next
boundary, beside the model trained at the first boundary and then frozen, and the naive
baselines; ``results.json`` holds every period and the mean and spread of each series,
``simulation.png`` draws them. Each finished period is kept in ``period.json``, so a re-run reads
it back instead of training again.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

from absl import logging
import ml_collections
import pandas as pd

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.ship import store as model_store
from quantum_alpha_jax.ship.update import adapters
from quantum_alpha_jax.ship.update import cycle
from quantum_alpha_jax.ship.update import judge
from quantum_alpha_jax.ship.update import periods
from quantum_alpha_jax.ship.update import report
from quantum_alpha_jax.ship.update import retrain
from quantum_alpha_jax.ship.update import workspace
from quantum_alpha_jax.ship.update.periods import MODES
from quantum_alpha_jax.train import data as data_lib


def simulate(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """Replays ``config.simulation`` period by period on the store of ``config.task.data`` (module
  doc), resumably, in ``workdir/simulation``: periods, models, ``results.json``, a PNG."""
  cycle.check_update_config(config)
  simulation = config.simulation
  if simulation.mode not in MODES:
    raise ConfigError(describe('config.simulation.mode', f'{simulation.mode!r}',
                               f'use one of {MODES}'))
  paths = workspace.resolve_paths(config, workdir)
  workdir = pathlib.Path(workdir) / 'simulation'
  adapter = adapters.model_adapter(config.model)
  boundaries = periods.simulation_boundaries(simulation)
  store = model_store.ModelStore(workdir / 'models')
  metric = config.metric
  replayed = []
  with workspace.compilation_cache(paths.compilation_cache):
    all_frames = data_lib.load_frames(config.task.data)  # builds the store if it is missing
    store_dir = pathlib.Path(config.task.data.store_dir)
    continual = frozen = None
    for index, (begin, end) in enumerate(zip(boundaries[:-1], boundaries[1:])):
      directory = workdir / 'periods' / begin.strftime('%Y-%m-%dT%H%M')
      splits = periods.trailing_splits(begin, simulation.train_days, simulation.validation_days,
                                       end, 'evaluation')
      mode = 'scratch' if index == 0 else simulation.mode
      if (directory / 'period.json').exists():
        period = json.loads((directory / 'period.json').read_text())
        continual = store.load('continual', period['continual_version'], store_dir=store_dir)
        if index == 0:
          frozen = continual
        replayed.append(period)
        continue
      start = schema.to_utc(splits['train'][0])
      frames = {s: f.loc[((f[schema.TIMESTAMP] >= start) & (f[schema.TIMESTAMP] < end)).to_numpy()
                         ].reset_index(drop=True) for s, f in all_frames.items()}
      with workspace.temporary_window_caches(store_dir):
        period = _simulate_period(adapter, config, store, splits, frames, store_dir, directory,
                                  mode, continual if mode == 'finetune' else None)
        continual = store.load('continual', period['continual_version'], store_dir=store_dir)
        if index == 0:
          frozen = continual
          period['frozen'] = period['continual']
        else:
          frozen_task, frozen_config, frozen_data = judge.version_data(
              adapter, frozen, splits, frames, store_dir)
          period['frozen'] = judge.evaluate_params(frozen_task, frozen.params,
                                                   frozen_data['evaluation'], frozen_config)
      period.update(start=begin.isoformat(), end=end.isoformat(), frozen_version=frozen.version)
      artifacts.write_json(directory / 'period.json', period)
      replayed.append(period)
      logging.info('Period %s: continual %s %.6g, frozen %.6g', begin.date(), metric,
                   period['continual'][metric], period['frozen'][metric])
  series = {'continual': [p['continual'].get(metric) for p in replayed],
            'frozen': [p['frozen'].get(metric) for p in replayed]}
  for name in replayed[0]['baselines'] if replayed else ():
    series[name] = [p['baselines'][name].get(metric) for p in replayed]
  results = {
      'model': config.model, 'metric': metric, 'metric_mode': config.metric_mode,
      'simulation': simulation.to_dict(), 'periods': replayed,
      'summary': {name: report.series_summary(values) for name, values in series.items()},
      'continual_vs_frozen': report.continual_vs_frozen(series['continual'], series['frozen'],
                                                        config.metric_mode),
      'config': config.to_dict(),
  }
  results['plot'] = str(report.plot_comparison(
      [p['start'][:10] for p in replayed], series, metric, workdir / 'simulation.png',
      first='continual', second='frozen', xlabel='period start',
      title=f'Walk-forward: continually updated vs frozen at {replayed[0]["start"][:10]}'))
  results['results_json'] = str(artifacts.write_results(workdir, results))
  return results


def _simulate_period(adapter: adapters.ModelAdapter, config: ml_collections.ConfigDict,
                     store: model_store.ModelStore, splits: Mapping[str, tuple[str, str]],
                     frames: Mapping[str, pd.DataFrame], store_dir: pathlib.Path,
                     directory: pathlib.Path, mode: str,
                     parent: model_store.ModelVersion | None) -> dict[str, Any]:
  """Trains (or, after a kill, finds) the continual model of one period and evaluates it."""
  task_config = periods.task_config_for(config, splits, store_dir, finetune=mode == 'finetune')
  period_range = list(splits['evaluation'])
  found = [row['version'] for row in store.list('continual')
           if row['extra'].get('period') == period_range]
  if found:
    version = found[-1]
    saved = store.load('continual', version, store_dir=store_dir)
    task, _, data = judge.version_data(adapter, saved, splits, frames, store_dir)
    metrics = saved.metrics['test']
  else:
    trained = retrain.train_model(adapter, task_config, frames, directory / 'run', parent=parent,
                                  run_info={'period': period_range, 'mode': mode})
    task, data = trained.task, trained.data
    metrics = judge.evaluate_params(task, trained.params, data['evaluation'], task_config)
    version = store.save('continual', trained.params, config=task_config,
                         normalizer=trained.normalizer,
                         metrics={'validation': trained.result.best_metrics, 'test': metrics,
                                  'test_split': 'evaluation'},
                         data={'splits': splits, 'store_dir': str(store_dir)},
                         extra={'period': period_range, 'mode': mode,
                                'parent': None if parent is None else parent.version})
  return {'mode': mode, 'splits': splits, 'windows': data['evaluation'].num_windows,
          'continual_version': version, 'continual': metrics,
          'baselines': judge.forecast_baselines(task, data['evaluation'], data['train'])}
