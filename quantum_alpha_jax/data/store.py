"""The feature store: ``<root>/<SYMBOL>_<YEAR>_5m.parquet`` plus a JSON sidecar per file.

Each sidecar (``<SYMBOL>_<YEAR>_5m.json``) records the schema version, the feature list, the column
dtypes, the row counts, the first and last bar, the gaps of that year, the source files with their
SHA-256, what generated a synthetic market (``generator``: preset, seed, span and parameters; None
for files), and the parquet file's own size and SHA-256. ``store.json`` lists the files of the current
build; readers only read what it lists.

Writes are atomic. A build first writes and flushes every file into a staging directory beside
the store (the slow part; a kill there leaves the old store exactly as it was), then renames the
files into place (milliseconds) and finally replaces ``store.json``, which names the build id of
every file. Each sidecar carries its build id too, so a store caught in the middle of the renames is
refused with a clear error instead of being read as a mix of two builds; a parquet file whose size
or hash no longer matches its sidecar is refused the same way.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantum_alpha_jax.artifacts import atomic_write_json
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data.features import EXTRA_FEATURES, FEATURES
from quantum_alpha_jax.errors import DataError, SchemaError, describe

MANIFEST = 'store.json'
REBUILD = 'rebuild the store: python -m experiments.data --config=configs/data.py[:quick|:real]'


def file_stem(symbol: str, year: int) -> str:
  """``BTCUSDT_2021_5m``: the name of one store file without its extension."""
  return f'{symbol}_{year}_5m'


def expected_dtypes(*, extras: bool = False, regime: bool = False) -> dict[str, str]:
  """Column name -> pandas dtype string of a store file (schema version ``SCHEMA_VERSION``)."""
  dtypes = {schema.TIMESTAMP: 'datetime64[ns, UTC]'}
  dtypes.update({c: 'float64' for c in schema.OHLCV})
  if extras:
    dtypes.update({c: 'float64' for c in schema.EXTRA_KLINE_COLUMNS})
  dtypes[schema.OBSERVED] = 'bool'
  dtypes[schema.SEGMENT] = 'int32'
  if regime:
    dtypes[schema.REGIME] = 'int8'
  dtypes[schema.VALID] = 'bool'
  dtypes.update({f: 'float32' for f in FEATURES if f not in schema.OHLCV})
  if extras:
    dtypes.update({f: 'float32' for f in EXTRA_FEATURES})
  return dtypes


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, 'rb') as handle:
    while block := handle.read(chunk):
      digest.update(block)
  return digest.hexdigest()


def write_store(root: str | Path, frames: Mapping[str, pd.DataFrame],
                sources: Mapping[str, Sequence[str]] | None = None,
                gaps: Mapping[str, Sequence[Any]] | None = None,
                generator: Mapping[str, Any] | None = None) -> list[dict]:
  """Writes one parquet file + sidecar per symbol and calendar year; returns the sidecars.

  ``frames`` maps a symbol to its feature frame (kline columns, ``valid`` and the 44 features).
  ``sources`` lists each symbol's input files (hashed into the sidecar); ``gaps`` its ``Gap``s;
  ``generator`` (JSON-ready) records what generated a synthetic market (see ``read_generator``).
  Every file is first written and flushed in a staging directory; only then are they renamed into
  place (milliseconds) and ``store.json`` updated. Each sidecar carries the build id that
  ``store.json`` lists for it, so a store caught between two builds is refused, never mixed.
  """
  root = Path(root)
  root.mkdir(parents=True, exist_ok=True)
  build = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S') + (
      '-' + uuid.uuid4().hex[:8])
  source_hashes = {}
  for symbol, paths in (sources or {}).items():
    source_hashes[symbol] = [{'path': str(p), 'sha256': sha256_file(p)} for p in paths]
  staging = Path(tempfile.mkdtemp(prefix='.staging-', dir=root))
  written = []
  try:
    for symbol, frame in frames.items():
      dtypes = _frame_dtypes(frame, where=symbol)
      frame = frame[list(dtypes)].assign(**{
          schema.TIMESTAMP: pd.DatetimeIndex(frame[schema.TIMESTAMP]).as_unit('ns')})
      years = pd.DatetimeIndex(frame[schema.TIMESTAMP]).year.to_numpy()
      symbol_gaps = list((gaps or {}).get(symbol, ()))
      for year in np.unique(years):
        part = frame.loc[years == year].reset_index(drop=True)
        stem = file_stem(symbol, int(year))
        parquet = staging / f'{stem}.parquet'
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), parquet,
                       compression='zstd')
        _fsync(parquet)
        first, last = part[schema.TIMESTAMP].iloc[0], part[schema.TIMESTAMP].iloc[-1]
        metadata = {
            'schema_version': schema.SCHEMA_VERSION,
            'build': build,
            'symbol': symbol,
            'year': int(year),
            'interval': '5m',
            'features': list(FEATURES),
            'dtypes': dtypes,
            'rows': len(part),
            'valid_rows': int(part[schema.VALID].sum()),
            'observed_rows': int(part[schema.OBSERVED].sum()),
            'first': first.isoformat(),
            'last': last.isoformat(),
            'gaps': [g.to_dict() for g in symbol_gaps if first <= g.start <= last + schema.BAR],
            'sources': source_hashes.get(symbol, []),
            'generator': None if generator is None else dict(generator),
            'parquet_bytes': parquet.stat().st_size,
            'parquet_sha256': sha256_file(parquet),
            'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        (staging / f'{stem}.json').write_text(json.dumps(metadata, indent=1))
        _fsync(staging / f'{stem}.json')
        written.append(metadata)
    stems = [file_stem(m['symbol'], m['year']) for m in written]
    for stem in stems:
      for suffix in ('.parquet', '.json'):
        os.replace(staging / f'{stem}{suffix}', root / f'{stem}{suffix}')
    _update_manifest(root, frames.keys(), {stem: build for stem in stems})
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return written


def _fsync(path: Path) -> None:
  with open(path, 'rb') as handle:
    os.fsync(handle.fileno())


def _update_manifest(root: Path, symbols: Iterable[str], builds: Mapping[str, str]) -> None:
  """Replaces the rewritten symbols' entries in ``store.json`` and removes their stale files."""
  symbols = set(symbols)
  try:
    manifest = read_manifest(root, missing_ok=True)
  except DataError:
    # An older schema or a corrupt manifest: this build starts a new one, listing only its files.
    manifest = {}
  files = {stem: build for stem, build in manifest.get('files', {}).items()
           if stem.rsplit('_', 2)[0] not in symbols}
  files.update(builds)
  atomic_write_json(root / MANIFEST, {'schema_version': schema.SCHEMA_VERSION,
                                      'files': dict(sorted(files.items()))})
  for path in root.glob('*_5m.*'):
    stem = path.name.rsplit('.', 1)[0]
    if stem.rsplit('_', 2)[0] in symbols and stem not in files and path.suffix in ('.parquet', '.json'):
      path.unlink()


