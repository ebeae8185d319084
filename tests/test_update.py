"""Continual retraining on synthetic kline files: ingest, fine-tune, judge on new data, promote or
keep; interrupted cycles; refusing a version of another feature list; the walk-forward replay."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pandas as pd
import pytest

from configs import update as update_config
from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import klines
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, DataError, SchemaError
from quantum_alpha_jax.ship import store as model_store
from quantum_alpha_jax.ship import update
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.train import checkpoint as checkpoint_lib

SYMBOLS = ('BTCUSDT', 'ETHUSDT')
LEVELS = np.array([0.1, 0.5, 0.9])


@pytest.fixture(scope='module')
def market():
  """Kline frames of a drifting synthetic market, 2024-01-01 .. 2024-01-20."""
  parameters = synthetic.MarketParameters(annual_drift=(150.0, -150.0, 0.0),
                                          annual_volatility=(0.3, 0.3, 0.3),
                                          mean_dwell_hours=(24.0, 24.0, 24.0))
  return synthetic.generate_market(SYMBOLS, start='2024-01-01', end='2024-01-20', seed=3,
                                   parameters=parameters)


def deliver(market, directory, first: str, last: str) -> list[pathlib.Path]:
  """Binance daily zips of the days ``first`` .. ``last`` (inclusive)."""
  start, end = pd.Timestamp(first, tz='UTC'), pd.Timestamp(last, tz='UTC') + pd.Timedelta(days=1)
  paths = []
  for symbol, frame in market.items():
    times = frame[schema.TIMESTAMP]
    paths += klines.write_binance(frame.loc[((times >= start) & (times < end)).to_numpy()], symbol,
                                  directory, period='day')
  return paths


def tiny_config(workdir: pathlib.Path, cache: pathlib.Path) -> ml_collections.ConfigDict:
  """The quick update config with a tiny Oracle (hidden 8, 20 steps); fine-tuning uses the same
  train settings, so its compiled step comes from the compilation cache."""
  config = update_config.get_config('quick')
  config.task.model.update(encoder_length=24, decoder_length=6, hidden_size=8, num_heads=2,
                           hidden_continuous_size=4, lstm_layers=1, dropout_rate=0.0)
  config.task.train.update(batch_size=32, num_steps=20, eval_every_steps=20, log_every_steps=10,
                           max_eval_batches=4, progress_interval_seconds=60.0)
  config.task.train.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  config.finetune.update(num_steps=20, learning_rate=3e-3, warmup_steps=5)
  config.train_days, config.validation_days, config.holdout_days = 6.0, 1.0, 1.0
  config.feed.source = ''
  config.compilation_cache_dir = str(cache)
  config.kline_dir = str(workdir / 'klines')
  return config


@pytest.fixture(scope='module')
def jax_cache(tmp_path_factory):
  """One compilation cache for the module: every cycle after the first loads its steps from it."""
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='module')
def cycles(market, jax_cache, tmp_path_factory):
  """Cycle 1 on days 1-10 (bootstrap), then days 11-13 arrive and watch runs cycle 2."""
  workdir = tmp_path_factory.mktemp('update')
  config = tiny_config(workdir, jax_cache)
  first_files = deliver(market, workdir / 'klines', '2024-01-01', '2024-01-10')
  first = update.run_cycle(config, workdir)
  new = deliver(market, workdir / 'klines', '2024-01-11', '2024-01-13')
  polls = []
  second = update.watch(config, workdir, max_polls=2, sleep=polls.append)
  return {'workdir': workdir, 'config': config, 'first': first, 'watched': second,
          'polls': polls, 'first_files': first_files, 'new_files': new}


def _holdout_loss_by_hand(version: model_store.ModelVersion, frames, splits: dict,
                          cache: pathlib.Path) -> float:
  """Mean pinball loss (percent log-returns) of a stored version on the holdout windows of the
  cycle's ``splits``: targets from the close prices, quantiles from the model, the loss in numpy."""
  config = version.config
  task = oracle.OracleTask.from_config(config)
  spec = oracle.window_spec(config)
  splits = [windows.Split(name, *bounds) for name, bounds in splits.items()]
  data, _ = windows.make_datasets(frames, spec, splits, 32, cache, normalizer=version.normalizer,
                                  num_devices=1, shard_index=0, shard_count=1)
  source = data['holdout'].source
  batch = source.gather(source.anchors)
  outputs = jax.jit(task.model.apply)({'params': version.params}, batch['encoder'],
                                      batch['decoder_known'], batch['symbol'])  # deterministic
  predictions = np.asarray(outputs['quantiles'], np.float64)
  close = source.arrays.close
  anchors = source.anchors
  horizons = np.arange(1, spec.decoder_length + 1)
  targets = 100.0 * np.log(close[anchors[:, None] + horizons] / close[anchors][:, None])
  error = targets[..., None] - predictions
  return float(np.mean(np.maximum(LEVELS * error, (LEVELS - 1) * error)))


