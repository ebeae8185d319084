"""The Task protocol and the registry: every model found by name with every member, the step
reaching a loss that asks for it, and the one padded prediction loop."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import guardian as guardian_config
from configs import linear as linear_config
from configs import lstm as lstm_config
from configs import oracle as oracle_config
from configs import strategist as strategist_config
from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.tasks import prediction
from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.tasks import runner
from quantum_alpha_jax.tasks import strategist
from quantum_alpha_jax.tasks.protocol import TaskEntry
from quantum_alpha_jax.train import state as state_lib
from quantum_alpha_jax.train import step as step_lib
from tests.linear_task import RegressionTask
from tests.linear_task import ScheduledRegressionTask

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'quantum_alpha_jax'
CONFIGS = {'oracle': oracle_config, 'lstm': lstm_config, 'guardian': guardian_config,
           'strategist': strategist_config, 'linear': linear_config}


def test_every_model_is_found_by_name_with_every_member():
  assert set(CONFIGS) <= set(registry.names())
  for name in CONFIGS:
    entry = registry.get(name)
    assert isinstance(entry, TaskEntry) and entry.name == name
    for member in ('make_task', 'metrics', 'run', 'load', 'bar_signals', 'evaluate',
                   'format_results'):
      assert callable(getattr(entry, member)), (name, member)
    assert entry.signal_columns and entry.export_fns
    task = entry.make_task(CONFIGS[name].get_config('quick'))
    assert callable(task.init_params) and callable(task.loss_fn)
    assert step_lib.accepts_step(task.loss_fn)


def test_an_unknown_model_names_the_models_there_are():
  with pytest.raises(ConfigError, match=r"unknown model 'transformer'.*oracle"):
    registry.get('transformer')
  with pytest.raises(ConfigError, match='unknown model'):
    registry.get('Not A Name')
  with pytest.raises(ConfigError, match='unknown model'):
    registry.get('runner')  # shared code of the package, not a model


def test_a_second_model_cannot_take_a_name():
  entry = registry.get('oracle')
  fields = {field: getattr(entry, field) for field in TaskEntry.__dataclass_fields__
            if field != 'name'}
  with pytest.raises(ConfigError, match='taken'):
    registry.register('oracle', **dict(fields, make_task=RegressionTask))


def _market_source(spec, tmp_path):
  market = {symbol: features.compute_features(frame) for symbol, frame in
            synthetic.generate_market(('BTCUSDT',), start='2024-01-01', end='2024-01-03',
                                      seed=3).items()}
  splits = [windows.Split('train', '2024-01-01', '2024-01-03')]
  data, _ = windows.make_datasets(market, spec, splits,
                                  8, tmp_path, num_devices=1, shard_index=0, shard_count=1)
  return data['train'].source


@pytest.mark.parametrize('name', ['oracle', 'lstm', 'guardian', 'linear'])
def test_the_metrics_a_model_names_are_the_ones_its_loss_reports(name, tmp_path):
  config = CONFIGS[name].get_config('quick')
  entry = registry.get(name)
  task = entry.make_task(config)
  source = _market_source(entry.window_spec(config), tmp_path)
  batch = source.gather(source.anchors[:4])
  params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), batch)
  _, metrics = jax.eval_shape(task.loss_fn, params, batch, None)
  assert set(metrics) == set(entry.metrics(config))


def test_the_strategist_metrics_are_the_ones_its_loss_reports():
  config = strategist_config.get_config('quick')
  entry = registry.get('strategist')
  task = entry.make_task(config)
  batch = strategist.example_batch(task, 2)
  steps = task.model.context_length
  batch.update(step_mask=np.ones((2, steps), np.float32), size_mask=np.ones((2, steps), np.float32),
               mask=np.ones(2, np.float32))
  params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), batch)
  _, metrics = jax.eval_shape(task.loss_fn, params, batch, None)
  assert set(metrics) == set(entry.metrics(config))


def test_the_train_step_gives_a_loss_the_step_it_asks_for():
  """The scheduled loss sees steps 0, 1, 2... in training (and so its weight ramps up), and None
  in evaluation; a loss without a step parameter is called as before."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 3)).astype(np.float32)
  batch = {'x': x, 'y': x @ np.array([1.0, -1.0, 0.5], np.float32),
           'mask': np.ones(16, np.float32)}
  mesh = step_lib.make_mesh(1)
  optimizer, schedule = state_lib.make_optimizer(
      state_lib.optimizer_config(learning_rate=0.01, warmup_steps=0, schedule='constant'), 10)
  for task, expected in ((ScheduledRegressionTask(), [0.0, 1.0, 2.0, 3.0, 4.0]),
                         (RegressionTask(), None)):
    state = state_lib.TrainState.create(task.init_params(None, batch), optimizer,
                                        jax.random.PRNGKey(0))
    train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh)
    seen = []
    for _ in range(5):
      state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
      seen.append(metrics.get('step'))
    if expected is None:
      assert all(value is None for value in seen)
      continue
    assert [float(value) for value in seen] == expected
    assert float(metrics['weight']) == 1.0
    sums = step_lib.make_eval_step(task.loss_fn, mesh)(state.params,
                                                       step_lib.shard_batch(batch, mesh))
    assert float(sums['step']) == -float(sums['count'])  # None in evaluation


