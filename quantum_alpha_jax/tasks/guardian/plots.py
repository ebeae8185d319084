"""The pictures of the Guardian's evaluation: the regime timeline over the price, the latent
projection, the confusion matrix and the risk calibration (drawn by
:mod:`quantum_alpha_jax.evaluate.regime_plots`).
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import numpy as np

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.evaluate import regime_plots


def evaluation_plots(report: Mapping[str, Any], split: SplitData, anchors: np.ndarray,
                     stride: int, latents: np.ndarray, predicted: np.ndarray, labels: np.ndarray,
                     true: np.ndarray | None, label_name: str, directory: pathlib.Path,
                     risk_thresholds: tuple[float, float]) -> dict[str, str]:
  """Writes the PNGs of an evaluation ``report`` over the windows at ``anchors`` (every
  ``stride``-th of the split) under ``directory``; returns their paths by name. ``labels`` are -1
  where a window has none; ``true`` the synthetic market's regimes, when it has them."""
  arrays = split.source.arrays
  symbols = np.asarray(arrays.symbols)[arrays.symbol[anchors]]
  segment = arrays.segment[anchors]
  joined = np.concatenate([[False], (np.diff(anchors) == stride) & (segment[1:] == segment[:-1])])
  pngs = {
      'regime_timeline': regime_plots.plot_regime_timeline(
          arrays.timestamp[anchors], arrays.close[anchors], predicted, symbols,
          directory / 'regime_timeline.png', true=true,
          joined=joined, title=regime_plots.window_title(split.split.name, split.split.start_ns,
                                                         split.split.end_ns)),
      'latent_projection': regime_plots.plot_latent_projection(
          latents, {'coloured by label': labels,
                    'coloured by the Guardian\'s regime': predicted},
          directory / 'latent_projection.png'),
      'confusion_matrix': regime_plots.plot_confusion_matrix(
          report['guardian']['confusion_matrix'], schema.REGIMES, directory / 'confusion.png',
          f'Guardian vs {"true regimes" if "true" in label_name else "rule labels"} '
          f'({split.split.name})'),
      'risk_calibration': regime_plots.plot_risk_calibration(
          report['risk']['table'], directory / 'risk_calibration.png', risk_thresholds),
  }
  return {name: str(path) for name, path in pngs.items()}
