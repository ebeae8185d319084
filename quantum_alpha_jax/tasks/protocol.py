"""The one shape of every model: the :class:`Task` object the trainer calls, and the
:class:`TaskEntry` through which shared code (the experiments' entry point, saved-run evaluation,
the ensemble backtest, export, continual retraining) finds a model by name in
:mod:`quantum_alpha_jax.tasks.registry`, with no branch on the model's name.

A model is a module ``quantum_alpha_jax/tasks/<name>.py`` (or a package of that name) that builds
its task class and calls :func:`quantum_alpha_jax.tasks.registry.register` once at import. Its
members, each read off the entry:

- ``window_spec(config)``: the windows its batches are cut from;
- ``make_task(config)``: the task; its ``init_params(rng, batch)`` (init) and
  ``loss_fn(params, batch, rng, step=None)`` (loss, returning the metrics that
  ``metrics(config)`` names, a validation metric to choose from) are all the shared train step
  needs;
- ``run(config, workdir, *, frames=None, on_evaluate=None)``: train, evaluate, ``results.json``
  (:mod:`quantum_alpha_jax.tasks.runner` is the skeleton), and ``load(workdir)`` of a saved run;
- ``bar_signals(...)``: causal per-bar signals (a row reads bars up to its own only); shared code
  (the ensemble backtest) joins their ``signal_columns``, the first of which every signalled bar
  has;
- ``evaluate(...)``: the saved run scored on any store and range;
- ``export_fns``: ``'module:function'`` of the builder of its deployable inference function
  (:meth:`TaskEntry.export_builder`);
- ``format_results(results)``: the table for people.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from typing import Any, Callable, Mapping, Protocol

import jax
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax.data.windows import WindowSpec


class Task(Protocol):
  """What the shared train and eval steps call (``train/step.py``)."""

  def init_params(self, rng: jax.Array, batch: Mapping[str, np.ndarray]) -> Any:
    """fp32 params from one example batch (numpy, unsharded)."""
    ...

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None,
              step: jax.Array | None = None) -> tuple[jax.Array, Mapping[str, jax.Array]]:
    """``(loss, metrics)``: means over the batch's real items; ``rng`` None and ``step`` None in
    evaluation."""
    ...


# ``load(workdir) -> (task, params, saved config)``.
Loader = Callable[[str | pathlib.Path], tuple[Any, Any, ml_collections.ConfigDict]]
# ``signals(task, params, config, record, data_config, split, *, batch_size, progress)``: the
# per-bar signals of a loaded run over ``split`` of ``data_config`` (``record``: its checkpoint
# record).
SignalFn = Callable[..., pd.DataFrame]
# ``evaluate(task, params, config, record, data_config, workdir, *, batch_size, max_windows)``: the
# report of a loaded run on the single ``evaluation`` split of ``data_config``.
SavedEvaluateFn = Callable[..., dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class TaskEntry:
  """One model as shared code sees it (module doc). ``title`` names it for people."""

  name: str
  title: str
  make_task: Callable[[ml_collections.ConfigDict], Any]
  # None for a model that reads no windows (the Strategist reads trajectories: see its make_data).
  window_spec: Callable[[ml_collections.ConfigDict], WindowSpec] | None
  metrics: Callable[[ml_collections.ConfigDict], tuple[str, ...]]
  run: Callable[..., dict[str, Any]]
  load: Loader
  bar_signals: SignalFn
  signal_columns: tuple[str, ...]
  evaluate: SavedEvaluateFn
  format_results: Callable[[Mapping[str, Any]], str]
  # ``'module:function'`` of the export builder (exported under the model's name), or
  # ``{export name: 'module:function'}`` for a model exported several ways (the Strategist: its full
  # context and its cached one-step decode).
  export_fns: str | Mapping[str, str] | None = None
  export_args: tuple[Any, ...] = ()
  prepare_update: Callable[..., Any] | None = None

  def exports(self) -> dict[str, str]:
    """``{export name: 'module:function'}`` of every deployable function of this model."""
    if not self.export_fns:
      return {}
    if isinstance(self.export_fns, str):
      return {self.name: self.export_fns}
    return dict(self.export_fns)

  def export_builder(self, export: str | None = None) -> Callable[..., Any] | None:
    """The builder ``build(task, params, config, record)`` of ``export`` (default: the model's
    own name; ``'module:function'``, called with ``export_args`` when those are given, for a
    factory), imported on demand (export imports tasks, not the other way round); None without
    one."""
    spec = self.exports().get(export or self.name)
    if not spec:
      return None
    module, _, function = spec.partition(':')
    found = getattr(importlib.import_module(module), function)
    return found(*self.export_args) if self.export_args else found