def _holdout_targets_by_hand(frames, holdout) -> tuple[np.ndarray, np.ndarray]:
  """The holdout windows' targets [windows, 6] (percent log-returns to each of the next 6 closes)
  and their anchor bar's own return [windows], straight from the close prices. Holdout windows
  (24 + 6 bars) start at least 30 bars (the purge) after the holdout begins and end before it
  ends."""
  targets, last_returns = [], []
  for symbol in SYMBOLS:
    close = frames[symbol].set_index(schema.TIMESTAMP)['close']
    bars = close.index
    anchors = np.flatnonzero(
        (bars >= pd.Timestamp(holdout[0]) + pd.Timedelta(minutes=5 * (30 + 23)))
        & (bars < pd.Timestamp(holdout[1]) - pd.Timedelta(minutes=5 * 6)))
    close = close.to_numpy()
    targets.append(100 * np.log(close[anchors[:, None] + np.arange(1, 7)] / close[anchors, None]))
    last_returns.append(100 * np.log(close[anchors] / close[anchors - 1]))
  return np.concatenate(targets), np.concatenate(last_returns)


def _pinball_by_hand(targets: np.ndarray, point: np.ndarray) -> np.ndarray:
  """Per-window pinball loss [windows] at LEVELS of a point forecast used as every quantile."""
  error = (targets - point)[..., None]
  return np.maximum(LEVELS * error, (LEVELS - 1) * error).mean((1, 2))


