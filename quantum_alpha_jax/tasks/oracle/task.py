"""The Oracle task: the TFT forecasts the cumulative log-return of the next ``decoder_length`` bars.

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
and shares the loss, evaluation, ``run``, ``bar_signals`` and ``load`` defined here, so both land
in the same ``results.json`` format.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.features import KNOWN_FUTURE_FEATURES
from quantum_alpha_jax.data.schema import KNOWN_SYMBOLS
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.data.windows import WindowSource
from quantum_alpha_jax.data.windows import WindowSpec
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.evaluate import forecast
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.evaluate import plots
from quantum_alpha_jax.models.tft import TemporalFusionTransformer
from quantum_alpha_jax.progress import Progress


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
    quantiles = check_quantiles(config)
    if config.model.hidden_size % config.model.num_heads:
      raise ConfigError(describe(
          'config.model', f'hidden_size {config.model.hidden_size} is not a multiple of num_heads '
          f'{config.model.num_heads}'))
    model = TemporalFusionTransformer(
        num_symbols=len(KNOWN_SYMBOLS), num_observed=len(FEATURES),
        num_known=len(KNOWN_FUTURE_FEATURES), encoder_length=config.model.encoder_length,
        decoder_length=config.model.decoder_length, hidden_size=config.model.hidden_size,
        num_heads=config.model.num_heads,
        hidden_continuous_size=config.model.hidden_continuous_size,
        lstm_layers=config.model.lstm_layers, dropout_rate=config.model.dropout_rate,
        quantiles=quantiles)
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

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
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
  and batch size and shared by :func:`evaluate` and :func:`bar_signals`."""
  return task.predict(params, inputs)


# ----------------------------------------------------------------------------------------------
# Evaluation on a split, beside the naive baselines, and the pictures.


# The naive forecasts of the cumulative return, besides the zero return and climatology: their
# direction is reported on non-overlapping windows, and the best one is chosen on the training split.
NAIVE_BASELINES = {
    'always_up': 'always predicts a rise (direction only: it has no size)',
    'last_return_persistence': "the anchor bar's return, repeated every bar",
    'momentum': "the encoder window's mean bar return, repeated every bar (trend following)",
    'reversal': 'minus the momentum forecast (mean reversion over the encoder window)',
    'train_mean': "the training split's mean target, for every window",
}


def naive_forecasts(encoder_returns: np.ndarray, train_mean: np.ndarray) -> dict[str, np.ndarray]:
  """The :data:`NAIVE_BASELINES` point forecasts ``[n, H]`` of the cumulative return, from the
  encoder bars' log-returns ``[n, T]`` (up to and including the anchor) and the training split's
  mean target ``[H]``. ``always_up`` is a constant +1: use its sign only."""
  encoder_returns = np.asarray(encoder_returns, np.float64)
  steps = np.arange(1, len(train_mean) + 1)
  drift = encoder_returns.mean(-1)[:, None] * steps
  shape = (len(encoder_returns), len(steps))
  return {'always_up': np.ones(shape),
          'last_return_persistence': encoder_returns[:, -1:] * steps,
          'momentum': drift, 'reversal': -drift,
          'train_mean': np.broadcast_to(np.asarray(train_mean, np.float64), shape)}


