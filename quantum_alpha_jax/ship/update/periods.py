"""Step 2, periods: the date ranges a cycle or a walk-forward period trains, validates and is
judged on, and the model's config over them.

With ``E`` the end of the last bar that every symbol has, a cycle's holdout is
``[E - holdout_days, E)``, validation the ``validation_days`` before it and training the
``train_days`` before that. Windows of a later split start at least encoder + decoder bars after
the earlier split ends (``data/windows.py``), so no training or validation target reaches into the
holdout, and the holdout starts after the promoted version's own validation data. The walk-forward
replay cuts history at :func:`simulation_boundaries` and uses the same ranges per period.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping

import ml_collections
import pandas as pd

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.errors import ConfigError, describe


MODES = ('finetune', 'scratch')  # from the promoted version's params, or from a fresh init
HOLDOUT = 'holdout'  # the name of a cycle's evaluation split (a walk-forward period: 'evaluation')


def trailing_splits(boundary: Any, train_days: float, validation_days: float,
                    evaluation_end: Any, evaluation_name: str = HOLDOUT
                    ) -> dict[str, tuple[str, str]]:
  """``{'train', 'validation', evaluation_name}`` date ranges: evaluation ``[boundary,
  evaluation_end)``, validation the ``validation_days`` before the boundary, train before that."""
  boundary = schema.to_utc(boundary, 'boundary')
  end = schema.to_utc(evaluation_end, 'evaluation end')
  for key, value in (('train_days', train_days), ('validation_days', validation_days)):
    if not value > 0:
      raise ConfigError(describe(f'config.{key}', f'{value} is not positive',
                                 'give a number of days'))
  validation = boundary - pd.Timedelta(days=float(validation_days))
  train = validation - pd.Timedelta(days=float(train_days))
  iso = lambda t: t.isoformat()
  return {'train': (iso(train), iso(validation)), 'validation': (iso(validation), iso(boundary)),
          evaluation_name: (iso(boundary), iso(end))}


def task_config_for(config: ml_collections.ConfigDict, splits: Mapping[str, tuple[str, str]],
                    store_dir: str | os.PathLike[str], finetune: bool) -> ml_collections.ConfigDict:
  """The model's config for one cycle or period: its data read from ``store_dir`` over ``splits``;
  with ``finetune``, ``config.finetune``'s steps and learning rate."""
  task = ml_collections.ConfigDict(copy.deepcopy(config.task.to_dict()))
  task.data.store_dir = str(store_dir)
  task.data.splits = ml_collections.ConfigDict({k: tuple(v) for k, v in splits.items()})
  if finetune:
    task.train.num_steps = int(config.finetune.num_steps)
    task.train.optimizer.learning_rate = float(config.finetune.learning_rate)
    task.train.optimizer.warmup_steps = int(config.finetune.warmup_steps)
  return task


def simulation_boundaries(simulation: ml_collections.ConfigDict) -> list[pd.Timestamp]:
  """``[start, ..., end]`` at ``simulation.frequency`` (a pandas offset alias, 'MS' = months)."""
  start = schema.to_utc(simulation.start, 'config.simulation.start')
  end = schema.to_utc(simulation.end, 'config.simulation.end')
  try:
    inner = pd.date_range(start, end, freq=simulation.frequency, inclusive='both')
  except ValueError as error:
    raise ConfigError(describe('config.simulation.frequency', f'{simulation.frequency!r} ({error})',
                               "use a pandas offset alias: 'MS' (months), '7D', 'W-MON'")) from None
  boundaries = sorted({start, *inner, end})
  if len(boundaries) < 2:
    raise ConfigError(describe('config.simulation', f'{start} .. {end} holds no period',
                               'set start before end'))
  return list(boundaries)
