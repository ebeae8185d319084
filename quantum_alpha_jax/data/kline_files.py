"""Kline file formats: Binance's CSV/zip dumps (with or without a header), freqtrade's JSON and generic
tables (CSV, parquet). Each reader returns a frame with the kline columns and the open time, or one
clear error naming the file and the fix. Split out of ``data/klines.py`` (issue #17), which
validates, resamples and regularises what these read.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path
from typing import Sequence

from absl import logging
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.errors import DataError, describe


BINANCE_COLUMNS = (
    'open_time', 'open', 'high', 'low', 'close', 'volume', 'close_time', 'quote_volume', 'count',
    'taker_buy_volume', 'taker_buy_quote_volume', 'ignore')


TIME_COLUMN_NAMES = ('timestamp', 'date', 'datetime', 'open_time', 'time')


_MICROSECONDS_THRESHOLD = 10**14


def _epoch_to_datetime(values: np.ndarray, where: str) -> pd.DatetimeIndex:
  """Integer epoch timestamps in s, ms or µs (one unit per file) -> UTC datetimes."""
  values = np.asarray(values)
  if values.dtype.kind == 'f':
    if not np.isfinite(values).all() or (values != np.round(values)).any():
      raise DataError(describe(where, 'timestamps are not whole numbers',
                               'expected epoch milliseconds or microseconds'))
  values = values.astype(np.int64)
  micro = values >= _MICROSECONDS_THRESHOLD
  seconds = values < 10**11  # 1e11 ms is 1973; 1e11 s is the year 5138
  if micro.any() and not micro.all():
    row = int(np.flatnonzero(micro != micro[0])[0])
    raise DataError(describe(
        where, f'timestamps mix milliseconds and microseconds (row {row} is {values[row]}, row 0 is '
        f'{values[0]})', 'split the file at the unit change, or convert it to one unit'))
  if micro.all():
    nanoseconds = values * 1_000
  elif seconds.all():
    nanoseconds = values * 1_000_000_000
  elif seconds.any():
    row = int(np.flatnonzero(seconds)[0])
    raise DataError(describe(where, f'timestamp {values[row]} at row {row} is not in the file\'s unit',
                             'fix or remove the row'))
  else:
    nanoseconds = values * 1_000_000
  return schema.to_timestamps(nanoseconds)


def _numeric(frame: pd.DataFrame, columns: Sequence[str], where: str) -> dict[str, np.ndarray]:
  """Columns as float64 arrays; a non-number is reported with its row and text."""
  result = {}
  for column in columns:
    series = frame[column]
    converted = pd.to_numeric(series, errors='coerce')
    bad = converted.isna() & series.notna()
    if bad.any():
      row = int(np.flatnonzero(bad.to_numpy())[0])
      raise DataError(describe(
          where, f'column {column!r} holds {series.iloc[row]!r} at row {row}, not a number',
          'fix the file (prices and volumes must be numeric)'))
    result[column] = converted.to_numpy(dtype=np.float64)
  return result


def read_csv(data: bytes, where: str) -> pd.DataFrame:
  first_line = data[:1024].decode('utf-8', errors='replace').split('\n', 1)[0].strip()
  if not first_line:
    raise DataError(describe(where, 'the file is empty', 're-download it'))
  first_field = first_line.split(',')[0].strip().strip('"')
  has_header = not _looks_numeric(first_field)
  raw = _parse_csv(data, has_header)
  if len(raw) == 0:
    raise DataError(describe(where, 'no rows after the header', 're-download the file'))
  header = [str(c).strip().lower() for c in raw.columns] if has_header else None
  if header is not None and not any(c in header for c in TIME_COLUMN_NAMES):
    raise DataError(describe(where, f'no time column among {header}',
                             f'name it one of {", ".join(TIME_COLUMN_NAMES)}'))
  if header is not None and set(header) == set(BINANCE_COLUMNS):
    raw.columns = header  # a Binance header, in whatever order: map the columns by name
    return _binance_frame(raw, where)
  if header is None and raw.shape[1] == len(BINANCE_COLUMNS):
    raw.columns = list(BINANCE_COLUMNS)
    return _binance_frame(raw, where)
  if header is None:
    raise DataError(describe(
        where, f'{raw.shape[1]} columns without a header; a Binance kline file has '
        f'{len(BINANCE_COLUMNS)}', 'check that this is a kline file, or add a header row'))
  raw.columns = header
  return read_table_frame(raw, where)


def _parse_csv(data: bytes, has_header: bool) -> pd.DataFrame:
  """Fast path: pyarrow's numeric parser; on any surprise, every field as text for a precise error."""
  header = 0 if has_header else None
  try:
    raw = pd.read_csv(io.BytesIO(data), header=header, engine='pyarrow')
    if all(pd.api.types.is_numeric_dtype(raw[c]) for c in raw.columns[1:6]):
      return raw
  except (ValueError, pd.errors.ParserError):
    pass
  text = data.decode('utf-8', errors='replace')
  return pd.read_csv(io.StringIO(text), header=header, dtype=str, skip_blank_lines=True)


