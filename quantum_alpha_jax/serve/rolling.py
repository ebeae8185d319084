"""pandas' rolling and recursive averages, one value at a time, bit for bit.

``data/features.py`` computes its windows with ``Series.rolling(n).mean()`` / ``.var(ddof=0)``,
its EMAs and Wilder averages with ``Series.ewm(alpha, adjust=False).mean()``. Those are online
algorithms in pandas (``pandas/_libs/window/aggregations.pyx``: Kahan-compensated sums, Welford's
variance with a recompute when a cancellation is detected, the centre-of-mass form of ``alpha``);
the classes here replay them one value at a time in the same float64 operation order, so a stream
of pushes returns exactly the numbers the batch call returns for the same series, last bit
included. They are pandas 3's algorithms (2.x's rolling variance differed); the float64 replay
tests in tests/test_serve_stream.py fail if a pandas upgrade changes one. ``serve/stream.py``
builds the 44 features from them.
"""

from __future__ import annotations

import collections
import math

import numpy as np

_NAN = math.nan
# pandas' roll_var flags a possible catastrophic cancellation when the sum of squared deviations
# drops below this fraction of its previous value, and then recomputes the window from scratch.
_INVERSE_CONDITION_TOLERANCE = float(np.finfo(np.float64).eps) * 1e3


class RollingMean:
  """pandas' ``Series.rolling(window).mean()``, one value at a time (its roll_mean, operation for
  operation: Kahan sums kept apart for adds and removes, the count of negative values, the run of
  equal values that returns the value itself when the whole window repeats it)."""

  __slots__ = ('window', 'values', 'nobs', 'sum', 'negatives', 'add_compensation',
               'remove_compensation', 'same_run', 'previous', 'started')

  def __init__(self, window: int):
    self.window = window
    self.values = collections.deque(maxlen=window)
    self.nobs = 0
    self.sum = 0.0
    self.negatives = 0
    self.add_compensation = 0.0
    self.remove_compensation = 0.0
    self.same_run = 0
    self.previous = _NAN
    self.started = False

  def push(self, value: float) -> float:
    """Adds the newest value; returns the window's mean (NaN until it holds ``window`` values)."""
    if value - value != 0.0:  # NaN or inf: pandas turns inf into NaN, and skips NaN.
      value = _NAN
    values = self.values
    if not self.started:
      self.started = True
      self.previous = value
    elif len(values) == self.window:
      old = values[0]
      if old == old:
        self.nobs -= 1
        y = -old - self.remove_compensation
        t = self.sum + y
        self.remove_compensation = t - self.sum - y
        self.sum = t
        if old < 0.0 or (old == 0.0 and math.copysign(1.0, old) < 0.0):  # signbit
          self.negatives -= 1
    values.append(value)
    if value == value:
      self.nobs += 1
      y = value - self.add_compensation
      t = self.sum + y
      self.add_compensation = t - self.sum - y
      self.sum = t
      if value < 0.0 or (value == 0.0 and math.copysign(1.0, value) < 0.0):
        self.negatives += 1
      if value == self.previous:
        self.same_run += 1
      else:
        self.same_run = 1
      self.previous = value
    nobs = self.nobs
    if nobs < self.window or nobs <= 0:
      return _NAN
    if self.same_run >= nobs:
      return self.previous
    result = self.sum / nobs
    if self.negatives == 0 and result < 0.0:
      return 0.0
    if self.negatives == nobs and result > 0.0:
      return 0.0
    return result


