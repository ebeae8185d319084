"""Optional inputs from Binance's extra kline columns: features, store and windows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax.data import store, windows
from quantum_alpha_jax.data.features import EXTRA_FEATURES, WARMUP_BARS, compute_features
from quantum_alpha_jax.errors import DataError
from tests.conftest import make_klines


def _klines_with_extras(rows=1500, seed=4):
  frame = make_klines(rows, seed=seed, extras=True)
  rng = np.random.default_rng(seed)
  frame['taker_buy_volume'] = frame.volume * rng.uniform(0.2, 0.8, rows)
  frame['count'] = np.round(rng.lognormal(4, 0.5, rows))
  frame.loc[100:110, ['volume', 'taker_buy_volume', 'count']] = 0.0  # a quiet, filled stretch
  return frame


def test_extra_features_match_an_independent_computation_and_are_causal():
  klines = _klines_with_extras()
  features = compute_features(klines)
  ratio = np.where(klines.volume > 0, klines.taker_buy_volume / klines.volume.replace(0, 1), 0.5)
  np.testing.assert_allclose(features.taker_buy_ratio, ratio, rtol=1e-6)
  trades = np.log1p(klines['count'])
  rolling = trades.rolling(48)
  expected = (trades - rolling.mean()) / rolling.std(ddof=0)
  valid = features.valid.to_numpy()
  np.testing.assert_allclose(features.trades_zscore[valid], expected[valid], rtol=1e-4, atol=1e-5)
  changed = klines.copy()
  changed.loc[900:, 'count'] *= 3
  changed.loc[900:, 'taker_buy_volume'] *= 0.5
  again = compute_features(changed)
  for name in EXTRA_FEATURES:
    np.testing.assert_array_equal(again[name][:900], features[name][:900])
    assert not np.array_equal(again[name][900:], features[name][900:])
  assert not any(name in compute_features(make_klines(400)) for name in EXTRA_FEATURES)


def test_store_and_windows_carry_extra_features(tmp_path):
  frames = {'BTCUSDT': compute_features(_klines_with_extras()),
            'ETHUSDT': compute_features(make_klines(1500, seed=5))}
  store.write_store(tmp_path / 'store', frames)
  read = store.read_store(tmp_path / 'store')
  assert all(name in read['BTCUSDT'] for name in EXTRA_FEATURES)
  assert not any(name in read['ETHUSDT'] for name in EXTRA_FEATURES)
  spec = windows.WindowSpec(30, 6, extra_features=True)
  split = [windows.Split('train', '2023-01-01', '2023-02-01')]
  data, _ = windows.make_datasets({'BTCUSDT': read['BTCUSDT']}, spec, split, 8,
                                  tmp_path / 'cache', num_devices=1, shard_index=0, shard_count=1)
  batch = next(data['train'].iterator())
  assert batch['encoder_extra'].shape == (8, 30, 2)
  frame = read['BTCUSDT']
  for item in range(8):
    anchor = int(batch['anchor'][item])
    rows = frame.iloc[anchor - 29: anchor + 1]
    np.testing.assert_allclose(batch['encoder_extra'][item, :, 0],
                               2 * (rows.taker_buy_ratio.to_numpy() - 0.5), rtol=1e-6)
    np.testing.assert_allclose(batch['encoder_extra'][item, :, 1], rows.trades_zscore, rtol=1e-6)
  assert anchor >= WARMUP_BARS
  with pytest.raises(DataError, match=r'ETHUSDT has no trade-count/taker-buy columns'):
    windows.make_datasets(read, spec, split, 8, tmp_path / 'cache', num_devices=1,
                          shard_index=0, shard_count=1)
