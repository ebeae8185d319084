"""The Oracle's task: the TFT forecasts the cumulative log-return of the coming
``decoder_length`` bars.

Target. For a window whose last encoder bar is ``t`` (the anchor), horizon ``h`` (1-based) is
``y_h = log(close[t + h] / close[t])``, the cumulative sum of the future bar log-returns, scaled by
``target_scale`` (100: percent) for training. ``y_h > 0`` means the price is up after ``h`` bars.

Loss. The pinball (quantile) loss, averaged over quantiles, horizons and the batch's real items.

P(up). The predicted quantiles are first sorted per horizon (monotone rearrangement, so crossing
quantiles cannot give a decreasing CDF). The CDF ``F`` is the piecewise-linear interpolation through
the points ``(value_i, τ_i)``, extended beyond the outermost quantiles with the slope of the nearest
segment and clipped to [0, 1]. Then ``P(up) = 1 - F(0)``. With quantiles 0.1/0.5/0.9 and the median
above zero, ``P(up) = 0.5 + 0.4 · q50 / (q50 - q10)`` while zero lies inside [q10, q50].

Uncertainty. The width of the outermost interval, ``q_max - q_min`` (in log-return units).

Any model that maps ``(encoder, decoder_known, symbol)`` to ``{'quantiles': [batch, H, Q], ...}``
can stand in for the TFT: the LSTM baseline (``tasks/lstm.py``) subclasses :class:`OracleTask`
and shares the loss, evaluation, ``run``, ``bar_signals`` and ``load`` of this package, so both
land in the same ``results.json`` format.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.features import KNOWN_FUTURE_FEATURES
from quantum_alpha_jax.data.schema import KNOWN_SYMBOLS
from quantum_alpha_jax.data.windows import WindowSpec
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.models.tft import TemporalFusionTransformer



def window_spec(config: ml_collections.ConfigDict) -> WindowSpec:
  return WindowSpec(config.model.encoder_length, config.model.decoder_length)


def check_quantiles(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """``config.model.quantiles`` as floats; a :class:`ConfigError` unless increasing, inside
  (0, 1), with at least two levels and 0.5 among them."""
  quantiles = tuple(float(q) for q in config.model.quantiles)
  if (sorted(quantiles) != list(quantiles) or not all(0 < q < 1 for q in quantiles)
      or 0.5 not in quantiles or len(quantiles) < 2):
    raise ConfigError(describe(
        'config.model.quantiles', f'{quantiles} must be increasing, inside (0, 1), and include '
        '0.5', 'e.g. --config.model.quantiles="(0.1, 0.5, 0.9)"'))
  return quantiles


def window_model_sizes(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The sizes every model on the Oracle's windows takes (symbols, observed and known features,
  encoder and decoder lengths, the checked quantile levels), as keyword arguments."""
  return {'num_symbols': len(KNOWN_SYMBOLS), 'num_observed': len(FEATURES),
          'num_known': len(KNOWN_FUTURE_FEATURES), 'encoder_length': config.model.encoder_length,
          'decoder_length': config.model.decoder_length, 'quantiles': check_quantiles(config)}


def cumulative_targets(future_returns: jax.Array) -> jax.Array:
  """``[batch, horizon]`` bar log-returns → ``log(close[t + h] / close[t])`` for h = 1..horizon."""
  return jnp.cumsum(future_returns, axis=-1)


def pinball(targets: jax.Array, predictions: jax.Array, quantiles: jax.Array) -> jax.Array:
  """Pinball loss ``max(τ (y - q), (τ - 1)(y - q))``; targets ``[..., H]``, predictions ``[..., H, Q]``
  → ``[..., H, Q]``."""
  error = targets[..., None] - predictions
  return jnp.maximum(quantiles * error, (quantiles - 1.0) * error)