def read_manifest(root: str | Path, missing_ok: bool = False) -> dict:
  """The store's ``store.json`` ({} when absent and ``missing_ok``)."""
  path = Path(root) / MANIFEST
  if not path.exists():
    if missing_ok:
      return {}
    raise DataError(describe(str(root), 'no feature store here (store.json is missing)', REBUILD))
  try:
    manifest = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise DataError(describe(str(path), f'corrupt manifest ({error.msg})', REBUILD)) from error
  if manifest.get('schema_version') != schema.SCHEMA_VERSION:
    raise SchemaError(describe(str(path), f'store schema version {manifest.get("schema_version")}, '
                               f'code expects {schema.SCHEMA_VERSION}', REBUILD))
  if not isinstance(manifest.get('files'), dict):
    raise SchemaError(describe(str(path), 'an older manifest layout (files without build ids)',
                               REBUILD))
  return manifest


def store_symbols(root: str | Path) -> list[str]:
  """The symbols a store holds."""
  return sorted({s.rsplit('_', 2)[0] for s in read_manifest(root)['files']})


def read_metadata(root: str | Path, symbol: str, year: int) -> dict:
  """The sidecar of one store file."""
  path = Path(root) / f'{file_stem(symbol, year)}.json'
  try:
    return json.loads(path.read_text())
  except FileNotFoundError as error:
    raise DataError(describe(str(path), 'sidecar missing', REBUILD)) from error
  except json.JSONDecodeError as error:
    raise DataError(describe(str(path), f'corrupt sidecar ({error.msg})', REBUILD)) from error


def read_generator(root: str | Path, symbol: str) -> dict | None:
  """What generated a symbol's synthetic data (preset, seed, span, parameters), from its first
  file's sidecar; None for real data or a store built before the record existed."""
  stems = sorted(stem for stem in read_manifest(root)['files'] if stem.rsplit('_', 2)[0] == symbol)
  if not stems:
    raise DataError(describe(str(root), f'no {symbol} files', 'build the store for that symbol'))
  return read_metadata(root, symbol, int(stems[0].rsplit('_', 2)[1])).get('generator')


