"""Pictures of a feature store: price per symbol coloured by regime, with holes and filled bars."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib
from matplotlib.collections import LineCollection
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data import schema

matplotlib.use('Agg')  # files, never a window (switches pyplot if it is already imported)

REGIME_COLOURS = {'bull': '#2ca02c', 'bear': '#d62728', 'sideways': '#7f7f7f'}
MAX_POINTS = 20_000  # per symbol; longer series are subsampled evenly for drawing


def plot_overview(frames: Mapping[str, pd.DataFrame], path: str | Path, title: str = '') -> Path:
  """Close price (log scale) per symbol, coloured by regime when known; holes and fills shaded.

  Long holes (segment breaks) are drawn as gaps in the line, filled bars as orange ticks on the
  time axis. Returns the PNG path.
  """
  path = Path(path)
  fig, axes = plt.subplots(len(frames), 1, figsize=(13, 3.2 * len(frames)), squeeze=False,
                           sharex=True)
  limits = (np.inf, -np.inf)
  for axis, (symbol, frame) in zip(axes[:, 0], frames.items()):
    step = max(1, len(frame) // MAX_POINTS)
    part = frame.iloc[::step]
    times = mdates.date2num(pd.DatetimeIndex(part[schema.TIMESTAMP]).tz_convert(None).to_pydatetime())
    close = part['close'].to_numpy()
    segment = part[schema.SEGMENT].to_numpy()
    points = np.stack([times, close], axis=1)
    segments = np.stack([points[:-1], points[1:]], axis=1)
    joined = segment[1:] == segment[:-1]  # never draw a line across a long hole
    if schema.REGIME in part:
      names = np.array(schema.REGIMES)[part[schema.REGIME].to_numpy()[1:]]
      colours = [REGIME_COLOURS[n] for n in names]
    else:
      colours = ['#1f77b4'] * len(segments)
    axis.add_collection(LineCollection(segments[joined], colors=np.array(colours, dtype=object)[joined],
                                       linewidths=0.8))
    axis.set_yscale('log')
    limits = (min(limits[0], times.min()), max(limits[1], times.max()))
    axis.set_ylim(close.min() * 0.95, close.max() * 1.05)
    filled = frame.loc[~frame[schema.OBSERVED], schema.TIMESTAMP]
    if len(filled):
      filled_times = mdates.date2num(pd.DatetimeIndex(filled).tz_convert(None).to_pydatetime())
      axis.plot(filled_times, np.full(len(filled_times), close.min() * 0.97), '|', color='orange',
                markersize=6, label=f'filled bars ({len(filled):,})')
    breaks = int(frame[schema.SEGMENT].nunique()) - 1
    axis.set_title(f'{symbol}: {len(frame):,} bars, {breaks} long holes', loc='left', fontsize=10)
    axis.set_ylabel('close (log)')
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in REGIME_COLOURS.items()
               ] if schema.REGIME in part else []
    if len(filled):
      handles.append(plt.Line2D([], [], color='orange', marker='|', linestyle='',
                                label=f'filled bars ({len(filled):,})'))
    if handles:
      axis.legend(handles=handles, loc='upper left', fontsize=8)
    axis.grid(alpha=0.3)
  axes[-1, 0].set_xlim(*limits)  # shared by every panel
  locator = mdates.AutoDateLocator()
  axes[-1, 0].xaxis.set_major_locator(locator)
  axes[-1, 0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  artifacts.save_figure(fig, path)
  return path
