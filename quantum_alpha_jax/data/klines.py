"""Kline ingest: read, validate, sort/de-duplicate, resample 1m -> 5m, and report gaps.

Readers return the canonical kline frame described in ``schema.py`` (before regularisation the
frame may be at any interval and have holes). Supported inputs, detected from the file (the format
readers live in ``data/kline_files.py``):

- Binance public dumps ``<SYMBOL>-<interval>-<YYYY>-<MM>[-<DD>].csv`` or ``.zip`` with the 12 columns
  open_time, open, high, low, close, volume, close_time, quote_volume, count, taker_buy_volume,
  taker_buy_quote_volume, ignore; with or without a header row. Timestamps are milliseconds in
  older files and microseconds from 2025 on: a value >= 1e14 is read as microseconds (1e14 ms
  would be the year 5138), and a file that mixes both is refused.
- freqtrade caches: ``.feather`` (date, open, high, low, close, volume), JSON arrays of
  ``[ms, o, h, l, c, v]`` and the same gzipped (``.json.gz``).
- Generic OHLCV ``.csv`` / ``.parquet`` with a time column named timestamp, date, datetime,
  open_time or time (epoch s/ms/µs or date strings) and the five OHLCV columns.

Validation refuses, with the file, the row and the first offending timestamp: an empty file, a wrong
column count, non-numeric prices, NaN/inf, unsorted or duplicate timestamps (unless asked to sort or
de-duplicate), OHLC that is inconsistent (low <= open, close <= high), negative volume and
timestamps off the interval grid.

Gaps are never forward-filled into fake trades. :func:`regularize` puts the frame on the 5-minute
grid: a hole of at most ``fill_limit_bars`` bars is filled with explicit zero-volume bars at the
previous close, flagged ``observed=False``; a longer hole starts a new ``segment``, and no window
or feature warm-up ever treats the two sides as adjacent.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

from absl import logging
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import kline_files
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.errors import ConfigError, DataError, describe

INTERVALS = {
    '1m': pd.Timedelta(minutes=1), '3m': pd.Timedelta(minutes=3), '5m': pd.Timedelta(minutes=5),
    '15m': pd.Timedelta(minutes=15), '30m': pd.Timedelta(minutes=30), '1h': pd.Timedelta(hours=1)}
_BINANCE_NAME = re.compile(r'^(?P<symbol>[A-Z0-9]{4,20})-(?P<interval>\d+[mhd])-\d{4}-\d{2}(-\d{2})?$')
_FREQTRADE_NAME = re.compile(r'(?P<base>[A-Z0-9]{2,10})_(?P<quote>[A-Z0-9]{2,10})-(?P<interval>\d+[mhd])')
_SYMBOL = re.compile(r'^[A-Z0-9]{4,20}$')


@dataclasses.dataclass(frozen=True)
class Gap:
  """A run of missing bars: ``start`` is the first missing open time."""
  start: pd.Timestamp
  end: pd.Timestamp  # last missing open time
  missing_bars: int
  filled: bool  # True: zero-volume bars inserted; False: a new segment starts after it

  def to_dict(self) -> dict:
    return {'start': self.start.isoformat(), 'end': self.end.isoformat(),
            'missing_bars': int(self.missing_bars), 'filled': bool(self.filled)}


@dataclasses.dataclass
class IngestReport:
  """What ingest did to one symbol's data: rows read, rows dropped, gaps found."""
  symbol: str
  sources: list[str] = dataclasses.field(default_factory=list)
  rows_read: int = 0
  duplicates_removed: int = 0
  rows_sorted: bool = False
  gaps: list[Gap] = dataclasses.field(default_factory=list)

  @property
  def filled_bars(self) -> int:
    return sum(g.missing_bars for g in self.gaps if g.filled)

  @property
  def segment_breaks(self) -> int:
    return sum(1 for g in self.gaps if not g.filled)


def infer_symbol(path: str | Path) -> str | None:
  """``BTCUSDT-5m-2023-01.zip`` or ``..._BTC_USDT-5m.json`` -> ``'BTCUSDT'``; None if unknown."""
  stem = _strip_suffixes(Path(path).name)
  match = _BINANCE_NAME.match(stem)
  if match:
    return match['symbol']
  match = _FREQTRADE_NAME.search(stem)
  if match:
    return match['base'] + match['quote']
  return None


def infer_interval(path: str | Path) -> str | None:
  """The interval written in a Binance or freqtrade file name (``'1m'``, ``'5m'``), if any."""
  stem = _strip_suffixes(Path(path).name)
  match = _BINANCE_NAME.match(stem) or _FREQTRADE_NAME.search(stem)
  return match['interval'] if match else None


