"""Forecast pictures: quantile fan charts over the real path, variable importance, attention."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from quantum_alpha_jax import artifacts

matplotlib.use('Agg')  # files, never a window (switches pyplot if it is already imported)


def plot_forecast_fans(past_close: np.ndarray, future_close: np.ndarray, quantile_close: np.ndarray,
                       quantiles: Sequence[float], titles: Sequence[str], path: str | Path) -> Path:
  """One panel per window: ``past_close [windows, encoder]``, the realised ``future_close
  [windows, decoder]`` and the forecast ``quantile_close [windows, decoder, Q]`` as nested bands."""
  path = Path(path)
  count = len(past_close)
  columns = min(count, 2)
  rows = int(np.ceil(count / columns))
  fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.4 * rows), squeeze=False)
  quantiles = np.asarray(quantiles)
  median = int(np.argmin(np.abs(quantiles - 0.5)))
  for index, axis in enumerate(axes.flat):
    if index >= count:
      axis.axis('off')
      continue
    encoder, decoder = past_close.shape[1], future_close.shape[1]
    past_x = np.arange(-encoder + 1, 1)
    future_x = np.arange(1, decoder + 1)
    axis.plot(past_x, past_close[index], color='black', linewidth=1.2, label='history')
    axis.plot(np.r_[0, future_x], np.r_[past_close[index, -1], future_close[index]],
              color='black', linestyle='--', linewidth=1.2, label='realised')
    pairs = [(i, len(quantiles) - 1 - i) for i in range(len(quantiles) // 2)]
    for depth, (low, high) in enumerate(pairs):
      axis.fill_between(future_x, quantile_close[index, :, low], quantile_close[index, :, high],
                        color='tab:blue', alpha=0.15 + 0.15 * depth,
                        label=f'P{round(quantiles[low] * 100)}–P{round(quantiles[high] * 100)}')
    axis.plot(future_x, quantile_close[index, :, median], color='tab:blue', linewidth=1.5,
              label='median forecast')
    axis.axvline(0.5, color='grey', linewidth=0.6)
    axis.set_title(titles[index], fontsize=9)
    axis.set_xlabel('bars from the forecast time (5 min)')
    axis.set_ylabel('close')
    if index == 0:
      axis.legend(fontsize=7, loc='upper left')
  fig.suptitle('Oracle forecast fans on test windows (bands: quantile intervals)')
  fig.tight_layout()
  artifacts.save_figure(fig, path)
  return path


def plot_variable_importance(names: Sequence[str], weights: np.ndarray, path: str | Path,
                             title: str, top: int = 25) -> Path:
  """Horizontal bars of mean selection weight per variable (the ``top`` largest), largest on top."""
  path = Path(path)
  weights = np.asarray(weights, np.float64)
  order = np.argsort(weights)[::-1][:top][::-1]
  fig, axis = plt.subplots(figsize=(7, 0.28 * len(order) + 1.2))
  axis.barh([names[i] for i in order], weights[order], color='tab:purple')
  axis.axvline(1.0 / len(weights), color='grey', linestyle=':', label='uniform')
  axis.set_xlabel('mean selection weight')
  axis.set_title(title, fontsize=10)
  axis.legend(fontsize=8)
  fig.tight_layout()
  artifacts.save_figure(fig, path)
  return path


def plot_attention(attention: np.ndarray, encoder_length: int, path: str | Path) -> Path:
  """Mean attention ``[decoder, encoder + decoder]``: the map, and its average over the horizons
  against the key position (negative = past bars, positive = earlier forecast steps)."""
  path = Path(path)
  attention = np.asarray(attention, np.float64)
  decoder = attention.shape[0]
  positions = np.arange(-encoder_length + 1, decoder + 1)
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 3.8), gridspec_kw={'width_ratios': [3, 2]})
  image = left.imshow(attention, aspect='auto', cmap='viridis', interpolation='nearest',
                      extent=(positions[0] - 0.5, positions[-1] + 0.5, decoder + 0.5, 0.5))
  left.axvline(0.5, color='white', linewidth=0.8)
  left.set_xlabel('key position (bars; ≤ 0 is the encoder)')
  left.set_ylabel('forecast horizon (query)')
  left.set_title('Mean attention (causal: no key beyond its query)')
  fig.colorbar(image, ax=left)
  right.plot(positions, attention.mean(axis=0), color='tab:orange')
  right.axvline(0.5, color='grey', linewidth=0.6)
  right.set_xlabel('key position (bars)')
  right.set_ylabel('attention, mean over horizons')
  right.set_title('Which past bars the forecast looks at')
  fig.tight_layout()
  artifacts.save_figure(fig, path)
  return path


def plot_direction_accuracy(per_horizon: Sequence[dict], baselines: dict[str, Sequence[float]],
                            path: str | Path) -> Path:
  """Direction accuracy per horizon with its 95% interval, beside baselines' accuracies."""
  path = Path(path)
  horizons = np.arange(1, len(per_horizon) + 1)
  accuracy = np.array([p['accuracy'] if p['accuracy'] is not None else np.nan for p in per_horizon])
  low = np.array([p['low'] if p['low'] is not None else np.nan for p in per_horizon])
  high = np.array([p['high'] if p['high'] is not None else np.nan for p in per_horizon])
  fig, axis = plt.subplots(figsize=(8, 3.6))
  axis.fill_between(horizons, low, high, color='tab:blue', alpha=0.2, label='Oracle 95% CI')
  axis.plot(horizons, accuracy, color='tab:blue', marker='o', markersize=3, label='Oracle')
  for name, values in baselines.items():
    axis.plot(horizons, values, linestyle='--', linewidth=1, label=name)
  axis.axhline(0.5, color='grey', linewidth=0.6)
  axis.set_xlabel('horizon (bars)')
  axis.set_ylabel('direction accuracy')
  axis.legend(fontsize=8)
  axis.set_title('Is the sign of the cumulative return right? (test split)')
  fig.tight_layout()
  artifacts.save_figure(fig, path)
  return path


def window_titles(symbols: Sequence[str], timestamps: np.ndarray) -> list[str]:
  return [f'{symbol} @ {pd.Timestamp(int(t), tz="UTC"):%Y-%m-%d %H:%M} UTC'
          for symbol, t in zip(symbols, timestamps)]
