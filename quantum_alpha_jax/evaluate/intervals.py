"""Honest intervals for "does the model beat its baseline": a paired block bootstrap by day.

Scores on consecutive 5-minute bars are far from independent: a regime lasts hours, so one lucky
day moves thousands of per-bar scores together, and a Wilson or t interval on them is much too
narrow. The comparison here is *paired* (model and baseline are scored on the same items, so the
market's own luck cancels) and *blocked*: items are grouped into calendar-day blocks (UTC, every
symbol's items of that day in one block, because the symbols share regimes), and the bootstrap
resamples whole days with replacement. For a statistic ``mean(model - baseline)`` the 95% interval
is the 2.5 and 97.5 percentiles of that mean over ``resamples`` draws of the days (Künsch, 1989;
the "moving block" bootstrap with blocks that are the calendar's natural unit).

``paired_difference`` returns the observed difference, its interval and the number of blocks; an
interval whose lower end is above 0 says the model beats the baseline at 95% on these days.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantum_alpha_jax import errors

RESAMPLES = 2000
DAY_NS = 86_400 * 1_000_000_000


def day_blocks(timestamps) -> np.ndarray:
  """The UTC calendar day of each timestamp ``[items]`` (int64 ns or datetime64) as a block id."""
  values = np.asarray(timestamps)
  if np.issubdtype(values.dtype, np.datetime64):
    values = values.astype('datetime64[ns]').astype(np.int64)
  return np.floor_divide(values.astype(np.int64), DAY_NS)


def paired_difference(model, baseline, blocks, *, resamples: int = RESAMPLES, seed: int = 0,
                      level: float = 0.95) -> dict[str, Any]:
  """Mean of ``model - baseline`` (per-item scores ``[items]``, e.g. 1.0 where right) with a paired
  block-bootstrap interval over the blocks ``[items]`` (see the module docstring). JSON-ready:
  ``difference``, ``low``, ``high``, ``level``, ``blocks``, ``items``, ``excludes_zero``."""
  model = np.asarray(model, np.float64).ravel()
  baseline = np.asarray(baseline, np.float64).ravel()
  blocks = np.asarray(blocks).ravel()
  if not model.shape == baseline.shape == blocks.shape:
    raise errors.DataError(errors.describe(
        'paired_difference', f'model {model.shape}, baseline {baseline.shape} and blocks '
        f'{blocks.shape} differ', 'pass one score and one block id per item'))
  if model.size == 0:
    raise errors.DataError(errors.describe('paired_difference', 'no items',
                                           'score at least one item'))
  _, block = np.unique(blocks, return_inverse=True)
  count = int(block.max()) + 1
  sums = np.bincount(block, weights=model - baseline, minlength=count)
  sizes = np.bincount(block, minlength=count).astype(np.float64)
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, count, size=(resamples, count))
  means = sums[draws].sum(1) / sizes[draws].sum(1)
  tail = (1.0 - level) / 2.0
  low, high = np.quantile(means, [tail, 1.0 - tail])
  difference = float((model - baseline).mean())
  return {'difference': difference, 'low': float(low), 'high': float(high), 'level': level,
          'blocks': count, 'items': int(model.size), 'excludes_zero': bool(low > 0 or high < 0),
          'method': 'paired bootstrap over calendar-day blocks'}


def format_difference(model: str, comparison: dict[str, Any]) -> str:
  """One line: the model's gain over ``comparison['baseline']`` with its interval and verdict."""
  verdict = ('beats' if comparison['low'] > 0 else 'loses to' if comparison['high'] < 0
             else 'is not distinguishable from')
  return (f'{model} {verdict} {comparison["baseline"]}: {comparison.get("metric", "score")} '
          f'{comparison["difference"]:+.4f} [{comparison["low"]:+.4f}, {comparison["high"]:+.4f}] '
          f'({comparison["level"]:.0%} paired bootstrap over {comparison["blocks"]} days, '
          f'{comparison["items"]} items)')
