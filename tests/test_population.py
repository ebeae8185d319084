"""Populations (train/population.py): K members in one vmapped step equal K single runs."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from quantum_alpha_jax.data import features, synthetic, windows
from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.train import checkpoint as checkpoint_lib
from quantum_alpha_jax.train import loop
from quantum_alpha_jax.train import population
from quantum_alpha_jax.train import state as state_lib
from quantum_alpha_jax.train import step as step_lib
from tests.devices import run_with_devices
from tests.linear_task import LinearTask


class DropoutLinearTask(LinearTask):
  """:class:`LinearTask` with dropout on its input row: a member's rng shows in its params."""

  def loss_fn(self, params, batch, rng):
    if rng is not None:
      keep = jax.random.bernoulli(rng, 0.8, batch['encoder'].shape)
      batch = dict(batch, encoder=jnp.where(keep, batch['encoder'] / 0.8, 0.0))
    return super().loss_fn(params, batch, None)


@pytest.fixture(scope='module')
def market_data(tmp_path_factory):
  frames = {s: features.compute_features(f) for s, f in synthetic.generate_market(
      ('BTCUSDT', 'ETHUSDT'), start='2024-01-01', end='2024-01-12', seed=3).items()}
  splits = [windows.Split('train', '2024-01-01', '2024-01-08'),
            windows.Split('validation', '2024-01-08', '2024-01-12')]
  data, _ = windows.make_datasets(frames, windows.WindowSpec(16, 4), splits, 32,
                                  tmp_path_factory.mktemp('cache'), seed=5, num_devices=1,
                                  shard_index=0, shard_count=1)
  return data


def _config(**overrides):
  config = loop.train_config(batch_size=32, num_steps=12, eval_every_steps=12, log_every_steps=4,
                             patience=0, seed=11, max_eval_batches=0)
  config.optimizer.update(learning_rate=3e-3, warmup_steps=3)
  config.update(overrides)
  return config


def _leaves(tree):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


def test_population_of_one_is_the_single_run_bit_for_bit(market_data, tmp_path):
  """K = 1 (the default) is today's single run: unstacked state, the same params bit for bit as
  the step driven by hand from ``PRNGKey(seed)``."""
  task = DropoutLinearTask()
  config = _config()
  assert config.population == 1
  result = loop.train_and_evaluate(config, task, market_data, tmp_path / 'run')
  assert result.population_params is None and 'population' not in result.summary

  train = market_data['train']
  optimizer, schedule = state_lib.make_optimizer(config.optimizer, config.num_steps)
  mesh = step_lib.make_mesh(None)
  example = train.source.gather(train.source.anchors[:1])
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = step_lib.replicate(state_lib.TrainState.create(
      task.init_params(init_rng, example), optimizer, train_rng), mesh)
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh)
  iterator = train.iterator()
  for _ in range(config.num_steps):
    state, _ = train_step(state, step_lib.shard_batch(next(iterator), mesh))
  assert jax.tree.structure(result.state) == jax.tree.structure(state)
  for got, want in zip(_leaves(result.state), _leaves(state)):
    np.testing.assert_array_equal(got, want)


def test_population_members_equal_single_runs_with_their_seeds(market_data, tmp_path):
  """K = 3 in one vmapped step = 3 single runs with seeds 11, 12, 13 on the same batches; the
  validation report's mean and t interval are those of the members."""
  task = DropoutLinearTask()
  result = loop.train_and_evaluate(_config(population=3), task, market_data, tmp_path / 'k3')
  stacked = jax.device_get(result.population_params)
  assert jax.tree.leaves(stacked)[0].shape[0] == 3
  members = result.population['validation']['members']
  singles = []
  for k, seed in enumerate((11, 12, 13)):
    single = loop.train_and_evaluate(_config(seed=seed), task, market_data, tmp_path / f's{seed}')
    singles.append(single.best_metrics['loss'])
    for got, want in zip(_leaves(population.member(stacked, k)), _leaves(single.params)):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(members[k]['loss'], single.best_metrics['loss'], rtol=1e-5)
  # The members differ (seeds differ), and member 0 is result.params.
  assert np.abs(stacked['w'][0] - stacked['w'][1]).max() > 1e-4
  np.testing.assert_array_equal(np.asarray(result.params['w']), stacked['w'][0])
  # Mean and 95% t interval over the members (scipy's interval, computed here).
  low, high = stats.t.interval(0.95, 2, loc=np.mean(singles), scale=stats.sem(singles))
  best = result.best_metrics
  np.testing.assert_allclose(best['loss'], np.mean(singles), rtol=1e-5)
  np.testing.assert_allclose([best['loss_low'], best['loss_high']], [low, high], rtol=1e-4)
  assert result.summary['population']['seeds'] == [11, 12, 13]
  assert checkpoint_lib.read_run_record(tmp_path / 'k3')['best_population']['size'] == 3


