"""Grain data over sliding windows of the feature store: time splits, purging, train-only scaling.

The flow, for training JAX models data-parallel:

1. :class:`WindowArrays` flattens ``{symbol: feature frame}`` into contiguous ``.npy`` files in a
   cache directory (written once, atomically, keyed by a digest of the inputs) and reopens them as
   read-only memmaps. It pickles as a path plus a little metadata, so Grain worker processes
   reopen the files instead of copying the data.
2. :func:`eligible_anchors` finds, vectorised, every window that stays inside one symbol and
   segment, has only ``valid`` rows and no hole of filled bars longer than ``max_hole_bars``;
   :func:`split_anchors` keeps the windows inside each time split and purges the start of each
   later split.
3. :class:`Normalizer` makes each window stationary relative to its anchor bar (by
   ``FEATURE_KINDS``) and z-scores it with statistics fitted on the training split alone.
4. :func:`training_dataset` / :func:`evaluation_dataset` build ``grain.MapDataset`` pipelines over
   window indices (shuffle, shard, repeat and batch act on indices only); one vectorised gather
   then reads and normalises the whole batch.

An anchor ``t`` is the row of the last encoder bar; its window spans rows
``[t - encoder_length + 1, t + decoder_length]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping, Sequence

from absl import flags
from absl import logging
import grain
import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import features as features_lib
from quantum_alpha_jax.data import schema

FEATURES = features_lib.FEATURES
KNOWN_FUTURE_FEATURES = features_lib.KNOWN_FUTURE_FEATURES
FEATURE_KINDS = features_lib.FEATURE_KINDS

# Bump when the layout of the cached arrays changes; it is part of the cache key.
CACHE_FORMAT_VERSION = 2  # 2: extra_features
NORMALIZER_FORMAT_VERSION = 1

# name -> dtype of the flat arrays in a cache directory (features is [rows, len(FEATURES)]).
ARRAY_DTYPES = {
    'features': np.float32,
    'close': np.float64,
    'timestamp': np.int64,
    'symbol': np.int32,
    'segment': np.int32,
    'observed': np.bool_,
    'valid': np.bool_,
    'regime': np.int8,
    'log_return': np.float32,
    'extra_features': np.float32,  # [rows, len(EXTRA_FEATURES)]; NaN where a symbol lacks them
}
EXTRA_FEATURES = features_lib.EXTRA_FEATURES

_METADATA_FILE = 'metadata.json'
_LOG_EPSILON = 1e-12
_STD_FLOOR = 1e-6
_KNOWN_FUTURE_COLUMNS = np.array([FEATURES.index(name) for name in KNOWN_FUTURE_FEATURES])
_KIND_NAMES = ('none', 'price', 'price_diff', 'volume', 'obv')
_KIND_INDEX = np.array([_KIND_NAMES.index(FEATURE_KINDS[name]) for name in FEATURES])
_IS_LOG_KIND = np.array([FEATURE_KINDS[name] in ('price', 'volume') for name in FEATURES])
_ALL_COLUMNS = np.arange(len(FEATURES))
_CLOSE, _VOLUME_MA, _OBV = (FEATURES.index(name) for name in ('close', 'volume_ma', 'OBV'))


# ----------------------------------------------------------------------------------------------
# Specs and splits.


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


# ----------------------------------------------------------------------------------------------
# Flat arrays in a cache directory.


def _check_frame(symbol: str, frame: pd.DataFrame) -> None:
  where = f'feature frame {symbol}'
  required = [schema.TIMESTAMP, schema.OBSERVED, schema.SEGMENT, schema.VALID, *FEATURES]
  missing = [name for name in required if name not in frame.columns]
  if missing:
    raise errors.SchemaError(errors.describe(
        where, f'missing columns {missing}',
        'pass frames produced by data.features.compute_features'))
  if len(frame) == 0:
    raise errors.DataError(errors.describe(where, 'has no rows', 'drop the symbol or load data'))
  for name in (schema.OBSERVED, schema.VALID):
    if frame[name].dtype != np.bool_:
      raise errors.SchemaError(errors.describe(
          where, f'{name!r} has dtype {frame[name].dtype}, expected bool'))


def cache_key(frames: Mapping[str, pd.DataFrame]) -> str:
  """Digest of everything the flat arrays are built from (symbols, rows, dates and all values)."""
  digest = hashlib.blake2b(digest_size=16)
  digest.update(json.dumps({'format': CACHE_FORMAT_VERSION, 'features': FEATURES}).encode())
  columns = [schema.OBSERVED, schema.SEGMENT, schema.VALID, *FEATURES]
  for symbol in sorted(frames):
    frame = frames[symbol]
    _check_frame(symbol, frame)
    timestamps = schema.timestamps_ns(frame, f'feature frame {symbol}')
    has_regime = schema.REGIME in frame.columns
    has_extra = all(name in frame.columns for name in EXTRA_FEATURES)
    digest.update(json.dumps([symbol, len(frame), int(timestamps[0]), int(timestamps[-1]),
                              has_regime, has_extra]).encode())
    digest.update(np.ascontiguousarray(timestamps).data)
    for name in (columns + ([schema.REGIME] if has_regime else [])
                 + (list(EXTRA_FEATURES) if has_extra else [])):
      values = np.ascontiguousarray(frame[name].to_numpy())
      if values.dtype.kind not in 'biuf':
        raise errors.SchemaError(errors.describe(
            f'feature frame {symbol}', f'{name!r} has dtype {frame[name].dtype}, expected a '
            'numeric numpy dtype', 'pass frames produced by data.features.compute_features'))
      digest.update(name.encode())
      digest.update(str(values.dtype).encode())
      digest.update(values.data)
  return digest.hexdigest()


def _symbol_arrays(symbol: str, frame: pd.DataFrame) -> dict[str, np.ndarray]:
  """Converts one feature frame to flat per-row arrays (segment still local)."""
  where = f'feature frame {symbol}'
  timestamps = schema.timestamps_ns(frame, where)
  steps = np.diff(timestamps)
  if np.any(steps <= 0):
    position = int(np.argmax(steps <= 0)) + 1
    raise errors.DataError(errors.describe(
        where, f'timestamps are not strictly increasing at row {position} '
        f'({pd.Timestamp(timestamps[position], tz="UTC")})',
        'sort and de-duplicate with data.klines.regularize'))
  values = np.empty((len(frame), len(FEATURES)), np.float32)
  for column, name in enumerate(FEATURES):
    values[:, column] = frame[name].to_numpy(dtype=np.float32)
  close = frame['close'].to_numpy(dtype=np.float64)
  extra = np.full((len(frame), len(EXTRA_FEATURES)), np.nan, np.float32)
  has_extra = all(name in frame.columns for name in EXTRA_FEATURES)
  if has_extra:
    for column, name in enumerate(EXTRA_FEATURES):
      extra[:, column] = frame[name].to_numpy(dtype=np.float32)
  if schema.REGIME in frame.columns:
    regime = frame[schema.REGIME].to_numpy(dtype=np.int8)
  else:
    regime = np.full(len(frame), -1, np.int8)
  return {
      'features': values,
      'close': close,
      'timestamp': timestamps,
      'segment': frame[schema.SEGMENT].to_numpy(dtype=np.int64),
      'observed': frame[schema.OBSERVED].to_numpy(dtype=np.bool_),
      'valid': frame[schema.VALID].to_numpy(dtype=np.bool_),
      'regime': regime,
      'extra_features': extra,
      'has_extra_features': has_extra,
  }


def _write_arrays(frames: Mapping[str, pd.DataFrame], directory: pathlib.Path,
                  key: str) -> dict[str, Any]:
  """Writes the flat ``.npy`` files and ``metadata.json`` into ``directory`` (a fresh temp dir)."""
  symbols = tuple(sorted(frames))
  lengths = [len(frames[symbol]) for symbol in symbols]
  num_rows = int(sum(lengths))
  outputs = {
      name: np.lib.format.open_memmap(
          directory / f'{name}.npy', mode='w+', dtype=dtype,
          shape=((num_rows, len(FEATURES)) if name == 'features' else
                 (num_rows, len(EXTRA_FEATURES)) if name == 'extra_features' else (num_rows,)))
      for name, dtype in ARRAY_DTYPES.items()
  }
  offset = 0
  next_segment = 0
  symbol_metadata = []
  for symbol_id, symbol in enumerate(symbols):
    arrays = _symbol_arrays(symbol, frames[symbol])
    rows = slice(offset, offset + len(arrays['close']))
    # Global segment: a new run at every symbol, segment change or timestamp jump of != 1 bar.
    timestamps = arrays['timestamp']
    starts = np.ones(len(timestamps), np.bool_)
    starts[1:] = ((arrays['segment'][1:] != arrays['segment'][:-1])
                  | (np.diff(timestamps) != schema.BAR_NANOSECONDS))
    segment = next_segment + np.cumsum(starts) - 1
    next_segment = int(segment[-1]) + 1
    # Per-step log return of the close; 0 on the first row of each run.
    close = arrays['close']
    with np.errstate(divide='ignore', invalid='ignore'):
      log_return = np.zeros(len(close), np.float64)
      log_return[1:] = np.log(close[1:] / close[:-1])
    log_return[starts] = 0.0
    # Rows whose values cannot be used (non-finite features or returns) are marked invalid.
    finite = np.isfinite(arrays['features']).all(axis=1) & np.isfinite(log_return)
    broken = arrays['valid'] & ~finite
    if broken.any():
      first = pd.Timestamp(timestamps[int(np.argmax(broken))], tz='UTC')
      logging.warning('%s: %d valid rows have non-finite features or returns (first %s); they '
                      'are treated as invalid.', symbol, int(broken.sum()), first)
    log_return[~np.isfinite(log_return)] = 0.0
    outputs['features'][rows] = arrays['features']
    outputs['close'][rows] = close
    outputs['timestamp'][rows] = timestamps
    outputs['symbol'][rows] = symbol_id
    outputs['segment'][rows] = segment
    outputs['observed'][rows] = arrays['observed']
    outputs['valid'][rows] = arrays['valid'] & finite
    outputs['regime'][rows] = arrays['regime']
    outputs['log_return'][rows] = log_return
    outputs['extra_features'][rows] = arrays['extra_features']
    symbol_metadata.append({
        'symbol': symbol, 'first_row': offset, 'num_rows': len(close),
        'has_extra_features': bool(arrays['has_extra_features']),
        'first_timestamp': int(timestamps[0]), 'last_timestamp': int(timestamps[-1]),
    })
    offset = rows.stop
  for output in outputs.values():
    output.flush()
  del outputs
  metadata = {
      'format': CACHE_FORMAT_VERSION,
      'key': key,
      'features': list(FEATURES),
      'num_rows': num_rows,
      'num_segments': next_segment,
      'symbols': symbol_metadata,
  }
  with open(directory / _METADATA_FILE, 'w') as file:
    json.dump(metadata, file, indent=1)
  return metadata


class WindowArrays:
  """Flat, memory-mapped arrays of all symbols' feature frames, stacked in sorted symbol order.

  Arrays (``rows`` = total bars): ``features [rows, 44]`` float32 in ``FEATURES`` order, ``close``
  float64, ``timestamp`` int64 ns, ``symbol`` int32, ``segment`` int32 (globally unique run id),
  ``observed`` / ``valid`` bool, ``regime`` int8 (-1 when absent), ``log_return`` float32.
  Pickles as its directory and metadata; the memmaps are reopened lazily in each process.
  """

  def __init__(self, directory: str | os.PathLike[str]):
    self._directory = pathlib.Path(directory)
    path = self._directory / _METADATA_FILE
    try:
      with open(path) as file:
        self._metadata = json.load(file)
    except (OSError, ValueError) as error:
      raise errors.DataError(errors.describe(
          str(path), f'cannot read the window cache metadata ({error})',
          'delete the directory and rebuild with WindowArrays.from_frames')) from None
    if (self._metadata.get('format') != CACHE_FORMAT_VERSION
        or tuple(self._metadata.get('features', ())) != FEATURES):
      raise errors.DataError(errors.describe(
          str(self._directory), 'window cache was written by another version or feature list',
          'delete the directory and rebuild with WindowArrays.from_frames'))
    self._arrays: dict[str, np.ndarray] = {}

  @classmethod
  def from_frames(cls, frames: Mapping[str, pd.DataFrame],
                  cache_dir: str | os.PathLike[str]) -> WindowArrays:
    """Builds (or reuses) the cache for ``frames`` under ``cache_dir/windows-<key>``."""
    if not frames:
      raise errors.DataError(errors.describe('WindowArrays', 'no feature frames given'))
    key = cache_key(frames)
    cache_dir = pathlib.Path(cache_dir)
    directory = cache_dir / f'windows-{key}'
    if (directory / _METADATA_FILE).exists():
      logging.info('Reusing window cache %s', directory)
      return cls(directory)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = pathlib.Path(tempfile.mkdtemp(prefix=f'.windows-{key}-', dir=cache_dir))
    try:
      _write_arrays(frames, temporary, key)
      try:
        os.replace(temporary, directory)  # Atomic: readers never see a half-written cache.
      except OSError:
        if not (directory / _METADATA_FILE).exists():
          raise
        # Another process published the same cache first; use theirs.
    finally:
      if temporary.exists():
        shutil.rmtree(temporary, ignore_errors=True)
    logging.info('Wrote window cache %s', directory)
    return cls(directory)

  def __getstate__(self) -> dict[str, Any]:
    return {'directory': str(self._directory), 'metadata': self._metadata}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self._directory = pathlib.Path(state['directory'])
    self._metadata = state['metadata']
    self._arrays = {}

  def __repr__(self) -> str:
    return (f'WindowArrays({str(self._directory)!r}, symbols={self.symbols}, '
            f'rows={self.num_rows})')

  def array(self, name: str) -> np.ndarray:
    """The named flat array (read-only, memory-mapped on first use in this process)."""
    if name not in self._arrays:
      if name not in ARRAY_DTYPES:
        raise KeyError(f'unknown window array {name!r}; known: {sorted(ARRAY_DTYPES)}')
      mapped = np.load(self._directory / f'{name}.npy', mmap_mode='r')
      # A plain ndarray view of the map: fancy indexing skips np.memmap's subclass overhead.
      self._arrays[name] = mapped.view(np.ndarray)
    return self._arrays[name]

  @property
  def metadata(self) -> dict[str, Any]:
    """The cache's ``metadata.json``: key, rows, segments and per-symbol row ranges."""
    return self._metadata

  @property
  def directory(self) -> pathlib.Path:
    return self._directory

  @property
  def key(self) -> str:
    """Digest of the input frames (see :func:`cache_key`)."""
    return self._metadata['key']

  @property
  def num_rows(self) -> int:
    return int(self._metadata['num_rows'])

  @property
  def symbols(self) -> tuple[str, ...]:
    """Symbols in row order; a symbol's id is its position here."""
    return tuple(item['symbol'] for item in self._metadata['symbols'])

  @property
  def features(self) -> np.ndarray:
    """``[rows, 44]`` float32 in ``FEATURES`` order."""
    return self.array('features')

  @property
  def close(self) -> np.ndarray:
    """``[rows]`` float64."""
    return self.array('close')

  @property
  def timestamp(self) -> np.ndarray:
    """``[rows]`` int64, bar open time in ns since the epoch (UTC)."""
    return self.array('timestamp')

  @property
  def symbol(self) -> np.ndarray:
    """``[rows]`` int32 index into :attr:`symbols`."""
    return self.array('symbol')

  @property
  def segment(self) -> np.ndarray:
    """``[rows]`` int32 run id, unique over all symbols; rows of one run are consecutive bars."""
    return self.array('segment')

  @property
  def observed(self) -> np.ndarray:
    """``[rows]`` bool, False on filled bars."""
    return self.array('observed')

  @property
  def valid(self) -> np.ndarray:
    """``[rows]`` bool: the frame's ``valid`` and all features and the return finite."""
    return self.array('valid')

  @property
  def regime(self) -> np.ndarray:
    """``[rows]`` int8, -1 where the frame had no regime column."""
    return self.array('regime')

  @property
  def log_return(self) -> np.ndarray:
    """``[rows]`` float32 ``log(close[i] / close[i-1])``, 0 on the first row of a run."""
    return self.array('log_return')

  def symbol_rows(self, symbol: str) -> slice:
    """Rows of one symbol in the flat arrays."""
    for item in self._metadata['symbols']:
      if item['symbol'] == symbol:
        return slice(item['first_row'], item['first_row'] + item['num_rows'])
    raise KeyError(f'{symbol!r} not in {self.symbols}')

  def date_range(self) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last bar open time over all symbols."""
    first = min(item['first_timestamp'] for item in self._metadata['symbols'])
    last = max(item['last_timestamp'] for item in self._metadata['symbols'])
    return pd.Timestamp(first, tz='UTC'), pd.Timestamp(last, tz='UTC')


# ----------------------------------------------------------------------------------------------
# Anchor selection.


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


# ----------------------------------------------------------------------------------------------
# Normalisation.


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
  """Per-window stationarising transform by ``FEATURE_KINDS``, then train-fitted z-scoring.

  ``mean`` and ``std`` are ``[len(FEATURES)]`` float32 statistics of the stationarised encoder
  windows of the training split.
  """

  spec: WindowSpec
  mean: np.ndarray
  std: np.ndarray
  train_split: Split | None = None
  num_windows: int = 0
  seed: int = 0

  def __post_init__(self):
    mean = np.asarray(self.mean, np.float32).reshape(-1)
    std = np.maximum(np.asarray(self.std, np.float32).reshape(-1), np.float32(_STD_FLOOR))
    if mean.shape != (len(FEATURES),) or std.shape != (len(FEATURES),):
      raise errors.ConfigError(errors.describe(
          'Normalizer', f'mean/std have shapes {mean.shape}/{std.shape}, expected '
          f'({len(FEATURES)},)'))
    object.__setattr__(self, 'mean', mean)
    object.__setattr__(self, 'std', std)

  @classmethod
  def identity(cls, spec: WindowSpec) -> Normalizer:
    """Stationarising only (mean 0, std 1); the transform :meth:`fit` measures."""
    return cls(spec, np.zeros(len(FEATURES), np.float32), np.ones(len(FEATURES), np.float32))

  @classmethod
  def fit(cls, arrays: WindowArrays, spec: WindowSpec, anchors: np.ndarray, *,
          train_split: Split | None = None, sample_size: int = 4096, seed: int = 0,
          chunk_size: int = 512) -> Normalizer:
    """Fits mean/std on a seeded sample of up to ``sample_size`` windows (all encoder steps)."""
    anchors = np.asarray(anchors, np.int64)
    if len(anchors) == 0:
      raise errors.DataError(errors.describe('Normalizer.fit', 'no training windows'))
    rng = np.random.default_rng(seed)
    if len(anchors) > sample_size:
      anchors = np.sort(rng.choice(anchors, size=sample_size, replace=False))
    identity = cls.identity(spec)
    offsets = spec.offsets[:spec.encoder_length]
    total = np.zeros(len(FEATURES), np.float64)
    total_squares = np.zeros(len(FEATURES), np.float64)
    count = 0
    for begin in range(0, len(anchors), chunk_size):
      chunk = anchors[begin:begin + chunk_size]
      window = np.take(arrays.features, chunk[:, None] + offsets, axis=0)
      values = identity.stationarize(window, window[:, -1]).astype(np.float64)
      values = values.reshape(-1, len(FEATURES))
      total += values.sum(axis=0)
      total_squares += np.square(values).sum(axis=0)
      count += len(values)
    mean = total / count
    variance = np.maximum(total_squares / count - np.square(mean), 0.0)
    broken = [name for name, m, v in zip(FEATURES, mean, variance)
              if not (np.isfinite(m) and np.isfinite(v))]
    if broken:
      raise errors.DataError(errors.describe(
          'Normalizer.fit', f'non-finite statistics for {broken} (a price feature <= 0?)',
          'check data.features output on the training split'))
    return cls(spec, mean, np.sqrt(variance), train_split=train_split,
               num_windows=len(anchors), seed=seed)

  def stationarize(self, values: np.ndarray, anchor_row: np.ndarray,
                   columns: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Scales ``values [batch, time, C]`` relative to ``anchor_row [batch, 44]`` by feature kind.

    Every kind is ``g(x * scale + shift)`` with per-item ``scale``/``shift`` and ``g = log`` for the
    price and volume kinds. ``columns``: the ``FEATURES`` index of each of the C columns.
    """
    values = np.asarray(values, np.float32)
    anchor_row = np.asarray(anchor_row, np.float32)
    columns = _ALL_COLUMNS if columns is None else np.asarray(columns, np.int64)
    epsilon = np.float32(_LOG_EPSILON)
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
      inverse_close = np.float32(1) / anchor_row[:, _CLOSE]
      inverse_volume = np.float32(1) / (anchor_row[:, _VOLUME_MA] + epsilon)
      obv_scale = np.float32(1) / (
          anchor_row[:, _VOLUME_MA] * np.float32(self.spec.encoder_length) + epsilon)
      ones = np.ones_like(inverse_close)
      # Columns of these stacks follow _KIND_NAMES: none, price, price_diff, volume, obv.
      scales = np.stack([ones, inverse_close, inverse_close, inverse_volume, obv_scale], axis=1)
      shifts = np.stack([0 * ones, 0 * ones, 0 * ones, epsilon * inverse_volume,
                         -anchor_row[:, _OBV] * obv_scale], axis=1)
      kind = _KIND_INDEX[columns]
      output = values * scales[:, None, kind]
      output += shifts[:, None, kind]
      is_log = _IS_LOG_KIND[columns]
      if is_log.any():
        # log over every column is contiguous (fast); keep it only where the kind asks for it.
        np.copyto(output, np.log(output), where=is_log)
    return output

  def apply(self, values: np.ndarray, anchor_row: np.ndarray,
            columns: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Stationarises then z-scores ``values [batch, time, C]``; returns float32, same shape."""
    columns = _ALL_COLUMNS if columns is None else np.asarray(columns, np.int64)
    output = self.stationarize(values, anchor_row, columns)
    output -= self.mean[columns]
    output *= np.float32(1.0) / self.std[columns]
    return output

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable form, stored with a run (features, spec, train dates, statistics)."""
    return {
        'format': NORMALIZER_FORMAT_VERSION,
        'features': list(FEATURES),
        'kinds': [FEATURE_KINDS[name] for name in FEATURES],
        'spec': self.spec.to_dict(),
        'train_split': None if self.train_split is None else self.train_split.to_dict(),
        'num_windows': int(self.num_windows),
        'seed': int(self.seed),
        'mean': [float(value) for value in self.mean],
        'std': [float(value) for value in self.std],
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
    """Inverse of :meth:`to_dict`; refuses statistics fitted for another feature list."""
    if data.get('format') != NORMALIZER_FORMAT_VERSION:
      raise errors.ConfigError(errors.describe(
          'Normalizer.from_dict', f'unknown format {data.get("format")!r}'))
    if tuple(data.get('features', ())) != FEATURES:
      raise errors.ConfigError(errors.describe(
          'Normalizer.from_dict', 'statistics were fitted for a different FEATURES list',
          'refit the normaliser on the current features'))
    train = data.get('train_split')
    return cls(
        spec=WindowSpec(**data['spec']),
        mean=np.asarray(data['mean'], np.float32),
        std=np.asarray(data['std'], np.float32),
        train_split=None if train is None else Split(**train),
        num_windows=int(data.get('num_windows', 0)),
        seed=int(data.get('seed', 0)),
    )


# ----------------------------------------------------------------------------------------------
# Random access and vectorised batches.


def calendar_features(timestamps: np.ndarray) -> np.ndarray:
  """``KNOWN_FUTURE_FEATURES`` (hour, day_of_week, is_trading_hour) of bars opening at
  ``timestamps [...]`` (int64 ns, UTC), ``[..., 3]`` float32: the clock alone, by the rules of
  ``features.compute_features``, so a decoder's known inputs need no row of a future bar."""
  timestamps = np.asarray(timestamps, np.int64)
  # pylint: disable=protected-access  (one definition of the calendar rules: features.py's)
  hour = (timestamps // features_lib._NANOSECONDS_PER_HOUR) % 24
  day_of_week = (timestamps // features_lib._NANOSECONDS_PER_DAY
                 + features_lib._EPOCH_DAY_OF_WEEK) % 7
  session_start, session_end = features_lib._TRADING_HOURS
  # pylint: enable=protected-access
  trading = (day_of_week < 5) & (hour >= session_start) & (hour < session_end)
  return np.stack([hour, day_of_week, trading], axis=-1).astype(np.float32)


class WindowSource(grain.sources.RandomAccessDataSource):
  """The windows of one split: ``source[i]`` is the window at ``anchors[i]``; :meth:`gather`
  reads a whole batch of anchors at once (what the Grain pipelines map over).

  ``past_only``: the anchors need only their encoder rows (:func:`signal_source`); :meth:`gather`
  reads no row after an anchor and returns NaN ``future_returns``.
  """

  def __init__(self, arrays: WindowArrays, spec: WindowSpec, anchors: np.ndarray,
               normalizer: Normalizer, name: str = '', *, past_only: bool = False):
    self.arrays = arrays
    self.spec = spec
    self.anchors = np.ascontiguousarray(anchors, dtype=np.int64)
    self.normalizer = normalizer
    self.name = name
    self.past_only = bool(past_only)
    if len(self.anchors) == 0:
      raise errors.DataError(errors.describe(f'WindowSource {name!r}', 'no windows'))
    if spec.extra_features:
      lacking = [m['symbol'] for m in arrays.metadata['symbols'] if not m['has_extra_features']]
      if lacking:
        raise errors.DataError(errors.describe(
            f'WindowSource {name!r}', f'extra_features asked for, but {", ".join(lacking)} has no '
            'trade-count/taker-buy columns (freqtrade files carry OHLCV only)',
            'set extra_features=False, or ingest Binance dumps that have them'))
    if normalizer.spec.encoder_length != spec.encoder_length:
      raise errors.ConfigError(errors.describe(
          f'WindowSource {name!r}', f'normaliser was fitted for encoder_length '
          f'{normalizer.spec.encoder_length}, windows have {spec.encoder_length}'))

  def __len__(self) -> int:
    return len(self.anchors)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    batch = self.gather(self.anchors[np.asarray([index])])
    return {name: value[0] for name, value in batch.items()}

  def __repr__(self) -> str:
    return f'WindowSource({self.name!r}, windows={len(self)}, spec={self.spec})'

  def gather(self, anchors: np.ndarray) -> dict[str, np.ndarray]:
    """Reads and normalises the windows at row ``anchors [batch]``; -1 marks padding (mask 0).

    Returns ``encoder [batch, encoder, 44]``, ``decoder_known [batch, decoder, 3]`` (the calendar
    of the coming bars, known at the anchor), ``future_returns [batch, decoder]`` (NaN when
    ``past_only``), ``encoder_returns [batch, encoder]`` and per-item ``symbol``, ``anchor``,
    ``timestamp``, ``regime``, ``mask``; with ``spec.extra_features`` also
    ``encoder_extra [batch, encoder, 2]``.
    """
    anchors = np.asarray(anchors, np.int64).reshape(-1)
    real = anchors >= 0
    anchors = np.where(real, anchors, self.anchors[0])
    encoder_length, decoder_length = self.spec.encoder_length, self.spec.decoder_length
    rows = anchors[:, None] + self.spec.offsets[:encoder_length]
    window = np.take(self.arrays.features, rows, axis=0)  # [batch, encoder, 44]
    anchor_row = window[:, -1]
    encoder = self.normalizer.apply(window, anchor_row)
    timestamp = np.take(self.arrays.timestamp, anchors)
    ahead = np.arange(1, decoder_length + 1, dtype=np.int64) * schema.BAR_NANOSECONDS
    decoder_known = self.normalizer.apply(calendar_features(timestamp[:, None] + ahead),
                                          anchor_row, _KNOWN_FUTURE_COLUMNS)
    if self.past_only:
      future_returns = np.full((len(anchors), decoder_length), np.nan, np.float32)
    else:
      future_returns = np.take(self.arrays.log_return,
                               anchors[:, None] + np.arange(1, decoder_length + 1))
    extra = {}
    if self.spec.extra_features:
      # Fixed scaling, no fitted statistics: 2 (ratio - 1/2) lies in [-1, 1]; the z-score is one.
      values = np.take(self.arrays.array('extra_features'), rows, axis=0)
      values[..., 0] = 2.0 * (values[..., 0] - 0.5)
      extra = {'encoder_extra': values}
    return {**extra,
        'encoder': encoder,
        'decoder_known': decoder_known,
        'future_returns': future_returns,
        'encoder_returns': np.take(self.arrays.log_return, rows),
        'symbol': np.take(self.arrays.symbol, anchors),
        'anchor': np.where(real, anchors, -1),
        'timestamp': timestamp,
        'regime': np.take(self.arrays.regime, anchors).astype(np.int32),
        'mask': real.astype(np.float32),
    }


def local_batch_size(batch_size: int, shard_count: int, num_devices: int | None = None) -> int:
  """Per-process batch of a global ``batch_size``; it must split evenly over the local devices."""
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top  (workers never need jax)
    num_devices = jax.local_device_count()
  if batch_size <= 0 or batch_size % shard_count:
    raise errors.ConfigError(errors.describe(
        'batch_size', f'{batch_size} is not a positive multiple of the {shard_count} processes',
        f'use a multiple of {shard_count * num_devices}'))
  per_process = batch_size // shard_count
  if per_process % num_devices:
    raise errors.ConfigError(errors.describe(
        'batch_size', f'{batch_size} ({per_process} per process) does not split evenly over '
        f'{num_devices} devices per process',
        f'use a multiple of {shard_count * num_devices}, e.g. '
        f'{max(1, round(batch_size / (shard_count * num_devices))) * shard_count * num_devices}'))
  return per_process


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise errors.ConfigError(errors.describe(
        'sharding', f'shard_index={shard_index} not in [0, {shard_count})'))
  return int(shard_index), int(shard_count)


class _GatherPositions:
  """Grain map: a batch of positions into ``table`` (-1 = padding) -> :meth:`WindowSource.gather`.

  The pipelines shuffle and batch positions ``0..len-1`` (``MapDataset.range`` has the least
  per-element overhead in Grain) and resolve them to anchor rows here, vectorised.
  """

  def __init__(self, source: WindowSource, table: np.ndarray):
    self.source = source
    self.table = np.ascontiguousarray(table, dtype=np.int64)

  def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    positions = np.asarray(positions, np.int64)
    anchors = np.where(positions >= 0, self.table[np.maximum(positions, 0)], -1)
    return self.source.gather(anchors)


def training_dataset(source: WindowSource, batch_size: int, seed: int, *,
                     num_epochs: int | None = None, shard_index: int | None = None,
                     shard_count: int | None = None,
                     num_devices: int | None = None) -> grain.MapDataset:
  """Shuffled (reshuffled every epoch) batches of this process's shard; infinite by default.

  ``batch_size`` is global; each process gets ``batch_size // shard_count`` items per batch.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  per_process = local_batch_size(batch_size, shard_count, num_devices)
  usable = len(source) - len(source) % shard_count
  if usable // shard_count < per_process:
    raise errors.DataError(errors.describe(
        f'split {source.name!r}', f'{len(source)} windows do not fill one batch of {batch_size}',
        'use a smaller batch or a longer split'))
  dataset = grain.MapDataset.range(len(source)).shuffle(seed=seed)
  # Each epoch is one permutation of all windows; process k takes every shard_count-th of it.
  dataset = dataset.slice(slice(shard_index, usable, shard_count))
  dataset = dataset.repeat(num_epochs)
  dataset = dataset.batch(per_process, drop_remainder=True, batch_fn=np.asarray)
  return dataset.map(_GatherPositions(source, source.anchors))


def evaluation_dataset(source: WindowSource, batch_size: int, *,
                       anchors: np.ndarray | None = None,
                       shard_index: int | None = None, shard_count: int | None = None,
                       num_devices: int | None = None) -> grain.MapDataset:
  """One ordered pass over this process's shard of ``anchors`` (default: all of the source's, or
  a subset from :func:`evaluation_subset`); the last batch is padded with ``mask`` 0.

  Process k takes positions k, k + P, ... Every shard yields the same number of batches, so
  multi-host evaluation steps stay in lockstep.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  per_process = local_batch_size(batch_size, shard_count, num_devices)
  anchors = source.anchors if anchors is None else np.asarray(anchors, np.int64)
  per_shard = math.ceil(len(anchors) / shard_count)
  num_batches = math.ceil(per_shard / per_process)
  mine = anchors[shard_index::shard_count]
  padded = np.full(num_batches * per_process, -1, np.int64)
  padded[:len(mine)] = mine
  dataset = grain.MapDataset.range(len(padded))
  dataset = dataset.batch(per_process, drop_remainder=True, batch_fn=np.asarray)
  return dataset.map(_GatherPositions(source, padded))


def make_iterator(dataset: grain.MapDataset, *, num_workers: int = 0, num_threads: int = 2,
                  prefetch_batches: int = 4) -> grain.DatasetIterator:
  """A checkpointable iterator (``get_state``/``set_state``), in ``num_workers`` processes if > 0.

  Each batch is one big vectorised gather, so a few threads and a short buffer suffice (Grain's
  defaults, 16 threads and 500 elements, are tuned for small records and waste memory here).
  """
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  iterable = dataset.to_iter_dataset(read_options)
  if num_workers > 0:
    # Grain's worker processes read absl flags; outside an absl app (pytest, notebooks) nobody
    # has parsed them, so accept the defaults rather than fail.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=prefetch_batches))
  return iter(iterable)


@dataclasses.dataclass(frozen=True)
class SplitData:
  """One split's windows: the random-access source and its batched Grain dataset."""

  split: Split
  source: WindowSource
  dataset: grain.MapDataset
  steps_per_epoch: int  # batches per pass over the split (eval: including the padded one)

  @property
  def num_windows(self) -> int:
    return len(self.source)

  def iterator(self, **kwargs) -> grain.DatasetIterator:
    """``make_iterator(self.dataset, **kwargs)``: ``for batch in data['train'].iterator(): ...``."""
    return make_iterator(self.dataset, **kwargs)


def make_datasets(frames: Mapping[str, pd.DataFrame], spec: WindowSpec,
                  splits: Sequence[Split], batch_size: int, cache_dir: str | os.PathLike[str],
                  seed: int = 0, *, train_split: str = 'train', purge_bars: int | None = None,
                  num_epochs: int | None = None, normalizer: Normalizer | None = None,
                  normalizer_sample_size: int = 4096, shard_index: int | None = None,
                  shard_count: int | None = None,
                  num_devices: int | None = None) -> tuple[dict[str, SplitData], Normalizer]:
  """Windows per split: ``train_split`` shuffled and repeated (this process's shard of each
  global batch), the others single padded passes over the whole split (in every process).

  Fits the normaliser on ``train_split`` (unless one is given). Iterate with
  ``for batch in data['train'].iterator(): ...``.
  """
  arrays = WindowArrays.from_frames(frames, cache_dir)
  by_name = {split.name: split for split in splits}
  if normalizer is None and train_split not in by_name:
    raise errors.ConfigError(errors.describe(
        'make_datasets', f'no split named {train_split!r} among {list(by_name)} to fit the '
        'normaliser on', 'add it, set train_split=..., or pass a fitted normalizer'))
  anchors = split_anchors(arrays, spec, splits, purge_bars)
  if normalizer is None:
    normalizer = Normalizer.fit(arrays, spec, anchors[train_split],
                                train_split=by_name[train_split],
                                sample_size=normalizer_sample_size, seed=seed)
  shard_index, shard_count = _shard(shard_index, shard_count)
  per_process = local_batch_size(batch_size, shard_count, num_devices)
  result = {}
  for split in splits:
    source = WindowSource(arrays, spec, anchors[split.name], normalizer, split.name)
    if split.name == train_split:
      dataset = training_dataset(source, batch_size, seed, num_epochs=num_epochs,
                                 shard_index=shard_index, shard_count=shard_count,
                                 num_devices=num_devices)
      steps = (len(source) // shard_count) // per_process
    else:
      # Whole in every process: train.loop.evaluate shards it by process for the distributed
      # validation, and evaluation after training runs process-locally over every window.
      dataset = evaluation_dataset(source, batch_size, shard_index=0, shard_count=1,
                                   num_devices=num_devices)
      steps = len(dataset)
    result[split.name] = SplitData(split, source, dataset, steps)
  return result, normalizer


# ----------------------------------------------------------------------------------------------
# The bars a model trades on, and the validation subset that picks the best checkpoint.


def signal_source(split: SplitData | WindowSource) -> WindowSource:
  """Every bar of ``split`` whose past window is usable, as a ``past_only`` source of the split's
  window spec: whether a bar gets a signal depends on bars up to it alone, never on its label
  horizon (a bar just before a data hole or the split's end keeps its signal).

  A bar belongs to a SplitData's split when it opens in ``[start, end)``; its encoder may read the
  bars before the start (the past is known at that bar). For a bare WindowSource, the span runs
  from the first bar of its earliest window to the last bar of its latest.
  """
  source = getattr(split, 'source', split)
  spec, arrays = source.spec, source.arrays
  timestamps = np.asarray(arrays.timestamp)
  if isinstance(split, SplitData):
    start, end = split.split.start_ns, split.split.end_ns
  else:
    start = timestamps[source.anchors - spec.encoder_length + 1].min()
    end = timestamps[source.anchors + spec.decoder_length].max() + 1
  anchors = eligible_anchors(arrays, WindowSpec(spec.encoder_length, 0, spec.max_hole_bars))
  inside = (timestamps[anchors] >= start) & (timestamps[anchors] < end)
  return WindowSource(arrays, spec, anchors[inside], source.normalizer, source.name,
                      past_only=True)


def anchor_bars(source: Any, anchors: np.ndarray | None = None) -> np.ndarray:
  """The bar (row of ``source.arrays``) of each of ``anchors`` (default: ``source.anchors``): a
  window's anchor row, or an episode's first bar for a trajectory source
  (``episodes['start_row']``)."""
  anchors = np.asarray(source.anchors if anchors is None else anchors, np.int64)
  episodes = getattr(source, 'episodes', None)
  if episodes is not None:
    return np.asarray(episodes['start_row'], np.int64)[anchors]
  return anchors


def _shares(count: int, sizes: np.ndarray) -> np.ndarray:
  """``count`` items over groups of ``sizes``: one per group (the largest first when ``count`` is
  short), the rest in proportion to ``sizes - 1`` by largest remainder."""
  if count < len(sizes):
    shares = np.zeros(len(sizes), np.int64)
    shares[np.argsort(-sizes, kind='stable')[:count]] = 1
    return shares
  spare = sizes - 1
  exact = (count - len(sizes)) * spare / max(int(spare.sum()), 1)
  shares = np.floor(exact).astype(np.int64)
  remainder = count - len(sizes) - int(shares.sum())
  shares[np.argsort(-(exact - shares), kind='stable')[:remainder]] += 1
  return shares + 1


def evaluation_subset(source: Any, count: int, seed: int = 0) -> np.ndarray:
  """``count`` of ``source.anchors`` spread over every symbol and the split's whole time range
  (all of them when ``count`` is 0 or covers the split).

  Each symbol gets a share of ``count`` in proportion to its windows (at least one each); its
  windows, in time order, are cut into that many equal slices and one window is drawn from each
  slice with ``seed`` (random within a slice, so the subset cannot alias with the daily cycle).
  Returned by symbol, then time: the same subset for the same arguments, in every process and at
  every evaluation.
  """
  anchors = np.asarray(source.anchors, np.int64)
  if count <= 0 or count >= len(anchors):
    return anchors
  bars = anchor_bars(source)
  symbol = np.asarray(source.arrays.symbol)[bars]
  order = np.lexsort((np.asarray(source.arrays.timestamp)[bars], symbol))
  _, sizes = np.unique(symbol[order], return_counts=True)
  rng = np.random.default_rng(seed)
  chosen, begin = [], 0
  for size, share in zip(sizes, _shares(int(count), sizes)):
    if share:
      edges = np.arange(share + 1, dtype=np.int64) * size // share  # slices, none empty
      picks = edges[:-1] + np.floor(rng.random(share) * np.diff(edges)).astype(np.int64)
      chosen.append(order[begin + picks])
    begin += size
  return anchors[np.concatenate(chosen)]


def describe_anchors(source: Any, anchors: np.ndarray | None = None) -> dict[str, Any]:
  """JSON-ready summary of ``anchors`` (default: all) of ``source``: their number and, per symbol,
  the count and the first and last bar (UTC)."""
  anchors = np.asarray(source.anchors if anchors is None else anchors, np.int64)
  bars = anchor_bars(source, anchors)
  symbol = np.asarray(source.arrays.symbol)[bars]
  timestamp = np.asarray(source.arrays.timestamp)[bars]
  per_symbol = {}
  for index in np.unique(symbol):
    times = timestamp[symbol == index]
    per_symbol[source.arrays.symbols[index]] = {
        'windows': int(len(times)), 'first': pd.Timestamp(times.min(), tz='UTC').isoformat(),
        'last': pd.Timestamp(times.max(), tz='UTC').isoformat()}
  return {'windows': int(len(anchors)), 'of': int(len(source.anchors)), 'symbols': per_symbol}
