"""Tests for data/windows.py: eligibility, splits and purge, normalisation, Grain pipelines."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import features as features_lib
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import windows

SPEC = windows.WindowSpec(encoder_length=24, decoder_length=6)
START = pd.Timestamp('2023-01-01', tz='UTC')
ROWS = 4000  # ~13.9 days of 5-minute bars per symbol.
SPLITS = (
    windows.Split('train', '2023-01-01', '2023-01-08'),
    windows.Split('val', '2023-01-08', '2023-01-11'),
    windows.Split('test', '2023-01-11', '2023-01-15'),
)
FILLED_SINGLE = 1500  # One filled bar (allowed with max_hole_bars=1).
FILLED_PAIR = (1700, 1701)  # Two consecutive filled bars (not allowed with max_hole_bars=1).


def make_klines(rows: int, seed: int, start=START) -> pd.DataFrame:
  """A seeded random-walk kline frame on the 5-minute grid."""
  rng = np.random.default_rng(seed)
  close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.002, rows)))
  open_ = np.concatenate([[100.0], close[:-1]])
  return pd.DataFrame({
      schema.TIMESTAMP: pd.date_range(start, periods=rows, freq='5min', tz='UTC').as_unit('ns'),
      'open': open_,
      'high': np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.001, rows))),
      'low': np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.001, rows))),
      'close': close,
      'volume': rng.lognormal(3.0, 1.0, rows),
      schema.OBSERVED: np.ones(rows, bool),
      schema.SEGMENT: np.zeros(rows, np.int32),
  })


def fill_bars(klines: pd.DataFrame, rows) -> pd.DataFrame:
  """Marks ``rows`` as filled: zero volume at the previous close, observed False."""
  klines = klines.copy()
  for row in rows:
    previous = klines.loc[row - 1, 'close']
    klines.loc[row, ['open', 'high', 'low', 'close', 'volume']] = [previous] * 4 + [0.0]
    klines.loc[row, schema.OBSERVED] = False
  return klines


def make_frames() -> dict[str, pd.DataFrame]:
  """Two feature frames; BTCUSDT has a filled bar and a filled pair."""
  btc = fill_bars(make_klines(ROWS, seed=1), [FILLED_SINGLE, *FILLED_PAIR])
  eth = make_klines(ROWS, seed=2)
  return {'BTCUSDT': features_lib.compute_features(btc),
          'ETHUSDT': features_lib.compute_features(eth)}


@pytest.fixture(scope='module')
def frames():
  return make_frames()


@pytest.fixture(scope='module')
def data(frames, tmp_path_factory):
  cache = tmp_path_factory.mktemp('cache')
  split_data, normalizer = windows.make_datasets(
      frames, SPEC, SPLITS, batch_size=16, cache_dir=cache, seed=3, num_devices=1,
      shard_index=0, shard_count=1)
  return split_data, normalizer, cache


def naive_eligible(arrays: windows.WindowArrays, spec: windows.WindowSpec) -> np.ndarray:
  """Loops over anchors, checking every rule directly (the reference for the cumsum version)."""
  symbol, segment = np.asarray(arrays.symbol), np.asarray(arrays.segment)
  observed, valid = np.asarray(arrays.observed), np.asarray(arrays.valid)
  timestamp = np.asarray(arrays.timestamp)

  def hole_seen_by(row, last):
    """Length of the run of filled bars holding ``row``, counted up to row ``last`` only."""
    start, end = row, row
    while start > 0 and not observed[start - 1] and segment[start - 1] == segment[row]:
      start -= 1
    while end < last and not observed[end + 1] and segment[end + 1] == segment[row]:
      end += 1
    return end - start + 1

  result = []
  for anchor in range(len(observed)):
    first, last = anchor - spec.encoder_length + 1, anchor + spec.decoder_length
    if first < 0 or last >= len(observed):
      continue
    rows = slice(first, last + 1)
    if (len(set(symbol[rows])) == 1 and np.all(np.diff(timestamp[rows]) == schema.BAR_NANOSECONDS)
        and valid[rows].all()
        and all(hole_seen_by(row, last) <= spec.max_hole_bars
                for row in range(first, last + 1) if not observed[row])):
      result.append(anchor)
  return np.array(result, np.int64)


def window_rows(anchors, spec):
  return np.asarray(anchors)[:, None] + spec.offsets


# ----------------------------------------------------------------------------------------------
# Eligibility.


def test_eligibility_matches_naive_reference(frames, tmp_path):
  arrays = windows.WindowArrays.from_frames(frames, tmp_path)
  for max_hole_bars in (0, 1, 2):
    spec = windows.WindowSpec(24, 6, max_hole_bars)
    np.testing.assert_array_equal(windows.eligible_anchors(arrays, spec),
                                  naive_eligible(arrays, spec))


def test_filled_runs_of_one_allowed_two_rejected(frames, tmp_path):
  arrays = windows.WindowArrays.from_frames(frames, tmp_path)
  btc = arrays.symbol_rows('BTCUSDT')
  single, pair = btc.start + FILLED_SINGLE, btc.start + np.array(FILLED_PAIR)
  for max_hole_bars, pair_allowed in ((1, False), (2, True)):
    spec = windows.WindowSpec(24, 6, max_hole_bars)
    rows = window_rows(windows.eligible_anchors(arrays, spec), spec)
    # Every window that could contain the single filled bar is kept ...
    assert np.sum(np.any(rows == single, axis=1)) == spec.window_length
    # ... and the filled pair is excluded unless two filled bars are tolerated; only the window
    # that ends on its first bar sees one filled bar (the second is after it).
    touches_pair = np.any(np.isin(rows, pair), axis=1)
    assert np.sum(touches_pair) == (spec.window_length + 1 if pair_allowed else 1)
    if not pair_allowed:
      assert rows[touches_pair][0, -1] == pair[0]


def test_windows_never_cross_a_long_hole_or_a_symbol(tmp_path):
  # Valid everywhere (synthetic features), so only the segment rule can exclude windows.
  klines = make_klines(1000, seed=5)
  frame = features_lib.compute_features(klines)
  frame[schema.VALID] = np.isfinite(frame[list(windows.FEATURES)].to_numpy(np.float64)).all(1)
  first_valid = int(np.argmax(frame[schema.VALID].to_numpy()))
  # A long hole: drop 50 bars, the rest is segment 1 (kept valid to isolate the segment rule).
  hole = slice(first_valid + 200, first_valid + 250)
  frame = frame.drop(index=range(hole.start, hole.stop)).reset_index(drop=True)
  frame.loc[hole.start:, schema.SEGMENT] = 1
  other = features_lib.compute_features(make_klines(1000, seed=6))
  arrays = windows.WindowArrays.from_frames({'AAAUSDT': frame, 'BBBUSDT': other}, tmp_path)
  anchors = windows.eligible_anchors(arrays, SPEC)
  rows = window_rows(anchors, SPEC)
  segment = np.asarray(arrays.segment)
  assert np.all(segment[rows] == segment[rows[:, :1]])
  assert np.all(np.asarray(arrays.symbol)[rows] == np.asarray(arrays.symbol)[rows[:, :1]])
  assert np.all(np.diff(np.asarray(arrays.timestamp)[rows], axis=1) == schema.BAR_NANOSECONDS)
  # Both sides of the hole have windows, right up to the hole.
  assert np.any(anchors + SPEC.decoder_length == hole.start - 1)
  assert np.any(anchors - SPEC.encoder_length + 1 == hole.start)
  # Segments are globally unique: two in AAAUSDT, then a third for BBBUSDT.
  assert sorted(set(segment.tolist())) == [0, 1, 2]
  np.testing.assert_array_equal(anchors, naive_eligible(arrays, SPEC))


# ----------------------------------------------------------------------------------------------
# Splits and purge.


def test_splits_respect_dates_and_purge(data):
  split_data, _, _ = data
  arrays = split_data['train'].source.arrays
  timestamps = np.asarray(arrays.timestamp)
  purge = SPEC.window_length * schema.BAR_NANOSECONDS
  all_anchors = windows.eligible_anchors(arrays, SPEC)
  previous = None
  for split in SPLITS:
    anchors = split_data[split.name].source.anchors
    times = timestamps[window_rows(anchors, SPEC)]
    assert times.min() >= split.start_ns and times.max() < split.end_ns
    # Nothing eligible in range is lost except the purged start.
    first_allowed = split.start_ns if previous is None else previous.end_ns + purge
    expected = all_anchors[
        (timestamps[all_anchors - SPEC.encoder_length + 1] >= first_allowed)
        & (timestamps[all_anchors + SPEC.decoder_length] < split.end_ns)]
    np.testing.assert_array_equal(anchors, expected)
    if previous is not None:
      assert times[:, 0].min() >= previous.end_ns + purge
      assert times[:, 0].min() == previous.end_ns + purge  # Data is contiguous here.
    previous = split


def test_split_errors(frames, tmp_path):
  arrays = windows.WindowArrays.from_frames(frames, tmp_path)
  overlapping = [windows.Split('train', '2023-01-01', '2023-01-08'),
                 windows.Split('val', '2023-01-07', '2023-01-10')]
  with pytest.raises(errors.ConfigError, match='overlaps'):
    windows.split_anchors(arrays, SPEC, overlapping)
  with pytest.raises(errors.ConfigError, match='purge_bars'):
    windows.split_anchors(arrays, SPEC, SPLITS, purge_bars=SPEC.window_length - 1)
  with pytest.raises(errors.ConfigError, match='not before'):
    windows.Split('bad', '2023-01-05', '2023-01-05')
  empty = [windows.Split('train', '2023-01-01', '2023-01-08'),
           windows.Split('future', '2024-01-01', '2024-02-01')]
  with pytest.raises(errors.DataError, match=r"'future'.*2024-01-01.*2023-01-01"):
    windows.split_anchors(arrays, SPEC, empty)


# ----------------------------------------------------------------------------------------------
# Normalisation and gathered values.


def test_normalizer_uses_train_split_only(frames, data, tmp_path):
  split_data, normalizer, cache = data
  test_start = SPLITS[2].start

  def changed(when):
    result = {}
    for symbol, frame in frames.items():
      frame = frame.copy()
      rows = when(frame[schema.TIMESTAMP])
      for name in ('OBV', 'RSI_14', 'volume_ma', 'SMA_50'):
        frame.loc[rows, name] = frame.loc[rows, name] * np.float32(1.5)
      result[symbol] = frame
    return result

  later, refit = windows.make_datasets(
      changed(lambda t: t >= test_start), SPEC, SPLITS, batch_size=16, cache_dir=cache, seed=3,
      num_devices=1, shard_index=0, shard_count=1)
  assert later['test'].source.arrays.directory != split_data['test'].source.arrays.directory
  np.testing.assert_array_equal(refit.mean, normalizer.mean)
  np.testing.assert_array_equal(refit.std, normalizer.std)
  # Not vacuous: the same change inside the training period moves the statistics.
  _, moved = windows.make_datasets(
      changed(lambda t: t < SPLITS[0].end), SPEC, SPLITS, batch_size=16, cache_dir=cache,
      seed=3, num_devices=1, shard_index=0, shard_count=1)
  assert not np.array_equal(moved.mean, normalizer.mean)


def test_normalizer_round_trips_through_json(data):
  import json  # pylint: disable=g-import-not-at-top
  _, normalizer, _ = data
  restored = windows.Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
  np.testing.assert_array_equal(restored.mean, normalizer.mean)
  np.testing.assert_array_equal(restored.std, normalizer.std)
  assert restored.spec == SPEC and restored.train_split == SPLITS[0]
  payload = normalizer.to_dict()
  assert payload['features'] == list(windows.FEATURES)
  assert payload['train_split']['start'].startswith('2023-01-01')
  payload['features'] = payload['features'][::-1]
  with pytest.raises(errors.ConfigError, match='FEATURES'):
    windows.Normalizer.from_dict(payload)


def reference_window(frames, symbols, symbol_id, anchor_time, normalizer):
  spec = normalizer.spec
  """Per-window numpy reference, read straight from the feature frame by timestamp."""
  frame = frames[symbols[symbol_id]]
  local = int(frame[schema.TIMESTAMP].searchsorted(anchor_time))
  encoder_rows = slice(local - spec.encoder_length + 1, local + 1)
  decoder_rows = slice(local + 1, local + 1 + spec.decoder_length)
  anchor = frame.iloc[local]
  close, volume_ma, obv = (float(anchor[name]) for name in ('close', 'volume_ma', 'OBV'))

  def transform(name, values):
    kind = features_lib.FEATURE_KINDS[name]
    if kind == 'price':
      return np.log(values / close)
    if kind == 'price_diff':
      return values / close
    if kind == 'volume':
      return np.log((values + 1e-12) / (volume_ma + 1e-12))
    if kind == 'obv':
      return (values - obv) / (volume_ma * spec.encoder_length + 1e-12)
    return values

  encoder = np.stack([
      (transform(name, frame[name].to_numpy(np.float32)[encoder_rows].astype(np.float64))
       - normalizer.mean[i]) / normalizer.std[i]
      for i, name in enumerate(windows.FEATURES)], axis=-1)
  known = [windows.FEATURES.index(name) for name in features_lib.KNOWN_FUTURE_FEATURES]
  decoder = np.stack([
      (frame[windows.FEATURES[i]].to_numpy(np.float64)[decoder_rows] - normalizer.mean[i])
      / normalizer.std[i] for i in known], axis=-1)
  log_close = np.log(frame['close'].to_numpy(np.float64))
  future = np.diff(log_close[local:local + 1 + spec.decoder_length])
  past = np.diff(log_close[local - spec.encoder_length:local + 1])
  regime = int(anchor[schema.REGIME]) if schema.REGIME in frame else -1
  return encoder, decoder, future, past, regime


def check_batch_against_reference(batch, frames, symbols, normalizer):
  for item in np.flatnonzero(batch['mask']):
    anchor_time = pd.Timestamp(int(batch['timestamp'][item]), tz='UTC')
    encoder, decoder, future, past, regime = reference_window(
        frames, symbols, int(batch['symbol'][item]), anchor_time, normalizer)
    # Compare in the stationarised space (z-scores amplify float32 rounding by 1/std).
    np.testing.assert_allclose(batch['encoder'][item] * normalizer.std + normalizer.mean,
                               encoder * normalizer.std + normalizer.mean, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(batch['encoder'][item], encoder, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(batch['decoder_known'][item], decoder, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch['future_returns'][item], future, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(batch['encoder_returns'][item], past, rtol=1e-5, atol=1e-7)
    assert batch['regime'][item] == regime


def test_batch_matches_naive_reference(frames, data):
  split_data, normalizer, _ = data
  symbols = split_data['train'].source.arrays.symbols
  train_batch = next(iter(split_data['train'].dataset.to_iter_dataset()))
  expected_shapes = {
      'encoder': (16, 24, 44), 'decoder_known': (16, 6, 3), 'future_returns': (16, 6),
      'encoder_returns': (16, 24), 'symbol': (16,), 'anchor': (16,), 'timestamp': (16,),
      'regime': (16,), 'mask': (16,)}
  expected_dtypes = {
      'encoder': np.float32, 'decoder_known': np.float32, 'future_returns': np.float32,
      'encoder_returns': np.float32, 'symbol': np.int32, 'anchor': np.int64,
      'timestamp': np.int64, 'regime': np.int32, 'mask': np.float32}
  assert {name: value.shape for name, value in train_batch.items()} == expected_shapes
  assert {name: value.dtype.type for name, value in train_batch.items()} == expected_dtypes
  assert train_batch['mask'].tolist() == [1.0] * 16
  assert set(train_batch['symbol'].tolist()) == {0, 1}  # Shuffled across symbols.
  check_batch_against_reference(train_batch, frames, symbols, normalizer)
  last_val_batch = split_data['val'].dataset[len(split_data['val'].dataset) - 1]
  check_batch_against_reference(last_val_batch, frames, symbols, normalizer)


def test_normalised_train_windows_are_standardised(data):
  split_data, _, _ = data
  batches = [split_data['train'].dataset[step] for step in range(40)]
  encoder = np.concatenate([batch['encoder'] for batch in batches]).reshape(-1, 44)
  assert np.all(np.isfinite(encoder))
  informative = encoder.std(axis=0) > 0
  assert np.abs(encoder.mean(axis=0)).max() < 0.35
  assert np.all(np.abs(encoder.std(axis=0)[informative] - 1) < 0.35)


# ----------------------------------------------------------------------------------------------
# Pipelines.


def test_evaluation_covers_every_window_once_with_padding_mask(data):
  split_data, _, _ = data
  val = split_data['val']
  batches = list(val.dataset.to_iter_dataset())
  assert len(batches) == val.steps_per_epoch == -(-val.num_windows // 16)
  mask = np.concatenate([batch['mask'] for batch in batches])
  anchors = np.concatenate([batch['anchor'] for batch in batches])
  np.testing.assert_array_equal(anchors[mask == 1], val.source.anchors)
  assert mask.sum() == val.num_windows and len(mask) == len(batches) * 16
  assert np.all(mask[:val.num_windows] == 1) and np.all(anchors[mask == 0] == -1)
  assert all(batch['encoder'].shape[0] == 16 for batch in batches)


def test_evaluation_shards_partition_the_split(data):
  split_data, _, _ = data
  val = split_data['val']
  seen = []
  lengths = set()
  for shard_index in range(3):
    dataset = windows.evaluation_dataset(val.source, 24, shard_index=shard_index, shard_count=3,
                                         num_devices=1)
    lengths.add(len(dataset))
    anchors = np.concatenate([batch['anchor'][batch['mask'] == 1] for batch in dataset])
    seen.append(anchors)
  assert len(lengths) == 1  # Every process runs the same number of eval steps.
  combined = np.concatenate(seen)
  assert len(combined) == val.num_windows
  np.testing.assert_array_equal(np.sort(combined), val.source.anchors)


def test_training_shards_are_disjoint_and_cover_the_epoch(data):
  split_data, normalizer, _ = data
  train = split_data['train'].source
  # A source whose size is a multiple of the global batch, so one epoch drops nothing.
  source = windows.WindowSource(train.arrays, SPEC, train.anchors[:160], normalizer, 'train')
  shards = []
  for shard_index in range(2):
    dataset = windows.training_dataset(source, 16, seed=7, num_epochs=1,
                                       shard_index=shard_index, shard_count=2, num_devices=1)
    batches = list(dataset.to_iter_dataset())
    assert len(batches) == 10 and all(len(batch['anchor']) == 8 for batch in batches)
    shards.append(np.concatenate([batch['anchor'] for batch in batches]))
  assert not set(shards[0].tolist()) & set(shards[1].tolist())
  np.testing.assert_array_equal(np.sort(np.concatenate(shards)), source.anchors)
  # The next epoch is a different permutation of the same windows.
  two_epochs = windows.training_dataset(source, 16, seed=7, num_epochs=2, shard_index=0,
                                        shard_count=2, num_devices=1)
  second = np.concatenate([two_epochs[step]['anchor'] for step in range(10, 20)])
  assert not np.array_equal(second, shards[0])


def test_batch_size_must_split_over_devices(data):
  split_data, _, _ = data
  source = split_data['train'].source
  with pytest.raises(errors.ConfigError, match='devices'):
    windows.training_dataset(source, 18, seed=0, num_devices=4, shard_index=0, shard_count=1)
  with pytest.raises(errors.ConfigError, match='processes'):
    windows.evaluation_dataset(source, 15, num_devices=1, shard_index=0, shard_count=2)
  # Default: the local JAX device count.
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.local_device_count()
  assert windows.local_batch_size(16 * devices, 1) == 16 * devices


@pytest.mark.parametrize('threaded', [False, True])
def test_resume_from_iterator_state_gives_identical_batches(data, threaded):
  split_data, _, _ = data
  train = split_data['train']
  if threaded:  # make_iterator: 2 reader threads, 4 batches prefetched.
    new_iterator = train.iterator
  else:
    new_iterator = lambda: iter(train.dataset.to_iter_dataset())
  iterator = new_iterator()
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(4)]
  resumed = new_iterator()
  resumed.set_state(state)
  for batch in expected:
    actual = next(resumed)
    for name in batch:
      np.testing.assert_array_equal(actual[name], batch[name])
  # Past the first epoch too: the state of a repeated, reshuffled stream is just an index.
  steps = train.steps_per_epoch
  iterator.set_state({'next_index': steps + 1})
  np.testing.assert_array_equal(next(iterator)['anchor'], train.dataset[steps + 1]['anchor'])


def test_multiprocessing_workers_match_in_process(data):
  split_data, _, _ = data
  dataset = split_data['train'].dataset
  expected = [dataset[step] for step in range(6)]
  iterator = windows.make_iterator(dataset, num_workers=2)
  for step, batch in zip(range(6), iterator):
    np.testing.assert_array_equal(batch['anchor'], expected[step]['anchor'])
    np.testing.assert_array_equal(batch['encoder'], expected[step]['encoder'])
  state = iterator.get_state()
  resumed = windows.make_iterator(dataset, num_workers=2)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['anchor'], dataset[6]['anchor'])


def test_encoder_only_windows(frames, tmp_path):
  spec = windows.WindowSpec(encoder_length=32)  # Guardian/Strategist style: no decoder.
  split_data, normalizer = windows.make_datasets(
      frames, spec, SPLITS[:2], batch_size=8, cache_dir=tmp_path, seed=0, num_devices=1,
      shard_index=0, shard_count=1)
  batch = split_data['val'].dataset[0]
  assert batch['encoder'].shape == (8, 32, 44)
  assert batch['decoder_known'].shape == (8, 0, 3) and batch['future_returns'].shape == (8, 0)
  check_batch_against_reference(batch, frames, split_data['val'].source.arrays.symbols,
                                normalizer)


# ----------------------------------------------------------------------------------------------
# Cache.


def test_cache_is_reused_and_invalidated(frames, tmp_path):
  first = windows.WindowArrays.from_frames(frames, tmp_path)
  modified = (first.directory / 'features.npy').stat().st_mtime_ns
  again = windows.WindowArrays.from_frames(frames, tmp_path)
  assert again.directory == first.directory
  assert (again.directory / 'features.npy').stat().st_mtime_ns == modified
  changed = dict(frames)
  changed['ETHUSDT'] = frames['ETHUSDT'].copy()
  changed['ETHUSDT'].loc[3000, 'RSI_14'] += 1.0
  rebuilt = windows.WindowArrays.from_frames(changed, tmp_path)
  assert rebuilt.directory != first.directory
  assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
      [first.directory.name, rebuilt.directory.name])  # No temporary leftovers.


def test_bad_frames_raise_schema_errors(frames, tmp_path):
  with pytest.raises(errors.SchemaError, match=r"BTCUSDT.*\['valid'\]"):
    windows.WindowArrays.from_frames({'BTCUSDT': frames['BTCUSDT'].drop(columns='valid')},
                                     tmp_path)
  naive = frames['BTCUSDT'].copy()
  naive[schema.TIMESTAMP] = naive[schema.TIMESTAMP].dt.tz_localize(None)
  with pytest.raises(errors.SchemaError, match='UTC'):
    windows.WindowArrays.from_frames({'BTCUSDT': naive}, tmp_path)


def test_arrays_match_frames_and_pickle_small(frames, tmp_path):
  arrays = windows.WindowArrays.from_frames(frames, tmp_path)
  assert arrays.symbols == ('BTCUSDT', 'ETHUSDT')
  for symbol_id, symbol in enumerate(arrays.symbols):
    rows = arrays.symbol_rows(symbol)
    frame = frames[symbol]
    np.testing.assert_array_equal(arrays.features[rows],
                                  frame[list(windows.FEATURES)].to_numpy(np.float32))
    np.testing.assert_array_equal(arrays.close[rows], frame['close'].to_numpy())
    np.testing.assert_array_equal(arrays.timestamp[rows],
                                  frame[schema.TIMESTAMP].astype('int64').to_numpy())
    assert np.all(arrays.symbol[rows] == symbol_id)
    np.testing.assert_array_equal(arrays.valid[rows], frame[schema.VALID].to_numpy())
    assert np.all(arrays.regime[rows] == -1)
  payload = pickle.dumps(arrays)
  assert len(payload) < 10_000
  restored = pickle.loads(payload)
  np.testing.assert_array_equal(restored.features[:5], arrays.features[:5])


def test_synthetic_market_end_to_end(tmp_path):
  synthetic = pytest.importorskip('quantum_alpha_jax.data.synthetic')
  market = synthetic.generate_market(('BTCUSDT', 'ETHUSDT'), '2021-01-01', '2021-01-15', seed=0)
  frames = {symbol: features_lib.compute_features(frame) for symbol, frame in market.items()}
  splits = [windows.Split('train', '2021-01-01', '2021-01-10'),
            windows.Split('val', '2021-01-10', '2021-01-15')]
  split_data, normalizer = windows.make_datasets(
      frames, windows.WindowSpec(60, 24), splits, batch_size=32, cache_dir=tmp_path, seed=0,
      num_devices=1, shard_index=0, shard_count=1)
  batch = split_data['train'].dataset[0]
  assert batch['encoder'].shape == (32, 60, 44) and np.all(np.isfinite(batch['encoder']))
  assert set(batch['regime'].tolist()) <= {0, 1, 2}
  check_batch_against_reference(batch, frames, split_data['train'].source.arrays.symbols,
                                normalizer)


# ----------------------------------------------------------------------------------------------
# Signals: bars whose past window is usable, whatever comes after them.


def test_calendar_features_equal_the_frames_columns(frames):
  frame = frames['ETHUSDT']  # two weeks: every hour of every weekday
  np.testing.assert_array_equal(
      windows.calendar_features(frame[schema.TIMESTAMP].astype('int64').to_numpy()),
      frame[list(features_lib.KNOWN_FUTURE_FEATURES)].to_numpy(np.float32))


def _cut_after(frames, symbol, cut, hole=None):
  """``frames`` with ``symbol``'s rows after row ``cut`` dropped (all of them, or the next
  ``hole`` rows: a data hole, then a new segment)."""
  frame = frames[symbol]
  stop = len(frame) if hole is None else cut + 1 + hole
  changed = dict(frames)
  changed[symbol] = frame.drop(index=range(cut + 1, stop)).reset_index(drop=True)
  return changed


def test_eligibility_without_a_decoder_reads_no_later_bar(tmp_path):
  """A filled run that starts at bar t and goes on after it: bar t's eligibility (its past window
  alone) is the same as when the run stops at t."""
  klines = make_klines(1000, seed=5)
  spec = windows.WindowSpec(24, 0, max_hole_bars=1)
  results = []
  for name, filled in (('short', [600]), ('long', [600, 601, 602])):
    arrays = windows.WindowArrays.from_frames(
        {'BTCUSDT': features_lib.compute_features(fill_bars(klines, filled))}, tmp_path / name)
    anchors = windows.eligible_anchors(arrays, spec)
    np.testing.assert_array_equal(anchors, naive_eligible(arrays, spec))
    results.append(anchors[anchors <= 600])
  assert results[0][-1] == 600  # one filled bar so far: allowed
  np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize('hole', [None, 40])
def test_signal_source_covers_every_bar_with_a_usable_past(frames, data, tmp_path, hole):
  """Every bar of the split whose past window is usable, also the bars whose label horizon runs
  past the data's end or into a hole; cutting the data after bar t changes no bar up to t."""
  split_data, normalizer, _ = data
  test = split_data['test']
  source = windows.signal_source(test)
  arrays = source.arrays
  timestamp = np.asarray(arrays.timestamp)
  expected = naive_eligible(arrays, windows.WindowSpec(SPEC.encoder_length, 0, 1))
  expected = expected[(timestamp[expected] >= SPLITS[2].start_ns)
                      & (timestamp[expected] < SPLITS[2].end_ns)]
  np.testing.assert_array_equal(source.anchors, expected)
  assert set(test.source.anchors) < set(source.anchors.tolist())
  assert source.past_only and source.spec == test.source.spec
  # The last bar of each symbol (no future at all) has a row; its windows read no later row.
  last_rows = [arrays.symbol_rows(symbol).stop - 1 for symbol in arrays.symbols]
  assert set(last_rows) <= set(source.anchors.tolist())
  full = test.source.gather(test.source.anchors[-8:])
  past = source.gather(test.source.anchors[-8:])
  for name in ('encoder', 'decoder_known', 'encoder_returns', 'symbol', 'timestamp'):
    np.testing.assert_array_equal(past[name], full[name])
  assert np.isnan(past['future_returns']).all() and past['future_returns'].shape == (8, 6)
  assert source.gather(np.array(last_rows))['encoder'].shape == (2, 24, 44)

  # Cut BTC after bar t (the data ends, or a 40-bar hole opens): the bars up to t keep their rows
  # and their windows.
  cut = int(np.searchsorted(frames['BTCUSDT'][schema.TIMESTAMP], pd.Timestamp('2023-01-13',
                                                                           tz='UTC')))
  changed, _ = windows.make_datasets(
      _cut_after(frames, 'BTCUSDT', cut, hole), SPEC, SPLITS, 16, tmp_path, normalizer=normalizer,
      num_devices=1, shard_index=0, shard_count=1)
  other = windows.signal_source(changed['test'])
  t = frames['BTCUSDT'][schema.TIMESTAMP].iloc[cut].value

  def up_to_cut(signal_source):
    rows = signal_source.anchors
    keep = ((signal_source.arrays.symbol[rows] == 0)
            & (np.asarray(signal_source.arrays.timestamp)[rows] <= t))
    return signal_source.gather(rows[keep])

  before, after = up_to_cut(source), up_to_cut(other)
  assert len(before['timestamp']) == len(after['timestamp']) > 100
  for name in ('timestamp', 'encoder', 'decoder_known'):
    np.testing.assert_array_equal(before[name], after[name])
  assert before['timestamp'][-1] == t


