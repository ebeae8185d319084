"""The linear forecaster on the Oracle's windows: the fifth head, and the proof that a head costs a
model file, this task, a config and an experiment, and no shared code.

The model (:class:`~quantum_alpha_jax.models.linear.LinearForecaster`) forecasts the Oracle's
quantiles of the cumulative log-return ``y_h = log(close[t + h] / close[t])`` from the same
normalised windows. Everything else is the Oracle's (:mod:`.oracle`): the pinball loss and its
metrics, P(up), the evaluation beside the naive baselines, ``results.json``, ``bar_signals``,
``load``. Importing the module registers the model ``'linear'``, which is all the training entry
point, saved-run evaluation and the backtest need to find it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import ml_collections

from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.models.linear import LinearForecaster
from quantum_alpha_jax.tasks import oracle

window_spec = oracle.window_spec


@dataclasses.dataclass(frozen=True)
class LinearTask(oracle.OracleTask):
  """The linear forecaster with the Oracle's loss, metrics and ``predict``."""

  model: LinearForecaster
  name: ClassVar[str] = 'linear'
  architecture: ClassVar[str] = 'linear'

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> LinearTask:
    sizes = oracle.window_model_sizes(config)
    if int(config.model.hidden_size) < 0 or not 0 <= float(config.model.dropout_rate) < 1:
      raise ConfigError(describe(
          'config.model', f'hidden_size {config.model.hidden_size} must be >= 0 and dropout_rate '
          f'{config.model.dropout_rate} in [0, 1)', 'hidden_size 0 is the purely linear model'))
    model = LinearForecaster(**sizes, hidden_size=int(config.model.hidden_size),
                             dropout_rate=float(config.model.dropout_rate))
    return cls(model=model, target_scale=float(config.target_scale))


# The Oracle's run, table and loader for this model, registered under its name.
ENTRY = oracle.register_forecaster(LinearTask, 'Linear')
run = ENTRY.run
format_results = ENTRY.format_results
load = ENTRY.load
