"""The parquet feature store: round trip, atomic writes, schema checks, stale files."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import pytest

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data import schema, store
from quantum_alpha_jax.data.features import FEATURES, compute_features
from quantum_alpha_jax.errors import DataError, SchemaError
from tests.conftest import make_klines

# 1200 bars from 2022-12-30 cross a year boundary: two files per symbol.
START = '2022-12-30'


@pytest.fixture(scope='module')
def frames():
  return {'BTCUSDT': compute_features(make_klines(1200, seed=1, start=START, extras=True)),
          'ETHUSDT': compute_features(make_klines(1200, seed=2, start=START))}


def test_round_trip_per_symbol_and_year(tmp_path, frames):
  written = store.write_store(tmp_path, frames)
  assert sorted(p.name for p in tmp_path.glob('*.parquet')) == [
      'BTCUSDT_2022_5m.parquet', 'BTCUSDT_2023_5m.parquet',
      'ETHUSDT_2022_5m.parquet', 'ETHUSDT_2023_5m.parquet']
  assert sum(m['rows'] for m in written if m['symbol'] == 'BTCUSDT') == 1200
  metadata = store.read_metadata(tmp_path, 'BTCUSDT', 2023)
  assert metadata['features'] == list(FEATURES) and metadata['schema_version'] == schema.SCHEMA_VERSION
  assert metadata['parquet_sha256'] == store.sha256_file(tmp_path / 'BTCUSDT_2023_5m.parquet')
  read = store.read_store(tmp_path, verify_hash=True)
  for symbol, frame in frames.items():
    expected = frame[list(store.expected_dtypes(extras='quote_volume' in frame))]
    pd.testing.assert_frame_equal(read[symbol], expected.reset_index(drop=True))
  assert 'quote_volume' not in read['ETHUSDT']


def test_date_range_and_unknown_symbol(tmp_path, frames):
  store.write_store(tmp_path, frames)
  part = store.read_store(tmp_path, ['ETHUSDT'], start='2023-01-01', end='2023-01-02')
  assert list(part) == ['ETHUSDT'] and len(part['ETHUSDT']) == 288
  with pytest.raises(DataError, match=r"unknown symbol 'XRPUSDT'; the store holds BTCUSDT, ETHUSDT"):
    store.read_store(tmp_path, ['XRPUSDT'])
  with pytest.raises(DataError, match=r'no feature store here'):
    store.read_store(tmp_path / 'nowhere')


def test_killed_write_leaves_old_file_intact(tmp_path, frames, monkeypatch):
  store.write_store(tmp_path, frames)
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  real_write = pq.write_table

  def write_then_die(table, where, **kwargs):
    real_write(table.slice(0, 10), where, **kwargs)  # a partial file on disk ...
    raise KeyboardInterrupt('killed mid-write')  # ... then the process is interrupted

  monkeypatch.setattr(pq, 'write_table', write_then_die)
  changed = {s: f.assign(close=f.close * 2) for s, f in frames.items()}
  with pytest.raises(KeyboardInterrupt):
    store.write_store(tmp_path, changed)
  after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  assert after == before  # no temporary left behind, nothing overwritten
  monkeypatch.undo()
  pd.testing.assert_series_equal(store.read_store(tmp_path)['BTCUSDT'].close,
                                 frames['BTCUSDT'].close, check_names=False)


def test_truncated_or_edited_parquet_is_refused(tmp_path, frames):
  store.write_store(tmp_path, frames)
  path = tmp_path / 'BTCUSDT_2023_5m.parquet'
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match=r'BTCUSDT_2023_5m.parquet: does not match its sidecar'):
    store.read_store(tmp_path, ['BTCUSDT'])
  path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
  with pytest.raises(DataError, match=r'does not match its sidecar'):
    store.read_store(tmp_path, ['BTCUSDT'], verify_hash=True)


def _rewrite(tmp_path, table: pa.Table, stem: str = 'ETHUSDT_2023_5m') -> None:
  """Replaces a store file behind the store's back and refreshes its size in the sidecar."""
  pq.write_table(table, tmp_path / f'{stem}.parquet')
  metadata = store.read_metadata(tmp_path, 'ETHUSDT', 2023)
  metadata['parquet_bytes'] = os.path.getsize(tmp_path / f'{stem}.parquet')
  artifacts.atomic_write_json(tmp_path / f'{stem}.json', metadata)


