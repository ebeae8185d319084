"""The paired block bootstrap: against the normal interval on independent items, wider when items
within a day move together, and refusing mismatched inputs."""

import numpy as np
import pytest

from quantum_alpha_jax import errors
from quantum_alpha_jax.evaluate import intervals


def test_independent_items_match_the_normal_interval():
  rng = np.random.default_rng(0)
  model = rng.random(4000) < 0.60
  baseline = rng.random(4000) < 0.55
  result = intervals.paired_difference(model, baseline, np.arange(4000), resamples=4000)
  difference = model.astype(float) - baseline
  half = 1.96 * difference.std(ddof=1) / np.sqrt(difference.size)
  assert result['difference'] == pytest.approx(difference.mean())
  assert result['low'] == pytest.approx(difference.mean() - half, abs=0.004)
  assert result['high'] == pytest.approx(difference.mean() + half, abs=0.004)
  assert result['blocks'] == 4000 and result['excludes_zero']


def test_items_that_move_together_within_a_day_widen_the_interval():
  # 40 days of 288 bars; each day the model is either right all day or wrong all day (a regime):
  # the effective sample is 40 days, not 11,520 bars.
  rng = np.random.default_rng(1)
  day_right = rng.random(40) < 0.6
  model = np.repeat(day_right, 288)
  baseline = np.full(model.size, 0.5)
  timestamps = np.datetime64('2024-01-01T00:00', 'ns') + np.arange(model.size) * np.timedelta64(
      5, 'm')
  days = intervals.day_blocks(timestamps)
  assert np.unique(days).size == 40
  blocked = intervals.paired_difference(model, baseline, days)
  naive = intervals.paired_difference(model, baseline, np.arange(model.size))
  assert blocked['blocks'] == 40
  assert (blocked['high'] - blocked['low']) > 5 * (naive['high'] - naive['low'])
  # ~0.1 better on 40 days of coin flips is not distinguishable from nothing.
  assert not blocked['excludes_zero']


def test_refuses_mismatched_inputs():
  with pytest.raises(errors.DataError, match='one score and one block id per item'):
    intervals.paired_difference(np.ones(3), np.ones(4), np.arange(3))