def test_the_first_cycle_ingests_trains_from_scratch_and_promotes(cycles):
  record, workdir = cycles['first'], cycles['workdir']
  models = model_store.ModelStore(workdir / 'models')
  assert record['mode'] == 'scratch' and record['promote'] and record['incumbent'] is None
  assert record['reason'] == 'promoted: no version was promoted yet'
  assert record['cycle'] == '20240111T0000' and record['data_end'] == '2024-01-11T00:00:00+00:00'
  assert {name: tuple(bounds) for name, bounds in record['splits'].items()} == {
      'train': ('2024-01-03T00:00:00+00:00', '2024-01-09T00:00:00+00:00'),
      'validation': ('2024-01-09T00:00:00+00:00', '2024-01-10T00:00:00+00:00'),
      'holdout': ('2024-01-10T00:00:00+00:00', '2024-01-11T00:00:00+00:00')}
  assert models.promoted('oracle')['history'][0]['version'] == 1
  assert models.decision('oracle', record['cycle'])['candidate']['version'] == 1
  # The ledger holds every delivered file with the SHA-256 of its bytes.
  ledger = update.read_ledger(workdir / 'models')['files']
  for path in cycles['first_files']:
    assert ledger[path.name]['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
  version = models.load('oracle', 1)
  assert version.metadata['extra']['mode'] == 'scratch'
  assert version.metadata['data']['last_bar'] == '2024-01-10T23:55:00+00:00'
  assert version.metrics['test']['loss'] == record['candidate']['metrics']['loss']


def test_new_days_are_ingested_finetuned_judged_on_the_newest_day_and_recorded(cycles, market,
                                                                              tmp_path):
  workdir, config = cycles['workdir'], cycles['config']
  assert len(cycles['watched']) == 1 and len(cycles['polls']) == 1  # second poll: nothing new
  record = cycles['watched'][0]
  models = model_store.ModelStore(workdir / 'models')
  assert record['mode'] == 'finetune' and record['cycle'] == '20240114T0000'
  assert sorted(record['ingested']['files']) == sorted(p.name for p in cycles['new_files'])
  assert record['candidate']['version'] == 2 and record['candidate']['parent'] == 1
  assert record['incumbent']['version'] == 1
  holdout = record['splits']['holdout']
  assert tuple(holdout) == ('2024-01-13T00:00:00+00:00', '2024-01-14T00:00:00+00:00')
  # The store now runs to the last delivered bar, the features recomputed over the whole history.
  frames = store_lib.read_store(workdir / 'features', SYMBOLS)
  for symbol in SYMBOLS:
    assert frames[symbol][schema.TIMESTAMP].iloc[-1] == pd.Timestamp('2024-01-13 23:55', tz='UTC')
    expected = features.compute_features(klines.regularize(
        market[symbol].loc[market[symbol][schema.TIMESTAMP] < '2024-01-14'].drop(
            columns=['regime']).reset_index(drop=True))[0])
    np.testing.assert_allclose(frames[symbol]['close'], expected['close'], rtol=0, atol=5.1e-9)
    obv = expected['OBV'].to_numpy()  # cumulative from the first bar, not from the new files
    np.testing.assert_allclose(frames[symbol]['OBV'].to_numpy(), obv, rtol=0,
                               atol=1e-5 * np.abs(obv).max())
  # Both metric sets agree with a computation by hand on the holdout windows.
  for role in ('candidate', 'incumbent'):
    version = models.load('oracle', record[role]['version'])
    expected = _holdout_loss_by_hand(version, frames, record['splits'], tmp_path / 'cache')
    assert record[role]['metrics']['loss'] == pytest.approx(expected, rel=2e-4)
  # The zero-return baseline, straight from the close prices.
  targets, _ = _holdout_targets_by_hand(frames, holdout)
  losses = _pinball_by_hand(targets, np.zeros_like(targets))
  assert record['baselines']['zero_return']['loss'] == pytest.approx(losses.mean(), rel=1e-4)
  # The decision follows the rule, and the pointer follows the decision.
  better = record['candidate']['metrics']['loss'] < record['incumbent']['metrics']['loss']
  assert record['promote'] == better
  assert models.promoted('oracle')['version'] == (2 if better else 1)
  assert record['windows']['holdout'] == len(losses)
  assert config.metric == record['metric'] == 'loss'
  # watch wrote the history: both decisions, the versions and the picture.
  history = json.loads((workdir / 'results.json').read_text())
  assert [c['cycle'] for c in history['cycles']] == ['20240111T0000', '20240114T0000']
  assert [v['version'] for v in history['versions']] == [1, 2]
  assert (workdir / 'cycles.png').stat().st_size > 10_000


def test_the_persistence_baseline_repeats_the_anchor_bars_return(cycles):
  """The holdout's last-return persistence baseline (the Oracle's naive forecast): the anchor
  bar's return times the horizon, scored by hand from the close prices."""
  record = cycles['watched'][0]
  frames = store_lib.read_store(cycles['workdir'] / 'features', SYMBOLS)
  targets, last_returns = _holdout_targets_by_hand(frames, record['splits']['holdout'])
  expected = _pinball_by_hand(targets, last_returns[:, None] * np.arange(1, 7)).mean()
  assert record['baselines']['last_return_persistence']['loss'] == pytest.approx(expected,
                                                                                 rel=1e-4)


def test_the_decision_rule():
  assert update.decide({'loss': 0.9}, {'loss': 1.0}, 'loss', 'min', 0.05)[0]
  promote, reason = update.decide({'loss': 0.96}, {'loss': 1.0}, 'loss', 'min', 0.05)
  assert not promote and reason == ('kept the promoted version: not candidate loss 0.96 < 1 - '
                                    '0.05·|1| = 0.95')
  assert update.decide({'accuracy': 0.6}, {'accuracy': 0.5}, 'accuracy', 'max', 0.1)[0]
  assert not update.decide({'accuracy': 0.54}, {'accuracy': 0.5}, 'accuracy', 'max', 0.1)[0]
  assert not update.decide({'loss': float('nan')}, None, 'loss', 'min', 0.0)[0]
  with pytest.raises(ConfigError, match="reports no 'pinball'.* use one of loss"):
    update.decide({'loss': 1.0}, None, 'pinball', 'min', 0.0)
  with pytest.raises(ConfigError, match='config.margin'):
    update.decide({'loss': 1.0}, None, 'loss', 'min', -0.1)


def test_fine_tuning_starts_from_the_given_params_and_refuses_another_model(tmp_path):
  config = tiny_config(tmp_path, tmp_path / 'cache').task
  task = oracle.OracleTask.from_config(config)
  batch = {'encoder': np.zeros((2, 24, len(features.FEATURES)), np.float32),
           'decoder_known': np.zeros((2, 6, len(features.KNOWN_FUTURE_FEATURES)), np.float32),
           'symbol': np.zeros(2, np.int32)}
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(leaf.dtype),
                        jax.eval_shape(task.init_params, jax.random.PRNGKey(0), batch))
  started = update.WarmStart(task, params, 'v1').init_params(jax.random.PRNGKey(1), batch)
  for a, b in zip(jax.tree.leaves(started), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b)
  config.model.hidden_size = 12
  other = oracle.OracleTask.from_config(config)
  with pytest.raises(checkpoint_lib.CheckpointError, match='v1: the checkpoint params do not fit'):
    update.WarmStart(other, params, 'v1').init_params(jax.random.PRNGKey(0), batch)


