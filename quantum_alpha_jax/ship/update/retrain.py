"""Step 3, retrain: a model trained for one cycle or walk-forward period.

``mode='finetune'``: the promoted version's params and normaliser are the starting point, with
``config.finetune``'s steps and learning rate; ``'scratch'`` (and the very first cycle): a fresh
init and a normaliser fitted on the training window. The run lives in its own folder
(``train.loop``), so a cycle killed mid-training resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping

import ml_collections
import pandas as pd

from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.ship import store as model_store
from quantum_alpha_jax.ship.update import adapters
from quantum_alpha_jax.train import data as data_lib
from quantum_alpha_jax.train import loop


@dataclasses.dataclass
class Trained:
  """A model trained for one cycle or period, with the data it saw and the one it is judged on."""

  task: Any
  params: Any
  normalizer: windows.Normalizer
  data: dict[str, windows.SplitData]
  result: loop.TrainResult
  statistics: dict[str, Any] | None  # what the task's prepare_update took from the training split


def _model_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """``'key: saved -> current'`` for every model setting that differs (compared as JSON)."""
  saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
  return [f'{key}: {saved.get(key)!r} -> {current.get(key)!r}'
          for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def train_model(adapter: adapters.ModelAdapter, task_config: ml_collections.ConfigDict,
                frames: Mapping[str, pd.DataFrame], workdir: pathlib.Path, *,
                parent: model_store.ModelVersion | None, run_info: Mapping[str, Any]) -> Trained:
  """Trains on ``task_config.data.splits['train']`` (validating on ``'validation'``) in ``workdir``,
  from ``parent``'s params and normaliser when given (a fine-tune), else from scratch."""
  normalizer = None
  if parent is not None:
    differences = _model_differences(parent.config.to_dict().get('model', {}),
                                     task_config.model.to_dict())
    if differences:
      raise ConfigError(describe(
          f'{parent.name} version {parent.version}', 'was trained with another model config ('
          + '; '.join(differences[:6]) + '), so it cannot be fine-tuned into this one',
          'use --config.mode=scratch, or restore the model config it was trained with'))
    normalizer = parent.normalizer
  spec = adapter.window_spec(task_config)
  data, normalizer = data_lib.make_split_data(task_config.data, spec, task_config.train.batch_size,
                                              task_config.train.seed, normalizer=normalizer,
                                              frames=frames)
  task = adapter.make_task(task_config)
  record, statistics = {'normalizer': normalizer.to_dict()}, None
  if adapter.prepare is not None:
    task, statistics = adapter.prepare(task, data)
    record[f'{adapter.name}_statistics'] = statistics
  trainee = task if parent is None else adapters.WarmStart(
      task, parent.params, f'{parent.name} version {parent.version}')
  result = loop.train_and_evaluate(
      task_config.train, trainee, {'train': data['train'], 'validation': data['validation']},
      workdir, run_config={**task_config.to_dict(), 'update': dict(run_info)},
      extra_record=record)
  return Trained(task=task, params=result.params, normalizer=normalizer, data=data, result=result,
                 statistics=statistics)
