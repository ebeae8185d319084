"""Step 4, evaluate: candidate and promoted version, each with its own config and normaliser, on
every window of the judged period.

The figures are exact means of the task's ``loss_fn`` metrics (``train.loop.evaluate``), beside
naive baselines where the model has them (forecasters: zero return, last-return persistence,
trailing mean and climatology, in the loss's pinball units).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import describe
from quantum_alpha_jax.evaluate import forecast
from quantum_alpha_jax.ship import store as model_store
from quantum_alpha_jax.ship.update import adapters
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.train import data as data_lib
from quantum_alpha_jax.train import loop
from quantum_alpha_jax.train import step as step_lib


# One compiled eval step per task description (see evaluate_params), for the life of the process.
_EVAL_STEPS: dict[str, tuple[jax.sharding.Mesh, Callable[..., Any]]] = {}


def evaluate_params(task: Any, params: Any, split: windows.SplitData,
                    task_config: ml_collections.ConfigDict) -> dict[str, float]:
  """Exact means of the task's ``loss_fn`` metrics over every window of ``split``.

  The jitted eval step is kept per task description (everything but the data and training
  settings), so the candidate and the promoted version of one architecture, and later cycles of a
  watch, share one compiled step.
  """
  key = json.dumps({'task': type(task).__qualname__, 'dtype': task_config.train.compute_dtype,
                    'devices': task_config.train.num_devices,
                    **{k: v for k, v in task_config.to_dict().items()
                       if k not in ('data', 'train', 'evaluation', 'name')}},
                   sort_keys=True, default=str)
  if key not in _EVAL_STEPS:
    mesh = step_lib.make_mesh(task_config.train.num_devices or None)
    _EVAL_STEPS[key] = mesh, step_lib.make_eval_step(
        task.loss_fn, mesh, dtype=step_lib.compute_dtype(task_config.train.compute_dtype))
  mesh, eval_step = _EVAL_STEPS[key]
  return loop.evaluate(eval_step, step_lib.replicate(params, mesh), split, mesh)


def version_data(adapter: adapters.ModelAdapter, version: model_store.ModelVersion,
                 splits: Mapping[str, tuple[str, str]], frames: Mapping[str, pd.DataFrame],
                 store_dir: str | os.PathLike[str]
                 ) -> tuple[Any, ml_collections.ConfigDict, dict[str, windows.SplitData]]:
  """A stored version's task, its config over ``splits``, and those splits' windows normalised
  with its own normaliser (what its ``loss_fn`` needs to be evaluated there)."""
  if version.normalizer is None or not version.metadata.get('config'):
    raise model_store.ModelStoreError(describe(
        f'{version.name} version {version.version}', 'was saved without its config or normaliser',
        'save versions with config= and normalizer= (update cycles do)'))
  task_config = ml_collections.ConfigDict(version.metadata['config'])
  task_config.data.store_dir = str(store_dir)
  task_config.data.splits = ml_collections.ConfigDict({k: tuple(v) for k, v in splits.items()})
  task = adapter.make_task(task_config)
  data, _ = data_lib.make_split_data(task_config.data, adapter.window_spec(task_config),
                                     task_config.train.batch_size, task_config.train.seed,
                                     normalizer=version.normalizer, frames=frames)
  return task, task_config, data


def forecast_baselines(task: Any, split: windows.SplitData, train: windows.SplitData
                       ) -> dict[str, dict[str, float]]:
  """Naive forecasts' ``loss`` (mean pinball, in the task's units) on every window of ``split``:
  zero return, and the Oracle's own naive forecasts (``tasks/oracle.py``) last-return persistence,
  the training split's mean and its climatology quantiles; ``{}`` for a task that is not a
  quantile forecaster."""
  if not isinstance(task, oracle.OracleTask):
    return {}
  source = split.source
  spec, arrays, anchors = source.spec, source.arrays, source.anchors
  offsets = spec.offsets[spec.encoder_length:]
  targets = np.cumsum(np.take(arrays.log_return, anchors[:, None] + offsets).astype(np.float64), -1)
  levels = task.quantiles.astype(np.float64)
  statistics = oracle.training_baselines(train, levels)
  naive = oracle.naive_forecasts(
      np.take(arrays.log_return, anchors[:, None] + spec.offsets[:spec.encoder_length]),
      statistics['mean'])
  points = {'zero_return': np.zeros_like(targets),
            **{name: naive[name] for name in ('last_return_persistence', 'train_mean')}}
  scale = float(task.target_scale)
  result = {name: {'loss': forecast.pinball_loss(
      targets * scale, np.repeat(np.asarray(point)[..., None] * scale, len(levels), -1), levels)}
            for name, point in points.items()}
  result['climatology'] = {'loss': forecast.pinball_loss(
      targets * scale, np.broadcast_to(statistics['quantiles'] * scale,
                                       targets.shape + levels.shape), levels)}
  return result