def check_symbol(symbol: str, known: Sequence[str] | None = None, where: str = 'config') -> str:
  """Validates a symbol name (and membership in ``known`` when given)."""
  if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
    raise DataError(describe(
        where, f'{symbol!r} is not a symbol name', 'use the exchange spelling, e.g. BTCUSDT'))
  if known is not None and symbol not in known:
    raise DataError(describe(
        where, f'unknown symbol {symbol!r}', f'choose one of {", ".join(sorted(known))}'))
  return symbol


def read_klines(path: str | Path, *, sort: bool = False, dedupe: bool = False,
                interval: str | None = None) -> tuple[pd.DataFrame, IngestReport]:
  """Reads and validates one kline file of any supported format.

  Returns the frame (timestamp + OHLCV [+ Binance extras], sorted and unique) and a report.
  """
  path = Path(path)
  where = path.name
  if not path.exists():
    raise DataError(describe(str(path), 'file not found', 'check the path in the config'))
  if path.stat().st_size == 0:
    raise DataError(describe(where, 'the file is empty', 're-download it or remove it from the inputs'))
  name = path.name.lower()
  try:
    if name.endswith('.zip'):
      frame = kline_files.read_binance_zip(path)
    elif name.endswith('.feather'):
      frame = kline_files.read_table_frame(pd.read_feather(path), where)
    elif name.endswith('.parquet'):
      frame = kline_files.read_table_frame(pd.read_parquet(path), where)
    elif name.endswith('.json') or name.endswith('.json.gz'):
      frame = kline_files.read_freqtrade_json(path)
    elif name.endswith('.csv'):
      frame = kline_files.read_csv(path.read_bytes(), where)
    else:
      raise DataError(describe(
          where, 'unknown file type', 'expected .csv, .zip, .json, .json.gz, .feather or .parquet'))
  except DataError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, gzip.BadGzipFile) as error:
    # pyarrow's ArrowInvalid is a ValueError; truncated gzip raises EOFError.
    raise DataError(describe(
        where, f'cannot be read ({type(error).__name__}: {str(error)[:200]})',
        'the file is truncated or corrupt: download it again')) from error
  report = IngestReport(symbol=infer_symbol(path) or '', sources=[str(path)], rows_read=len(frame))
  frame = validate(frame, where, sort=sort, dedupe=dedupe, report=report)
  interval = interval or infer_interval(path) or _infer_interval_from_data(frame)
  _check_grid(frame, interval, where)
  frame.attrs['interval'] = interval
  return frame, report


def validate(frame: pd.DataFrame, where: str, *, sort: bool = False, dedupe: bool = False,
             report: IngestReport | None = None) -> pd.DataFrame:
  """Checks values and time order; sorts / drops duplicates only when asked. Returns a new frame."""
  if len(frame) == 0:
    raise DataError(describe(where, 'no rows', 'the file is empty: re-download it'))
  for column in schema.OHLCV:
    values = frame[column].to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
      row = int(np.flatnonzero(bad)[0])
      raise DataError(describe(
          where, f'{int(bad.sum())} NaN/inf values in {column!r} (first at row {row}, '
          f'{_when(frame, row)})', 'repair or re-download the file; NaNs are never filled silently'))
  times = schema.timestamps_ns(frame)
  steps = np.diff(times)
  if (steps < 0).any():
    row = int(np.flatnonzero(steps < 0)[0]) + 1
    if not sort:
      raise DataError(describe(
          where, f'timestamps are not sorted (row {row}, {_when(frame, row)} comes after '
          f'{_when(frame, row - 1)})', 'pass sort=True (experiments.data: --config.sort=True)'))
    frame = frame.sort_values(schema.TIMESTAMP, kind='stable').reset_index(drop=True)
    if report is not None:
      report.rows_sorted = True
    times = schema.timestamps_ns(frame)
    steps = np.diff(times)
  duplicated = np.concatenate([[False], steps == 0])
  if duplicated.any():
    count = int(duplicated.sum())
    row = int(np.flatnonzero(duplicated)[0])
    if not dedupe:
      raise DataError(describe(
          where, f'{count} duplicate timestamps (first at row {row}, {_when(frame, row)})',
          'pass dedupe=True (experiments.data: --config.dedupe=True) to keep the last copy'))
    # Keep the last copy of each timestamp: a later download of a candle supersedes an earlier one.
    keep = np.concatenate([steps != 0, [True]])
    frame = frame.loc[keep].reset_index(drop=True)
    logging.warning('%s: removed %d duplicate timestamps (first %s)', where, count,
                    pd.Timestamp(times[row], tz='UTC'))
    if report is not None:
      report.duplicates_removed += count
  open_, high, low, close, volume = (frame[c].to_numpy() for c in schema.OHLCV)
  checks = (
      (low > high, 'high < low'),
      (low > np.minimum(open_, close), 'low above open or close'),
      (high < np.maximum(open_, close), 'high below open or close'),
      (open_ <= 0, 'non-positive open'),
      (close <= 0, 'non-positive close'),
      (volume < 0, 'negative volume'),
  )
  for bad, problem in checks:
    if bad.any():
      row = int(np.flatnonzero(bad)[0])
      raise DataError(describe(
          where, f'{problem} in {int(bad.sum())} rows (first at row {row}, {_when(frame, row)})',
          'the file is corrupt: re-download it or drop those rows before ingest'))
  return frame


