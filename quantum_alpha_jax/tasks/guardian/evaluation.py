"""The Guardian's evaluation on a split: regime accuracy beside the baselines (with the gain over
the strongest one and a paired interval over days), agreement with the rule labels, latent-space
diagnostics and the risk calibration.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Mapping

import numpy as np
from scipy import stats

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.evaluate import regime
from quantum_alpha_jax.tasks import prediction
from quantum_alpha_jax.tasks.guardian import plots
from quantum_alpha_jax.tasks.guardian.baselines import baseline_predictions
from quantum_alpha_jax.tasks.guardian.labels import realised_volatility
from quantum_alpha_jax.tasks.guardian.labels import rule_labels
from quantum_alpha_jax.tasks.guardian.labels import trailing_features
from quantum_alpha_jax.tasks.guardian.task import GuardianTask
from quantum_alpha_jax.tasks.guardian.task import predict_batch
from quantum_alpha_jax.tasks.guardian.task import RISK_LEVELS


def predict(task: GuardianTask) -> prediction.PredictFn:
  """The Guardian's jitted forward pass as the prediction loop calls it (reads ``encoder``)."""
  return lambda params, inputs: predict_batch(task, params, inputs['encoder'])


def _collect(task: GuardianTask, params: Any, source: windows.WindowSource, anchors: np.ndarray,
             batch_size: int, description: str | None) -> dict[str, np.ndarray]:
  """Predictions and labels-to-be over ``anchors`` of ``source`` (windows with the label horizon)."""
  collected: dict[str, list[np.ndarray]] = {}
  lookback = task.label_lookback
  for batch, outputs in prediction.predict_batches(predict(task), params, source, batch_size,
                                                   inputs=('encoder',), anchors=anchors,
                                                   description=description):
    trend, volatility = trailing_features(batch['encoder_returns'], lookback)
    labels = task.labels(batch)
    rule = rule_labels(batch['encoder_returns'], batch['future_returns'], lookback=lookback,
                       threshold=task.trend_threshold)
    items = {**outputs, 'true': batch['regime'], 'label': labels, 'rule': rule,
             'trailing_trend': trend, 'trailing_volatility': volatility,
             'forward_volatility': realised_volatility(batch['future_returns'])}
    for name, value in items.items():
      collected.setdefault(name, []).append(np.asarray(value))
  return {name: np.concatenate(values) for name, values in collected.items()}


