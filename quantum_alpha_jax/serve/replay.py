"""Kline files in, decision JSONL out: the service's replay and follow loops.

- :func:`read_kline_file`: a kline file in any format the store reads (Binance CSV/zip, freqtrade
  JSON, feather, parquet; ``data/kline_files.py``), parsed but NOT validated as a whole: each bar
  goes through the stream, which refuses a bad one with one line and goes on.
- :class:`LineFollower`: the complete lines a growing CSV file gains, polled; a partially written
  last line waits for its newline.
- :class:`DecisionWriter`: JSONL, append-safe. Each record is one ``os.write`` of one line on an
  ``O_APPEND`` descriptor, so a kill leaves every earlier line whole; a torn last line from a
  crash (no newline) is cut off when the file is reopened, and a rerun over the same input skips
  the bars already written (per symbol, by bar time), so a restarted service continues the file.
- :func:`serve`: replay (or follow) the inputs through a :class:`~.decider.Decider`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import kline_files
from quantum_alpha_jax.data import klines
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.errors import DataError, describe

_COLUMNS = (schema.TIMESTAMP, *schema.OHLCV, *schema.EXTRA_KLINE_COLUMNS)


def read_kline_file(path: str | pathlib.Path) -> pd.DataFrame:
  """The rows of a kline file as a frame (``timestamp`` + OHLCV [+ extras]), in file order, with no
  check of values or order (the stream checks each bar)."""
  path = pathlib.Path(path)
  where = path.name
  if not path.is_file():
    raise DataError(describe(str(path), 'no such kline file', 'check --input'))
  name = where.lower()
  if name.endswith('.zip'):
    return kline_files.read_binance_zip(path)
  if name.endswith('.feather'):
    return kline_files.read_table_frame(pd.read_feather(path), where)
  if name.endswith('.parquet'):
    return kline_files.read_table_frame(pd.read_parquet(path), where)
  if name.endswith('.json') or name.endswith('.json.gz'):
    return kline_files.read_freqtrade_json(path)
  if name.endswith('.csv'):
    return kline_files.read_csv(path.read_bytes(), where)
  raise DataError(describe(where, 'unknown kline file type',
                           'use .csv, .zip, .json, .json.gz, .feather or .parquet'))


def frame_klines(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
  """One kline mapping per row (``timestamp`` as a UTC Timestamp, values as floats)."""
  columns = [c for c in _COLUMNS if c in frame.columns]
  times = pd.DatetimeIndex(pd.to_datetime(frame[schema.TIMESTAMP], utc=True))
  values = {c: frame[c].to_numpy(np.float64, na_value=np.nan).tolist()
            for c in columns if c != schema.TIMESTAMP}
  for row, stamp in enumerate(times):
    kline = {name: column[row] for name, column in values.items()}
    kline[schema.TIMESTAMP] = stamp
    yield kline


class LineFollower:
  """The complete lines a growing file gains: each :meth:`poll` returns the lines (bytes, newline
  stripped) written since the last one. A last line without its newline (still being written) is
  held back until its newline arrives."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    self.offset = 0
    self.pending = b''

  def poll(self) -> list[bytes]:
    if not self.path.exists():
      return []
    with open(self.path, 'rb') as handle:
      handle.seek(self.offset)
      data = handle.read()
    self.offset += len(data)
    self.pending += data
    *lines, self.pending = self.pending.split(b'\n')
    return [line.rstrip(b'\r') for line in lines if line.strip()]


def parse_csv_line(line: bytes, header: bytes | None, where: str) -> dict[str, Any]:
  """One CSV kline line (a Binance dump row, or a row under ``header``) as a kline mapping."""
  data = (header + b'\n' if header else b'') + line + b'\n'
  frame = kline_files.read_csv(data, where)
  return next(frame_klines(frame))


