"""Models by name: what a cycle needs of a model, found from ``config.model`` alone.

**Models plug in by name.** ``config.model = 'x'`` uses ``quantum_alpha_jax/tasks/x.py`` and
``configs/x.py``. The task module provides ``window_spec(config) -> WindowSpec`` and a task class
with ``from_config(config)``, ``init_params`` and ``loss_fn`` (or ``make_task(config)``), and
optionally ``prepare_update(task, data) -> (task, record)`` for statistics a task takes from the
training split (saved in the run's checkpoint record).

:func:`model_adapter` is the one place in ``ship/update`` that maps a model's name to its code;
the cycle and the walk-forward replay both go through it. :class:`WarmStart` turns a task into
a fine-tune that starts from a stored version's params.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import pkgutil
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.train import checkpoint as checkpoint_lib


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
  """What the cycle needs of a model: its task, its windows and optional training statistics."""

  name: str
  make_task: Callable[[ml_collections.ConfigDict], Any]
  window_spec: Callable[[ml_collections.ConfigDict], windows.WindowSpec]
  prepare: Callable[[Any, Mapping[str, windows.SplitData]], tuple[Any, dict[str, Any]]] | None


def model_adapter(name: str) -> ModelAdapter:
  """The adapter of ``quantum_alpha_jax/tasks/<name>.py`` (the module doc says what it holds)."""
  module_name = f'quantum_alpha_jax.tasks.{name}'
  tasks_dir = pathlib.Path(__file__).resolve().parents[2] / 'tasks'
  available = sorted(module.name for module in pkgutil.iter_modules([str(tasks_dir)])
                     if not module.name.startswith('_'))  # task modules and task packages
  if not isinstance(name, str) or not re.fullmatch(r'[a-z][a-z0-9_]*', name):
    raise ConfigError(describe('config.model', f'{name!r} is not a model name',
                               f'use one of {", ".join(available)}'))
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as error:
    if error.name != module_name:
      raise
    raise ConfigError(describe('config.model', f'no task module quantum_alpha_jax/tasks/{name}.py',
                               f'use one of {", ".join(available)}')) from None
  make_task = getattr(module, 'make_task', None)
  if make_task is None:
    classes = [value for value in vars(module).values()
               if isinstance(value, type) and value.__module__ == module_name
               and hasattr(value, 'from_config') and hasattr(value, 'loss_fn')]
    if len(classes) != 1:
      raise ConfigError(describe(
          'config.model', f'{module_name} has {len(classes)} task classes with from_config and '
          'loss_fn', 'give the module a make_task(config) function'))
    make_task = classes[0].from_config
  window_spec = getattr(module, 'window_spec', None)
  if window_spec is None:
    raise ConfigError(describe('config.model', f'{module_name} has no window_spec(config)',
                               'add one (see quantum_alpha_jax/tasks/oracle.py)'))
  return ModelAdapter(name=name, make_task=make_task, window_spec=window_spec,
                      prepare=getattr(module, 'prepare_update', None))


class WarmStart:
  """A task whose ``init_params`` returns a copy of ``params`` (a fine-tune's start), after checking
  that they fit the model; ``loss_fn`` and everything else are the wrapped task's."""

  def __init__(self, task: Any, params: Any, where: str):
    self.task, self.params, self.where = task, params, where

  def init_params(self, rng: jax.Array, batch: Mapping[str, np.ndarray]) -> Any:
    checkpoint_lib.check_structure(self.params, jax.eval_shape(self.task.init_params, rng, batch),
                                   self.where)
    return jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), self.params)

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None):
    return self.task.loss_fn(params, batch, rng)