def _regression_data(rows, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, 8)).astype(np.float32)
  y = (x @ np.linspace(-1, 1, 8) + 0.5).astype(np.float32)
  return {'x': x, 'y': y, 'mask': np.ones(rows, np.float32)}


class RandomInitRegression:
  """``y = x @ w + b`` with a random init (members differ from the first step)."""

  def init_params(self, rng, batch):
    return {'w': 0.1 * jax.random.normal(rng, (batch['x'].shape[-1],)), 'b': jnp.zeros(())}

  def loss_fn(self, params, batch, rng):
    del rng
    error = jnp.square(batch['x'] @ params['w'] + params['b'] - batch['y'])
    loss = jnp.sum(error * batch['mask']) / jnp.sum(batch['mask'])
    return loss, {'mse': loss}


def _step_run(config, mesh, batches):
  """Trains ``config`` (a population when ``config.population > 1``) on ``batches`` with the
  shared step; returns (state, last metrics)."""
  task = RandomInitRegression()
  optimizer, schedule = state_lib.make_optimizer(config.optimizer, 100)
  count = population.size(config)
  if count > 1 and population.learning_rates(config) is not None:
    optimizer = population.with_learning_rate_multiplier(optimizer)
  init = lambda rng: task.init_params(rng, batches[0])
  if count > 1:
    state = population.create_state(config, init, optimizer)
  else:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    state = state_lib.TrainState.create(init(init_rng), optimizer, train_rng)
  state = step_lib.replicate(state, mesh)
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh,
                                        population=count)
  for batch in batches:
    state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
  return state, jax.device_get(metrics)


