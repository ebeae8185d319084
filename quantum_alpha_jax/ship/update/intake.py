"""Step 1, intake: new kline files into the feature store, and the synthetic feed for demos.

Kline files in ``config.kline_dir`` that the ledger (``<models>/ingest.json``: name, size, mtime
and SHA-256 of every file taken) has not seen are read by ``data/klines.py`` (Binance daily or
monthly CSV/zip dumps, freqtrade feather/JSON, generic CSV/parquet), merged with the bars already
in the feature store (overlaps must agree candle for candle, or need ``config.task.data.dedupe``),
regularised, and the 44 features are recomputed over each touched symbol's whole history (they are
causal but cumulative: OBV and the EMAs run from the segment start). ``data/store.py`` rewrites
the store atomically; the ledger is written after it, so a kill in between only re-reads files
whose candles merge identically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Sequence

from absl import logging
import ml_collections
import pandas as pd

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data import klines as klines_lib
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data.features import compute_features
from quantum_alpha_jax.errors import DataError, describe
from quantum_alpha_jax.ship import provenance
from quantum_alpha_jax.ship.update import workspace


LEDGER = 'ingest.json'
KLINE_SUFFIXES = ('.zip', '.csv', '.json', '.json.gz', '.feather', '.parquet')
KLINE_COLUMNS = (schema.TIMESTAMP, *schema.OHLCV, *schema.EXTRA_KLINE_COLUMNS, schema.REGIME)
_DAILY_DUMP = re.compile(r'^([A-Z0-9]+)-5m-(\d{4}-\d{2}-\d{2})\.')


@dataclasses.dataclass(frozen=True)
class KlineFile:
  """A kline file as found in the incoming directory."""

  path: pathlib.Path
  size: int
  mtime_ns: int

  @property
  def name(self) -> str:
    return self.path.name


def scan_klines(directory: str | os.PathLike[str]) -> list[KlineFile]:
  """The kline files (by suffix; hidden and partial downloads skipped) in ``directory``, by name."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  found = []
  for path in sorted(directory.iterdir()):
    if path.name.startswith('.') or not path.is_file():
      continue
    if any(path.name.lower().endswith(suffix) for suffix in KLINE_SUFFIXES):
      stat = path.stat()
      found.append(KlineFile(path, stat.st_size, stat.st_mtime_ns))
  return found


def read_ledger(models: str | os.PathLike[str]) -> dict[str, Any]:
  """``<models>/ingest.json``: ``{'files': {name: {size, mtime_ns, sha256, symbol, ...}}}``."""
  path = pathlib.Path(models) / LEDGER
  if not path.exists():
    return {'files': {}}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise DataError(describe(str(path), f'corrupt ingest ledger ({error.msg})',
                             'delete it: every file is then ingested again (identical candles '
                             'merge silently)')) from error


def new_files(paths: workspace.Paths) -> list[KlineFile]:
  """Files of the kline directory the ledger has not taken (or that changed size or mtime since);
  every file when the feature store does not exist (yet, or any more)."""
  files = scan_klines(paths.klines)
  if not (paths.store / store_lib.MANIFEST).exists():
    return files
  taken = read_ledger(paths.models)['files']
  return [f for f in files if (taken.get(f.name, {}).get('size'), taken.get(f.name, {}).get(
      'mtime_ns')) != (f.size, f.mtime_ns)]


