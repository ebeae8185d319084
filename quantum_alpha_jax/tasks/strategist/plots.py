"""The picture of the Strategist's evaluation: realised against conditioning return."""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from quantum_alpha_jax import artifacts


def plot_conditioning_curve(curve: Sequence[Mapping[str, Any]], train_quantiles: Mapping[str, float],
                            path: str | pathlib.Path) -> pathlib.Path:
  """Realised vs conditioning return (per episode, %), with the identity line."""
  path = pathlib.Path(path)
  targets = np.array([entry['target_return'] for entry in curve]) * 100
  realised = np.array([np.nan if entry['mean_realised_return'] is None
                       else entry['mean_realised_return'] for entry in curve]) * 100
  totals = np.array([np.nan if entry['mean_total_return'] is None else entry['mean_total_return']
                     for entry in curve]) * 100
  figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  axes[0].plot(targets, realised, 'o-', color='tab:blue', label='realised (mean per episode)')
  low, high = min(targets.min(), np.nanmin(realised)), max(targets.max(), np.nanmax(realised))
  axes[0].plot([low, high], [low, high], '--', color='grey', linewidth=0.8, label='realised = target')
  for name, value in train_quantiles.items():
    if name in ('0.5', '0.9'):
      axes[0].axvline(value * 100, color='tab:green', alpha=0.3, linewidth=0.8)
  axes[0].set_xlabel('conditioning return-to-go R̂₀ (discounted, % per episode)')
  axes[0].set_ylabel('realised discounted return (% per episode)')
  axes[0].set_title('Does the conditioning work?')
  axes[0].legend(fontsize=8)
  axes[1].plot(targets, totals, 'o-', color='tab:orange')
  axes[1].axhline(0, color='grey', linewidth=0.6)
  axes[1].set_xlabel('conditioning return-to-go R̂₀ (% per episode)')
  axes[1].set_ylabel('backtest total return (%, mean over symbols)')
  axes[1].set_title('Whole-period backtest (fees 0.1%, next-open fills)')
  figure.tight_layout()
  return artifacts.save_figure(figure, path, dpi=110)

