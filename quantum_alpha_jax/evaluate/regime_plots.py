"""Regime pictures: price coloured by regime, a 2-D projection of latents, the confusion matrix and
the risk calibration bars (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.collections import LineCollection
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data.plots import REGIME_COLOURS

matplotlib.use('Agg')  # files, never a window (switches pyplot if it is already imported)

MAX_POINTS = 20_000  # per symbol; longer series are subsampled evenly for drawing
MAX_SCATTER_POINTS = 5_000
_COLOURS = np.array([REGIME_COLOURS[name] for name in schema.REGIMES], dtype=object)


def _dates(timestamps_ns: np.ndarray) -> np.ndarray:
  return mdates.date2num(schema.to_timestamps(timestamps_ns).tz_convert(None).to_pydatetime())


def plot_regime_timeline(timestamps: np.ndarray, close: np.ndarray, predicted: np.ndarray,
                         symbols: Sequence[str], path: str | Path, *,
                         true: np.ndarray | None = None, joined: np.ndarray | None = None,
                         title: str = '') -> Path:
  """Close (log scale) per symbol coloured by the predicted regime, a strip of the true regime
  below it when ``true`` is given. All arrays ``[items]`` in time order within a symbol;
  ``joined[i]`` says item i continues item i - 1 (no hole between them)."""
  path = Path(path)
  symbols = np.asarray(symbols)
  names = list(dict.fromkeys(symbols.tolist()))
  strip = true is not None
  ratios = [4, 0.45] if strip else [1]
  fig, axes = plt.subplots(len(names) * len(ratios), 1, sharex=True, squeeze=False,
                           figsize=(13, (3.0 + 0.45 * strip) * len(names) + 0.6),
                           gridspec_kw={'height_ratios': ratios * len(names)})
  joined = np.ones(len(close), bool) if joined is None else np.asarray(joined, bool)
  for index, name in enumerate(names):
    rows = np.flatnonzero(symbols == name)
    step = max(1, len(rows) // MAX_POINTS)
    chosen = rows[::step]
    # A drawn segment joins two kept points only if nothing between them was a hole.
    holes = np.cumsum(~joined[rows])[::step]
    connected = np.diff(holes) == 0
    times = _dates(timestamps[chosen])
    prices = np.asarray(close, np.float64)[chosen]
    points = np.stack([times, prices], axis=1)
    segments = np.stack([points[:-1], points[1:]], axis=1)
    colours = _COLOURS[np.asarray(predicted)[chosen][1:]]
    axis = axes[index * len(ratios), 0]
    axis.add_collection(LineCollection(segments[connected], colors=list(colours[connected]),
                                       linewidths=0.8))
    axis.set_xlim(times.min(), times.max() if times.max() > times.min() else times.min() + 1)
    axis.set_ylim(prices.min() * 0.99, prices.max() * 1.01)
    axis.set_yscale('log')
    axis.set_ylabel('close (log)')
    axis.set_title(f'{name}: price coloured by the predicted regime', loc='left', fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(handles=[plt.Line2D([], [], color=c, label=n) for n, c in REGIME_COLOURS.items()],
                loc='upper left', fontsize=8)
    if strip:
      band = axes[index * len(ratios) + 1, 0]
      edges = np.concatenate([times, [times[-1] + (times[-1] - times[-2] if len(times) > 1
                                                    else 1 / 288)]])
      labels = np.asarray(true)[chosen]
      for regime, colour in enumerate(_COLOURS):
        spans = [(edges[i], edges[i + 1] - edges[i]) for i in np.flatnonzero(labels == regime)]
        band.broken_barh(spans, (0, 1), facecolors=colour, linewidth=0)
      band.set_yticks([])
      band.set_ylabel('true', rotation=0, ha='right', va='center', fontsize=8)
  locator = mdates.AutoDateLocator()
  axes[-1, 0].xaxis.set_major_locator(locator)
  axes[-1, 0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  artifacts.save_figure(fig, path)
  return path


def plot_latent_projection(latents: np.ndarray, labellings: Mapping[str, np.ndarray],
                           path: str | Path, seed: int = 0) -> Path:
  """The first two principal components of ``latents [items, latent]``, one panel per labelling
  (``{title: labels [items]}``, regime indices), on at most ``MAX_SCATTER_POINTS`` items."""
  path = Path(path)
  latents = np.asarray(latents, np.float64)
  chosen = np.arange(len(latents))
  if len(chosen) > MAX_SCATTER_POINTS:
    chosen = np.sort(np.random.default_rng(seed).choice(len(chosen), MAX_SCATTER_POINTS,
                                                        replace=False))
  pca = PCA(n_components=2, random_state=seed)
  projected = pca.fit_transform(latents[chosen])
  explained = pca.explained_variance_ratio_
  fig, axes = plt.subplots(1, len(labellings), figsize=(5.5 * len(labellings), 4.8),
                           squeeze=False)
  for axis, (title, labels) in zip(axes[0], labellings.items()):
    labels = np.asarray(labels)[chosen]
    for regime, name in enumerate(schema.REGIMES):
      where = labels == regime
      axis.scatter(projected[where, 0], projected[where, 1], s=4, alpha=0.5,
                   color=REGIME_COLOURS[name], label=f'{name} ({int(where.sum())})')
    axis.set_xlabel(f'PC1 ({explained[0]:.0%} of variance)')
    axis.set_ylabel(f'PC2 ({explained[1]:.0%})')
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, markerscale=3)
  fig.suptitle('Guardian latent means (μ), 2-D PCA')
  fig.tight_layout()
  artifacts.save_figure(fig, path)
  return path


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                          path: str | Path, title: str) -> Path:
  """Row-normalised confusion matrix (true rows, predicted columns) with the counts written in."""
  path = Path(path)
  counts = np.asarray(confusion, np.float64)
  shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
  fig, axis = plt.subplots(figsize=(4.8, 4.2))
  image = axis.imshow(shares, cmap='Blues', vmin=0.0, vmax=1.0)
  for i in range(counts.shape[0]):
    for j in range(counts.shape[1]):
      axis.text(j, i, f'{shares[i, j]:.0%}\n({int(counts[i, j])})', ha='center', va='center',
                fontsize=8, color='white' if shares[i, j] > 0.5 else 'black')
  ticks = np.arange(len(class_names))
  axis.set_xticks(ticks, class_names)
  axis.set_yticks(ticks, class_names)
  axis.set_xlabel('predicted')
  axis.set_ylabel('label')
  axis.set_title(title, fontsize=10)
  fig.colorbar(image, ax=axis, fraction=0.046)
  fig.tight_layout()
  artifacts.save_figure(fig, path)
  return path


def plot_risk_calibration(table: Sequence[Mapping[str, object]], path: str | Path,
                          thresholds: Sequence[float]) -> Path:
  """Mean and median realised forward volatility per predicted risk level (rows of the
  calibration table: ``level``, ``count``, ``realised_volatility_mean``, ``..._median``)."""
  path = Path(path)
  levels = [str(row['level']) for row in table]
  means = [row['realised_volatility_mean'] or 0.0 for row in table]
  medians = [row['realised_volatility_median'] or 0.0 for row in table]
  x = np.arange(len(levels))
  fig, axis = plt.subplots(figsize=(6, 3.8))
  axis.bar(x - 0.2, means, 0.4, label='mean', color='tab:orange')
  axis.bar(x + 0.2, medians, 0.4, label='median', color='tab:blue')
  axis.set_xticks(x, [f'{name}\n({row["count"]} windows)' for name, row in zip(levels, table)])
  axis.set_ylabel('realised forward volatility (annualised)')
  axis.set_title(f'Risk calibration (train tercile thresholds {thresholds[0]:.3g}, '
                 f'{thresholds[1]:.3g})', fontsize=10)
  axis.legend(fontsize=8)
  fig.tight_layout()
  artifacts.save_figure(fig, path)
  return path


def window_title(split: str, start_ns: int, end_ns: int) -> str:
  """``'test 2024-07-01 → 2024-12-31'`` for a plot title."""
  return (f'{split} {pd.Timestamp(int(start_ns), tz="UTC"):%Y-%m-%d} → '
          f'{pd.Timestamp(int(end_ns), tz="UTC"):%Y-%m-%d}')