def ingest(paths: workspace.Paths, data_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Adds the new kline files to the feature store (see the module doc); returns what it did."""
  files = new_files(paths)
  if not files:
    return {'files': [], 'symbols': {}}
  symbols = list(data_config.symbols)
  by_symbol: dict[str, list[KlineFile]] = {}
  ignored = []
  for file in files:
    symbol = klines_lib.infer_symbol(file.path)
    if symbol is None:
      raise DataError(describe(
          str(file.path), 'cannot tell the symbol from the file name',
          'name it like a Binance dump (BTCUSDT-5m-2024-01-05.zip) or a freqtrade file '
          '(BTC_USDT-5m.feather)'))
    if symbol in symbols:
      by_symbol.setdefault(symbol, []).append(file)
    else:
      ignored.append(file)
      logging.info('%s: %s is not in config.task.data.symbols; ignored', file.name, symbol)
  have = (store_lib.store_symbols(paths.store)
          if (paths.store / store_lib.MANIFEST).exists() else [])
  frames, gaps, summary = {}, {}, {}
  for symbol, taken in sorted(by_symbol.items()):
    new, _ = klines_lib.load_symbol(
        [f.path for f in taken], symbol, sort=data_config.sort, dedupe=data_config.dedupe,
        fill_limit_bars=data_config.fill_limit_bars, drop_last_bar=data_config.drop_last_bar)
    new = new.loc[new[schema.OBSERVED].to_numpy()]
    rows_before = 0
    if symbol in have:
      old = store_lib.read_store(paths.store, [symbol])[symbol]
      rows_before = len(old)
      old = old.loc[old[schema.OBSERVED].to_numpy()]
      columns = [c for c in KLINE_COLUMNS if c in old and c in new]
      merged = pd.concat([old[columns], new[columns]], ignore_index=True)
      merged = merged.sort_values(schema.TIMESTAMP, kind='stable').reset_index(drop=True)
      merged = klines_lib.merge_overlaps(merged, symbol, data_config.dedupe)
    else:
      merged = new[[c for c in KLINE_COLUMNS if c in new]].reset_index(drop=True)
    regular, gaps[symbol] = klines_lib.regularize(merged,
                                                  fill_limit_bars=data_config.fill_limit_bars)
    frames[symbol] = compute_features(regular)
    summary[symbol] = {'files': [f.name for f in taken], 'rows_before': rows_before,
                       'rows_after': len(regular),
                       'last_bar': regular[schema.TIMESTAMP].iloc[-1].isoformat()}
  written = []
  if frames:
    written = store_lib.write_store(paths.store, frames,
                                    sources={s: [f.path for f in by_symbol[s]] for s in frames},
                                    gaps=gaps)
  builds = {m['symbol']: m['build'] for m in written}
  ledger = read_ledger(paths.models)
  now = provenance.utc_now()
  for file in files:
    symbol = klines_lib.infer_symbol(file.path)
    ledger['files'][file.name] = {
        'size': file.size, 'mtime_ns': file.mtime_ns, 'sha256': store_lib.sha256_file(file.path),
        'symbol': symbol, 'ingested': now, 'build': builds.get(symbol),
        'ignored': symbol not in frames}
  paths.models.mkdir(parents=True, exist_ok=True)
  artifacts.write_json(paths.models / LEDGER, ledger)
  logging.info('Ingested %d files into %s: %s', len(files), paths.store, summary)
  return {'files': [f.name for f in files], 'ignored': [f.name for f in ignored],
          'symbols': summary}


def data_end(store_dir: str | os.PathLike[str], symbols: Sequence[str]) -> pd.Timestamp:
  """One bar after the last bar that every symbol in the store has (from the sidecars)."""
  manifest = store_lib.read_manifest(store_dir)
  lasts = {}
  for stem in manifest['files']:
    symbol, year = stem.rsplit('_', 2)[0], int(stem.rsplit('_', 2)[1])
    if symbol in symbols:
      last = pd.Timestamp(store_lib.read_metadata(store_dir, symbol, year)['last'])
      lasts[symbol] = max(last, lasts.get(symbol, last))
  missing = [s for s in symbols if s not in lasts]
  if missing:
    raise DataError(describe(str(store_dir), f'no bars of {", ".join(missing)} yet',
                             'deliver kline files of every symbol in config.task.data.symbols'))
  return min(lasts.values()).tz_convert('UTC') + schema.BAR


def feed_synthetic(feed: ml_collections.ConfigDict, symbols: Sequence[str],
                   directory: str | os.PathLike[str]) -> list[pathlib.Path]:
  """Delivers the next days of the embedded synthetic market as Binance daily zips: the first
  ``feed.initial_days`` from ``feed.start``, then ``feed.days`` after the last delivered day.
  The market is generated over ``[feed.start, feed.end)`` with ``feed.seed``, so deliveries are
  the same whatever their order."""
  directory = pathlib.Path(directory)
  delivered = [pd.Timestamp(match[2], tz='UTC') for match in
               (_DAILY_DUMP.match(f.name) for f in scan_klines(directory))
               if match and match[1] in symbols]
  start = schema.to_utc(feed.start, 'config.feed.start')
  first = max(delivered) + pd.Timedelta(days=1) if delivered else start
  last = first + pd.Timedelta(days=int(feed.days if delivered else feed.initial_days))
  if last > schema.to_utc(feed.end, 'config.feed.end'):
    raise DataError(describe('config.feed', f'the synthetic market ends at {feed.end}; no days '
                             f'left after {first.date()}', 'raise --config.feed.end'))
  market = synthetic.generate_market(tuple(symbols), start=feed.start, end=feed.end,
                                     seed=int(feed.seed))
  written = []
  for symbol, frame in market.items():
    times = frame[schema.TIMESTAMP]
    part = frame.loc[((times >= first) & (times < last)).to_numpy()]
    written += klines_lib.write_binance(part, symbol, directory, period='day')
  logging.info('Delivered %s .. %s of the synthetic market to %s', first.date(),
               (last - pd.Timedelta(days=1)).date(), directory)
  return written
