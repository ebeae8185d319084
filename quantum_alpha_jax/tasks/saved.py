"""Evaluate any saved run on any store and date range (``experiments.evaluate``).

The run in ``config.checkpoint`` (a workdir of the training experiment of ``config.model``, any
model of :mod:`quantum_alpha_jax.tasks.registry`) is rebuilt from its saved config with the params
of its best checkpoint (the entry's ``load``) and scored by the entry's ``evaluate`` on one split,
named ``evaluation``:

- ``config.data``: a feature store directory (``experiments.data`` builds one from kline files);
  empty means the store the run was trained on.
- ``config.start`` / ``config.end``: the range; empty means the run's own ``test`` split.
- The run's fitted normaliser (and its risk thresholds or conditioning target) is used as saved:
  nothing is refitted on the evaluated data.
- The baselines that need training statistics (the Oracle's training mean and climatology) come
  from the run's own training split in its own store, never from the evaluated range.
- A range that overlaps the run's training split is refused when it is evaluated on the training
  store, since that would score the model on data it has seen.
- A range that overlaps the run's validation split on that store is refused too: validation chose
  the best checkpoint, so its score is optimistic. ``config.allow_validation=True`` evaluates it
  anyway, and the results (``label``, the printed header) say "validation (used for model
  selection)"; every other range is labelled "held out".

It writes the same ``results.json`` and plots as the training experiment's own evaluation. This
is run-level code (it reads checkpoints), beside the tasks' own ``run`` and ``load``.
"""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections
import pandas as pd

from quantum_alpha_jax import artifacts
from quantum_alpha_jax import errors
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.train import checkpoint as checkpoint_lib

HELD_OUT_LABEL = 'held out'
VALIDATION_LABEL = 'validation (used for model selection)'


def _record(workdir: pathlib.Path) -> dict[str, Any]:
  if not (workdir / 'checkpoints').is_dir():
    raise errors.ConfigError(errors.describe(
        'config.checkpoint', f'{workdir} holds no checkpoints',
        'pass the workdir of a training run (e.g. checkpoints/oracle-quick)'))
  return checkpoint_lib.read_run_record(workdir)


def _own_store(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> bool:
  return not config.data or (pathlib.Path(config.data).resolve()
                             == pathlib.Path(saved.data.store_dir).resolve())


def _overlaps(evaluation: windows.Split, saved: ml_collections.ConfigDict, name: str
              ) -> windows.Split | None:
  """The run's split ``name`` if ``evaluation`` overlaps it, else None."""
  if name not in saved.data.splits:
    return None
  split = windows.Split(name, *saved.data.splits[name])
  if evaluation.start_ns < split.end_ns and split.start_ns < evaluation.end_ns:
    return split
  return None


def evaluation_label(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                     data_config: ml_collections.ConfigDict) -> str:
  """:data:`VALIDATION_LABEL` if the evaluated range overlaps the run's own validation split on
  its own store (allowed only with ``config.allow_validation``), else :data:`HELD_OUT_LABEL`."""
  evaluation = windows.Split('evaluation', *data_config.splits.evaluation)
  if _own_store(saved, config) and _overlaps(evaluation, saved, 'validation'):
    return VALIDATION_LABEL
  return HELD_OUT_LABEL


def evaluation_data_config(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict
                           ) -> ml_collections.ConfigDict:
  """The saved data config pointed at ``config.data`` with the single ``evaluation`` split."""
  data_config = ml_collections.ConfigDict(saved.data.to_dict())
  own_store = _own_store(saved, config)
  if config.data:
    store = pathlib.Path(config.data)
    if not (store / 'store.json').exists():
      raise errors.ConfigError(errors.describe(
          'config.data', f'{store} is not a feature store (no store.json)',
          'build one with python -m experiments.data, or pass an existing store directory'))
    data_config.store_dir = str(store)
  if bool(config.start) != bool(config.end):
    raise errors.ConfigError(errors.describe('config.start/end', 'only one of them is set',
                                             'set both, or neither for the run\'s test split'))
  if config.start:
    bounds = (config.start, config.end)
  elif 'test' in saved.data.splits:
    bounds = tuple(saved.data.splits.test)
  else:
    raise errors.ConfigError(errors.describe('config.start', 'the run has no test split',
                                             'set --config.start and --config.end'))
  evaluation = windows.Split('evaluation', *bounds)
  train = _overlaps(evaluation, saved, 'train') if own_store else None
  if train is not None:
    raise errors.ConfigError(errors.describe(
        'config.start/end', f'{evaluation.describe()} overlaps the run\'s training split '
        f'{train.describe()} on the store it was trained on',
        'evaluate the run\'s test split (leave start and end empty) or a range after it'))
  validation = _overlaps(evaluation, saved, 'validation') if own_store else None
  if validation is not None and not config.get('allow_validation', False):
    raise errors.ConfigError(errors.describe(
        'config.start/end', f'{evaluation.describe()} overlaps the run\'s validation split '
        f'{validation.describe()}, which chose its best checkpoint, so the score would be '
        'optimistic', 'evaluate the run\'s test split (leave start and end empty) or a range '
        'after it; --config.allow_validation=True scores it anyway, labelled "validation (used '
        'for model selection)"'))
  data_config.splits = ml_collections.ConfigDict({'evaluation': bounds})
  return data_config


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Evaluates the saved run (module docstring); returns the JSON-ready results."""
  entry = registry.get(config.model)
  checkpoint = pathlib.Path(config.checkpoint)
  record = _record(checkpoint)
  task, params, saved = entry.load(checkpoint)
  data_config = evaluation_data_config(saved, config)
  label = evaluation_label(saved, config, data_config)
  workdir = pathlib.Path(workdir)
  report = entry.evaluate(task, params, saved, record, data_config, workdir,
                          batch_size=int(config.batch_size), max_windows=config.max_windows)
  results = {'model': config.model, 'checkpoint': str(checkpoint), 'workdir': str(workdir),
             'store': data_config.store_dir, 'range': list(data_config.splits.evaluation),
             'label': label,
             'best_step': record.get('best_step'), 'evaluation': report,
             'config': config.to_dict(), 'run_config': saved.to_dict()}
  results['results_json'] = str(artifacts.write_results(workdir, results))
  return artifacts.json_ready(results)


def format_results(results: dict[str, Any]) -> str:
  report = results['evaluation']
  lines = [f'{results["model"]} from {results["checkpoint"]} (best step {results["best_step"]}) '
           f'on {results["store"]}, {results["range"][0]} .. {results["range"][1]} '
           f'({results.get("label", HELD_OUT_LABEL)})']
  flat = pd.json_normalize(report, sep='.').T
  scalars = [(k, v) for k, v in flat[0].items() if isinstance(v, (int, float)) and not
             isinstance(v, bool)][:25]
  lines += [f'  {key:<60} {value:.6g}' for key, value in scalars]
  lines.append(f'results: {results["results_json"]}')
  return '\n'.join(lines)