def test_members_get_their_own_learning_rates():
  """``population_learning_rates``: each member trains as a single run at its own rate."""
  batches = [_regression_data(32, seed) for seed in range(6)]
  mesh = step_lib.make_mesh(1)
  rates = (1e-3, 2e-2)
  config = _config(population=2, population_learning_rates=rates, seed=4)
  config.optimizer.update(schedule='constant', warmup_steps=2, learning_rate=5e-3)
  state, metrics = _step_run(config, mesh, batches)
  np.testing.assert_allclose(metrics['learning_rate'], rates, rtol=1e-6)  # past the warmup
  for k, rate in enumerate(rates):
    single_config = _config(seed=4 + k)
    single_config.optimizer.update(schedule='constant', warmup_steps=2, learning_rate=rate)
    single, single_metrics = _step_run(single_config, mesh, batches)
    np.testing.assert_allclose(metrics['learning_rate'][k], single_metrics['learning_rate'],
                               rtol=1e-6)
    for got, want in zip(_leaves(population.member(state.params, k)), _leaves(single.params)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # The spread option: K rates log-spaced over the decades given, centred on the optimizer's.
  spread = _config(population=3, population_learning_rate_spread=2.0)
  np.testing.assert_allclose(population.learning_rates(spread), [3e-4, 3e-3, 3e-2], rtol=1e-9)
  with pytest.raises(ConfigError, match='population_learning_rates'):
    population.learning_rates(_config(population=3, population_learning_rates=(1e-3, 1e-2)))


_DEVICES_SCRIPT = textwrap.dedent('''
    import json, jax, numpy as np
    from tests import test_population as t
    from quantum_alpha_jax.train import population, step as step_lib
    assert jax.device_count() == 4, jax.devices()
    batches = [t._regression_data(64, seed) for seed in range(4)]
    out = {}
    for count in (1, 4):
      mesh = step_lib.make_mesh(count)
      config = t._config(population=2, population_learning_rates=(1e-2, 3e-2))
      state, metrics = t._step_run(config, mesh, batches)
      w = state.params['w']
      out[count] = {'w': np.asarray(w).tolist(), 'loss': np.asarray(metrics['loss']).tolist(),
                    'devices': len(w.sharding.device_set),
                    'replicated': bool(w.sharding.is_fully_replicated)}
    print(json.dumps(out))
''')


def test_population_on_one_and_four_devices_gives_the_same_members():
  out = run_with_devices(_DEVICES_SCRIPT, devices=4)
  assert out['4']['devices'] == 4 and out['4']['replicated'] and out['1']['devices'] == 1
  np.testing.assert_allclose(out['1']['w'], out['4']['w'], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out['1']['loss'], out['4']['loss'], rtol=1e-5)
  w = np.asarray(out['1']['w'])
  assert w.shape == (2, 8) and np.abs(w[0] - w[1]).max() > 1e-3


def test_a_population_run_resumes_from_its_stacked_checkpoint(market_data, tmp_path):
  """Stopped after its checkpoint at step 6, the K = 2 run resumes to the uninterrupted params."""
  task = DropoutLinearTask()
  config = _config(population=2, eval_every_steps=6)
  whole = loop.train_and_evaluate(config, task, market_data, tmp_path / 'whole')

  class Stop(Exception):
    pass

  def stop(step, state):
    del state
    if step == 9:
      raise Stop

  with pytest.raises(Stop):
    loop.train_and_evaluate(config, task, market_data, tmp_path / 'cut', hooks=[stop])
  resumed = loop.train_and_evaluate(config, task, market_data, tmp_path / 'cut')
  for got, want in zip(_leaves(resumed.state), _leaves(whole.state)):
    np.testing.assert_array_equal(got, want)
  assert resumed.population['validation']['size'] == 2
  assert resumed.population['validation'] == whole.population['validation']
  # The best params read back from the checkpoint are member 0's.
  params, _ = checkpoint_lib.load_best(tmp_path / 'cut')
  np.testing.assert_array_equal(np.asarray(params['w']), np.asarray(whole.params['w']))


def test_the_oracle_reports_every_member_with_mean_and_interval(drifting_market, tmp_path):
  """``results.json`` of a K = 2 Oracle: the population block per split, member 0's full reports."""
  from configs import oracle as oracle_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top

  config = oracle_config.get_config('quick')
  config.model.update(encoder_length=24, decoder_length=6, hidden_size=8,
                      hidden_continuous_size=4)
  config.train.update(num_steps=4, eval_every_steps=2, max_eval_batches=2, population=2)
  config.evaluation.update(max_windows=128, fan_windows=1)
  results = oracle.run(config, tmp_path / 'run', frames=drifting_market)
  block = results['population']
  assert block['seeds'] == [0, 1] and block['reports_are_of_member'] == 0
  assert block['validation']['size'] == 2
  for split in ('validation', 'test'):
    members = block[split]['members']
    values = [m['pinball_loss'] for m in members]
    assert values[0] == results[split]['pinball_loss'] and values[0] != values[1]
    mean, low, high = population.interval(values)
    assert block[split]['mean']['pinball_loss'] == mean
    assert block[split]['interval']['pinball_loss'] == [low, high] and low < mean < high
  assert 'loss_low' in results['train']['best_validation']  # the loop's: mean and interval
  params, _ = checkpoint_lib.load_best(tmp_path / 'run')  # member 0, shaped as a single model
  checkpoint_lib.check_structure(params, jax.eval_shape(
      oracle.OracleTask.from_config(config).init_params, jax.random.PRNGKey(0),
      oracle.example_batch(oracle.OracleTask.from_config(config).model)), 'population run')
