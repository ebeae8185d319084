"""The LSTM baseline: its forward pass against numpy, learning that beats the baselines, the
Oracle's results.json format, load() and bar_signals() (the Oracle's are tested in test_oracle)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pandas as pd
import pytest

from configs import lstm as lstm_config
from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.models.lstm import LSTMForecaster
from quantum_alpha_jax.tasks import lstm
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.train import data as data_lib
from tests import bar_signals_contract
from tests.conftest import best_naive_accuracy
from tests.conftest import LEARNABLE_SPLITS
from tests.conftest import NAIVE_MARGIN

SPLITS = LEARNABLE_SPLITS


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _numpy_lstm(inputs, layer, hidden, cell):
  """One LSTM layer, gates (i, f, g, o), step by step (independent of the lax.scan version)."""
  outputs = []
  for step in range(inputs.shape[1]):
    z = inputs[:, step] @ layer['input_kernel'] + hidden @ layer['recurrent_kernel'] + layer['bias']
    i, f, g, o = np.split(z, 4, axis=-1)
    cell = _sigmoid(f) * cell + _sigmoid(i) * np.tanh(g)
    hidden = _sigmoid(o) * np.tanh(cell)
    outputs.append(hidden)
  return np.stack(outputs, 1), hidden, cell


def test_forecaster_matches_a_numpy_encoder_decoder():
  model = LSTMForecaster(num_symbols=2, encoder_length=7, decoder_length=4, hidden_size=8,
                         num_layers=2, dropout_rate=0.0, quantiles=(0.1, 0.5, 0.9))
  rng = np.random.default_rng(0)
  encoder = rng.normal(size=(3, 7, 44)).astype(np.float32)
  known = rng.normal(size=(3, 4, 3)).astype(np.float32)
  symbol = np.array([0, 1, 1], np.int32)
  params = jax.jit(model.init)(jax.random.key(1), encoder, known, symbol)['params']
  got = np.asarray(jax.jit(model.apply)({'params': params}, encoder, known, symbol)['quantiles'])
  assert got.shape == (3, 4, 3) and got.dtype == np.float32

  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  static = p['symbol_embedding']['embedding'][symbol][:, None]
  x = encoder @ p['encoder_projection']['kernel'] + p['encoder_projection']['bias'] + static
  states = []
  for layer in ('layer_0', 'layer_1'):  # Encoder: both layers from zeros.
    x, h, c = _numpy_lstm(x, p['lstm_encoder'][layer], np.zeros((3, 8)), np.zeros((3, 8)))
    states.append((h, c))
  x = known @ p['decoder_projection']['kernel'] + p['decoder_projection']['bias'] + static
  for layer, (h, c) in zip(('layer_0', 'layer_1'), states):  # Decoder: from the encoder's state.
    x, _, _ = _numpy_lstm(x, p['lstm_decoder'][layer], h, c)
  expected = x @ p['quantile_output']['kernel'] + p['quantile_output']['bias']
  np.testing.assert_allclose(got, expected, atol=2e-5)

  with pytest.raises(ValueError, match=r'encoder has shape \[batch, 7, 43\]'):
    model.apply({'params': params}, encoder[..., :43], known, symbol)


def test_config_errors():
  config = lstm_config.get_config('quick')
  config.model.num_layers = 0
  with pytest.raises(ConfigError, match='num_layers'):
    lstm.LSTMTask.from_config(config)
  config = lstm_config.get_config('quick')
  config.model.quantiles = (0.2, 0.8)
  with pytest.raises(ConfigError, match='include 0.5'):
    lstm.LSTMTask.from_config(config)
  with pytest.raises(ConfigError, match='unknown variant'):
    lstm_config.get_config('fast')
  with pytest.raises(ConfigError, match="'lstm' model"):
    oracle.run(lstm_config.get_config('quick'), '/nonexistent')


def _small(config, tmp_path):
  config.data.store_dir = str(tmp_path / 'store')  # holds only the windows cache here
  config.data.splits.update(SPLITS)
  config.model.update(encoder_length=24, decoder_length=6, dropout_rate=0.0)
  config.train.update(batch_size=64, log_every_steps=25, max_eval_batches=10)
  config.evaluation.fan_windows = 2
  return config


@pytest.fixture(scope='module')
def lstm_run(learnable_market, tmp_path_factory):
  """A tiny LSTM trained for 500 steps through lstm.run: (workdir, results)."""
  tmp_path = tmp_path_factory.mktemp('lstm')
  config = _small(lstm_config.get_config('quick'), tmp_path)
  config.model.hidden_size = 16
  config.train.update(num_steps=500, eval_every_steps=250)
  config.train.optimizer.update(learning_rate=5e-3, warmup_steps=10)
  results = lstm.run(config, tmp_path / 'run', frames=learnable_market)
  return tmp_path / 'run', results


def _splits(config, market):
  data, _ = data_lib.make_split_data(config.data, oracle.window_spec(config), 64,
                                     config.train.seed, frames=market)
  return data


def test_lstm_beats_the_best_naive_baseline_on_a_learnable_market(lstm_run):
  workdir, results = lstm_run
  report = results['test']
  honest = report['direction_accuracy_non_overlapping']
  name, naive = best_naive_accuracy(report)
  assert honest['windows'] > 1500
  assert honest['oracle']['accuracy'] > naive + NAIVE_MARGIN, (honest['oracle'], name, naive)
  naive_pinball = min(entry['pinball_loss'] for entry in report['baselines'].values())
  assert report['pinball_loss'] < 0.95 * naive_pinball  # climatology included
  assert results['model'] == 'lstm'
  for name in ('forecast_fans', 'direction_accuracy'):
    assert (workdir / 'test' / f'{name}.png').stat().st_size > 10_000
  text = lstm.format_results(results)
  assert 'LSTM vs the best naive baseline (chosen on train)' in text and 'momentum' in text


def test_results_json_has_the_oracle_format(lstm_run):
  """The top level and the None interpretability keys (test_oracle compares a split report of the
  LSTM with the TFT's key for key)."""
  results = json.loads((lstm_run[0] / 'results.json').read_text())
  # As oracle.run writes them (the same function).
  assert set(results) == {'model', 'workdir', 'train', 'validation', 'test', 'config'}
  for split in ('validation', 'test'):
    assert results[split]['variable_importance'] is None
    assert results[split]['best_naive_baseline']['selected_on'] == 'train'
    assert results[split]['attention_mean_by_key_position'] is None
    assert set(results[split]['plots']) == {'forecast_fans', 'direction_accuracy'}


def test_load_round_trips_and_refuses_another_model(lstm_run, learnable_market):
  workdir, results = lstm_run
  task, params, config = lstm.load(workdir)
  assert isinstance(task, lstm.LSTMTask) and config.model.architecture == 'lstm'
  assert results['train']['best_step'] in (250, 500)
  data = _splits(config, learnable_market)
  # The restored best params reproduce the test metrics written at the end of training.
  report = oracle.evaluate(task, params, data['test'], data['train'], workdir / 'reloaded',
                           fan_windows=1, progress=False)
  assert report['pinball_loss'] == pytest.approx(results['test']['pinball_loss'], rel=1e-6)
  assert report['windows'] == results['test']['windows']
  with pytest.raises(ConfigError, match="describes a 'lstm' model"):
    oracle.load(workdir)


def test_bar_signals_one_row_per_anchor_equal_to_the_forecast(lstm_run, learnable_market):
  task, params, config = lstm.load(lstm_run[0])
  split = _splits(config, learnable_market)['test']
  bar_signals_contract.check(
      lstm.bar_signals(task, params, split, batch_size=64, progress=False), task, params, split, 64)


def test_bar_signals_use_no_future_bars(lstm_run, learnable_market, tmp_path):
  """Rewriting every price after a cut-off leaves every signal up to the cut-off unchanged."""
  task, params, config = lstm.load(lstm_run[0])
  cut = pd.Timestamp('2024-02-12 12:00', tz='UTC')
  altered = {}
  for symbol, frame in learnable_market.items():
    frame = frame.copy()
    later = frame['timestamp'] > cut
    scale = np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, later.sum())))
    for column in ('open', 'high', 'low', 'close'):
      frame.loc[later, column] = frame.loc[later, column].to_numpy() * scale
    frame.loc[later, 'volume'] = frame.loc[later, 'volume'].to_numpy()[::-1]
    altered[symbol] = features.compute_features(frame)
  normalizer = windows.Normalizer.from_dict(
      json.loads((lstm_run[0] / 'normalizer.json').read_text()))
  signals = []
  for frames, cache in ((learnable_market, tmp_path / 'original'), (altered, tmp_path / 'altered')):
    data, _ = windows.make_datasets(frames, oracle.window_spec(config),
                                    windows.splits_from_config(config.data.splits), 64, cache,
                                    normalizer=normalizer, num_devices=1, shard_index=0,
                                    shard_count=1)
    signals.append(lstm.bar_signals(task, params, data['test'], batch_size=64, progress=False))
  before, after = signals
  pd.testing.assert_frame_equal(before[['symbol', 'timestamp']], after[['symbol', 'timestamp']])
  up_to_cut = (before['timestamp'] <= cut).to_numpy()
  assert 0 < up_to_cut.sum() < len(before)
  np.testing.assert_array_equal(before.loc[up_to_cut, ['p_up', 'uncertainty', 'q50']].to_numpy(),
                                after.loc[up_to_cut, ['p_up', 'uncertainty', 'q50']].to_numpy())
  assert not np.allclose(before.loc[~up_to_cut, 'q50'], after.loc[~up_to_cut, 'q50'])