def resample(frame: pd.DataFrame, interval: str = '5m', *, require_complete: bool = False
             ) -> pd.DataFrame:
  """Aggregates bars to a coarser interval: open first, high max, low min, close last, volumes sum.

  Buckets are labelled by their open time (left-closed). With ``require_complete`` a bucket missing
  any source bar is dropped (it then becomes a gap), else partial buckets are kept.
  """
  _check_interval(interval, 'resample')
  target = INTERVALS[interval]
  source_interval = frame.attrs.get('interval')
  times = schema.timestamps_ns(frame)
  bucket = times - times % target.value
  starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
  ends = np.concatenate([starts[1:], [len(frame)]])
  out = {schema.TIMESTAMP: schema.to_timestamps(bucket[starts])}
  out['open'] = frame['open'].to_numpy()[starts]
  out['high'] = np.maximum.reduceat(frame['high'].to_numpy(), starts)
  out['low'] = np.minimum.reduceat(frame['low'].to_numpy(), starts)
  out['close'] = frame['close'].to_numpy()[ends - 1]
  for column in ('volume',) + schema.EXTRA_KLINE_COLUMNS:
    if column in frame:
      out[column] = np.add.reduceat(frame[column].to_numpy(dtype=np.float64), starts)
  result = pd.DataFrame(out)
  if require_complete:
    if source_interval is None:
      raise DataError(describe('resample', 'require_complete needs the source interval',
                               'set frame.attrs["interval"] (read_klines does this)'))
    per_bucket = int(target / INTERVALS[source_interval])
    result = result.loc[(ends - starts) == per_bucket].reset_index(drop=True)
  result.attrs['interval'] = interval
  return result


def regularize(frame: pd.DataFrame, *, fill_limit_bars: int = 72, interval: str = '5m'
               ) -> tuple[pd.DataFrame, list[Gap]]:
  """Puts a sorted, unique frame on the full bar grid; returns it and the gaps found.

  Holes of at most ``fill_limit_bars`` bars become zero-volume bars at the previous close with
  ``observed=False``; longer holes are left out and start a new ``segment``.
  """
  _check_interval(interval, 'regularize')
  check_fill_limit(fill_limit_bars)
  step = INTERVALS[interval].value
  times = schema.timestamps_ns(frame)
  missing = np.diff(times) // step - 1
  gap_rows = np.flatnonzero(missing > 0)
  gaps = []
  for row in gap_rows:
    count = int(missing[row])
    gaps.append(Gap(start=pd.Timestamp(times[row] + step, tz='UTC'),
                    end=pd.Timestamp(times[row + 1] - step, tz='UTC'),
                    missing_bars=count, filled=count <= fill_limit_bars))
  fill = np.where(missing <= fill_limit_bars, np.maximum(missing, 0), 0)
  # Position of every original row in the output, after the inserted filler bars.
  positions = np.arange(len(frame)) + np.concatenate([[0], np.cumsum(fill)])
  total = len(frame) + int(fill.sum())
  observed = np.zeros(total, dtype=bool)
  observed[positions] = True
  # Index of the most recent original row for every output row (forward pointer for prices).
  source_row = np.maximum.accumulate(np.where(observed, np.cumsum(observed) - 1, 0))
  # Output timestamps: original rows keep theirs, filler bars count up from the previous one.
  offset = np.arange(total) - positions[source_row]
  out_times = times[source_row] + offset * step
  out = {schema.TIMESTAMP: schema.to_timestamps(out_times)}
  close = frame['close'].to_numpy()
  for column in ('open', 'high', 'low', 'close'):
    values = frame[column].to_numpy()[source_row]
    out[column] = np.where(observed, values, close[source_row])
  for column in ('volume',) + schema.EXTRA_KLINE_COLUMNS:
    if column in frame:
      out[column] = np.where(observed, frame[column].to_numpy(dtype=np.float64)[source_row], 0.0)
  if schema.REGIME in frame:
    out[schema.REGIME] = frame[schema.REGIME].to_numpy()[source_row]
  out[schema.OBSERVED] = observed
  breaks = np.zeros(total, dtype=np.int32)
  long_gap_rows = np.flatnonzero(missing > fill_limit_bars)
  breaks[positions[long_gap_rows + 1]] = 1
  out[schema.SEGMENT] = np.cumsum(breaks, dtype=np.int32)
  result = pd.DataFrame(out)
  result.attrs['interval'] = interval
  return result, gaps