class DecisionWriter:
  """Append-safe JSONL of decision records (module docstring)."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.last_written: dict[str, int] = {}
    if self.path.exists():
      self._repair_and_index()
    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

  def _repair_and_index(self) -> None:
    data = self.path.read_bytes()
    end = data.rfind(b'\n') + 1
    if end < len(data):  # A line torn by a kill: drop it, its bar is decided again.
      logging.warning('%s: dropping a torn last line (%d bytes)', self.path, len(data) - end)
      os.truncate(self.path, end)
    for line in data[:end].splitlines():
      record = json.loads(line)
      if 'open_time_ns' in record and record.get('status') != 'rejected':
        symbol = record['symbol']
        self.last_written[symbol] = max(self.last_written.get(symbol, -1),
                                        int(record['open_time_ns']))

  def write(self, record: Mapping[str, Any]) -> bool:
    """Appends ``record`` unless its bar is already in the file; returns whether it wrote."""
    time_ns = record.get('open_time_ns')
    if (time_ns is not None and record.get('status') != 'rejected'
        and time_ns <= self.last_written.get(record['symbol'], -1)):
      return False
    line = json.dumps(_json_ready(record), separators=(',', ':')) + '\n'
    os.write(self._fd, line.encode())
    if time_ns is not None and record.get('status') != 'rejected':
      self.last_written[record['symbol']] = int(time_ns)
    return True

  def close(self) -> None:
    os.close(self._fd)


def _json_ready(record: Mapping[str, Any]) -> dict[str, Any]:
  def clean(value):
    if isinstance(value, float) and not math.isfinite(value):
      return None
    if isinstance(value, dict):
      return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
      return clean(value.item())
    return value
  return {key: clean(value) for key, value in record.items()}


@dataclasses.dataclass
class ServeSummary:
  """Counts of a serve run."""

  bars: int = 0
  decisions_written: int = 0
  ready: int = 0
  rejected: int = 0
  new_segments: int = 0
  latency_ms: list[float] = dataclasses.field(default_factory=list)

  def to_dict(self) -> dict[str, Any]:
    latency = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
    return {'bars': self.bars, 'decisions_written': self.decisions_written, 'ready': self.ready,
            'rejected': self.rejected, 'new_segments': self.new_segments,
            'latency_ms_p50': float(np.percentile(latency, 50)),
            'latency_ms_p99': float(np.percentile(latency, 99))}


def push_and_write(decider: Any, symbol: str, kline: Mapping[str, Any], writer: DecisionWriter,
                   summary: ServeSummary) -> None:
  """One kline through the decider; a refused bar becomes one logged line and one ``rejected``
  record, and the service goes on with its state as before the bar."""
  from quantum_alpha_jax.serve import stream  # pylint: disable=g-import-not-at-top
  try:
    records = decider.push(symbol, kline)
  except stream.BarRejected as error:
    summary.rejected += 1
    logging.error('rejected: %s', error)
    when = kline.get(schema.TIMESTAMP)
    writer.write({'symbol': symbol, 'time': str(when), 'status': 'rejected',
                  'reason': error.reason, 'error': str(error)})
    return
  for record in records:
    summary.bars += 1
    summary.ready += record.get('status') == 'ready'
    summary.new_segments += 'event' in record
    if record.get('status') != 'before_start':
      summary.latency_ms.append(record['latency_ms'])
    summary.decisions_written += writer.write(record)


def _symbol_of(path: pathlib.Path, symbol: str | None) -> str:
  found = symbol or klines.infer_symbol(path)
  if not found:
    raise DataError(describe(str(path), 'the symbol is not in the file name',
                             'pass --symbols=BTCUSDT (one per input)'))
  return found


def serve(decider: Any, inputs: Sequence[str | pathlib.Path], output: str | pathlib.Path, *,
          symbols: Sequence[str] | None = None, follow: bool = False, poll_seconds: float = 1.0,
          idle_seconds: float | None = None) -> dict[str, Any]:
  """Replays ``inputs`` (one kline file per symbol; bars merged in time order across files)
  through ``decider`` into the JSONL ``output``; with ``follow``, then keeps reading the lines
  each CSV input gains (until ``idle_seconds`` pass without one, or forever). Returns counts."""
  paths = [pathlib.Path(p) for p in inputs]
  names = [_symbol_of(p, s) for p, s in zip(paths, list(symbols or []) + [None] * len(paths))]
  writer = DecisionWriter(output)
  summary = ServeSummary()
  try:
    if not follow:
      streams = []
      for path, symbol in zip(paths, names):
        frame = read_kline_file(path)
        streams.append(((t.value, symbol, k) for t, k in
                        zip(pd.to_datetime(frame[schema.TIMESTAMP], utc=True),
                            frame_klines(frame))))
      import heapq  # pylint: disable=g-import-not-at-top
      for _, symbol, kline in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        push_and_write(decider, symbol, kline, writer, summary)
    else:
      for path in paths:
        if not path.name.lower().endswith('.csv'):
          raise DataError(describe(str(path), 'only CSV files can be followed as they grow',
                                   'write the live klines as CSV lines (a Binance dump row each)'))
      followers = [(symbol, LineFollower(path)) for path, symbol in zip(paths, names)]
      headers: dict[str, bytes | None] = {}
      idle = 0.0
      while True:
        got = False
        for symbol, follower in followers:
          for line in follower.poll():
            got = True
            if symbol not in headers:  # A header line names the columns of the lines below it.
              first = line.split(b',')[0].strip().strip(b'"').decode(errors='replace')
              numeric = kline_files._looks_numeric(first)  # pylint: disable=protected-access
              headers[symbol] = None if numeric else line
              if headers[symbol] is not None:
                continue
            try:
              kline = parse_csv_line(line, headers[symbol], follower.path.name)
            except DataError as error:
              summary.rejected += 1
              logging.error('rejected line of %s: %s', follower.path.name, error)
              writer.write({'symbol': symbol, 'status': 'rejected', 'reason': 'unparsable',
                            'error': str(error)})
              continue
            push_and_write(decider, symbol, kline, writer, summary)
        if got:
          idle = 0.0
          continue
        if idle_seconds is not None and idle >= idle_seconds:
          break
        time.sleep(poll_seconds)
        idle += poll_seconds
  finally:
    writer.close()
  return summary.to_dict()


def format_summary(summary: Mapping[str, Any], output: str | pathlib.Path) -> str:
  """One line for people: bars, decisions, refusals, new segments, latency."""
  return (f'{summary["bars"]:,} bars, {summary["ready"]:,} with every model ready, '
          f'{summary["decisions_written"]:,} records written to {output}, '
          f'{summary["rejected"]} bars rejected, {summary["new_segments"]} new segments; latency '
          f'p50 {summary["latency_ms_p50"]:.2f} ms, p99 {summary["latency_ms_p99"]:.2f} ms')