def training_baselines(train: SplitData, quantiles: np.ndarray, max_windows: int = 200_000,
                       seed: int = 0) -> dict[str, Any]:
  """Statistics of the training split's targets: the mean ``[H]`` and empirical quantiles ``[H, Q]``,
  used as the 'train mean' and 'climatology' forecasts (no validation or test data involved), and
  ``selection``: each naive baseline's direction accuracy at the last horizon on non-overlapping
  training windows and its pinball loss, with the best of each (``best_direction``,
  ``best_pinball``). Choosing the baseline to beat here keeps the choice free of hindsight."""
  source = train.source
  spec = source.spec
  all_anchors = source.anchors
  anchors = all_anchors
  if len(anchors) > max_windows:
    anchors = np.sort(np.random.default_rng(seed).choice(anchors, max_windows, replace=False))
  encoder_offsets, offsets = spec.offsets[:spec.encoder_length], spec.offsets[spec.encoder_length:]
  window_targets = lambda rows: np.cumsum(
      np.take(source.arrays.log_return, rows[:, None] + offsets).astype(np.float64), -1)
  targets = window_targets(anchors)
  statistics = {'mean': targets.mean(0), 'quantiles': np.quantile(targets, quantiles, axis=0).T}
  window_forecasts = lambda rows: naive_forecasts(
      np.take(source.arrays.log_return, rows[:, None] + encoder_offsets), statistics['mean'])
  # Direction: the last horizon on windows at least H bars apart (anchors are sorted row indices,
  # so every H-th one starts after the previous one's horizon ends): independent outcomes.
  independent = all_anchors[::len(offsets)][:max_windows]
  independent_targets = window_targets(independent)[:, -1]
  direction = {name: forecast.direction_accuracy(independent_targets, point[:, -1])['accuracy']
               for name, point in window_forecasts(independent).items()}
  pinball = {name: forecast.pinball_loss(
      targets, np.repeat(point[..., None], len(quantiles), -1), quantiles)
             for name, point in window_forecasts(anchors).items() if name != 'always_up'}
  pinball['climatology'] = forecast.pinball_loss(
      targets, np.broadcast_to(statistics['quantiles'], targets.shape + (len(quantiles),)),
      quantiles)
  best = lambda scores, sign: max((name for name in scores if scores[name] is not None),
                                  key=lambda name: sign * scores[name])
  statistics['selection'] = {
      'split': train.split.name, 'windows': int(len(anchors)),
      'non_overlapping_windows': int(len(independent)),
      'direction_accuracy': direction, 'pinball_loss': pinball,
      'best_direction': best(direction, 1), 'best_pinball': best(pinball, -1)}
  return statistics