def load_symbol(paths: Iterable[str | Path], symbol: str, *, sort: bool = False,
                dedupe: bool = False, fill_limit_bars: int = 72, interval: str = '5m',
                drop_last_bar: bool = False) -> tuple[pd.DataFrame, IngestReport]:
  """Reads every file of one symbol, merges them, resamples to ``interval`` and regularises.

  Files may be in different formats and intervals (1m files are resampled; an incomplete bucket
  becomes a hole, never a full candle). Overlapping files must
  agree or be de-duplicated with ``dedupe``. ``drop_last_bar`` drops each file's final row, which a
  freqtrade download may have caught while the candle was still open.
  """
  paths = [Path(p) for p in paths]
  _check_interval(interval, 'load_symbol')
  check_fill_limit(fill_limit_bars)
  if not paths:
    raise DataError(describe(symbol, 'no input files', 'list the kline files in config.inputs'))
  report = IngestReport(symbol=symbol)
  frames = []
  for path in paths:
    found = infer_symbol(path)
    if found is not None and found != symbol:
      raise DataError(describe(
          path.name, f'file name says {found}, but it is listed for {symbol}',
          'fix config.inputs so each symbol lists its own files'))
    frame, file_report = read_klines(path, sort=sort, dedupe=dedupe)
    if drop_last_bar and len(frame) > 1:
      frame = frame.iloc[:-1]
    if frame.attrs['interval'] != interval:
      source = INTERVALS[frame.attrs['interval']]
      if source > INTERVALS[interval] or INTERVALS[interval] % source:
        # 3m bars straddle 5m boundaries: their close would leak into the earlier bucket.
        raise DataError(describe(path.name, f'{frame.attrs["interval"]} bars cannot make {interval} '
                                 'bars', f'provide {interval} klines or an interval that divides it'))
      # A bucket with a missing source bar is dropped: the hole is then filled explicitly
      # (observed=False) or splits a segment, never passed off as a full candle.
      frame = resample(frame, interval, require_complete=True)
      if len(frame) == 0:
        raise DataError(describe(path.name, f'no complete {interval} bucket in the file',
                                 'provide a longer file'))
    frames.append(frame)
    report.sources.append(str(path))
    report.rows_read += file_report.rows_read
    report.duplicates_removed += file_report.duplicates_removed
    report.rows_sorted |= file_report.rows_sorted
  columns = [c for c in frames[0].columns if all(c in f for f in frames)]
  merged = pd.concat([f[columns] for f in frames], ignore_index=True)
  if len(frames) > 1:
    merged = merged.sort_values(schema.TIMESTAMP, kind='stable').reset_index(drop=True)
    merged = merge_overlaps(merged, symbol, dedupe, report)
  result, report.gaps = regularize(merged, fill_limit_bars=fill_limit_bars, interval=interval)
  return result, report


def merge_overlaps(frame: pd.DataFrame, symbol: str, dedupe: bool,
                   report: IngestReport | None = None) -> pd.DataFrame:
  """A time-sorted frame from overlapping sources -> one row per timestamp: identical candles
  merge silently, conflicting ones need ``dedupe`` (the later row wins)."""
  times = schema.timestamps_ns(frame)
  same = np.concatenate([[False], np.diff(times) == 0])
  if not same.any():
    return frame
  values = frame[list(schema.OHLCV)].to_numpy()
  conflict = same & ~np.isclose(values, np.roll(values, 1, axis=0), rtol=1e-9, atol=0).all(axis=1)
  if conflict.any() and not dedupe:
    row = int(np.flatnonzero(conflict)[0])
    raise DataError(describe(
        symbol, f'{int(conflict.sum())} candles differ between overlapping files (first '
        f'{_when(frame, row)})', 'pass dedupe=True to keep the later file\'s candle'))
  if report is not None:
    report.duplicates_removed += int(same.sum())
  keep = np.concatenate([~same[1:], [True]])
  return frame.loc[keep].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Readers