def _looks_numeric(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _binance_frame(raw: pd.DataFrame, where: str) -> pd.DataFrame:
  numeric = _numeric(raw, [c for c in BINANCE_COLUMNS if c != 'ignore'], where)
  out = {schema.TIMESTAMP: _epoch_to_datetime(numeric['open_time'], where)}
  for column in schema.OHLCV + schema.EXTRA_KLINE_COLUMNS:
    out[column] = numeric[column]
  return pd.DataFrame(out)


def read_binance_zip(path: Path) -> pd.DataFrame:
  with zipfile.ZipFile(path) as archive:
    members = [m for m in archive.namelist() if m.lower().endswith('.csv')]
    if len(members) != 1:
      raise DataError(describe(path.name, f'expected one CSV inside the zip, found {members}',
                               'use the Binance public-dump zip as downloaded'))
    data = archive.read(members[0])
  return read_csv(data, path.name)


def read_freqtrade_json(path: Path) -> pd.DataFrame:
  opener = gzip.open if path.name.lower().endswith('.gz') else open
  with opener(path, 'rt') as handle:
    try:
      rows = json.load(handle)
    except json.JSONDecodeError as error:
      raise DataError(describe(path.name, f'invalid JSON ({error.msg} at char {error.pos})',
                               'the file is truncated or corrupt: download it again')) from error
  if not isinstance(rows, list) or not rows:
    raise DataError(describe(path.name, 'no candles in the JSON array', 're-download the file'))
  widths = {len(r) if isinstance(r, list) else -1 for r in rows}
  if widths != {6}:
    raise DataError(describe(path.name, f'rows have {sorted(widths)} fields, expected 6 '
                             '[ms, open, high, low, close, volume]', 'use a freqtrade OHLCV file'))
  raw = pd.DataFrame(rows, columns=['time'] + list(schema.OHLCV))
  numeric = _numeric(raw, ['time'] + list(schema.OHLCV), path.name)
  out = {schema.TIMESTAMP: _epoch_to_datetime(numeric['time'], path.name)}
  out.update({c: numeric[c] for c in schema.OHLCV})
  return pd.DataFrame(out)


def read_table_frame(table: pd.DataFrame, where: str) -> pd.DataFrame:
  """A generic table (feather, parquet, CSV with a header) -> timestamp + OHLCV [+ extras]."""
  table = table.rename(columns={c: str(c).strip().lower() for c in table.columns})
  time_column = next((c for c in TIME_COLUMN_NAMES if c in table.columns), None)
  missing = [c for c in schema.OHLCV if c not in table.columns]
  if time_column is None or missing:
    what = missing + ([] if time_column else ['a time column (' + '/'.join(TIME_COLUMN_NAMES) + ')'])
    raise DataError(describe(where, f'missing column(s) {", ".join(what)}; found {list(table.columns)}',
                             'provide timestamp, open, high, low, close, volume'))
  if len(table) == 0:
    raise DataError(describe(where, 'no rows', 'the file is empty: re-download it'))
  times = table[time_column]
  if pd.api.types.is_datetime64_any_dtype(times):
    stamps = pd.to_datetime(times, utc=True)
  elif pd.api.types.is_numeric_dtype(times):
    stamps = _epoch_to_datetime(times.to_numpy(), where)
  else:
    as_number = pd.to_numeric(times, errors='coerce')
    if as_number.notna().all():
      stamps = _epoch_to_datetime(as_number.to_numpy(), where)
    else:
      try:
        stamps = pd.to_datetime(times, utc=True, format='mixed')
      except (ValueError, TypeError) as error:
        raise DataError(describe(where, f'cannot parse the time column {time_column!r} ({error})',
                                 'use ISO dates or epoch milliseconds')) from error
  extras = [c for c in schema.EXTRA_KLINE_COLUMNS if c in table.columns]
  numeric = _numeric(table, list(schema.OHLCV) + extras, where)
  stamps = pd.DatetimeIndex(stamps)
  if stamps.isna().any():
    row = int(np.flatnonzero(stamps.isna())[0])
    raise DataError(describe(where, f'{int(stamps.isna().sum())} empty or unparsable timestamps '
                             f'(first at row {row})', 'fill in or remove those rows'))
  if stamps.tz is None:
    logging.warning('%s: timestamps carry no time zone; reading them as UTC', where)
    stamps = stamps.tz_localize('UTC')
  stamps = stamps.tz_convert('UTC').as_unit('ns')
  out = {schema.TIMESTAMP: stamps}
  out.update(numeric)
  return pd.DataFrame(out)