def probability_up(quantile_values: jax.Array, quantiles: jax.Array) -> jax.Array:
  """``P(y > 0)`` from predicted quantiles ``[..., Q]`` at levels ``quantiles [Q]`` (see module doc)."""
  values = jnp.sort(quantile_values, axis=-1)
  levels = jnp.asarray(quantiles, values.dtype)
  # Segment k joins (values[k], levels[k]) and (values[k+1], levels[k+1]); pick the one around 0,
  # or the outermost one when 0 lies outside every quantile (linear extrapolation).
  count = values.shape[-1]
  index = jnp.clip(jnp.sum(values < 0, axis=-1) - 1, 0, count - 2)
  low = jnp.take_along_axis(values, index[..., None], -1)[..., 0]
  high = jnp.take_along_axis(values, index[..., None] + 1, -1)[..., 0]
  level_low, level_high = levels[index], levels[index + 1]
  span = jnp.maximum(high - low, 1e-12)
  cdf_at_zero = level_low + (level_high - level_low) * (0.0 - low) / span
  return 1.0 - jnp.clip(cdf_at_zero, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class OracleTask:
  """The TFT on Oracle windows: ``loss_fn`` for the shared trainer, ``predict`` for evaluation.

  Subclasses swap the model (any module called as ``model(encoder, decoder_known, symbol,
  deterministic=...)`` that returns ``{'quantiles': ...}``) and set ``name`` and ``architecture``
  (``config.model.architecture``; absent means the TFT).
  """

  model: TemporalFusionTransformer
  target_scale: float = 100.0
  name: ClassVar[str] = 'oracle'
  architecture: ClassVar[str] = 'tft'

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> OracleTask:
    sizes = window_model_sizes(config)
    if config.model.hidden_size % config.model.num_heads:
      raise ConfigError(describe(
          'config.model', f'hidden_size {config.model.hidden_size} is not a multiple of num_heads '
          f'{config.model.num_heads}'))
    model = TemporalFusionTransformer(
        **sizes, hidden_size=config.model.hidden_size, num_heads=config.model.num_heads,
        hidden_continuous_size=config.model.hidden_continuous_size,
        lstm_layers=config.model.lstm_layers, dropout_rate=config.model.dropout_rate)
    return cls(model=model, target_scale=float(config.target_scale))

  @property
  def quantiles(self) -> np.ndarray:
    return np.asarray(self.model.quantiles, np.float32)

  def init_params(self, rng: jax.Array, batch: Mapping[str, np.ndarray]) -> Any:
    # Jitted: one compile (~7 s at the seed size) instead of ~20 s of op-by-op dispatch.
    init = jax.jit(lambda key, encoder, known, symbol: self.model.init(key, encoder, known,
                                                                        symbol)['params'])
    return init(rng, jnp.asarray(batch['encoder']), jnp.asarray(batch['decoder_known']),
                jnp.asarray(batch['symbol']))

  def apply(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None = None
            ) -> dict[str, jax.Array]:
    """The TFT's outputs for a batch; dropout on when ``rng`` is given."""
    return self.model.apply(
        {'params': params}, batch['encoder'], batch['decoder_known'], batch['symbol'],
        deterministic=rng is None, rngs=None if rng is None else {'dropout': rng})

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None,
              step: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    del step  # no schedule: the pinball loss is the same at every step
    outputs = self.apply(params, batch, rng)
    predictions = outputs['quantiles'].astype(jnp.float32)
    targets = cumulative_targets(batch['future_returns'].astype(jnp.float32)) * self.target_scale
    quantiles = jnp.asarray(self.quantiles)
    losses = pinball(targets, predictions, quantiles)  # [batch, horizon, quantile]
    mask = batch['mask'].astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    masked_mean = lambda per_item: jnp.sum(per_item * mask) / count
    median = predictions[..., list(self.model.quantiles).index(0.5)]
    lowest, highest = predictions[..., 0], predictions[..., -1]
    metrics = {
        'mse': masked_mean(jnp.mean(jnp.square(median - targets), -1)),
        'direction_accuracy': masked_mean(jnp.mean(
            (jnp.sign(median) == jnp.sign(targets)).astype(jnp.float32), -1)),
        'coverage': masked_mean(jnp.mean(
            ((targets >= lowest) & (targets <= highest)).astype(jnp.float32), -1)),
    }
    for index, level in enumerate(self.model.quantiles):
      metrics[f'pinball_q{round(level * 100)}'] = masked_mean(jnp.mean(losses[..., index], -1))
    return masked_mean(jnp.mean(losses, axis=(-2, -1))), metrics

  def predict(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Deterministic forecasts in log-return units: ``quantiles [batch, H, Q]``, ``p_up [batch, H]``,
    ``uncertainty [batch, H]``, plus the attention and variable-selection weights."""
    outputs = self.apply(params, batch)
    values = jnp.sort(outputs['quantiles'], axis=-1) / self.target_scale
    return {**outputs, 'quantiles': values,
            'p_up': probability_up(values, jnp.asarray(self.quantiles)),
            'uncertainty': values[..., -1] - values[..., 0]}


# The batch entries a forecaster reads (the rest of a batch: targets, anchors, mask, ...).
MODEL_INPUTS = ('encoder', 'decoder_known', 'symbol')


@functools.partial(jax.jit, static_argnums=0)
def predict_batch(task: OracleTask, params: Any, inputs: Mapping[str, jax.Array]
                  ) -> dict[str, jax.Array]:
  """``task.predict`` on ``inputs`` (the :data:`MODEL_INPUTS` of a batch), compiled once per task
  and batch size and shared by evaluation and the per-bar signals."""
  return task.predict(params, inputs)


def example_batch(model: Any, size: int = 1) -> dict[str, np.ndarray]:
  """Zero inputs of the right shapes for a window model (to build or check params)."""
  return {'encoder': np.zeros((size, model.encoder_length, model.num_observed), np.float32),
          'decoder_known': np.zeros((size, model.decoder_length, model.num_known), np.float32),
          'symbol': np.zeros((size,), np.int32)}


def check_architecture(config: ml_collections.ConfigDict, task_type: type[OracleTask],
                       where: str = 'config') -> None:
  """A :class:`ConfigError` unless ``config.model.architecture`` (absent: 'tft') is the task's."""
  found = config.model.get('architecture', OracleTask.architecture)
  if found != task_type.architecture:
    raise ConfigError(describe(
        where, f'describes a {found!r} model, not a {task_type.architecture!r} one '
        f'({task_type.name})', "use that model's own config and loader"))


def loss_metrics(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The metrics :meth:`OracleTask.loss_fn` reports besides the loss, for ``config``'s quantiles."""
  return ('mse', 'direction_accuracy', 'coverage',
          *(f'pinball_q{round(level * 100)}' for level in check_quantiles(config)))
