"""The pictures of a forecaster's evaluation on the Oracle's windows: forecast fans, direction
accuracy per horizon beside the naive baselines, and (for the TFT) variable importance and
attention. The drawing itself lives in :mod:`quantum_alpha_jax.evaluate.plots`.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import numpy as np

from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.evaluate import plots

# The baselines drawn beside the model's direction accuracy per horizon.
DIRECTION_BASELINES = ('last_return_persistence', 'momentum', 'reversal', 'train_mean')


def evaluation_plots(report: Mapping[str, Any], split: SplitData, anchors: np.ndarray,
                     symbols: np.ndarray, quantiles: np.ndarray, quantile_levels: np.ndarray,
                     directory: pathlib.Path, *, fan_windows: int,
                     encoder_importance: np.ndarray | None = None,
                     attention: np.ndarray | None = None) -> dict[str, str]:
  """Writes the PNGs of an evaluation report under ``directory`` and returns their paths by name:
  fans of ``fan_windows`` windows spread over the split (``anchors``, ``symbols`` and the forecast
  ``quantiles [windows, H, Q]`` of every evaluated window), direction accuracy per horizon, and
  the variable importance and attention maps when given."""
  arrays = split.source.arrays
  spec = split.source.spec
  pngs = {}
  chosen = np.linspace(0, len(anchors) - 1, num=min(fan_windows, len(anchors))).astype(int)
  picked = anchors[chosen]
  past = np.take(arrays.close, picked[:, None] + spec.offsets[:spec.encoder_length])
  future = np.take(arrays.close, picked[:, None] + spec.offsets[spec.encoder_length:])
  last_close = past[:, -1][:, None, None]
  pngs['forecast_fans'] = str(plots.plot_forecast_fans(
      past, future, last_close * np.exp(quantiles[chosen]), quantile_levels,
      plots.window_titles([arrays.symbols[s] for s in symbols[chosen]],
                          np.take(arrays.timestamp, picked)),
      directory / 'forecast_fans.png'))
  if encoder_importance is not None:
    pngs['variable_importance'] = str(plots.plot_variable_importance(
        list(FEATURES), encoder_importance, directory / 'variable_importance.png',
        'Encoder variable selection (mean weight over test windows)'))
  if attention is not None:
    pngs['attention'] = str(plots.plot_attention(attention, spec.encoder_length,
                                                 directory / 'attention.png'))
  pngs['direction_accuracy'] = str(plots.plot_direction_accuracy(
      report['direction_accuracy_per_horizon'],
      {name: [p['accuracy'] for p in report['baselines'][name]['direction_accuracy_per_horizon']]
       for name in DIRECTION_BASELINES},
      directory / 'direction_accuracy.png'))
  return pngs
