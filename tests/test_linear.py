"""The fifth head, a linear forecaster on the Oracle's windows, found by name in the registry:
its forward pass against numpy, a run through training and evaluation in the Oracle's format, and
load() with the causal per-bar signals."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from configs import linear as linear_config
from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.models.linear import LinearForecaster
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.train import data as data_lib
from tests import bar_signals_contract
from tests.conftest import LEARNABLE_SPLITS


@pytest.mark.parametrize('hidden', [0, 5])
def test_forecaster_matches_numpy(hidden):
  model = LinearForecaster(num_symbols=3, num_observed=4, num_known=2, encoder_length=7,
                           decoder_length=3, quantiles=(0.1, 0.5, 0.9), hidden_size=hidden)
  rng = np.random.default_rng(0)
  encoder = rng.normal(size=(2, 7, 4)).astype(np.float32)
  known = rng.normal(size=(2, 3, 2)).astype(np.float32)
  symbol = np.array([2, 0], np.int32)
  params = model.init(jax.random.PRNGKey(0), encoder, known, symbol)['params']
  params = jax.tree.map(lambda x: np.asarray(x) + rng.normal(size=x.shape).astype(np.float32) * 0.1,
                        params)  # non-zero symbol offsets too
  got = np.asarray(model.apply({'params': params}, encoder, known, symbol)['quantiles'])
  x = np.concatenate([encoder.reshape(2, -1), known.reshape(2, -1)], -1)
  if hidden:
    x = np.maximum(x @ params['block']['kernel'] + params['block']['bias'], 0)
  expected = (x @ params['output']['kernel'] + params['output']['bias']
              + params['symbol_offset']['embedding'][symbol]).reshape(2, 3, 3)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_config_errors():
  config = linear_config.get_config('quick')
  config.model.hidden_size = -1
  with pytest.raises(ConfigError, match='hidden_size'):
    registry.get('linear').make_task(config)
  with pytest.raises(ConfigError, match="'linear' model"):
    oracle.run(linear_config.get_config('quick'), '/nonexistent')


@pytest.fixture(scope='module')
def linear_run(learnable_market, tmp_path_factory):
  """The quick linear forecaster trained for 300 steps through its registry entry."""
  tmp_path = tmp_path_factory.mktemp('linear')
  config = linear_config.get_config('quick')
  config.data.store_dir = str(tmp_path / 'store')  # holds only the windows cache here
  config.data.splits.update(LEARNABLE_SPLITS)
  config.model.update(encoder_length=24, decoder_length=6)
  config.train.update(batch_size=64, log_every_steps=50, max_eval_batches=10, num_steps=300,
                      eval_every_steps=150)
  config.train.optimizer.update(learning_rate=3e-3, warmup_steps=10)
  config.evaluation.fan_windows = 2
  results = registry.get('linear').run(config, tmp_path / 'run', frames=learnable_market)
  return tmp_path / 'run', results


def test_it_trains_and_evaluates_in_the_oracle_format(linear_run):
  workdir, results = linear_run
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['model'] == 'linear'
  assert set(saved) == {'model', 'workdir', 'train', 'validation', 'test', 'config'}
  report = results['test']
  # It learns: better than forecasting no move, in the pinball loss of every quantile.
  assert report['pinball_loss'] < report['baselines']['zero_return']['pinball_loss']
  assert report['variable_importance'] is None
  text = registry.get('linear').format_results(results)
  assert text.startswith('Linear run in') and 'Linear vs the best naive baseline' in text


def test_load_round_trips_and_signals_are_causal(linear_run, learnable_market):
  workdir, results = linear_run
  task, params, config = registry.get('linear').load(workdir)
  assert type(task).__name__ == 'LinearTask'
  data, _ = data_lib.make_split_data(config.data, oracle.window_spec(config), 64,
                                     config.train.seed, frames=learnable_market)
  report = oracle.evaluate(task, params, data['test'], data['train'], workdir / 'reloaded',
                           fan_windows=1, progress=False)
  assert report['pinball_loss'] == pytest.approx(results['test']['pinball_loss'], rel=1e-6)
  bar_signals_contract.check(oracle.bar_signals(task, params, data['test'], batch_size=64,
                                                progress=False), task, params, data['test'], 64)
  with pytest.raises(ConfigError, match="describes a 'linear' model"):
    oracle.load(workdir)


def test_the_backtest_takes_a_linear_run_in_the_oracles_place(linear_run):
  """The backtest finds a run's own model in the registry: a linear run fills the Oracle's role
  (same signal columns); it cannot stand for the Guardian, whose signals differ."""
  from quantum_alpha_jax.backtest import experiment as backtest  # pylint: disable=g-import-not-at-top
  workdir, _ = linear_run
  assert backtest.run_model(workdir, 'oracle') == 'linear'
  assert backtest.run_model(workdir.parent / 'nothing-here', 'oracle') == 'oracle'
  _, _, config = registry.get('linear').load(workdir)
  with pytest.raises(ConfigError, match=r"a linear run, whose signals .* cannot stand for the "
                                        r"guardian"):
    backtest.model_signals('guardian', workdir, config.data, 'test')


def test_it_exports_to_onnx_through_its_registry_entry(linear_run, tmp_path):
  """The fifth head goes through export with no change to export code: load_inference finds its
  builder in the task registry, and the ONNX file matches JAX (random windows: the fixture's run
  trained on frames passed in memory, so there is no store to read real windows from)."""
  pytest.importorskip('jax2onnx')
  from quantum_alpha_jax.ship.export import inference as inference_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.ship.export import pipeline  # pylint: disable=g-import-not-at-top
  workdir, _ = linear_run
  inference = inference_lib.load_inference('linear', workdir)
  assert inference.metadata['source_workdir'] == str(workdir.resolve())
  path = onnx_lib.export_onnx(inference, tmp_path / 'linear.onnx')
  report = pipeline.parity(inference, onnx_lib.runner(path, inference), batch_sizes=(1, 5),
                           seed=0, real=None)
  assert report['max_abs_diff'] < 1e-4, report
