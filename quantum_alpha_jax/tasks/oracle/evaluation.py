"""The Oracle's evaluation on a split: forecast metrics beside the naive baselines, the honest
direction figures on non-overlapping windows, the gain over the strongest baseline with a paired
interval, P(up) as a classifier, and the TFT's interpretation weights; also per member of a
population. Shared by every forecaster on the Oracle's windows (the LSTM's too).
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import jax
import numpy as np
from sklearn import metrics as sklearn_metrics

from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.features import KNOWN_FUTURE_FEATURES
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.evaluate import forecast
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.tasks import prediction
from quantum_alpha_jax.tasks.oracle import plots
from quantum_alpha_jax.tasks.oracle.baselines import NAIVE_BASELINES
from quantum_alpha_jax.tasks.oracle.baselines import naive_forecasts
from quantum_alpha_jax.tasks.oracle.baselines import training_baselines
from quantum_alpha_jax.tasks.oracle.task import MODEL_INPUTS
from quantum_alpha_jax.tasks.oracle.task import OracleTask
from quantum_alpha_jax.tasks.oracle.task import predict_batch
from quantum_alpha_jax.train import population

# The headline numbers of an :func:`evaluate` report, per member of a population.
POPULATION_METRICS = ('pinball_loss', 'pinball_loss_vs_zero_return', 'q_risk_p90', 'mae', 'rmse',
                      'direction_accuracy.accuracy', 'interval.coverage',
                      'direction_accuracy_non_overlapping.oracle.accuracy',
                      'versus_best_baseline.difference')


def evaluate(task: OracleTask, params: Any, split: SplitData, train: SplitData, directory: Any,
             *, max_windows: int = 0, fan_windows: int = 4, progress: bool = True
             ) -> dict[str, Any]:
  """Forecasts every window of ``split``; returns metrics beside the baselines (JSON-ready) and
  writes the fan chart and direction-accuracy PNGs, plus the variable importance and attention
  PNGs when the model returns those weights (the TFT does; for other models the report's
  ``variable_importance`` and ``attention_mean_by_key_position`` are ``None``)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  quantile_levels = task.quantiles
  collected = {name: [] for name in ('quantiles', 'p_up', 'targets', 'anchor', 'symbol',
                                     'encoder_returns')}
  attention_sum, encoder_weight_sum, decoder_weight_sum, count = 0.0, 0.0, 0.0, 0.0
  interpretable = False
  batch_size = int(np.shape(split.dataset[0]['mask'])[0])
  anchors = split.source.anchors
  if max_windows > 0:
    anchors = anchors[:min(len(anchors), -(-max_windows // batch_size) * batch_size)]
  for batch, outputs in prediction.predict_batches(
      lambda p, inputs: predict_batch(task, p, inputs), params, split.source, batch_size,
      inputs=MODEL_INPUTS, anchors=anchors,
      description=f'evaluate {split.split.name}' if progress else None):
    collected['quantiles'].append(outputs['quantiles'])
    collected['p_up'].append(outputs['p_up'])
    collected['targets'].append(np.cumsum(batch['future_returns'], -1))
    for name in ('anchor', 'symbol', 'encoder_returns'):
      collected[name].append(batch[name])
    interpretable = 'attention' in outputs
    if interpretable:
      attention_sum = attention_sum + outputs['attention'].sum(0)
      encoder_weight_sum = encoder_weight_sum + outputs['encoder_variable_weights'].sum((0, 1))
      decoder_weight_sum = decoder_weight_sum + outputs['decoder_variable_weights'].sum((0, 1))
    count += len(batch['anchor'])
  data = {name: np.concatenate(values) for name, values in collected.items()}
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

  spec = split.source.spec
  report['variable_importance'] = report['attention_mean_by_key_position'] = None
  encoder_importance = attention = None
  if interpretable:
    encoder_importance = encoder_weight_sum / max(count * spec.encoder_length, 1)
    decoder_importance = decoder_weight_sum / max(count * horizon, 1)
    attention = attention_sum / max(count, 1)
    report['variable_importance'] = {
        'encoder': dict(sorted(zip(FEATURES, map(float, encoder_importance)),
                               key=lambda item: -item[1])),
        'decoder': dict(zip(KNOWN_FUTURE_FEATURES, map(float, decoder_importance)))}
    report['attention_mean_by_key_position'] = attention.mean(0).tolist()
  report['plots'] = plots.evaluation_plots(
      report, split, data['anchor'], data['symbol'], quantiles, quantile_levels, directory,
      fan_windows=fan_windows, encoder_importance=encoder_importance, attention=attention)
  report['windows'] = int(len(targets))
  report['target'] = 'cumulative log-return log(close[t+h]/close[t]), h = 1..horizon'
  return report


def evaluate_population(task: OracleTask, stacked_params: Any, first_report: Mapping[str, Any],
                        split: SplitData, train: SplitData, directory: Any, *,
                        max_windows: int = 0) -> dict[str, Any]:
  """Every member of a population (``stacked_params``, leading axis K) evaluated on ``split``:
  :data:`POPULATION_METRICS` per member, their mean and 95% interval (``first_report`` is member
  0's :func:`evaluate` report; the others write their plots under ``directory/member_<k>``)."""
  count = int(jax.tree.leaves(stacked_params)[0].shape[0])
  reports = [first_report] + [
      evaluate(task, population.member(stacked_params, k), split, train,
               pathlib.Path(directory) / f'member_{k}', max_windows=max_windows, fan_windows=1,
               progress=False) for k in range(1, count)]
  return population.summarize([population.numbers(r, POPULATION_METRICS) for r in reports])
