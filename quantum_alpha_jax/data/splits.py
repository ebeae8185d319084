"""Window specs, time splits and which windows are eligible: every window stays inside one symbol and
segment, has only ``valid`` rows and no hole of filled bars longer than ``max_hole_bars``; the windows
inside each time split, with the start of each later split purged. Split out of ``data/windows.py``
(issue #17).

An anchor ``t`` is the row of the last encoder bar; its window spans rows
``[t - encoder_length + 1, t + decoder_length]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import arrays as arrays_lib
from quantum_alpha_jax.data import schema

WindowArrays = arrays_lib.WindowArrays


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """Window geometry: ``encoder_length`` past bars (anchor last), ``decoder_length`` future bars.

  ``max_hole_bars`` is the longest run of filled (``observed=False``) bars a window may touch.
  """

  encoder_length: int
  decoder_length: int = 0
  max_hole_bars: int = 1
  # Also return ``encoder_extra`` (the EXTRA_FEATURES from Binance's taker-buy and trade-count
  # columns); every symbol of the store must have them.
  extra_features: bool = False

  def __post_init__(self):
    for name, minimum in (('encoder_length', 1), ('decoder_length', 0), ('max_hole_bars', 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise errors.ConfigError(errors.describe(
            'WindowSpec', f'{name}={value!r} must be an integer >= {minimum}'))
      object.__setattr__(self, name, int(value))
    object.__setattr__(self, 'extra_features', bool(self.extra_features))

  @property
  def window_length(self) -> int:
    """Rows in one window: encoder plus decoder."""
    return self.encoder_length + self.decoder_length

  @property
  def offsets(self) -> np.ndarray:
    """Row offsets of a window relative to its anchor, ``[window_length]`` int64."""
    return np.arange(-self.encoder_length + 1, self.decoder_length + 1, dtype=np.int64)

  def to_dict(self) -> dict[str, int | bool]:
    """JSON-serialisable form."""
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Split:
  """A named time range ``[start, end)`` (UTC; naive times are read as UTC)."""

  name: str
  start: Any
  end: Any

  def __post_init__(self):
    where = f'split {self.name!r}'
    start, end = schema.to_utc(self.start, where), schema.to_utc(self.end, where)
    if start >= end:
      raise errors.ConfigError(errors.describe(
          where, f'start {start} is not before end {end}', 'swap or fix the dates'))
    object.__setattr__(self, 'start', start)
    object.__setattr__(self, 'end', end)

  @property
  def start_ns(self) -> int:
    return int(self.start.value)

  @property
  def end_ns(self) -> int:
    return int(self.end.value)

  def to_dict(self) -> dict[str, str]:
    """JSON-serialisable form."""
    return {'name': self.name, 'start': self.start.isoformat(), 'end': self.end.isoformat()}

  def describe(self) -> str:
    return f'{self.name!r} [{self.start.isoformat()}, {self.end.isoformat()})'


def splits_from_config(config: Mapping[str, Sequence[Any]]) -> list[Split]:
  """``{'train': (start, end), 'validation': ..., 'test': ...}`` (a config's ``splits``) -> Splits."""
  splits = []
  for name, bounds in config.items():
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
      raise errors.ConfigError(errors.describe(
          f'config.splits.{name}', f'{bounds!r} is not a (start, end) pair',
          f"write --config.splits.{name}=\"('2023-01-01', '2023-07-01')\""))
    splits.append(Split(name, bounds[0], bounds[1]))
  return splits


def validate_splits(splits: Sequence[Split], spec: WindowSpec,
                    purge_bars: int | None = None) -> tuple[list[Split], int]:
  """Checks names are unique and ranges do not overlap; returns (splits by start, purge_bars)."""
  minimum_purge = spec.window_length
  if purge_bars is None:
    purge_bars = minimum_purge
  elif purge_bars < minimum_purge:
    raise errors.ConfigError(errors.describe(
        'splits', f'purge_bars={purge_bars} is smaller than encoder_length + decoder_length = '
        f'{minimum_purge}', f'use purge_bars >= {minimum_purge} (or leave it unset)'))
  names = [split.name for split in splits]
  if len(set(names)) != len(names):
    raise errors.ConfigError(errors.describe('splits', f'duplicate split names in {names}'))
  if not splits:
    raise errors.ConfigError(errors.describe('splits', 'no splits given'))
  ordered = sorted(splits, key=lambda split: split.start_ns)
  for previous, current in zip(ordered, ordered[1:]):
    if current.start_ns < previous.end_ns:
      raise errors.ConfigError(errors.describe(
          'splits', f'{previous.describe()} overlaps {current.describe()}',
          'make the splits disjoint in time (a later split must start at or after the end of '
          'the earlier one)'))
  return ordered, int(purge_bars)


def eligible_anchors(arrays: WindowArrays, spec: WindowSpec) -> np.ndarray:
  """Rows t whose window [t - encoder + 1, t + decoder] is usable, sorted ``[num_windows]`` int64.

  Usable: one symbol and segment, all rows valid, and no run of filled bars longer than
  ``spec.max_hole_bars`` up to the window's last row (a run counts its bars before the window too,
  but none after it: eligibility reads no row later than the window's last, so with
  ``decoder_length`` 0 it depends on bars up to the anchor only).
  """
  num_rows = arrays.num_rows
  first_anchor = spec.encoder_length - 1
  last_anchor = num_rows - 1 - spec.decoder_length
  if last_anchor < first_anchor:
    return np.zeros(0, np.int64)
  segment = np.asarray(arrays.segment)
  missing = ~np.asarray(arrays.observed)
  # Runs of filled bars, split at segment boundaries; each filled row gets its depth in its run
  # (1 on the run's first bar). The deepest row of a run inside a window is the run's length up to
  # the window's last row, so the window is unusable exactly when some row is deeper than allowed.
  run_starts = missing.copy()
  run_starts[1:] &= ~(missing[:-1] & (segment[1:] == segment[:-1]))
  rows = np.arange(num_rows, dtype=np.int64)
  depth = rows - np.maximum.accumulate(np.where(run_starts, rows, 0)) + 1
  unusable = ~np.asarray(arrays.valid)
  unusable[missing] |= depth[missing] > spec.max_hole_bars
  unusable_before = np.concatenate([[0], np.cumsum(unusable, dtype=np.int64)])
  anchors = np.arange(first_anchor, last_anchor + 1, dtype=np.int64)
  first_rows = anchors - spec.encoder_length + 1
  last_rows = anchors + spec.decoder_length
  usable = ((unusable_before[last_rows + 1] == unusable_before[first_rows])
            & (segment[first_rows] == segment[last_rows]))
  return anchors[usable]


def split_anchors(arrays: WindowArrays, spec: WindowSpec, splits: Sequence[Split],
                  purge_bars: int | None = None,
                  anchors: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Eligible anchors per split: whole window in [start, end), later splits purged.

  A window of a later split is dropped when its first bar opens less than ``purge_bars`` bars
  after the previous split's end. Returns ``{name: [num_windows] int64}`` in the given order.
  """
  ordered, purge_bars = validate_splits(splits, spec, purge_bars)
  if anchors is None:
    anchors = eligible_anchors(arrays, spec)
  timestamps = np.asarray(arrays.timestamp)
  first_times = timestamps[anchors - spec.encoder_length + 1]
  last_times = timestamps[anchors + spec.decoder_length]
  result = {}
  previous = None
  for split in ordered:
    inside = (first_times >= split.start_ns) & (last_times < split.end_ns)
    if previous is not None:
      earliest = previous.end_ns + purge_bars * schema.BAR_NANOSECONDS
      inside &= first_times >= earliest
    selected = anchors[inside]
    if len(selected) == 0:
      data_start, data_end = arrays.date_range()
      raise errors.DataError(errors.describe(
          f'split {split.describe()}',
          f'has no eligible {spec.encoder_length}+{spec.decoder_length}-bar windows (the data '
          f'covers {data_start.isoformat()} to {data_end.isoformat()}, purge {purge_bars} bars '
          'after the previous split)',
          'move or widen the split to cover valid data'))
    result[split.name] = selected
    previous = split
  return {split.name: result[split.name] for split in splits}
