"""The Guardian's experiment: data → training statistics → train → best checkpoint → evaluation →
``results.json``; the table for people; causal per-bar signals for the ensemble; a saved run loaded
back and scored on any store.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.tasks import prediction
from quantum_alpha_jax.tasks import runner
from quantum_alpha_jax.tasks.guardian.baselines import training_statistics
from quantum_alpha_jax.tasks.guardian.evaluation import evaluate
from quantum_alpha_jax.tasks.guardian.evaluation import predict
from quantum_alpha_jax.tasks.guardian.labels import BEAR
from quantum_alpha_jax.tasks.guardian.labels import BULL
from quantum_alpha_jax.tasks.guardian.labels import SIDEWAYS
from quantum_alpha_jax.tasks.guardian.task import example_batch
from quantum_alpha_jax.tasks.guardian.task import GuardianTask
from quantum_alpha_jax.tasks.guardian.task import window_spec
from quantum_alpha_jax.train import data as data_lib
from quantum_alpha_jax.train import loop

SIGNAL_COLUMNS = ('regime', 'p_bull', 'p_bear', 'p_sideways', 'risk_level', 'risk_score')
MODEL = 'guardian'


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          frames: Mapping[str, pd.DataFrame] | None = None,
          on_evaluate: Any = None) -> tuple[GuardianTask, loop.TrainResult,
                                            dict[str, SplitData], dict[str, Any]]:
  """Trains the Guardian described by ``config`` in ``workdir`` (resuming if it holds a run).
  ``frames`` (feature frames) replace the store named by ``config.data``. Returns ``(task with
  the run's risk thresholds and normaliser, loop.TrainResult, split data, training statistics)``."""
  task = GuardianTask.from_config(config)  # a bad config fails before any data is read
  runner.check_evaluation_splits(config)
  data, normalizer = data_lib.make_split_data(config.data, window_spec(config),
                                              config.train.batch_size, config.train.seed,
                                              frames=frames)
  statistics = training_statistics(task, data['train'], seed=config.train.seed)
  task = dataclasses.replace(task, risk_thresholds=tuple(statistics['risk_thresholds']),
                             normalizer=normalizer)
  result = runner.train(config, workdir, task=task, data=data, normalizer=normalizer,
                        statistics=statistics, on_evaluate=on_evaluate)
  return task, result, data, statistics


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        frames: Mapping[str, pd.DataFrame] | None = None,
        on_evaluate: Any = None) -> dict[str, Any]:
  """:func:`train` (``on_evaluate``: see ``loop.train_and_evaluate``), then evaluates the best
  checkpoint on ``config.evaluation.splits`` (metrics and PNGs under ``workdir/<split>``) and
  writes ``results.json`` (:func:`runner.report`)."""
  task, result, data, statistics = train(config, workdir, frames=frames, on_evaluate=on_evaluate)

  def evaluate_split(params, name, split, directory):
    del name
    return evaluate(task, params, split, statistics, directory,
                    max_windows=config.evaluation.max_windows,
                    batch_size=config.evaluation.batch_size)

  return runner.report(config, workdir, model=MODEL, result=result, data=data,
                       evaluate_split=evaluate_split,
                       results={'training_statistics': statistics})


def format_results(results: Mapping[str, Any]) -> str:
  """A short table for people: the Guardian beside the baselines on each evaluated split."""
  train = results['train']
  lines = [f'Guardian run in {results["workdir"]}: {train["steps"]} steps, best at '
           f'{train["best_step"]}, {train["samples_per_second"] or 0:.0f} samples/s, '
           f'{train["train_seconds"]:.1f} s of training']
  for split in ('validation', 'test'):
    report = results.get(split)
    if not isinstance(report, Mapping) or 'baselines' not in report:
      continue
    lines.append(f'\n{split}: {report["windows"]} windows, scored against {report["labels"]}')
    lines.append(f'  {"":<32} accuracy  macro-F1  agreement with rule labels')
    rows = [('Guardian', report['guardian'], report['agreement_with_rule_labels']['guardian'])]
    rows += [(name, entry, report['agreement_with_rule_labels'][name])
             for name, entry in report['baselines'].items()]
    for name, entry, rule in rows:
      lines.append(f'  {name:<32} {entry["accuracy"]:.4f}    {entry["f1_macro"]:.4f}    '
                   f'{rule["accuracy"]:.4f}')
    if 'versus_best_baseline' in report:
      lines.append('  ' + intervals.format_difference('Guardian', report['versus_best_baseline']))
    latent = report['latent']
    silhouette = latent['silhouette_by_label']
    lines.append(f'  latents: silhouette by label {silhouette if silhouette is None else round(silhouette, 4)}, '
                 f'{latent["active_units"]}/{latent["latent_dim"]} active units, '
                 f'KL {latent["kl_per_window"]:.2f} nats per window')
    risk = report['risk']
    levels = ', '.join(f'{row["level"]} {row["realised_volatility_mean"] or 0:.3f} '
                       f'({row["share"]:.0%})' for row in risk['table'])
    lines.append(f'  risk: realised forward volatility by level: {levels}; monotone '
                 f'{risk["monotone_increasing"]}, Spearman {risk["spearman_score_vs_realised"]:.3f}')
    lines.append(f'  plots: {", ".join(report["plots"].values())}')
  lines.append(f'results: {results["results_json"]}')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# Per-bar signals for the ensemble.