def _strip_suffixes(name: str) -> str:
  for suffix in ('.json.gz', '.csv', '.zip', '.json', '.feather', '.parquet'):
    if name.lower().endswith(suffix):
      return name[: -len(suffix)]
  return name


def _when(frame: pd.DataFrame, row: int) -> str:
  return pd.Timestamp(frame[schema.TIMESTAMP].iloc[row]).strftime('%Y-%m-%d %H:%M')


def _check_interval(interval: str, where: str) -> None:
  if interval not in INTERVALS:
    raise ConfigError(describe(where, f'interval {interval!r} is not supported',
                               f'use one of {", ".join(INTERVALS)}'))


def check_fill_limit(fill_limit_bars: int) -> None:
  """ConfigError unless ``fill_limit_bars`` is a whole number >= 0."""
  if isinstance(fill_limit_bars, bool) or not isinstance(fill_limit_bars, (int, np.integer)) or (
      fill_limit_bars < 0):
    raise ConfigError(describe('fill_limit_bars', f'{fill_limit_bars!r} is not a whole number >= 0',
                               'set --config.fill_limit_bars=72 (6 h) or another bar count'))


def _infer_interval_from_data(frame: pd.DataFrame) -> str:
  times = schema.timestamps_ns(frame)
  if len(times) < 2:
    return '5m'
  step = pd.Timedelta(int(np.median(np.diff(times))), unit='ns')
  for name, value in INTERVALS.items():
    if value == step:
      return name
  raise DataError(describe('klines', f'bar interval {step} is not supported',
                           f'use one of {", ".join(INTERVALS)}'))


def _check_grid(frame: pd.DataFrame, interval: str, where: str) -> None:
  if interval not in INTERVALS:
    raise DataError(describe(where, f'interval {interval!r} is not supported',
                             f'use one of {", ".join(INTERVALS)}'))
  times = schema.timestamps_ns(frame)
  off = times % INTERVALS[interval].value != 0
  if off.any():
    row = int(np.flatnonzero(off)[0])
    raise DataError(describe(
        where, f'{int(off.sum())} timestamps are off the {interval} grid (first at row {row}, '
        f'{frame[schema.TIMESTAMP].iloc[row]})', 'timestamps must be bar open times'))


# ----------------------------------------------------------------------------------------------
# Writer: klines as Binance public-dump files (benchmarks, tests and the synthetic feed).


def write_binance(frame: pd.DataFrame, symbol: str, directory: str | Path, *,
                  period: str = 'month', fmt: str = 'zip') -> list[Path]:
  """Writes ``frame``'s observed bars as Binance public dumps: one headerless 12-column CSV (ms
  timestamps) per month (``SYMBOL-5m-YYYY-MM``) or day (``SYMBOL-5m-YYYY-MM-DD``), zipped or plain.
  The frame needs the extra kline columns (trade count, taker-buy volumes). Returns the paths, in
  time order.
  """
  if period not in ('month', 'day') or fmt not in ('zip', 'csv'):
    raise ConfigError(describe('write_binance', f'period {period!r}, fmt {fmt!r}',
                               'use period "month" or "day" and fmt "zip" or "csv"'))
  check_symbol(symbol, where='write_binance')
  missing = [c for c in schema.OHLCV + schema.EXTRA_KLINE_COLUMNS if c not in frame]
  if missing:
    raise DataError(describe(f'write_binance {symbol}', f'the frame has no {", ".join(missing)}',
                             'a Binance dump carries them: write OHLCV-only data as parquet'))
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  if schema.OBSERVED in frame:
    frame = frame.loc[frame[schema.OBSERVED].to_numpy(dtype=bool)]
  open_ms = schema.timestamps_ns(frame) // 1_000_000
  table = pd.DataFrame({
      'open_time': open_ms, **{c: frame[c].to_numpy() for c in schema.OHLCV},
      'close_time': open_ms + INTERVALS['5m'] // pd.Timedelta(milliseconds=1) - 1,
      **{c: frame[c].to_numpy() for c in schema.EXTRA_KLINE_COLUMNS}, 'ignore': 0})
  table['count'] = table['count'].astype(np.int64)
  labels = pd.DatetimeIndex(frame[schema.TIMESTAMP]).strftime(
      '%Y-%m' if period == 'month' else '%Y-%m-%d').to_numpy()
  paths = []
  for label in np.unique(labels):
    name = f'{symbol}-5m-{label}'
    text = table.loc[labels == label].to_csv(index=False, header=False, float_format='%.8f')
    path = directory / f'{name}.{fmt}'
    if fmt == 'zip':
      with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f'{name}.csv', text)
    else:
      path.write_text(text)
    paths.append(path)
  return paths