class RollingVariance:
  """pandas' ``Series.rolling(window).var(ddof=0)``, one value at a time (its roll_var: Welford's
  update with Kahan-compensated means, the window recomputed from scratch when a remove or an add
  may have cancelled catastrophically)."""

  __slots__ = ('window', 'values', 'nobs', 'mean', 'ssqdm', 'add_compensation',
               'remove_compensation', 'started')

  def __init__(self, window: int):
    self.window = window
    self.values = collections.deque(maxlen=window)
    self.nobs = 0.0
    self.mean = 0.0
    self.ssqdm = 0.0
    self.add_compensation = 0.0
    self.remove_compensation = 0.0
    self.started = False

  def _add(self, value: float) -> bool:
    """Adds a non-NaN value; True when the update may have cancelled catastrophically."""
    previous_ssqdm = self.ssqdm
    self.nobs += 1.0
    compensation = self.add_compensation
    mean = self.mean
    previous_mean = mean - compensation
    y = value - compensation
    t = y - mean
    self.add_compensation = t + mean - y
    mean = mean + t / self.nobs if self.nobs else 0.0
    self.mean = mean
    self.ssqdm = previous_ssqdm + (value - previous_mean) * (value - mean)
    return previous_ssqdm * _INVERSE_CONDITION_TOLERANCE > self.ssqdm

  def _remove(self, value: float) -> bool:
    """Removes a non-NaN value; True when the update may have cancelled catastrophically."""
    previous_ssqdm = self.ssqdm
    self.nobs -= 1.0
    if not self.nobs:
      self.mean = 0.0
      self.ssqdm = 0.0
      return False
    compensation = self.remove_compensation
    mean = self.mean
    previous_mean = mean - compensation
    y = value - compensation
    t = y - mean
    self.remove_compensation = t + mean - y
    mean = mean - t / self.nobs
    self.mean = mean
    self.ssqdm = previous_ssqdm - (value - previous_mean) * (value - mean)
    return previous_ssqdm * _INVERSE_CONDITION_TOLERANCE > self.ssqdm

  def push(self, value: float) -> float:
    """Adds the newest value; returns the window's population variance (NaN until it is full)."""
    if value - value != 0.0:
      value = _NAN
    values = self.values
    unstable = False
    if len(values) == self.window:
      old = values[0]
      if old == old:
        unstable = self._remove(old)
    values.append(value)
    if value == value:
      unstable = self._add(value) or unstable
    if unstable or not self.started:
      self.started = True
      self.nobs = self.mean = self.ssqdm = self.add_compensation = self.remove_compensation = 0.0
      for old in values:
        if old == old:
          self._add(old)
    nobs = self.nobs
    if nobs >= self.window and nobs > 0.0:
      return self.ssqdm / nobs
    return _NAN


class EqualRun:
  """How many of the latest values are equal (NaN breaks the run): a window of ``n`` values is
  constant, its rolling max equal to its min, exactly when the run is at least ``n`` long."""

  __slots__ = ('length', 'previous')

  def __init__(self):
    self.length = 0
    self.previous = _NAN

  def push(self, value: float) -> int:
    """Adds the newest value; returns the length of the run it ends."""
    if value - value != 0.0:
      self.length = 0
    elif value == self.previous:
      self.length += 1
    else:
      self.length = 1
    self.previous = value
    return self.length


def standard_deviation(variance: float, run: int, window: int) -> float:
  """``features._rolling_std`` from the rolling variance: sqrt (negatives to 0, as pandas' zsqrt),
  exactly 0 over a window of equal values."""
  if run >= window:
    return 0.0
  if variance < 0.0:
    return 0.0
  return math.sqrt(variance)  # sqrt is correctly rounded: numpy's np.sqrt gives the same bits.


class Ewm:
  """pandas' ``Series.ewm(alpha=alpha, adjust=False).mean()`` over finite values, one at a time
  (its ewm: alpha through the centre of mass, and no update when the value equals the average)."""

  __slots__ = ('old_weight', 'new_weight', 'denominator', 'value')

  def __init__(self, alpha: float):
    center_of_mass = float((1 - alpha) / alpha)
    alpha = 1.0 / (1.0 + center_of_mass)
    if center_of_mass == 1:
      raise ValueError('alpha 0.5 takes pandas\' irregular-interval branch, not replayed here')
    self.old_weight = 1.0 - alpha
    self.new_weight = alpha
    self.denominator = self.old_weight + self.new_weight
    self.value = None

  def push(self, value: float) -> float:
    """Adds the newest value; returns the average."""
    current = self.value
    if current is None:
      self.value = value
    elif current != value:
      self.value = (self.old_weight * current + self.new_weight * value) / self.denominator
    return self.value


def numpy_log(value: float) -> float:
  """numpy's log (the batch path's; its SIMD loops need not round like libm's); -inf at 0 without
  numpy's warning."""
  return float(np.log(value)) if value > 0.0 else -math.inf


def divide(numerator: float, denominator: float) -> float:
  """``numerator / denominator`` with numpy's result for a zero denominator (a moving average of
  subnormal prices can round to 0) instead of Python's ZeroDivisionError."""
  if denominator:
    return numerator / denominator
  if numerator != numerator or numerator == 0.0:
    return _NAN
  return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)