def evaluate(task: OracleTask, params: Any, split: SplitData, train: SplitData, directory: Any,
             *, max_windows: int = 0, fan_windows: int = 4, progress: bool = True
             ) -> dict[str, Any]:
  """Forecasts every window of ``split``; returns metrics beside the baselines (JSON-ready) and
  writes the fan chart and direction-accuracy PNGs, plus the variable importance and attention
  PNGs when the model returns those weights (the TFT does; for other models the report's
  ``variable_importance`` and ``attention_mean_by_key_position`` are ``None``)."""
  from sklearn import metrics as sklearn_metrics  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  quantile_levels = task.quantiles
  collected = {name: [] for name in ('quantiles', 'p_up', 'targets', 'mask', 'anchor', 'symbol',
                                     'encoder_returns')}
  attention_sum, encoder_weight_sum, decoder_weight_sum, count = 0.0, 0.0, 0.0, 0.0
  interpretable = False
  batches = split.steps_per_epoch
  if max_windows > 0:
    batches = min(batches, -(-max_windows // split.dataset[0]['mask'].shape[0]))
  bar = Progress(batches, f'evaluate {split.split.name}', unit='batches') if progress else None
  for _, batch in zip(range(batches), split.iterator()):
    outputs = jax.device_get(predict_batch(task, params, {k: batch[k] for k in MODEL_INPUTS}))
    mask = batch['mask']
    collected['quantiles'].append(outputs['quantiles'])
    collected['p_up'].append(outputs['p_up'])
    collected['targets'].append(np.cumsum(batch['future_returns'], -1))
    collected['mask'].append(mask)
    collected['anchor'].append(batch['anchor'])
    collected['symbol'].append(batch['symbol'])
    collected['encoder_returns'].append(batch['encoder_returns'])
    interpretable = 'attention' in outputs
    if interpretable:
      weights = mask[:, None, None]
      attention_sum = attention_sum + (outputs['attention'] * weights).sum(0)
      encoder_weight_sum = encoder_weight_sum + (
          outputs['encoder_variable_weights'] * weights).sum((0, 1))
      decoder_weight_sum = decoder_weight_sum + (
          outputs['decoder_variable_weights'] * weights).sum((0, 1))
    count += mask.sum()
    if bar:
      bar.update(1)
  if bar:
    bar.close()
  data = {name: np.concatenate(values) for name, values in collected.items()}
  keep = data['mask'] > 0
  data = {name: values[keep] for name, values in data.items()}
  targets, quantiles = data['targets'].astype(np.float64), data['quantiles'].astype(np.float64)
  horizon = targets.shape[1]

  statistics = training_baselines(train, quantile_levels)
  naive = naive_forecasts(data['encoder_returns'], statistics['mean'])
  # Every naive forecast with a size (always-up has only a direction).
  point_baselines = {'zero_return': np.zeros_like(targets),
                     **{name: value for name, value in naive.items() if name != 'always_up'}}
  report = forecast.forecast_report(targets, quantiles, quantile_levels, baselines=point_baselines)
  for name in point_baselines:
    report['baselines'][name]['description'] = NAIVE_BASELINES.get(name, 'a zero forecast')
  # A zero forecast makes no call on the direction: report it as undefined, not as 0% accuracy.
  zero = report['baselines']['zero_return']
  zero['direction_accuracy'] = {'accuracy': None, 'low': None, 'high': None, 'count': 0,
                                'note': 'a zero forecast has no direction'}
  zero['direction_accuracy_per_horizon'] = [zero['direction_accuracy']] * horizon
  # Quantile loss of each baseline's forecast used as every quantile (a point forecast).
  for name, baseline in point_baselines.items():
    report['baselines'][name]['pinball_loss'] = forecast.pinball_loss(
        targets, np.repeat(np.asarray(baseline)[..., None], len(quantile_levels), -1),
        quantile_levels)
  climatology = np.broadcast_to(statistics['quantiles'], quantiles.shape)
  report['baselines']['climatology'] = {
      'description': 'per-horizon quantiles of the training split targets, for every window',
      'pinball_loss': forecast.pinball_loss(targets, climatology, quantile_levels),
      'coverage': forecast.coverage(targets, climatology[..., 0], climatology[..., -1])}
  report['pinball_loss_vs_zero_return'] = (
      report['pinball_loss'] / report['baselines']['zero_return']['pinball_loss'])
  # The Wilson intervals above treat every (window, horizon) as independent, but windows start on
  # every bar and overlap by horizon - 1 bars, so they are far too narrow. Honest figure: the last
  # horizon on windows that do not overlap (every horizon-th window, per symbol in time order).
  median_index = list(task.model.quantiles).index(0.5)
  independent = np.concatenate([np.flatnonzero(data['symbol'] == s)[::horizon]
                                for s in np.unique(data['symbol'])])
  report['direction_accuracy_non_overlapping'] = {
      'horizon': horizon, 'windows': int(len(independent)),
      'note': 'last horizon, windows spaced horizon bars apart: independent outcomes, so the '
              'Wilson interval is honest (the overlapping figures above are not)',
      'oracle': forecast.direction_accuracy(targets[independent, -1:],
                                            quantiles[independent, -1:, median_index]),
      **{name: forecast.direction_accuracy(targets[independent, -1:], value[independent, -1:])
         for name, value in naive.items()}}
  # The gain over the strongest naive rule on this very split (the harshest choice for the
  # model), paired on the same non-overlapping windows, with a block-bootstrap interval over
  # calendar days (the symbols share regimes, so their windows are not independent either).
  moved = independent[targets[independent, -1] != 0]  # as direction_accuracy: a move to score
  strongest = max(naive, key=lambda name: report['direction_accuracy_non_overlapping'][name][
      'accuracy'] or 0.0)
  right = lambda values: np.sign(values) == np.sign(targets[moved, -1])
  report['versus_best_baseline'] = {
      'baseline': strongest, 'metric': f'direction accuracy at {horizon} bars',
      **intervals.paired_difference(
          right(quantiles[moved, -1, median_index]), right(naive[strongest][moved, -1]),
          intervals.day_blocks(np.take(split.source.arrays.timestamp, data['anchor'][moved])))}
  # The naive baseline to beat, chosen on the training split (not here, which would be hindsight).
  selection = statistics['selection']
  by_direction, by_pinball = selection['best_direction'], selection['best_pinball']
  report['best_naive_baseline'] = {
      'selected_on': selection['split'],
      'note': f'the naive baseline ({", ".join(NAIVE_BASELINES)}, and climatology for the '
              f'pinball loss) that scores best on the {selection["split"]} split, so choosing it '
              'uses no data of this split',
      'direction': {
          'name': by_direction,
          f'{selection["split"]}_accuracy': selection['direction_accuracy'][by_direction],
          **report['direction_accuracy_non_overlapping'][by_direction]},
      'pinball': {
          'name': by_pinball,
          f'{selection["split"]}_pinball_loss': selection['pinball_loss'][by_pinball],
          'pinball_loss': report['baselines'][by_pinball]['pinball_loss']},
      'selection': selection}
  # P(up) as a probabilistic classifier of the sign, per horizon: Brier score and ROC AUC.
  report['probability_up'] = {}
  for h in sorted({1, horizon // 2, horizon}):
    up = (targets[:, h - 1] > 0).astype(np.float64)
    p = data['p_up'][:, h - 1].astype(np.float64)
    entry = {'brier': float(np.mean(np.square(p - up))),
             'brier_constant_train_rate': float(np.mean(np.square(up.mean() - up))),
             'mean_p_up': float(p.mean()), 'realised_up_rate': float(up.mean())}
    entry['roc_auc'] = (float(sklearn_metrics.roc_auc_score(up, p))
                        if 0 < up.sum() < len(up) else None)
    report['probability_up'][f'horizon_{h}'] = entry

  # Pictures.
  arrays = split.source.arrays
  spec = split.source.spec
  pngs = {}
  chosen = np.linspace(0, len(targets) - 1, num=min(fan_windows, len(targets))).astype(int)
  anchors = data['anchor'][chosen]
  past = np.take(arrays.close, anchors[:, None] + spec.offsets[:spec.encoder_length])
  future = np.take(arrays.close, anchors[:, None] + spec.offsets[spec.encoder_length:])
  last_close = past[:, -1][:, None, None]
  pngs['forecast_fans'] = str(plots.plot_forecast_fans(
      past, future, last_close * np.exp(quantiles[chosen]), quantile_levels,
      plots.window_titles([arrays.symbols[s] for s in data['symbol'][chosen]],
                          np.take(arrays.timestamp, anchors)),
      directory / 'forecast_fans.png'))
  report['variable_importance'] = report['attention_mean_by_key_position'] = None
  if interpretable:
    encoder_importance = encoder_weight_sum / max(count * spec.encoder_length, 1)
    decoder_importance = decoder_weight_sum / max(count * horizon, 1)
    pngs['variable_importance'] = str(plots.plot_variable_importance(
        list(FEATURES), encoder_importance, directory / 'variable_importance.png',
        'Encoder variable selection (mean weight over test windows)'))
    attention = attention_sum / max(count, 1)
    pngs['attention'] = str(plots.plot_attention(attention, spec.encoder_length,
                                                 directory / 'attention.png'))
    report['variable_importance'] = {
        'encoder': dict(sorted(zip(FEATURES, map(float, encoder_importance)),
                               key=lambda item: -item[1])),
        'decoder': dict(zip(KNOWN_FUTURE_FEATURES, map(float, decoder_importance)))}
    report['attention_mean_by_key_position'] = attention.mean(0).tolist()
  pngs['direction_accuracy'] = str(plots.plot_direction_accuracy(
      report['direction_accuracy_per_horizon'],
      {name: [p['accuracy'] for p in report['baselines'][name]['direction_accuracy_per_horizon']]
       for name in ('last_return_persistence', 'momentum', 'reversal', 'train_mean')},
      directory / 'direction_accuracy.png'))
  report['plots'] = pngs
  report['windows'] = int(len(targets))
  report['target'] = 'cumulative log-return log(close[t+h]/close[t]), h = 1..horizon'
  return report


# ----------------------------------------------------------------------------------------------
# The experiment: data → train → best checkpoint → test evaluation → results.json.


# The headline numbers of an :func:`evaluate` report, per member of a population.
POPULATION_METRICS = ('pinball_loss', 'pinball_loss_vs_zero_return', 'q_risk_p90', 'mae', 'rmse',
                      'direction_accuracy.accuracy', 'interval.coverage',
                      'direction_accuracy_non_overlapping.oracle.accuracy',
                      'versus_best_baseline.difference')


def evaluate_population(task: OracleTask, stacked_params: Any, first_report: Mapping[str, Any],
                        split: SplitData, train: SplitData, directory: Any, *,
                        max_windows: int = 0) -> dict[str, Any]:
  """Every member of a population (``stacked_params``, leading axis K) evaluated on ``split``:
  :data:`POPULATION_METRICS` per member, their mean and 95% interval (``first_report`` is member
  0's :func:`evaluate` report; the others write their plots under ``directory/member_<k>``)."""
  from quantum_alpha_jax.train import population  # pylint: disable=g-import-not-at-top

  count = int(jax.tree.leaves(stacked_params)[0].shape[0])
  reports = [first_report] + [
      evaluate(task, population.member(stacked_params, k), split, train,
               pathlib.Path(directory) / f'member_{k}', max_windows=max_windows, fan_windows=1,
               progress=False) for k in range(1, count)]
  return population.summarize([population.numbers(r, POPULATION_METRICS) for r in reports])


def check_architecture(config: ml_collections.ConfigDict, task_type: type[OracleTask],
                       where: str = 'config') -> None:
  """A :class:`ConfigError` unless ``config.model.architecture`` (absent: 'tft') is the task's."""
  found = config.model.get('architecture', OracleTask.architecture)
  if found != task_type.architecture:
    raise ConfigError(describe(
        where, f'describes a {found!r} model, not a {task_type.architecture!r} one '
        f'({task_type.name})', "use that model's own config and loader"))


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        task_type: type[OracleTask] = OracleTask,
        frames: Mapping[str, pd.DataFrame] | None = None,
        on_evaluate: Any = None) -> dict[str, Any]:
  """Trains the ``task_type`` model described by ``config`` in ``workdir`` (resuming if it holds a
  run), evaluates the best checkpoint on the validation and test splits and writes
  ``results.json``. ``frames`` (feature frames by symbol) replace the store of ``config.data``;
  ``on_evaluate(step, metrics)`` follows every validation (``loop.train_and_evaluate``)."""
  from quantum_alpha_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import loop  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import writers  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  check_architecture(config, task_type)
  task = task_type.from_config(config)
  data, normalizer = data_lib.make_split_data(config.data, window_spec(config),
                                              config.train.batch_size, config.train.seed,
                                              frames=frames)
  writers.write_json(workdir / 'normalizer.json', normalizer.to_dict())
  result = loop.train_and_evaluate(config.train, task, data, workdir, run_config=config.to_dict(),
                                   extra_record={'normalizer': normalizer.to_dict()},
                                   on_evaluate=on_evaluate)
  results = {'model': task_type.name, 'workdir': str(workdir), 'train': result.summary,
             'validation': result.best_metrics}
  if result.population is not None:
    results['population'] = {**result.population, 'reports_are_of_member': 0}
  for name in config.evaluation.splits:
    if name not in data:
      raise ConfigError(describe('config.evaluation.splits', f'no split {name!r}',
                                 f'use some of {sorted(data)}'))
    results[name] = evaluate(task, result.params, data[name], data['train'], workdir / name,
                             max_windows=config.evaluation.max_windows,
                             fan_windows=config.evaluation.fan_windows)
    if result.population is not None:
      results['population'][name] = evaluate_population(
          task, result.population_params, results[name], data[name], data['train'],
          workdir / name, max_windows=config.evaluation.max_windows)
  results['config'] = config.to_dict()
  results['results_json'] = str(writers.write_results(workdir, results))
  return results


def format_results(results: Mapping[str, Any], title: str = 'Oracle') -> str:
  """A short table for people: the model (``title``) beside the baselines on each split."""
  lines = [f'{title} run in {results["workdir"]}: {results["train"]["steps"]} steps, best at '
           f'{results["train"]["best_step"]}, {results["train"]["samples_per_second"] or 0:.0f} '
           'samples/s']
  for split in ('validation', 'test'):
    report = results.get(split)
    if not isinstance(report, Mapping) or 'baselines' not in report:
      continue
    lines.append(f'\n{split} ({report["windows"]} windows)   pinball   q-risk P50  RMSE      R²       '
                 'direction (95% CI)')
    rows = [(title, report)] + list(report['baselines'].items())
    for name, entry in rows:
      accuracy = entry.get('direction_accuracy') or {}
      interval = (f'{accuracy["accuracy"]:.4f} ({accuracy["low"]:.4f}–{accuracy["high"]:.4f})'
                  if accuracy.get('accuracy') is not None else '—')
      number = lambda key: (f'{entry[key]:.5g}' if entry.get(key) is not None else '—').ljust(9)
      lines.append(f'  {name:<25} {number("pinball_loss")} {number("q_risk_p50")}  '
                   f'{number("rmse")} {number("r2")} {interval}')
    honest = report['direction_accuracy_non_overlapping']
    interval = lambda entry: (f'{entry["accuracy"]:.4f} ({entry["low"]:.4f}–{entry["high"]:.4f})'
                              if entry.get('accuracy') is not None else '—')
    lines.append(f'  direction at horizon {report["horizon"]} on {honest["windows"]} '
                 'non-overlapping windows (the intervals above assume independent overlapping '
                 'windows and are too narrow):')
    lines.append('    ' + ', '.join(f'{name} {interval(entry)}' for name, entry in honest.items()
                                    if isinstance(entry, Mapping) and 'accuracy' in entry))
    best = report['best_naive_baseline']
    lines.append(f'  {title} vs the best naive baseline (chosen on {best["selected_on"]}): '
                 f'direction {interval(honest["oracle"])} vs {best["direction"]["name"]} '
                 f'{interval(best["direction"])}; pinball {report["pinball_loss"]:.5g} vs '
                 f'{best["pinball"]["name"]} {best["pinball"]["pinball_loss"]:.5g}')
    if 'versus_best_baseline' in report:
      lines.append('  ' + intervals.format_difference(title, report['versus_best_baseline']))
    lines.append(f'  interval coverage {report["interval"]["coverage"]:.3f} '
                 f'(nominal {report["interval"]["nominal_coverage"]:.2f}); plots: '
                 f'{", ".join(report["plots"].values())}')
  lines.append(f'results: {results["results_json"]}')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# Per-bar signals for the ensemble, and loading a finished run.

SIGNAL_COLUMNS = ('p_up', 'uncertainty', 'q50')


def bar_signals(task: OracleTask, params: Any, split: SplitData | WindowSource, *,
                batch_size: int = 1024, progress: bool = True) -> pd.DataFrame:
  """One row per bar of ``split`` whose past window is usable (``windows.signal_source``: whether
  a bar has a row never depends on later bars): ``symbol``, ``timestamp`` (the bar, UTC) and the
  forecast of the cumulative log-return to the last horizon made at that bar: ``p_up``,
  ``uncertainty`` (``q_max - q_min``) and ``q50`` (the median). Rows are ordered by symbol, then
  time.

  A row reads the encoder bars up to and including its own and the calendar (``hour``,
  ``day_of_week``, ``is_trading_hour``) of the coming bars, computed from the clock; never a
  later row. Batches of ``batch_size`` windows run through one jitted forward pass (the last one
  padded).
  """
  source = windows.signal_source(split)
  anchors = source.anchors
  size = max(1, min(int(batch_size), len(anchors)))
  median = list(task.model.quantiles).index(0.5)
  count = math.ceil(len(anchors) / size)
  bar = Progress(count, f'bar signals {source.name}', unit='batches') if progress else None
  pending = []
  for index in range(count):
    chunk = anchors[index * size:(index + 1) * size]
    padded = np.full(size, -1, np.int64)
    padded[:len(chunk)] = chunk
    batch = source.gather(padded)
    # Dispatch is asynchronous: the next batch is gathered while this one computes.
    outputs = predict_batch(task, params, {name: batch[name] for name in MODEL_INPUTS})
    pending.append((len(chunk), jnp.stack([outputs['p_up'][:, -1], outputs['uncertainty'][:, -1],
                                           outputs['quantiles'][:, -1, median]], -1)))
    if bar:
      bar.update(1)
  if bar:
    bar.close()
  values = np.concatenate([np.asarray(jax.device_get(out))[:n] for n, out in pending])
  arrays = source.arrays
  frame = pd.DataFrame({
      'symbol': np.asarray(arrays.symbols, dtype=object)[np.take(arrays.symbol, anchors)],
      'timestamp': schema.to_timestamps(np.take(arrays.timestamp, anchors)),
  })
  for column, name in enumerate(SIGNAL_COLUMNS):
    frame[name] = values[:, column].astype(np.float32)
  return frame


def example_batch(model: Any, size: int = 1) -> dict[str, np.ndarray]:
  """Zero inputs of the right shapes for a window model (to build or check params)."""
  return {'encoder': np.zeros((size, model.encoder_length, model.num_observed), np.float32),
          'decoder_known': np.zeros((size, model.decoder_length, model.num_known), np.float32),
          'symbol': np.zeros((size,), np.int32)}


def load_run(workdir: str | pathlib.Path, task_type: type[OracleTask] = OracleTask
             ) -> tuple[OracleTask, Any, ml_collections.ConfigDict]:
  """Rebuilds the ``task_type`` task from the run's saved config and restores the params of its
  best checkpoint from ``workdir/checkpoints``; returns ``(task, params, config)``."""
  from quantum_alpha_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

  params, record = checkpoint_lib.load_best(workdir)
  config = ml_collections.ConfigDict(record['config'])
  check_architecture(config, task_type, f'{workdir} (saved config)')
  task = task_type.from_config(config)
  expected = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), example_batch(task.model))
  checkpoint_lib.check_structure(params, expected, str(workdir))
  return task, params, config


def load(workdir: str | pathlib.Path) -> tuple[OracleTask, Any, ml_collections.ConfigDict]:
  """The Oracle of a finished (or running) ``experiments.oracle`` run: ``(task, params, config)``."""
  return load_run(workdir, OracleTask)
