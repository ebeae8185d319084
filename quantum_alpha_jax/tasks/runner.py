"""The run/load skeleton every model shares: data → training statistics → train → evaluate each
split → ``results.json``, and a saved run rebuilt from its checkpoint.

A model's ``run`` builds its task, its split data and its statistics of the training split, then
hands them to :func:`train_and_report` (:func:`train`, then :func:`report`); its ``load`` hands
:func:`load_run` a function that rebuilds the task from the saved config and checkpoint record.
Statistics a model takes from its training split before training (the Guardian's risk
thresholds, the Strategist's return quantiles) are kept in the checkpoint record under one key, :data:`STATISTICS_KEY`, read back with
:func:`training_statistics`.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.train import checkpoint as checkpoint_lib
from quantum_alpha_jax.train import loop

STATISTICS_KEY = 'training_statistics'
# Where runs saved before the key was shared kept their statistics, by model.
LEGACY_STATISTICS_KEYS = {'guardian': 'guardian_statistics', 'strategist': 'trajectories'}

# ``evaluate_split(params, name, split, directory) -> report``.
SplitEvaluator = Callable[[Any, str, windows.SplitData, pathlib.Path], dict[str, Any]]
# ``evaluate_population(stacked params, member 0's report, name, split, directory) -> summary``.
PopulationEvaluator = Callable[[Any, Mapping[str, Any], str, windows.SplitData, pathlib.Path],
                               dict[str, Any]]


def check_evaluation_splits(config: ml_collections.ConfigDict) -> None:
  """A :class:`ConfigError` unless every ``config.evaluation.splits`` is in ``config.data.splits``
  (checked before any data is read)."""
  for name in config.evaluation.splits:
    if name not in config.data.splits:
      raise ConfigError(describe('config.evaluation.splits', f'no split {name!r}',
                                 f'use some of {sorted(config.data.splits)}'))


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, task: Any,
          data: Mapping[str, windows.SplitData], normalizer: windows.Normalizer,
          statistics: Any = None, on_evaluate: Any = None) -> loop.TrainResult:
  """Trains ``task`` on ``data`` in ``workdir`` (resuming if it holds a run of the same config;
  ``on_evaluate(step, metrics)`` follows every validation), writing ``normalizer.json``;
  ``statistics`` go into the checkpoint record under :data:`STATISTICS_KEY`."""
  workdir = pathlib.Path(workdir)
  artifacts.write_json(workdir / 'normalizer.json', normalizer.to_dict())
  extra_record = {'normalizer': normalizer.to_dict()}
  if statistics is not None:
    extra_record[STATISTICS_KEY] = statistics
  return loop.train_and_evaluate(config.train, task, data, workdir, run_config=config.to_dict(),
                                 extra_record=extra_record, on_evaluate=on_evaluate)


def report(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, model: str,
           result: loop.TrainResult, data: Mapping[str, windows.SplitData],
           evaluate_split: SplitEvaluator, evaluate_population: PopulationEvaluator | None = None,
           results: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Evaluates the best params of ``result`` on each of ``config.evaluation.splits`` with
  ``evaluate_split`` (under ``workdir/<split>``) and writes ``results.json``: ``model``,
  ``workdir``, ``train``, ``validation``, the model's own ``results`` entries, one report per
  split and ``config``. A population run (``config.train.population`` > 1) adds a ``population``
  block, with ``evaluate_population``'s summary per split."""
  workdir = pathlib.Path(workdir)
  out = {'model': model, 'workdir': str(workdir), 'train': result.summary,
         'validation': result.best_metrics, **dict(results or {})}
  if result.population is not None:
    out['population'] = {**result.population, 'reports_are_of_member': 0}
  for name in config.evaluation.splits:
    out[name] = evaluate_split(result.params, name, split_of(data, name), workdir / name)
    if result.population is not None and evaluate_population is not None:
      out['population'][name] = evaluate_population(
          result.population_params, out[name], name, data[name], workdir / name)
  out['config'] = config.to_dict()
  out['results_json'] = str(artifacts.write_results(workdir, out))
  return out


def train_and_report(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                     model: str, task: Any, data: Mapping[str, windows.SplitData],
                     normalizer: windows.Normalizer, evaluate_split: SplitEvaluator,
                     evaluate_population: PopulationEvaluator | None = None,
                     statistics: Any = None, results: Mapping[str, Any] | None = None,
                     on_evaluate: Any = None) -> dict[str, Any]:
  """:func:`train`, then :func:`report`: the whole run of a model, ``results.json`` included."""
  result = train(config, workdir, task=task, data=data, normalizer=normalizer,
                 statistics=statistics, on_evaluate=on_evaluate)
  return report(config, workdir, model=model, result=result, data=data,
                evaluate_split=evaluate_split, evaluate_population=evaluate_population,
                results=results)


def training_statistics(record: Mapping[str, Any], model: str) -> Any:
  """The statistics a run of ``model`` kept in its checkpoint ``record`` (None if it kept none)."""
  if STATISTICS_KEY in record:
    return record[STATISTICS_KEY]
  return record.get(LEGACY_STATISTICS_KEYS.get(model, STATISTICS_KEY))


def load_run(workdir: str | pathlib.Path,
             build: Callable[[ml_collections.ConfigDict, Mapping[str, Any]], Any],
             example_batch: Callable[[Any], Mapping[str, np.ndarray]]
             ) -> tuple[Any, Any, ml_collections.ConfigDict]:
  """``(task, params, config)`` of the run in ``workdir``: the params of its best checkpoint, the
  task ``build(config, record)`` from the saved config and checkpoint record (raising when the run
  is not of its model), and a check that the params fit the task's model
  (``init_params`` on ``example_batch(task)``)."""
  params, record = checkpoint_lib.load_best(workdir)
  config = ml_collections.ConfigDict(record['config'])
  task = build(config, record)
  expected = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), example_batch(task))
  checkpoint_lib.check_structure(params, expected, str(workdir))
  return task, params, config


def require_statistics(record: Mapping[str, Any], model: str, workdir: Any, problem: str,
                       fix: str) -> Any:
  """:func:`training_statistics` of the checkpoint ``record``; a
  :class:`~quantum_alpha_jax.train.checkpoint.CheckpointError` (``workdir``: ``problem`` — ``fix``)
  when it holds none or no normaliser (not a run of ``model``)."""
  statistics = training_statistics(record, model)
  if statistics is None or 'normalizer' not in record:
    raise checkpoint_lib.CheckpointError(describe(str(workdir), problem, fix))
  return statistics


def split_of(data: Mapping[str, windows.SplitData], name: str) -> windows.SplitData:
  """``data[name]``; a :class:`ConfigError` naming the splits there are otherwise."""
  if name not in data:
    raise ConfigError(describe('config.split', f'no split {name!r}', f'use one of {sorted(data)}'))
  return data[name]
