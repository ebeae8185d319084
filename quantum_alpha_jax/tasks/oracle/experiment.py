"""The Oracle's experiment: data → train → best checkpoint → evaluation → ``results.json``; the
table for people; causal per-bar signals for the ensemble; a saved run loaded back and scored on
any store. Every forecaster on the Oracle's windows (the LSTM too) runs through these with its own
task class.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.data.windows import WindowSource
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.tasks import prediction
from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.tasks import runner
from quantum_alpha_jax.tasks.oracle.evaluation import evaluate
from quantum_alpha_jax.tasks.oracle.evaluation import evaluate_population
from quantum_alpha_jax.tasks.oracle.task import check_architecture
from quantum_alpha_jax.tasks.oracle.task import example_batch
from quantum_alpha_jax.tasks.oracle.task import loss_metrics
from quantum_alpha_jax.tasks.oracle.task import MODEL_INPUTS
from quantum_alpha_jax.tasks.oracle.task import OracleTask
from quantum_alpha_jax.tasks.oracle.task import window_spec
from quantum_alpha_jax.train import data as data_lib


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        task_type: type[OracleTask] = OracleTask,
        frames: Mapping[str, pd.DataFrame] | None = None,
        on_evaluate: Any = None) -> dict[str, Any]:
  """Trains the ``task_type`` model described by ``config`` in ``workdir`` (resuming if it holds a
  run), evaluates the best checkpoint on the evaluation splits and writes ``results.json``
  (:func:`runner.train_and_report`). ``frames`` (feature frames by symbol) replace the store of
  ``config.data``; ``on_evaluate(step, metrics)`` follows every validation."""
  check_architecture(config, task_type)
  task = task_type.from_config(config)
  runner.check_evaluation_splits(config)
  data, normalizer = data_lib.make_split_data(config.data, window_spec(config),
                                              config.train.batch_size, config.train.seed,
                                              frames=frames)
  evaluation = config.evaluation

  def evaluate_split(params, name, split, directory):
    del name
    return evaluate(task, params, split, data['train'], directory,
                    max_windows=evaluation.max_windows, fan_windows=evaluation.fan_windows)

  def evaluate_members(stacked, first, name, split, directory):
    del name
    return evaluate_population(task, stacked, first, split, data['train'], directory,
                               max_windows=evaluation.max_windows)

  return runner.train_and_report(config, workdir, model=task_type.name, task=task, data=data,
                                 normalizer=normalizer, evaluate_split=evaluate_split,
                                 evaluate_population=evaluate_members, on_evaluate=on_evaluate)


def format_results(results: Mapping[str, Any], title: str = 'Oracle') -> str:
  """A short table for people: the model (``title``) beside the baselines on each split."""
  lines = [f'{title} run in {results["workdir"]}: {results["train"]["steps"]} steps, best at '
           f'{results["train"]["best_step"]}, {results["train"]["samples_per_second"] or 0:.0f} '
           'samples/s']
  for split in ('validation', 'test'):
    report = results.get(split)
    if not isinstance(report, Mapping) or 'baselines' not in report:
      continue
    lines.append(f'\n{split} ({report["windows"]} windows)   pinball   q-risk P50  RMSE      R²       '
                 'direction (95% CI)')
    rows = [(title, report)] + list(report['baselines'].items())
    for name, entry in rows:
      accuracy = entry.get('direction_accuracy') or {}
      interval = (f'{accuracy["accuracy"]:.4f} ({accuracy["low"]:.4f}–{accuracy["high"]:.4f})'
                  if accuracy.get('accuracy') is not None else '—')
      number = lambda key: (f'{entry[key]:.5g}' if entry.get(key) is not None else '—').ljust(9)
      lines.append(f'  {name:<25} {number("pinball_loss")} {number("q_risk_p50")}  '
                   f'{number("rmse")} {number("r2")} {interval}')
    honest = report['direction_accuracy_non_overlapping']
    interval = lambda entry: (f'{entry["accuracy"]:.4f} ({entry["low"]:.4f}–{entry["high"]:.4f})'
                              if entry.get('accuracy') is not None else '—')
    lines.append(f'  direction at horizon {report["horizon"]} on {honest["windows"]} '
                 'non-overlapping windows (the intervals above assume independent overlapping '
                 'windows and are too narrow):')
    lines.append('    ' + ', '.join(f'{name} {interval(entry)}' for name, entry in honest.items()
                                    if isinstance(entry, Mapping) and 'accuracy' in entry))
    best = report['best_naive_baseline']
    lines.append(f'  {title} vs the best naive baseline (chosen on {best["selected_on"]}): '
                 f'direction {interval(honest["oracle"])} vs {best["direction"]["name"]} '
                 f'{interval(best["direction"])}; pinball {report["pinball_loss"]:.5g} vs '
                 f'{best["pinball"]["name"]} {best["pinball"]["pinball_loss"]:.5g}')
    if 'versus_best_baseline' in report:
      lines.append('  ' + intervals.format_difference(title, report['versus_best_baseline']))
    lines.append(f'  interval coverage {report["interval"]["coverage"]:.3f} '
                 f'(nominal {report["interval"]["nominal_coverage"]:.2f}); plots: '
                 f'{", ".join(report["plots"].values())}')
  lines.append(f'results: {results["results_json"]}')
  return '\n'.join(lines)



# ----------------------------------------------------------------------------------------------
# Per-bar signals for the ensemble.

SIGNAL_COLUMNS = ('p_up', 'uncertainty', 'q50')


@functools.partial(jax.jit, static_argnums=0)
def _signal_values(task: OracleTask, params: Any, inputs: Mapping[str, jax.Array]
                   ) -> dict[str, jax.Array]:
  """The :data:`SIGNAL_COLUMNS` at the last horizon ``[batch, 3]``, computed on the device so that
  only they travel back."""
  outputs = task.predict(params, inputs)
  median = list(task.model.quantiles).index(0.5)
  return {'signals': jnp.stack([outputs['p_up'][:, -1], outputs['uncertainty'][:, -1],
                                outputs['quantiles'][:, -1, median]], -1)}


def bar_signals(task: OracleTask, params: Any, split: SplitData | WindowSource, *,
                batch_size: int = 1024, progress: bool = True) -> pd.DataFrame:
  """One row per bar of ``split`` whose past window is usable (``windows.signal_source``: whether
  a bar has a row never depends on later bars): ``symbol``, ``timestamp`` (the bar, UTC) and the
  forecast of the cumulative log-return to the last horizon made at that bar: ``p_up``,
  ``uncertainty`` (``q_max - q_min``) and ``q50`` (the median). Rows are ordered by symbol, then
  time.

  A row reads the encoder bars up to and including its own and the calendar (``hour``,
  ``day_of_week``, ``is_trading_hour``) of the coming bars, computed from the clock; never a
  later row. Batches of ``batch_size`` windows run through one jitted forward pass (the last one
  padded; :mod:`quantum_alpha_jax.tasks.prediction`).
  """
  source = windows.signal_source(split)
  anchors = source.anchors
  values = prediction.predict_all(
      lambda p, inputs: _signal_values(task, p, inputs), params, source, batch_size,
      inputs=MODEL_INPUTS, description=f'bar signals {source.name}' if progress else None)
  arrays = source.arrays
  frame = pd.DataFrame({
      'symbol': np.asarray(arrays.symbols, dtype=object)[np.take(arrays.symbol, anchors)],
      'timestamp': schema.to_timestamps(np.take(arrays.timestamp, anchors)),
  })
  for column, name in enumerate(SIGNAL_COLUMNS):
    frame[name] = values['signals'][:, column].astype(np.float32)
  return frame


# ----------------------------------------------------------------------------------------------
# A saved run: loaded back, scored on any store, its signals on any split.


def load_run(workdir: str | pathlib.Path, task_type: type[OracleTask] = OracleTask
             ) -> tuple[OracleTask, Any, ml_collections.ConfigDict]:
  """Rebuilds the ``task_type`` task from the run's saved config and restores the params of its
  best checkpoint from ``workdir/checkpoints``; returns ``(task, params, config)``."""

  def build(config: ml_collections.ConfigDict, record: Mapping[str, Any]) -> OracleTask:
    del record
    check_architecture(config, task_type, f'{workdir} (saved config)')
    return task_type.from_config(config)

  return runner.load_run(workdir, build, lambda task: example_batch(task.model))


def load(workdir: str | pathlib.Path) -> tuple[OracleTask, Any, ml_collections.ConfigDict]:
  """The Oracle of a finished (or running) ``experiments.oracle`` run:
  ``(task, params, config)``."""
  return load_run(workdir, OracleTask)


def _saved_data(config: ml_collections.ConfigDict, record: Mapping[str, Any],
                data_config: ml_collections.ConfigDict, batch_size: int
                ) -> dict[str, SplitData]:
  """Windows of every split of ``data_config``, normalised with the run's own normaliser."""
  normalizer = windows.Normalizer.from_dict(record['normalizer'])
  data, _ = data_lib.make_split_data(data_config, window_spec(config), batch_size, 0,
                                     normalizer=normalizer)
  return data