def _agreement(labels: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
  report = regime.classification_metrics(labels, predictions)
  return {key: report[key] for key in ('count', 'accuracy', 'f1_macro', 'confusion_matrix')}


def risk_calibration(levels: np.ndarray, realised: np.ndarray, score: np.ndarray
                     ) -> dict[str, Any]:
  """Realised forward volatility per predicted risk level, whether it rises with the level, and
  the Spearman rank correlation of the risk score with it."""
  table = []
  for index, name in enumerate(RISK_LEVELS):
    chosen = realised[levels == index]
    table.append({'level': name, 'count': int(chosen.size), 'share': float(chosen.size / max(
        realised.size, 1)),
                  'realised_volatility_mean': float(chosen.mean()) if chosen.size else None,
                  'realised_volatility_median': float(np.median(chosen)) if chosen.size else None})
  means = [row['realised_volatility_mean'] for row in table if row['realised_volatility_mean']
           is not None]
  correlation = stats.spearmanr(score, realised).statistic if realised.size > 2 else math.nan
  return {'table': table, 'monotone_increasing': bool(np.all(np.diff(means) > 0))
          and len(means) == len(RISK_LEVELS),
          'spearman_score_vs_realised': float(correlation),
          'log_volatility_rmse': float(np.sqrt(np.mean(np.square(np.log(score)
                                                                  - np.log(realised)))))}


def evaluate(task: GuardianTask, params: Any, split: SplitData, statistics: Mapping[str, Any],
             directory: Any, *, max_windows: int = 0, batch_size: int = 1024,
             progress: bool = True) -> dict[str, Any]:
  """Classifies every window of ``split`` (or every k-th, at most ``max_windows``); returns the
  regime metrics beside the baselines, the latent-space diagnostics and the risk calibration
  (JSON-ready), and writes the timeline, latent-projection, confusion and risk PNGs."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  source = split.source
  stride = max(1, -(-len(source) // max_windows)) if max_windows > 0 else 1
  anchors = source.anchors[::stride]
  data = _collect(task, params, source, anchors, batch_size,
                  f'evaluate {split.split.name}' if progress else None)
  labels, predicted = data['label'], data['regime']
  has_true = bool((data['true'] >= 0).all())
  label_name = ('the synthetic market\'s true regimes' if task.label_source != 'rule' and has_true
                else 'the rule labels (past and future trend / volatility)')

  # Baselines: the train majority class, and two rules that use the past only.
  predictions, descriptions = baseline_predictions(
      task, statistics, data['trailing_trend'], data['trailing_volatility'], len(labels))
  keep = labels >= 0
  report: dict[str, Any] = {'windows': int(len(labels)), 'stride': stride, 'labels': label_name}
  report['guardian'] = regime.classification_metrics(labels, predicted, mask=keep)
  report['baselines'] = {}
  for name, values in predictions.items():
    entry = regime.classification_metrics(labels, values, mask=keep)
    entry['description'] = descriptions[name]
    report['baselines'][name] = entry
  report['chance_accuracy'] = 1.0 / len(schema.REGIMES)
  # The strongest baseline on this very split (the harshest choice for the model), and the
  # Guardian's accuracy gain over it with a paired block-bootstrap interval over calendar days
  # (per-bar scores within a regime are far from independent).
  best = max(predictions, key=lambda name: report['baselines'][name]['accuracy'])
  days = intervals.day_blocks(np.asarray(source.arrays.timestamp)[anchors][keep])
  report['versus_best_baseline'] = {
      'baseline': best, 'metric': 'accuracy',
      **intervals.paired_difference(predicted[keep] == labels[keep],
                                    predictions[best][keep] == labels[keep], days)}
  report['agreement_with_rule_labels'] = {
      'guardian': _agreement(data['rule'], predicted),
      **{name: _agreement(data['rule'], values) for name, values in predictions.items()}}
  if has_true:
    report['rule_labels_vs_true_regimes'] = _agreement(data['true'], data['rule'])
  report['predicted_share'] = {name: float(np.mean(predicted == i))
                               for i, name in enumerate(schema.REGIMES)}
  report['label_share'] = {name: float(np.mean(labels[keep] == i))
                           for i, name in enumerate(schema.REGIMES)}

  latents = data['latent'].astype(np.float64)
  kl = 0.5 * (np.square(latents) + np.exp(data['log_variance']) - data['log_variance'] - 1.0)
  report['latent'] = {
      'silhouette_by_label': regime.silhouette(latents, labels, mask=keep),
      'silhouette_by_prediction': regime.silhouette(latents, predicted),
      # Burda et al. (2016): latent u is active when Var_x(E_q[z_u]) > 0.01.
      'active_units': int(np.sum(latents.var(axis=0) > 0.01)),
      'latent_dim': int(latents.shape[1]),
      'kl_per_window': float(kl.sum(axis=1).mean()),
      'kl_per_latent': [float(value) for value in kl.mean(axis=0)],
  }
  report['risk'] = {'thresholds': list(task.risk_thresholds),
                    **risk_calibration(data['risk_level'], data['forward_volatility'],
                                       data['risk_score'])}

  report['plots'] = plots.evaluation_plots(
      report, split, anchors, stride, latents, predicted, np.where(keep, labels, -1),
      data['true'] if has_true else None, label_name, directory, task.risk_thresholds)
  return report
