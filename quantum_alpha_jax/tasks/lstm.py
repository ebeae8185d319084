"""The LSTM baseline on the Oracle's windows: the same targets, loss, evaluation and reports.

The model (:class:`~quantum_alpha_jax.models.lstm.LSTMForecaster`) forecasts the same quantiles of
the cumulative log-return ``y_h = log(close[t + h] / close[t])`` (h = 1..decoder_length) as the
TFT, from the same normalised windows. Everything else is the Oracle's (:mod:`.oracle`): the
pinball loss and its metrics, P(up) from the quantiles, the evaluation beside the zero / persistence
/ train-mean / climatology baselines, ``results.json`` (same keys; ``variable_importance`` and
``attention_mean_by_key_position`` are ``None``, since the LSTM has no such weights),
``bar_signals`` and ``load``. Importing the module registers the model ``'lstm'``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import ml_collections

from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.models.lstm import LSTMForecaster
from quantum_alpha_jax.tasks import oracle

# The Oracle's, unchanged: the LSTM reads the same windows and yields the same per-bar signals.
window_spec = oracle.window_spec
bar_signals = oracle.bar_signals


@dataclasses.dataclass(frozen=True)
class LSTMTask(oracle.OracleTask):
  """The LSTM forecaster with the Oracle's loss, metrics and ``predict``."""

  model: LSTMForecaster
  name: ClassVar[str] = 'lstm'
  architecture: ClassVar[str] = 'lstm'

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> LSTMTask:
    sizes = oracle.window_model_sizes(config)
    for key in ('hidden_size', 'num_layers'):
      if int(config.model[key]) < 1:
        raise ConfigError(describe(f'config.model.{key}', f'{config.model[key]} must be >= 1'))
    model = LSTMForecaster(**sizes, hidden_size=config.model.hidden_size,
                           num_layers=config.model.num_layers,
                           dropout_rate=config.model.dropout_rate)
    return cls(model=model, target_scale=float(config.target_scale))


# The Oracle's run, table and loader for this model, registered under its name.
ENTRY = oracle.register_forecaster(LSTMTask, 'LSTM')
run = ENTRY.run
format_results = ENTRY.format_results
load = ENTRY.load