def evaluate_saved(task: OracleTask, params: Any, config: ml_collections.ConfigDict,
                   record: Mapping[str, Any], data_config: ml_collections.ConfigDict,
                   workdir: str | pathlib.Path, *, batch_size: int = 1024,
                   max_windows: int = 0) -> dict[str, Any]:
  """The saved run's :func:`evaluate` on the ``evaluation`` split of ``data_config``; the baselines'
  training statistics come from the run's own training split in its own store."""
  data = _saved_data(config, record, data_config, batch_size)
  own = _saved_data(config, record, config.data, batch_size)
  return evaluate(task, params, data['evaluation'], own['train'], workdir,
                  max_windows=max_windows)


def saved_signals(task: OracleTask, params: Any, config: ml_collections.ConfigDict,
                  record: Mapping[str, Any], data_config: ml_collections.ConfigDict, split: str,
                  *, batch_size: int = 1024, progress: bool = True) -> pd.DataFrame:
  """The saved run's :func:`bar_signals` over ``split`` of ``data_config``."""
  data = _saved_data(config, record, data_config, batch_size)
  return bar_signals(task, params, runner.split_of(data, split), batch_size=batch_size,
                     progress=progress)


def register_forecaster(task_type: type[OracleTask], title: str) -> Any:
  """Registers ``task_type`` (an :class:`OracleTask` subclass: another model on the Oracle's
  windows, with its own ``name`` and ``architecture``) as a model of its own: the Oracle's run,
  evaluation, signals and table, with ``title`` naming it for people. Returns the entry."""

  def run_forecaster(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                     **kwargs: Any) -> dict[str, Any]:
    """Trains and evaluates the model (:func:`run`; ``kwargs``: ``frames``, ``on_evaluate``)."""
    return run(config, workdir, task_type=task_type, **kwargs)

  def format_forecaster(results: Mapping[str, Any]) -> str:
    """The model beside the baselines on each evaluated split."""
    return format_results(results, title=title)

  def load_forecaster(workdir: str | pathlib.Path) -> tuple[OracleTask, Any,
                                                             ml_collections.ConfigDict]:
    """The model of a finished (or running) run: ``(task, params, config)``."""
    return load_run(workdir, task_type)

  return registry.register(
      task_type.name, title=title, make_task=task_type.from_config, window_spec=window_spec,
      metrics=loss_metrics, run=run_forecaster, load=load_forecaster, bar_signals=saved_signals,
      signal_columns=SIGNAL_COLUMNS, evaluate=evaluate_saved, format_results=format_forecaster,
      export_fns='quantum_alpha_jax.ship.export.inference:quantile_forecaster',
      export_args=(task_type.name,))
