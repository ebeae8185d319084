"""The Oracle task: targets, P(up) from quantiles, and learning that beats the baselines."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lstm as lstm_config
from configs import oracle as oracle_config
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.tasks import lstm
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.train import loop
from tests import bar_signals_contract
from tests.conftest import best_naive_accuracy
from tests.conftest import LEARNABLE_SPLITS
from tests.conftest import NAIVE_MARGIN


def _reference_probability_up(values, levels):
  """1 - F(0), F linear through (value_i, level_i), extended linearly, clipped (independent)."""
  values = np.sort(values)
  if 0 <= values[0]:
    slope = (levels[1] - levels[0]) / (values[1] - values[0])
    cdf = levels[0] + slope * (0 - values[0])
  elif 0 > values[-1]:
    slope = (levels[-1] - levels[-2]) / (values[-1] - values[-2])
    cdf = levels[-1] + slope * (0 - values[-1])
  else:
    cdf = np.interp(0.0, values, levels)
  return 1 - np.clip(cdf, 0, 1)


def test_probability_up_matches_an_independent_interpolation():
  rng = np.random.default_rng(0)
  levels = np.array([0.1, 0.25, 0.5, 0.75, 0.9])
  values = rng.normal(0, 1, (500, 5)) + rng.normal(0, 1, (500, 1))
  got = np.asarray(oracle.probability_up(jnp.asarray(values), jnp.asarray(levels)))
  expected = np.array([_reference_probability_up(v, levels) for v in values])
  np.testing.assert_allclose(got, expected, atol=1e-5)
  three = jnp.asarray([0.1, 0.5, 0.9])
  assert float(oracle.probability_up(jnp.asarray([-1.0, 0.0, 1.0]), three)) == pytest.approx(0.5)
  # Median 1 above zero, q10 at -1: F(0) = 0.1 + 0.4 * (0 - -1) / 2 = 0.3.
  assert float(oracle.probability_up(jnp.asarray([-1.0, 1.0, 2.0]), three)) == pytest.approx(0.7)
  assert float(oracle.probability_up(jnp.asarray([5.0, 6.0, 7.0]), three)) == 1.0
  # Crossed quantiles are sorted first.
  assert float(oracle.probability_up(jnp.asarray([1.0, -1.0, 2.0]), three)) == pytest.approx(0.7)


def test_pinball_matches_the_textbook_formula():
  rng = np.random.default_rng(1)
  targets, predictions = rng.normal(size=(4, 6)), rng.normal(size=(4, 6, 3))
  levels = np.array([0.1, 0.5, 0.9])
  got = np.asarray(oracle.pinball(jnp.asarray(targets), jnp.asarray(predictions),
                                  jnp.asarray(levels)))
  for q_index, q in enumerate(levels):
    error = targets - predictions[..., q_index]
    expected = np.where(error >= 0, q * error, (q - 1) * error)
    np.testing.assert_allclose(got[..., q_index], expected, rtol=1e-6, atol=1e-7)


def _small_config():
  config = oracle_config.get_config('quick')
  config.model.update(encoder_length=24, decoder_length=6, hidden_size=16, num_heads=2,
                      hidden_continuous_size=4, lstm_layers=1, dropout_rate=0.0)
  config.train.update(batch_size=64, num_steps=150, eval_every_steps=75, log_every_steps=25,
                      max_eval_batches=10)
  config.train.optimizer.update(learning_rate=5e-3, warmup_steps=10)
  return config


def _lstm_config_like(config):
  """The quick LSTM config on the windows and quantiles of the Oracle ``config``."""
  result = lstm_config.get_config('quick')
  for key in ('encoder_length', 'decoder_length', 'quantiles'):
    result.model[key] = config.model[key]
  return result


def _key_paths(tree, prefix=''):
  """Every key path of the nested dicts in ``tree`` (lists are leaves)."""
  paths = set()
  if isinstance(tree, dict):
    for key, value in tree.items():
      paths.add(f'{prefix}/{key}')
      paths |= _key_paths(value, f'{prefix}/{key}')
  return paths


def test_targets_are_log_price_ratios_of_future_bars_only(drifting_market, tmp_path):
  spec = windows.WindowSpec(24, 6)
  splits = [windows.Split('train', '2024-01-01', '2024-01-20')]
  data, _ = windows.make_datasets(drifting_market, spec, splits, 16, tmp_path, num_devices=1,
                                  shard_index=0, shard_count=1)
  batch = next(data['train'].iterator())
  close = data['train'].source.arrays.close
  anchors = batch['anchor']
  expected = np.log(close[anchors[:, None] + np.arange(1, 7)] / close[anchors][:, None])
  got = np.asarray(oracle.cumulative_targets(jnp.asarray(batch['future_returns'])))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_quick_oracle_beats_the_best_naive_baseline_on_a_learnable_market(learnable_market,
                                                                          tmp_path):
  config = _small_config()
  task = oracle.OracleTask.from_config(config)
  data, _ = windows.make_datasets(learnable_market, oracle.window_spec(config),
                                  windows.splits_from_config(LEARNABLE_SPLITS), 64,
                                  tmp_path / 'cache', num_devices=1, shard_index=0, shard_count=1)
  result = loop.train_and_evaluate(config.train, task, data, tmp_path / 'run',
                                   run_config=config.to_dict())
  report = oracle.evaluate(task, result.params, data['test'], data['train'], tmp_path / 'test',
                           progress=False)
  # Direction at the last horizon on non-overlapping test windows, against every naive rule.
  honest = report['direction_accuracy_non_overlapping']
  name, naive = best_naive_accuracy(report)
  assert honest['windows'] > 1500
  assert honest['oracle']['accuracy'] > naive + NAIVE_MARGIN, (honest['oracle'], name, naive)
  best = report['best_naive_baseline']  # chosen on the training split
  assert best['selected_on'] == 'train' and best['direction']['name'] in honest
  assert set(honest) >= {'always_up', 'last_return_persistence', 'momentum', 'reversal',
                         'train_mean'}
  baselines = report['baselines']
  naive_pinball = min(entry['pinball_loss'] for entry in baselines.values())
  assert report['pinball_loss'] < 0.9 * naive_pinball  # climatology included
  assert best['pinball']['pinball_loss'] == baselines[best['pinball']['name']]['pinball_loss']
  for name in ('forecast_fans', 'variable_importance', 'attention', 'direction_accuracy'):
    assert (tmp_path / 'test' / f'{name}.png').stat().st_size > 10_000
  json.dumps(report, allow_nan=False)  # JSON-ready, no NaN
  # load() restores exactly the best params, and bar_signals keeps its contract.
  loaded_task, loaded_params, loaded_config = oracle.load(tmp_path / 'run')
  assert loaded_task == task and loaded_config.model.hidden_size == 16
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded_params, result.params))
  bar_signals_contract.check(
      oracle.bar_signals(task, result.params, data['test'], batch_size=64, progress=False),
      task, result.params, data['test'], 64)
  # The LSTM baseline's report (untrained here) has the same keys, bar the TFT's weights.
  lstm_task = lstm.LSTMTask.from_config(_lstm_config_like(config))
  lstm_params = lstm_task.init_params(jax.random.PRNGKey(0),
                                      data['test'].source.gather(data['test'].source.anchors[:1]))
  lstm_report = oracle.evaluate(lstm_task, lstm_params, data['test'], data['train'],
                                tmp_path / 'lstm', max_windows=64, fan_windows=1,
                                progress=False)
  tft_only = ('/variable_importance/', '/plots/variable_importance', '/plots/attention')
  paths = lambda report: {p for p in _key_paths(report) if not any(t in p for t in tft_only)}
  assert paths(lstm_report) == paths(report) and len(paths(report)) > 100
  assert lstm_report['variable_importance'] is None and report['variable_importance']['encoder']


def test_bad_quantiles_are_a_config_error():
  config = oracle_config.get_config('quick')
  config.model.quantiles = (0.2, 0.8)
  with pytest.raises(ConfigError, match='include 0.5'):
    oracle.OracleTask.from_config(config)
  with pytest.raises(ConfigError, match='unknown variant'):
    oracle_config.get_config('fast')