def test_an_interrupted_cycle_leaves_the_store_consistent_and_a_rerun_completes_it(
    cycles, market, monkeypatch):
  workdir, config = cycles['workdir'], cycles['config']
  models = model_store.ModelStore(workdir / 'models')
  promoted_before = models.promoted('oracle')
  deliver(market, workdir / 'klines', '2024-01-14', '2024-01-14')

  def crash(*args, **kwargs):
    raise RuntimeError('killed after the candidate was saved')

  monkeypatch.setattr(model_store.ModelStore, 'add_decision', crash)
  with pytest.raises(RuntimeError, match='killed'):
    update.run_cycle(config, workdir)
  monkeypatch.undo()
  # The promoted version is untouched and loads; the candidate is whole; nothing was decided.
  assert models.promoted('oracle') == promoted_before
  assert models.load('oracle', 'promoted').version == promoted_before['version']
  assert models.versions('oracle') == [1, 2, 3]
  assert models.load('oracle', 3).metadata['extra']['cycle'] == '20240115T0000'
  assert models.decision('oracle', '20240115T0000') is None
  paths = update.resolve_paths(config, workdir)
  assert update.cycle_pending(config, paths) and not update.new_files(paths)
  # The re-run trains nothing new and saves no second candidate; it records the decision.
  record = update.run_cycle(config, workdir)
  assert models.versions('oracle') == [1, 2, 3]
  assert record['candidate']['version'] == 3 and record['cycle'] == '20240115T0000'
  assert models.decision('oracle', '20240115T0000')['promote'] == record['promote']
  expected = 3 if record['promote'] else promoted_before['version']
  assert models.promoted('oracle')['version'] == expected
  assert not update.cycle_pending(config, paths)
  again = update.run_cycle(config, workdir)
  assert again['status'] == 'decided before' and models.versions('oracle') == [1, 2, 3]