def read_store(root: str | Path, symbols: Sequence[str] | None = None, start: Any = None,
               end: Any = None, *, verify_hash: bool = False) -> dict[str, pd.DataFrame]:
  """Reads feature frames per symbol, optionally limited to bars in ``[start, end)``.

  Every file's schema is checked against its sidecar and ``expected_dtypes`` before its data is read.
  """
  root = Path(root)
  available = store_symbols(root)
  symbols = list(symbols) if symbols is not None else available
  for symbol in symbols:
    if symbol not in available:
      raise DataError(describe(str(root), f'unknown symbol {symbol!r}; the store holds '
                               f'{", ".join(available) or "nothing"}',
                               'fix config.symbols or build the store for that symbol'))
  start = schema.to_utc(start, 'read_store start') if start is not None else None
  end = schema.to_utc(end, 'read_store end') if end is not None else None
  stems = read_manifest(root)['files']
  frames = {}
  for symbol in symbols:
    parts = []
    for stem in stems:
      if stem.rsplit('_', 2)[0] != symbol:
        continue
      year = int(stem.rsplit('_', 2)[1])
      if (start is not None and year < start.year) or (end is not None and year > end.year):
        continue
      parts.append(_read_file(root, symbol, year, verify_hash, build=stems[stem]))
    if not parts:
      raise DataError(describe(str(root), f'no {symbol} data between {start} and {end}',
                               'widen the date range or rebuild the store'))
    frame = pd.concat(parts, ignore_index=True)
    mask = np.ones(len(frame), dtype=bool)
    if start is not None:
      mask &= (frame[schema.TIMESTAMP] >= start).to_numpy()
    if end is not None:
      mask &= (frame[schema.TIMESTAMP] < end).to_numpy()
    frames[symbol] = frame.loc[mask].reset_index(drop=True)
  return frames


def _read_file(root: Path, symbol: str, year: int, verify_hash: bool, build: str) -> pd.DataFrame:
  stem = file_stem(symbol, year)
  path = root / f'{stem}.parquet'
  metadata = read_metadata(root, symbol, year)
  if metadata.get('build') != build:
    raise DataError(describe(path.name, f'comes from build {metadata.get("build")}, store.json '
                             f'lists build {build} (a build was interrupted while its files were '
                             'moved into place)', REBUILD))
  if metadata.get('schema_version') != schema.SCHEMA_VERSION:
    raise SchemaError(describe(path.name, f'schema version {metadata.get("schema_version")}, '
                               f'code expects {schema.SCHEMA_VERSION}', REBUILD))
  if not path.exists():
    raise DataError(describe(str(path), 'listed in store.json but missing', REBUILD))
  if path.stat().st_size != metadata['parquet_bytes'] or (
      verify_hash and sha256_file(path) != metadata['parquet_sha256']):
    raise DataError(describe(path.name, 'does not match its sidecar (an interrupted write or an '
                             'edit after the build)', REBUILD))
  try:
    arrow_schema = pq.read_schema(path)
  except (OSError, pa.ArrowException) as error:
    raise DataError(describe(path.name, f'cannot be read ({error})', REBUILD)) from error
  if list(metadata.get('features', [])) != list(FEATURES):
    raise SchemaError(describe(path.name, 'built with a different feature list '
                               f'({len(metadata.get("features", []))} features)', REBUILD))
  present = {field.name: field for field in arrow_schema}
  expected = expected_dtypes(extras=all(c in present for c in schema.EXTRA_KLINE_COLUMNS),
                             regime=schema.REGIME in present)
  missing = [c for c in expected if c not in present]
  if missing:
    kind = 'feature' if all(c in FEATURES for c in missing) else 'column'
    raise SchemaError(describe(path.name, f'missing {kind}(s) {", ".join(missing)}', REBUILD))
  extra = [c for c in present if c not in expected]
  if extra:
    raise SchemaError(describe(path.name, f'unexpected column(s) {", ".join(extra)}', REBUILD))
  try:
    frame = pq.read_table(path).to_pandas()
  except (OSError, pa.ArrowException) as error:
    raise DataError(describe(path.name, f'cannot be read ({error})', REBUILD)) from error
  _frame_dtypes(frame, where=path.name, expected=expected)
  if len(frame) != metadata['rows']:
    raise DataError(describe(path.name, f'{len(frame)} rows, sidecar says {metadata["rows"]}', REBUILD))
  return frame


def _frame_dtypes(frame: pd.DataFrame, where: str, expected: dict[str, str] | None = None
                  ) -> dict[str, str]:
  """Checks a frame's columns and dtypes against the store schema; returns the expected dtypes."""
  if expected is None:
    expected = expected_dtypes(extras=all(c in frame for c in schema.EXTRA_KLINE_COLUMNS),
                               regime=schema.REGIME in frame)
  missing = [c for c in expected if c not in frame]
  if missing:
    raise SchemaError(describe(where, f'missing column(s) {", ".join(missing)}',
                               'compute features with data.features.compute_features first'))
  for column, dtype in expected.items():
    actual = frame[column].dtype
    if column == schema.TIMESTAMP:
      ok = isinstance(actual, pd.DatetimeTZDtype) and str(actual.tz) == 'UTC'
    else:
      ok = str(actual) == dtype
    if not ok:
      raise SchemaError(describe(where, f'column {column!r} has dtype {actual}, expected {dtype}',
                                 REBUILD))
  return expected