# ----------------------------------------------------------------------------------------------
# The validation subset that chooses the best checkpoint.


def test_evaluation_subset_spans_every_symbol_and_the_whole_split(data):
  split_data, _, _ = data
  source = split_data['val'].source
  anchors = source.anchors
  symbol = source.arrays.symbol[anchors]
  count = 40
  subset = windows.evaluation_subset(source, count, seed=7)
  assert len(subset) == len(np.unique(subset)) == count and set(subset) <= set(anchors)
  np.testing.assert_array_equal(subset, np.sort(subset))  # by symbol, then time (row order)
  np.testing.assert_array_equal(windows.evaluation_subset(source, count, seed=7), subset)
  assert not np.array_equal(windows.evaluation_subset(source, count, seed=8), subset)
  for index in range(len(source.arrays.symbols)):
    mine = anchors[symbol == index]
    picked = subset[source.arrays.symbol[subset] == index]
    # A share in proportion to the symbol's windows, spread from its first to its last: no gap
    # between picks (or before the first, after the last) longer than two slices.
    assert len(picked) == pytest.approx(count * len(mine) / len(anchors), abs=1)
    width = -(-len(mine) // len(picked))
    positions = np.searchsorted(mine, picked)
    assert positions[0] < width and positions[-1] >= len(mine) - width
    assert np.diff(positions).max() < 2 * width
  # Fewer windows than symbols: the largest symbols get one each; 0 or more than all: all.
  assert len(np.unique(source.arrays.symbol[windows.evaluation_subset(source, 1)])) == 1
  np.testing.assert_array_equal(windows.evaluation_subset(source, 0), anchors)
  np.testing.assert_array_equal(windows.evaluation_subset(source, len(anchors) + 1), anchors)
  described = windows.describe_anchors(source, subset)
  assert described['windows'] == count and described['of'] == len(anchors)
  assert sum(entry['windows'] for entry in described['symbols'].values()) == count


def test_evaluation_shards_of_a_subset_partition_it(data):
  split_data, _, _ = data
  source = split_data['val'].source
  subset = windows.evaluation_subset(source, 48, seed=0)
  seen, lengths = [], set()
  for shard_index in range(3):
    dataset = windows.evaluation_dataset(source, 24, anchors=subset, shard_index=shard_index,
                                         shard_count=3, num_devices=1)
    lengths.add(len(dataset))
    seen.append(np.concatenate([batch['anchor'][batch['mask'] == 1] for batch in dataset]))
    np.testing.assert_array_equal(seen[-1], subset[shard_index::3])
  assert lengths == {2}
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), subset)