def test_accumulated_micro_batches_share_the_step():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(16, 3)).astype(np.float32)
  batch = {'x': x, 'y': x.sum(-1), 'mask': np.ones(16, np.float32)}
  mesh = step_lib.make_mesh(1)
  task = ScheduledRegressionTask()
  optimizer, schedule = state_lib.make_optimizer(
      state_lib.optimizer_config(learning_rate=0.01, warmup_steps=0, schedule='constant'), 10)
  state = state_lib.TrainState.create(task.init_params(None, batch), optimizer,
                                      jax.random.PRNGKey(0))
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh,
                                        accumulation_steps=4)
  for expected in (0.0, 1.0, 2.0):
    state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
    assert float(metrics['step']) == expected


def test_the_prediction_loop_pads_to_one_shape_and_keeps_the_order(tmp_path):
  source = _market_source(windows.WindowSpec(8, 2), tmp_path)
  anchors = source.anchors[3:3 + 23]  # 23 windows in batches of 5: the last one padded
  traces = []

  @jax.jit
  def predict(params, inputs):
    traces.append(inputs['encoder'].shape)
    return {'mean': jnp.mean(inputs['encoder'], axis=(1, 2)) * params,
            'anchor': inputs['anchor']}

  seen, outputs = [], []
  for batch, output in prediction.predict_batches(predict, 2.0, source, 5,
                                                  inputs=('encoder', 'anchor'), anchors=anchors):
    seen.append(batch['anchor'])
    outputs.append(output)
  assert len(traces) == 1  # one compiled shape: the last batch was padded to 5
  assert [len(part) for part in seen] == [5, 5, 5, 5, 3]  # cut back to the real rows
  np.testing.assert_array_equal(np.concatenate(seen), anchors)
  everything = prediction.predict_all(predict, 2.0, source, 5, inputs=('encoder', 'anchor'),
                                      anchors=anchors)
  np.testing.assert_array_equal(everything['anchor'], anchors)
  expected = 2.0 * source.gather(anchors)['encoder'].mean(axis=(1, 2))
  np.testing.assert_allclose(everything['mean'], expected, rtol=1e-6)


def test_training_statistics_are_read_under_one_key_and_the_old_ones():
  assert runner.training_statistics({'training_statistics': {'a': 1}}, 'guardian') == {'a': 1}
  assert runner.training_statistics({'guardian_statistics': {'b': 2}}, 'guardian') == {'b': 2}
  assert runner.training_statistics({'trajectories': {'c': 3}}, 'strategist') == {'c': 3}
  assert runner.training_statistics({'normalizer': {}}, 'oracle') is None


def test_the_export_builder_is_found_from_the_entry():
  builder = registry.get('guardian').export_builder()
  assert callable(builder) and builder.__name__ == 'guardian'
  assert callable(registry.get('lstm').export_builder())
