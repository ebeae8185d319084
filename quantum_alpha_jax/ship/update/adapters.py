"""Models by name: what a cycle needs of a model, found from ``config.model`` alone.

**Models plug in by name.** ``config.model = 'x'`` uses the model that ``quantum_alpha_jax/tasks/x``
registers (``tasks/registry``) and ``configs/x.py``: its entry's ``make_task`` and
``window_spec``, and optionally ``prepare_update(task, data) -> (task, record)`` for statistics a
task takes from the training split (saved in the run's checkpoint record).

:func:`model_adapter` is the one place in ``ship/update`` that maps a model's name to its code;
the cycle and the walk-forward replay both go through it. :class:`WarmStart` turns a task into
a fine-tune that starts from a stored version's params.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.train import checkpoint as checkpoint_lib


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
  """What the cycle needs of a model: its task, its windows and optional training statistics."""

  name: str
  make_task: Callable[[ml_collections.ConfigDict], Any]
  window_spec: Callable[[ml_collections.ConfigDict], windows.WindowSpec]
  prepare: Callable[[Any, Mapping[str, windows.SplitData]], tuple[Any, dict[str, Any]]] | None


def model_adapter(name: str) -> ModelAdapter:
  """The adapter of the registered model ``name`` (``tasks/registry``: every model registers
  itself, so a new head needs no change here). Continual retraining reads windows: a model
  without a ``window_spec`` (the Strategist, which reads trajectories) is refused."""
  entry = registry.get(name)  # a ConfigError naming the models there are, for an unknown name
  if entry.window_spec is None:
    window_models = [other for other in registry.names() if registry.get(other).window_spec]
    raise ConfigError(describe(
        'config.model', f'{name!r} reads no windows (continual retraining retrains window models)',
        f'use one of {", ".join(window_models)}'))
  return ModelAdapter(name=name, make_task=entry.make_task, window_spec=entry.window_spec,
                      prepare=entry.prepare_update)


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
