"""klines -> features -> store, through the configs and the experiments.data entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import data as data_config
from quantum_alpha_jax.data import klines, pipeline, schema, store
from quantum_alpha_jax.data.features import FEATURES, compute_features
from quantum_alpha_jax.errors import ConfigError, DataError

REPOSITORY = Path(__file__).resolve().parents[1]


def _quick(tmp_path):
  config = data_config.get_config('quick')
  config.store_dir = str(tmp_path / 'store')
  return config


def test_quick_synthetic_store(tmp_path):
  config = _quick(tmp_path)
  summary = pipeline.build_store(config)
  frames = store.read_store(config.store_dir, verify_hash=True)
  assert sorted(frames) == ['BTCUSDT', 'ETHUSDT']
  bars = 28 * 288
  for frame in frames.values():
    assert len(frame) == bars
    assert frame[schema.REGIME].isin([0, 1, 2]).all()
    valid = frame.loc[frame[schema.VALID], list(FEATURES)]
    assert len(valid) == bars - 300 and np.isfinite(valid.to_numpy(dtype=np.float64)).all()
  assert sum(f['rows'] for f in summary['files']) == 2 * bars
  assert json.loads((Path(config.store_dir) / 'summary.json').read_text())['files']
  assert 'Feature ranges on valid rows, BTCUSDT' in pipeline.format_summary(summary)


def test_real_config_builds_the_store_from_shared_data(tmp_path, shared_data):
  config = data_config.get_config('real')
  config.store_dir = str(tmp_path / 'real')
  summary = pipeline.build_store(config)
  assert {(f['symbol'], f['year']) for f in summary['files']} >= {
      ('BTCUSDT', y) for y in range(2019, 2024)} | {('ETHUSDT', y) for y in range(2020, 2024)}
  # Only real candles were read; holes became flagged filler bars or segment breaks.
  assert summary['ingest']['BTCUSDT']['rows_read'] == 375_224
  assert summary['ingest']['BTCUSDT']['segment_breaks'] >= 2
  assert summary['ingest']['ETHUSDT']['segment_breaks'] >= 5  # 2020 and the three 2021 holes
  metadata = store.read_metadata(config.store_dir, 'BTCUSDT', 2023)
  assert metadata['sources'][0]['sha256'] == store.sha256_file(
      shared_data / 'binance-spot-5m/BTC_USDT-5m.parquet')
  assert any(g['start'].startswith('2023-03-24T12:40') for g in metadata['gaps'])
  frames = store.read_store(config.store_dir, start='2023-01-01', end='2024-01-01')
  for frame in frames.values():
    assert len(frame) == 105_120  # 2023 is complete once outages are filled
    assert frame[schema.VALID].mean() > 0.99


@pytest.mark.parametrize('name', [
    'daisybum-cryptoTradingBot_BTC_USDT-5m.feather', 'daisybum-cryptoTradingBot_ETH_USDT-5m.feather',
    'Pr4v33n23-freqtrade_ETH_USDT-5m.json.gz', 'davidzhaodz-freqtrade_BTC_USDT-1m.json',
    'davidzhaodz-freqtrade_BTC_USDT-5m.json', 'cryofrost-freqtrade_BTC_USDT-5m_with-duplicates.json'])
def test_every_raw_file_goes_through_ingest_and_features(shared_data, name):
  path = shared_data / 'freqtrade-raw' / name
  frame, report = klines.load_symbol([path], klines.infer_symbol(path), dedupe=True)
  features = compute_features(frame)
  valid = features.loc[features[schema.VALID], list(FEATURES)].to_numpy(dtype=np.float64)
  assert len(valid) > 0.9 * len(features) and np.isfinite(valid).all()
  assert (np.diff(schema.timestamps_ns(features)) > 0).all()


def test_config_errors(tmp_path):
  config = _quick(tmp_path)
  config.symbols = ('BTCUSDT', 'XRPUSDT')
  with pytest.raises(DataError, match=r"unknown symbol 'XRPUSDT'"):
    pipeline.build_store(config)
  config = data_config.get_config('real')
  config.symbols = ('SOLUSDT',)
  with pytest.raises(DataError, match=r"config.inputs: unknown symbol 'SOLUSDT'"):
    pipeline.load_klines(config)
  config = data_config.get_config('real')
  config.inputs.BTCUSDT = ''
  with pytest.raises(ConfigError, match=r'config.inputs.BTCUSDT: no input files'):
    pipeline.load_klines(config)
  config.inputs.BTCUSDT = str(tmp_path / '*.zip')
  with pytest.raises(DataError, match=r'matches no file'):
    pipeline.load_klines(config)
  with pytest.raises(ConfigError, match=r"unknown variant 'fast'"):
    data_config.get_config('fast')


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.data', *args], cwd=REPOSITORY,
                        capture_output=True, text=True, timeout=300)


def test_entry_point_quick_and_wrong_config_key(tmp_path):
  result = _run('--config=configs/data.py:quick', f'--config.store_dir={tmp_path / "store"}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Store files (rows per symbol and year)' in result.stdout
  assert (tmp_path / 'store' / 'BTCUSDT_2024_5m.parquet').exists()
  wrong = _run('--config=configs/data.py:quick', '--config.store_dri=/tmp/x')
  assert wrong.returncode != 0
  assert 'store_dri' in wrong.stderr and 'store_dir' in wrong.stderr  # names the key, suggests the fix


def test_bad_input_leaves_the_existing_store_untouched(tmp_path):
  config = _quick(tmp_path)
  pipeline.build_store(config)
  before = {p.name: p.read_bytes() for p in Path(config.store_dir).iterdir()}
  bad = tmp_path / 'BTCUSDT-5m-2024-01.csv'
  bad.write_text('1704067200000,100,99,101,100,5,1704067499999,500,3,2,200,0\n')  # high < low
  config.source = 'files'
  config.symbols = ('BTCUSDT',)
  config.inputs.BTCUSDT = str(bad)
  with pytest.raises(DataError, match=r'high < low'):
    pipeline.build_store(config)
  after = {p.name: p.read_bytes() for p in Path(config.store_dir).iterdir()}
  assert after == before


def test_quick_store_feeds_purged_windows_per_split(tmp_path):
  from quantum_alpha_jax.data import windows
  config = _quick(tmp_path)
  pipeline.build_store(config)
  summary = pipeline.window_summary(config, windows.WindowSpec(60, 24), batch_size=64)
  # 2 symbols; a split of D days has D*288 - (60 + 24 - 1) windows per symbol, less the purge
  # (84 bars) after a boundary and the 300 warm-up bars at the very start.
  assert summary['windows'] == {'train': 2 * (18 * 288 - 83 - 300),
                                'validation': 2 * (5 * 288 - 83 - 84),
                                'test': 2 * (5 * 288 - 83 - 84)}
  assert summary['batch_shapes']['encoder'] == [64, 60, len(FEATURES)]
  assert summary['normalizer_fitted_on']['end'].startswith('2024-01-19')
  config.splits.test = ('2024-01-24',)
  with pytest.raises(ConfigError, match=r"config.splits.test: \('2024-01-24',\) is not a"):
    pipeline.window_summary(config, windows.WindowSpec(60, 24))


def test_summary_feature_ranges_per_symbol_and_year(tmp_path):
  config = _quick(tmp_path)
  config.start, config.end = '2023-12-25', '2024-01-08'  # crosses a year boundary
  config.splits.train = ('2023-12-25', '2024-01-08')
  summary = pipeline.build_store(config)
  frames = store.read_store(config.store_dir)
  for symbol, frame in frames.items():
    valid = frame.loc[frame[schema.VALID]]
    for year, ranges in summary['features_by_year'][symbol].items():
      part = valid.loc[valid.timestamp.dt.year == year]
      assert ranges['RSI_14']['min'] == pytest.approx(float(part.RSI_14.min()))
      assert ranges['close']['max'] == pytest.approx(float(part.close.max()))
    assert sorted(summary['features_by_year'][symbol]) == [2023, 2024]
