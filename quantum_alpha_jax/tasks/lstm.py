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
import pathlib
from typing import Any, ClassVar

import ml_collections

from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.features import KNOWN_FUTURE_FEATURES
from quantum_alpha_jax.data.schema import KNOWN_SYMBOLS
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.models.lstm import LSTMForecaster
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.tasks import registry

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
    quantiles = oracle.check_quantiles(config)
    for key in ('hidden_size', 'num_layers'):
      if int(config.model[key]) < 1:
        raise ConfigError(describe(f'config.model.{key}', f'{config.model[key]} must be >= 1'))
    model = LSTMForecaster(
        num_symbols=len(KNOWN_SYMBOLS), num_observed=len(FEATURES),
        num_known=len(KNOWN_FUTURE_FEATURES), encoder_length=config.model.encoder_length,
        decoder_length=config.model.decoder_length, hidden_size=config.model.hidden_size,
        num_layers=config.model.num_layers, dropout_rate=config.model.dropout_rate,
        quantiles=quantiles)
    return cls(model=model, target_scale=float(config.target_scale))


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, **kwargs: Any
        ) -> dict[str, Any]:
  """Trains and evaluates the LSTM (see :func:`.oracle.run`; ``kwargs``: ``frames``)."""
  return oracle.run(config, workdir, task_type=LSTMTask, **kwargs)


def format_results(results: dict[str, Any]) -> str:
  """The LSTM beside the baselines on each evaluated split."""
  return oracle.format_results(results, title='LSTM')


def load(workdir: str | pathlib.Path) -> tuple[LSTMTask, Any, ml_collections.ConfigDict]:
  """The LSTM of a finished (or running) ``experiments.lstm`` run: ``(task, params, config)``."""
  return oracle.load_run(workdir, LSTMTask)


ENTRY = registry.register(
    'lstm', title='LSTM', make_task=LSTMTask.from_config, window_spec=window_spec,
    metrics=oracle.loss_metrics, run=run, load=load, bar_signals=oracle.saved_signals,
    signal_columns=oracle.SIGNAL_COLUMNS, evaluate=oracle.evaluate_saved,
    format_results=format_results,
    export_fns='quantum_alpha_jax.export.inference:quantile_forecaster', export_args=('lstm',))
