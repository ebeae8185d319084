"""The naive forecasts a quantile forecaster of the cumulative return must beat (the Oracle's and
the LSTM's, and any other forecaster on the Oracle's windows), and the statistics of the training
split they use: its mean target, its climatology quantiles, and the baseline chosen on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.evaluate import forecast


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
