"""PPO and DDPG: GAE and the replay ring against plain loops, and learning a planted signal that
beats random and buy-and-hold on held-out time, scored by the backtest engine."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantum_alpha_jax.rl import ddpg
from quantum_alpha_jax.rl import env
from quantum_alpha_jax.rl import evaluate
from quantum_alpha_jax.rl import market
from quantum_alpha_jax.rl import ppo

TRAIN_ROWS, HELD_OUT_ROWS = 4000, 3000


def _reference_gae(rewards, values, dones, terminal_values, last_value, gamma, lam):
  """GAE with time-limit bootstrapping as a plain backwards loop over [T, N] numpy arrays."""
  steps = len(rewards)
  advantages = np.zeros_like(rewards)
  running = np.zeros_like(last_value)
  for t in reversed(range(steps)):
    following = last_value if t == steps - 1 else values[t + 1]
    bootstrap = np.where(dones[t], terminal_values[t], following)
    delta = rewards[t] + gamma * bootstrap - values[t]
    running = delta + gamma * lam * (1.0 - dones[t]) * running
    advantages[t] = running
  return advantages, advantages + values


def test_gae_matches_a_reference_loop():
  rng = np.random.default_rng(0)
  steps, envs = 17, 5
  trajectory = ppo.Transition(
      observation=None, action=None, log_prob=None,
      value=jnp.asarray(rng.normal(size=(steps, envs)), jnp.float32),
      reward=jnp.asarray(rng.normal(size=(steps, envs)), jnp.float32),
      done=jnp.asarray(rng.random((steps, envs)) < 0.2),
      terminal_value=jnp.asarray(rng.normal(size=(steps, envs)), jnp.float32),
      log_return=None, episode_return=None, final_equity=None, traded=None)
  last_value = jnp.asarray(rng.normal(size=envs), jnp.float32)
  features, open_price, close = market.planted_signal_market(300)
  agent = ppo.PPO.from_config(
      ppo.config(num_envs=envs, num_steps=steps, total_timesteps=envs * steps, num_minibatches=1,
                 gamma=0.97, gae_lambda=0.9),
      env.make_params(features, open_price, close, episode_length=50))
  advantages, targets = agent.advantages(trajectory, last_value)
  expected = _reference_gae(*(np.asarray(x, np.float64) for x in (
      trajectory.reward, trajectory.value, trajectory.done, trajectory.terminal_value,
      last_value)), 0.97, 0.9)
  np.testing.assert_allclose(advantages, expected[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(targets, expected[1], rtol=1e-5, atol=1e-5)


def test_replay_buffer_is_a_ring():
  buffer = ddpg.ReplayBuffer.create(capacity=7, observation_size=2)
  add = jax.jit(ddpg.ReplayBuffer.add)
  written = []
  for batch in range(4):  # 4 writes of 3 transitions: rows wrap around after 7
    actions = np.arange(3, dtype=np.float32) + 10 * batch
    observations = np.stack([actions, -actions], 1)
    buffer = add(buffer, jnp.asarray(observations), jnp.asarray(actions),
                 jnp.asarray(actions + 1), jnp.asarray(observations + 0.5))
    written.extend(actions.tolist())
  expected = np.zeros(7)
  for index, action in enumerate(written):
    expected[index % 7] = action
  np.testing.assert_array_equal(buffer.action, expected)
  np.testing.assert_array_equal(buffer.observation[:, 1], -expected)
  np.testing.assert_array_equal(buffer.reward, expected + 1)
  assert int(buffer.size) == 7 and int(buffer.position) == 12 % 7
  sample = buffer.sample(jax.random.PRNGKey(0), 500)
  assert set(np.asarray(sample['action']).tolist()) == set(expected.tolist())
  np.testing.assert_array_equal(sample['next_observation'][:, 0], sample['action'] + 0.5)


@pytest.fixture(scope='module')
def planted():
  """A market whose feature 0 is the sign of the next bar's drift: train on the first rows,
  evaluate on the later ones."""
  features, open_price, close = market.planted_signal_market(TRAIN_ROWS + HELD_OUT_ROWS, seed=7)
  train = slice(0, TRAIN_ROWS)
  held_out = slice(TRAIN_ROWS, None)
  return {'train': (features[train], open_price[train], close[train]),
          'held_out': (features[held_out], open_price[held_out], close[held_out])}


def _train_and_score(agent_class, agent_config, planted, action_mode, **env_options):
  params = env.make_params(*planted['train'], episode_length=128, action_mode=action_mode,
                           **env_options)
  agent = agent_class.from_config(agent_config, params)
  state = agent.init(jax.random.PRNGKey(0), params)
  state, metrics = agent.train(state, params, agent.num_updates)
  held_out = market.array_market(*planted['held_out'], name='held_out', episode_length=128,
                                 action_mode=action_mode, **env_options)
  report = evaluate.evaluate_split(evaluate.TapeEvaluator(agent.act), agent.policy_params(state),
                                   held_out, random_seeds=3, label=agent.name)
  return jax.device_get(metrics), report, held_out


def _check_learned(report, name, held_out):
  entry = report['symbols']['ASSET']
  agent_growth = np.log1p(entry[name]['total_return'])
  random_growth = np.log1p(entry['random']['total_return_best'])
  hold_growth = np.log1p(entry['buy_and_hold']['total_return'])
  # Perfect use of the signal earns ~0.002 a bar on the ~1,500 up bars (about 3 in log terms)
  # less the fees of ~150 round trips; random trading pays fees on most bars.
  assert agent_growth > 1.5, report
  assert agent_growth > hold_growth + 1.0
  assert agent_growth > random_growth + 1.5
  # Positions follow the planted sign: long when feature 0 is +1, flat when it is -1.
  target = report['targets']['ASSET']
  sign = np.asarray(held_out.params.features)[:, 0]
  assert np.mean(target[sign > 0] > 0.5) > 0.9
  assert np.mean(target[sign < 0] < 0.5) > 0.9
  # The environment's own equity agrees with the engine's.
  assert entry['env_vs_engine_equity_max_relative_difference'] < 1e-4
  json.dumps(report['symbols'], allow_nan=False)


def test_ppo_learns_the_planted_signal_and_beats_random_on_held_out_time(planted):
  agent_config = ppo.config(num_envs=32, num_steps=64, total_timesteps=32 * 64 * 40,
                            hidden_sizes=(32, 32), num_minibatches=4)
  agent_config.optimizer.learning_rate = 3e-3
  metrics, report, held_out = _train_and_score(ppo.PPO, agent_config, planted, 'discrete')
  assert np.all(metrics['finite'] == 1)
  assert metrics['entropy'][-1] < 0.7 * metrics['entropy'][0]  # the policy became decisive
  _check_learned(report, 'ppo', held_out)


def test_ddpg_learns_the_planted_signal_and_beats_random_on_held_out_time(planted):
  agent_config = ddpg.config(num_envs=8, rollout_steps=32, total_timesteps=8 * 32 * 60,
                             hidden_sizes=(32, 32), buffer_size=20_000, batch_size=128,
                             learning_starts=2_000, gradient_steps=4, gamma=0.9)
  agent_config.actor_optimizer.learning_rate = 1e-3
  metrics, report, held_out = _train_and_score(ddpg.DDPG, agent_config, planted, 'continuous',
                                               rebalance_threshold=0.05)
  assert np.all(metrics['finite'] == 1)
  assert metrics['learning_fraction'][-1] == 1.0 and metrics['learning_fraction'][0] == 0.0
  _check_learned(report, 'ddpg', held_out)


_DEVICES_SCRIPT = '''
import json, sys
import jax, numpy as np
from jax.sharding import PartitionSpec
from quantum_alpha_jax.rl import agent as agent_lib, ddpg, env, market, ppo
from quantum_alpha_jax.train import step as step_lib

features, open_price, close = market.planted_signal_market(1500, seed=3)
out = {}
for name, cls, cfg, mode in [
    ('ppo', ppo.PPO, ppo.config(num_envs=8, num_steps=16, total_timesteps=8 * 16 * 3,
                                 hidden_sizes=(16, 16), num_minibatches=2), 'discrete'),
    ('ddpg', ddpg.DDPG, ddpg.config(num_envs=8, rollout_steps=8, total_timesteps=8 * 8 * 6,
                                     hidden_sizes=(16, 16), buffer_size=512, batch_size=32,
                                     learning_starts=64, gradient_steps=2), 'continuous')]:
  params = env.make_params(features, open_price, close, episode_length=32, action_mode=mode)
  agent = cls.from_config(cfg, params)
  mesh = step_lib.make_mesh()
  agent_lib.check_envs_split(agent.num_envs, mesh)
  state = agent_lib.place_state(agent.init(jax.random.PRNGKey(0), params), mesh)
  split = state.observation.addressable_shards[0].data.shape[0]
  state, metrics = agent.train(state, params, agent.num_updates)
  after = state.observation.addressable_shards[0].data.shape[0]
  leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(agent.policy_params(state))]
  out[name] = {'params': np.concatenate(leaves).tolist(), 'devices': mesh.size,
               'per_device_envs': [split, after], 'loss': np.asarray(metrics['loss']).tolist()}
print(json.dumps(out))
'''


def test_agents_split_environments_over_devices_and_match_one_device():
  """PPO and DDPG on 4 (forced host) CPU devices, the environments split 2 per device, end with
  the same params and losses as on 1 device (threefry keys are sharding-invariant)."""
  from tests.devices import run_with_devices  # pylint: disable=g-import-not-at-top
  one = run_with_devices(_DEVICES_SCRIPT, devices=1)
  four = run_with_devices(_DEVICES_SCRIPT, devices=4)
  for name in ('ppo', 'ddpg'):
    assert one[name]['devices'] == 1 and four[name]['devices'] == 4
    # Each device holds 2 of the 8 environments, before and after the jitted updates.
    assert four[name]['per_device_envs'] == [2, 2] and one[name]['per_device_envs'] == [8, 8]
    np.testing.assert_allclose(four[name]['loss'], one[name]['loss'], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(four[name]['params'], one[name]['params'], rtol=1e-4, atol=1e-5)
    # The run did update the params (the comparison is not between two initialisations).
    assert np.isfinite(one[name]['loss']).all()


def test_environment_count_must_split_over_devices():
  from quantum_alpha_jax.rl import agent as agent_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax import errors  # pylint: disable=g-import-not-at-top

  class FakeMesh:
    size = 4
  with pytest.raises(errors.ConfigError, match='num_envs.*do not split over 4 devices'):
    agent_lib.check_envs_split(6, FakeMesh())
