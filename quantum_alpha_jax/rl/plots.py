"""RL pictures (matplotlib, Agg): the learning curve from ``metrics.jsonl``, split equity curves."""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import pandas as pd

from quantum_alpha_jax import artifacts

_COLORS = {'buy and hold': '#7f7f7f', 'random (seed 0)': '#ff7f0e'}


def read_metrics(path: str | pathlib.Path) -> dict[str, list[dict]]:
  """``metrics.jsonl`` records grouped by split, in file order."""
  grouped: dict[str, list[dict]] = {}
  for line in pathlib.Path(path).read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    grouped.setdefault(record.get('split', ''), []).append(record)
  return grouped


def plot_learning_curve(metrics_path: str | pathlib.Path, path: str | pathlib.Path,
                        title: str = 'Learning curve') -> pathlib.Path:
  """Mean training-episode log-return and the validation tapes' log-return against env steps,
  with the policy loss / entropy beneath."""
  grouped = read_metrics(metrics_path)
  train, validation = grouped.get('train', []), grouped.get('validation', [])
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                       gridspec_kw={'height_ratios': [2, 1]})
  if train:
    steps = np.array([r['env_steps'] for r in train])
    episode = np.array([r.get('episode_log_return', np.nan) or np.nan for r in train], float)
    has = np.array([r.get('episodes', 0) or 0 for r in train]) > 0
    top.plot(steps[has], episode[has], color='#1f77b4', linewidth=1,
             label='training episodes (mean log-return)')
    for name, color in (('entropy', '#2ca02c'), ('critic_loss', '#d62728'),
                        ('value_loss', '#d62728'), ('actor_loss', '#9467bd')):
      values = [r.get(name) for r in train]
      if any(v is not None for v in values):
        bottom.plot(steps, np.array([np.nan if v is None else v for v in values], float),
                    color=color, linewidth=1, label=name)
  if validation:
    steps = [r['env_steps'] for r in validation]
    top.plot(steps, [r.get('log_return') for r in validation], 'o-', color='#ff7f0e',
             linewidth=1, markersize=3, label='validation tapes (log-return, mean over symbols)')
  top.axhline(0.0, color='black', linewidth=0.5)
  top.set_ylabel('log-return')
  top.set_title(title, loc='left')
  top.legend(fontsize=8)
  bottom.set_xlabel('environment steps')
  bottom.set_yscale('symlog', linthresh=1e-2)
  if bottom.lines:
    bottom.legend(fontsize=8)
  figure.tight_layout()
  path = pathlib.Path(path)
  artifacts.save_figure(figure, path)
  return path


def plot_equity_curves(curves: Mapping[str, tuple[pd.DatetimeIndex, Mapping[str, np.ndarray]]],
                       path: str | pathlib.Path, title: str) -> pathlib.Path:
  """One panel per symbol: ``{symbol: (times, {name: equity [time]})}`` on a log scale, framed on
  all but the random policy's curve (each legend entry gives its final equity)."""
  count = len(curves)
  figure, axes = plt.subplots(count, 1, figsize=(12, 3.2 * count), squeeze=False)
  for axis, (symbol, (times, series)) in zip(axes[:, 0], curves.items()):
    x = times.tz_convert(None).to_numpy()
    framed = []  # the y-range follows every curve but the random policy's, which can fall to ~0
    for name, equity in series.items():
      equity = np.asarray(equity, float) / float(equity[0])
      axis.plot(x, equity, label=f'{name} (final {equity[-1]:.3g})', linewidth=1,
                color=_COLORS.get(name))
      if not name.startswith('random'):
        framed.append(equity)
    axis.set_yscale('log')
    if framed:
      low, high = min(c.min() for c in framed), max(c.max() for c in framed)
      axis.set_ylim(low / 1.05, high * 1.05)
    axis.set_ylabel('equity (start = 1)')
    axis.set_title(f'{symbol}', loc='left')
    axis.legend(fontsize=8)
  figure.suptitle(title)
  figure.tight_layout()
  path = pathlib.Path(path)
  artifacts.save_figure(figure, path)
  return path