def test_schema_mismatches_are_clear_errors(tmp_path, frames):
  store.write_store(tmp_path, frames)
  table = pq.read_table(tmp_path / 'ETHUSDT_2023_5m.parquet')
  _rewrite(tmp_path, table.drop_columns(['RSI_14']))
  with pytest.raises(SchemaError, match=r'ETHUSDT_2023_5m.parquet: missing feature\(s\) RSI_14 — '
                     r'rebuild the store'):
    store.read_store(tmp_path, ['ETHUSDT'])
  _rewrite(tmp_path, table.append_column('surprise', pa.array(np.zeros(len(table)))))
  with pytest.raises(SchemaError, match=r'unexpected column\(s\) surprise'):
    store.read_store(tmp_path, ['ETHUSDT'])
  index = table.schema.get_field_index('MACD')
  _rewrite(tmp_path, table.set_column(index, 'MACD', table['MACD'].cast(pa.float64())))
  with pytest.raises(SchemaError, match=r"column 'MACD' has dtype float64, expected float32"):
    store.read_store(tmp_path, ['ETHUSDT'])


def test_writing_a_frame_without_features_is_refused(tmp_path):
  with pytest.raises(SchemaError, match=r'missing column\(s\) valid'):
    store.write_store(tmp_path, {'BTCUSDT': make_klines(10)})


def test_rebuild_removes_stale_years_and_keeps_other_symbols(tmp_path, frames):
  store.write_store(tmp_path, frames)
  shorter = frames['BTCUSDT'].iloc[:200]  # 2022 only
  store.write_store(tmp_path, {'BTCUSDT': shorter})
  assert not (tmp_path / 'BTCUSDT_2023_5m.parquet').exists()
  assert not (tmp_path / 'BTCUSDT_2023_5m.json').exists()
  read = store.read_store(tmp_path)
  assert len(read['BTCUSDT']) == 200 and len(read['ETHUSDT']) == 1200


@pytest.mark.parametrize('fail_at', [1, 3])
def test_killed_rebuild_at_any_file_leaves_the_old_store(tmp_path, frames, monkeypatch, fail_at):
  store.write_store(tmp_path, frames)
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  real_write, calls = pq.write_table, []

  def write_or_die(table, where, **kwargs):
    calls.append(where)
    if len(calls) == fail_at:
      raise KeyboardInterrupt('killed')
    real_write(table, where, **kwargs)

  monkeypatch.setattr(pq, 'write_table', write_or_die)
  with pytest.raises(KeyboardInterrupt):
    store.write_store(tmp_path, {s: f.assign(close=f.close * 2) for s, f in frames.items()})
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_store_caught_between_two_builds_is_refused(tmp_path, frames, monkeypatch):
  store.write_store(tmp_path, frames)
  real_replace, calls = os.replace, []

  def replace_or_die(source, destination):
    calls.append(destination)
    if len(calls) == 3:  # after the first year's parquet and sidecar were moved into place
      raise KeyboardInterrupt('killed')
    real_replace(source, destination)

  monkeypatch.setattr(os, 'replace', replace_or_die)
  with pytest.raises(KeyboardInterrupt):
    store.write_store(tmp_path, {s: f.assign(close=f.close * 2) for s, f in frames.items()})
  monkeypatch.undo()
  assert not any(p.name.startswith('.staging') for p in tmp_path.iterdir())
  with pytest.raises(DataError, match=r'BTCUSDT_2022_5m.parquet: comes from build .* store.json '
                     r'lists build .*interrupted'):
    store.read_store(tmp_path, ['BTCUSDT'])
  store.read_store(tmp_path, ['ETHUSDT'])  # untouched symbol files still read


def test_a_store_of_an_older_schema_is_refused_then_rebuilt_in_place(tmp_path, frames):
  store.write_store(tmp_path, frames)
  manifest = json.loads((tmp_path / 'store.json').read_text())
  (tmp_path / 'store.json').write_text(json.dumps(dict(manifest, schema_version=1)))
  with pytest.raises(SchemaError, match='store schema version 1'):
    store.read_store(tmp_path)
  store.write_store(tmp_path, {'BTCUSDT': frames['BTCUSDT']})
  assert list(store.read_store(tmp_path)) == ['BTCUSDT']  # the old ETH files are not listed