def test_a_promoted_version_of_another_feature_list_is_refused(cycles, market, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(cycles['workdir'], workdir, ignore=shutil.ignore_patterns('runs', 'jax_cache'))
  config = ml_collections.ConfigDict(cycles['config'].to_dict())
  config.kline_dir = str(workdir / 'klines')
  models = model_store.ModelStore(workdir / 'models')
  promoted = models.promoted('oracle')['version']
  versions = models.versions('oracle')
  path = models.version_path('oracle', promoted) / 'metadata.json'
  metadata = json.loads(path.read_text())
  metadata['features'] = [name for name in metadata['features'] if name != 'VWAP']
  path.write_text(json.dumps(metadata))
  deliver(market, workdir / 'klines', '2024-01-16', '2024-01-16')
  with pytest.raises(SchemaError, match=rf'oracle version {promoted}: trained on another feature '
                     r"list: 43 features then, 44 now: the current list has 1 it never saw \(VWAP\)"
                     r' — retrain it on the current features'):
    update.run_cycle(config, workdir)
  assert models.versions('oracle') == versions  # refused before any training


def test_ingest_merges_identical_redeliveries_and_refuses_conflicting_ones(cycles, market,
                                                                           tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(cycles['workdir'], workdir, ignore=shutil.ignore_patterns('runs', 'jax_cache',
                                                                            'windows_cache'))
  config = cycles['config']
  paths = update.Paths(models=workdir / 'models', store=workdir / 'features',
                       klines=workdir / 'klines', compilation_cache=None)
  before = store_lib.read_store(paths.store, SYMBOLS)
  # The same day delivered again (a new mtime): merged silently, the store keeps its bars.
  path = paths.klines / 'BTCUSDT-5m-2024-01-12.zip'
  data = path.read_bytes()
  mtime = path.stat().st_mtime_ns
  path.unlink()
  path.write_bytes(data)
  os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
  assert [f.name for f in update.new_files(paths)] == [path.name]
  summary = update.ingest(paths, config.task.data)
  assert summary['symbols']['BTCUSDT']['rows_after'] == len(before['BTCUSDT'])
  after = store_lib.read_store(paths.store, SYMBOLS)
  pd.testing.assert_frame_equal(after['BTCUSDT'], before['BTCUSDT'])
  assert not update.new_files(paths)
  # A day whose candles differ from the store's is refused, naming the fix.
  frame = market['BTCUSDT']
  day = frame.loc[frame[schema.TIMESTAMP].dt.strftime('%Y-%m-%d') == '2024-01-12'].copy()
  day[['open', 'high', 'low', 'close']] *= 1.01
  klines.write_binance(day, 'BTCUSDT', paths.klines, period='day')
  with pytest.raises(DataError, match=r'BTCUSDT: 288 candles differ between overlapping files '
                     r'\(first 2024-01-12 00:00\) — pass dedupe=True'):
    update.ingest(paths, config.task.data)
  (paths.klines / 'notes-2024.csv').write_text('x\n')
  path.unlink()
  with pytest.raises(DataError, match='cannot tell the symbol from the file name'):
    update.ingest(paths, config.task.data)


def test_ingest_takes_freqtrade_files_and_a_grown_file_again(market, tmp_path):
  paths = update.Paths(models=tmp_path / 'models', store=tmp_path / 'features',
                       klines=tmp_path / 'klines', compilation_cache=None)
  paths.klines.mkdir()
  data_config = update_config.get_config('quick').task.data

  def write(last_day: str) -> None:
    for symbol, frame in market.items():
      part = frame.loc[frame[schema.TIMESTAMP] < pd.Timestamp(last_day, tz='UTC')]
      part[[schema.TIMESTAMP, *schema.OHLCV]].rename(columns={schema.TIMESTAMP: 'date'}).to_feather(
          paths.klines / f'{symbol[:3]}_USDT-5m.feather')

  write('2024-01-04')
  first = update.ingest(paths, data_config)
  assert sorted(first['files']) == ['BTC_USDT-5m.feather', 'ETH_USDT-5m.feather']
  write('2024-01-06')  # freqtrade rewrites the whole file as it grows
  second = update.ingest(paths, data_config)
  assert second['symbols']['BTCUSDT']['rows_before'] == 3 * 288
  frames = store_lib.read_store(paths.store, SYMBOLS)
  for symbol in SYMBOLS:
    assert len(frames[symbol]) == 5 * 288 and frames[symbol][schema.OBSERVED].all()
    expected = market[symbol].loc[market[symbol][schema.TIMESTAMP] < '2024-01-06', 'close']
    np.testing.assert_array_equal(frames[symbol]['close'].to_numpy(), expected.to_numpy())
  assert update.data_end(paths.store, SYMBOLS) == pd.Timestamp('2024-01-06', tz='UTC')
  assert not update.new_files(paths)


def test_walk_forward_replays_periods_against_a_frozen_model(jax_cache, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('simulation')
  config = tiny_config(workdir, jax_cache)
  config.task.data.update(start='2024-01-01', end='2024-01-15', store_dir=str(workdir / 'store'))
  config.simulation.update(start='2024-01-10', end='2024-01-14', frequency='2D', train_days=6.0,
                           validation_days=1.0, mode='finetune')
  results = update.simulate(config, workdir)
  first, second = results['periods']
  assert (first['start'], second['start'], second['end']) == (
      '2024-01-10T00:00:00+00:00', '2024-01-12T00:00:00+00:00', '2024-01-14T00:00:00+00:00')
  assert first['continual'] == first['frozen'] and first['mode'] == 'scratch'
  assert second['mode'] == 'finetune' and second['frozen_version'] == 1
  assert second['continual_version'] == 2
  models = model_store.ModelStore(workdir / 'simulation' / 'models')
  assert models.load('continual', 2).metadata['extra']['parent'] == 1
  losses = np.array([p['continual']['loss'] for p in results['periods']])
  summary = results['summary']['continual']
  assert summary['mean'] == pytest.approx(losses.mean()) and summary['std'] == pytest.approx(
      losses.std(ddof=1))
  gains = np.array([p['frozen']['loss'] - p['continual']['loss'] for p in results['periods']])[1:]
  assert results['continual_vs_frozen']['mean'] == pytest.approx(gains.mean())
  assert results['continual_vs_frozen']['periods'] == len(gains) == 1
  assert results['continual_vs_frozen']['share_better'] == np.mean(gains > 0)
  assert set(results['summary']) == {'continual', 'frozen', 'zero_return',
                                     'last_return_persistence', 'train_mean', 'climatology'}
  assert pathlib.Path(results['plot']).stat().st_size > 10_000
  assert json.loads(pathlib.Path(results['results_json']).read_text())['periods'][1][
      'continual_version'] == 2
  # Run again: every period is read back, nothing is trained or saved twice.
  again = update.simulate(config, workdir)
  assert again['periods'] == json.loads(json.dumps(results['periods']))
  assert models.versions('continual') == [1, 2]
  word = 'better' if gains.mean() > 0 else 'worse' if gains.mean() < 0 else 'tied'
  line = next(line for line in update.format_simulation(again).splitlines()
              if line.startswith('continual '))
  assert line.startswith(f'continual {word} ') and f'{gains.mean():+.4g}' in line


@pytest.mark.parametrize('mode, continual, frozen, word, mean, share_better', [
    ('min', [1.0, 0.8, 1.1, 0.9], [1.0, 1.0, 1.0, 1.0], 'better', 0.2 / 3, 2 / 3),
    ('min', [1.0, 1.3, 0.9, 1.2], [1.0, 1.0, 1.0, 1.0], 'worse', -0.4 / 3, 1 / 3),
    ('max', [0.5, 0.4, 0.7], [0.5, 0.5, 0.6], 'tied', 0.0, 0.5),
])
def test_continual_vs_frozen_names_the_direction_over_the_later_periods(
    mode, continual, frozen, word, mean, share_better):
  """Period 0 is the same model (gain 0): it must count in neither the mean nor the shares."""
  gain = update.continual_vs_frozen(continual, frozen, mode)
  assert gain['periods'] == len(continual) - 1
  assert gain['mean'] == pytest.approx(mean, abs=1e-12)
  assert gain['share_better'] == pytest.approx(share_better)
  line = update.continual_vs_frozen_sentence(gain)
  assert line.startswith(f'continual {word} ')
  if word != 'tied':
    assert f'by {abs(mean):.4g}:' in line


def test_models_plug_in_through_the_task_registry():
  """The cycle finds a model by name in tasks/registry: the fifth head (linear) needs no change in
  ship/update; a model that reads no windows, and an unknown name, are refused naming the fix."""
  from quantum_alpha_jax.ship.update import adapters  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import linear  # pylint: disable=g-import-not-at-top
  adapter = adapters.model_adapter('linear')
  assert adapter.make_task is linear.ENTRY.make_task
  assert adapter.window_spec is linear.window_spec
  with pytest.raises(ConfigError, match=r"'strategist' reads no windows.*use one of .*linear"):
    adapters.model_adapter('strategist')
  with pytest.raises(ConfigError, match='unknown model'):
    adapters.model_adapter('transformer')