def bar_signals(task: GuardianTask, params: Any, split: SplitData, *, batch_size: int = 1024,
                progress: bool = True) -> pd.DataFrame:
  """One row per bar (window anchor) of ``split``: ``symbol``, ``timestamp`` (UTC open time of the
  anchor bar, the last bar the row uses), ``regime`` (index into ``schema.REGIMES``), ``p_bull``,
  ``p_bear``, ``p_sideways``, ``risk_level`` (0 low, 1 medium, 2 high) and ``risk_score``
  (predicted annualised volatility of the coming bars). Jitted batches, no look-ahead. ``split``
  must be windowed with the run's normaliser (``task.normalizer`` of :func:`load`)."""
  if task.normalizer is not None and not (
      np.array_equal(task.normalizer.mean, split.source.normalizer.mean)
      and np.array_equal(task.normalizer.std, split.source.normalizer.std)):
    raise ConfigError(describe(
        f'bar_signals on split {split.split.name!r}', 'the windows were normalised with other '
        'statistics than the run was trained with',
        'build the splits with make_split_data(..., normalizer=task.normalizer)'))
  source = windows.signal_source(split)  # whether a bar gets a row depends on its past alone
  joined = prediction.predict_all(predict(task), params, source, batch_size, inputs=('encoder',),
                                  description=f'signals {split.split.name}' if progress else None)
  anchors = source.anchors
  probabilities = joined['regime_probabilities'].astype(np.float64)
  return pd.DataFrame({
      'symbol': np.asarray(source.arrays.symbols, dtype=object)[source.arrays.symbol[anchors]],
      'timestamp': schema.to_timestamps(source.arrays.timestamp[anchors]),
      'regime': joined['regime'].astype(np.int64),
      'p_bull': probabilities[:, BULL], 'p_bear': probabilities[:, BEAR],
      'p_sideways': probabilities[:, SIDEWAYS],
      'risk_level': joined['risk_level'].astype(np.int64),
      'risk_score': joined['risk_score'].astype(np.float64),
  })



# ----------------------------------------------------------------------------------------------
# A saved run: loaded back, scored on any store, its signals on any split.


def load(workdir: str | pathlib.Path) -> tuple[GuardianTask, Any, ml_collections.ConfigDict]:
  """``(task, params, config)`` of the run in ``workdir``: the task rebuilt from the saved config
  (with the run's risk thresholds and normaliser) and the params of the best checkpoint."""

  def build(config: ml_collections.ConfigDict, record: Mapping[str, Any]) -> GuardianTask:
    statistics = runner.require_statistics(
        record, MODEL, workdir,
        f'is not a Guardian run (config name {record["config"].get("name")!r})',
        'pass the workdir of experiments.guardian')
    return GuardianTask.from_config(
        config, risk_thresholds=statistics['risk_thresholds'],
        normalizer=windows.Normalizer.from_dict(record['normalizer']))

  return runner.load_run(workdir, build, example_batch)


def _saved_data(task: GuardianTask, config: ml_collections.ConfigDict,
                data_config: ml_collections.ConfigDict, batch_size: int) -> dict[str, SplitData]:
  data, _ = data_lib.make_split_data(data_config, window_spec(config), batch_size, 0,
                                     normalizer=task.normalizer)
  return data


def evaluate_saved(task: GuardianTask, params: Any, config: ml_collections.ConfigDict,
                   record: Mapping[str, Any], data_config: ml_collections.ConfigDict,
                   workdir: str | pathlib.Path, *, batch_size: int = 1024,
                   max_windows: int = 0) -> dict[str, Any]:
  """The saved run's :func:`evaluate` on the ``evaluation`` split of ``data_config``, with the
  run's own training statistics."""
  data = _saved_data(task, config, data_config, batch_size)
  return evaluate(task, params, data['evaluation'], runner.training_statistics(record, MODEL),
                  workdir, max_windows=max_windows)


def saved_signals(task: GuardianTask, params: Any, config: ml_collections.ConfigDict,
                  record: Mapping[str, Any], data_config: ml_collections.ConfigDict, split: str,
                  *, batch_size: int = 1024, progress: bool = True) -> pd.DataFrame:
  """The saved run's :func:`bar_signals` over ``split`` of ``data_config``."""
  del record
  data = _saved_data(task, config, data_config, batch_size)
  return bar_signals(task, params, runner.split_of(data, split), batch_size=batch_size,
                     progress=progress)
