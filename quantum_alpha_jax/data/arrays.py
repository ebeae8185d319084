"""The flat arrays of the feature store that every window reads: written once into a cache directory
(atomically, keyed by a digest of the inputs) and reopened as read-only memmaps.

:class:`WindowArrays` flattens ``{symbol: feature frame}`` into contiguous ``.npy`` files and
pickles as a path plus a little metadata, so Grain worker processes reopen the files instead of
copying the data. Split out of ``data/windows.py`` (issue #17).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

from absl import logging
import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import features as features_lib
from quantum_alpha_jax.data import schema

FEATURES = features_lib.FEATURES


# Bump when the layout of the cached arrays changes; it is part of the cache key.
CACHE_FORMAT_VERSION = 2  # 2: extra_features


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
