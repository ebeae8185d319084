"""The trading environment: hand-worked fills and fees, the backtest engine, vmap, episodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.data import features as features_lib
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.rl import ddpg
from quantum_alpha_jax.rl import env
from quantum_alpha_jax.rl import market
from quantum_alpha_jax.rl import ppo
from tests.conftest import make_klines

HOLD, BUY, SELL = env.HOLD, env.BUY, env.SELL


def _run(params, actions, first_row=0):
  """Steps ``actions`` from a flat book at ``first_row`` without resets (a host loop)."""
  state = env.initial_state(first_row)
  observations, rewards, infos, states = [env.observe(state, params)], [], [], [state]
  step = jax.jit(env.step_env)
  for action in actions:
    observation, state, reward, _, info = step(jax.random.PRNGKey(0), state, jnp.asarray(action),
                                               params)
    observations.append(observation)
    rewards.append(float(reward))
    infos.append(jax.device_get(info))
    states.append(state)
  return observations, np.array(rewards), infos, states


def test_hand_computed_episode_with_fee_and_slippage():
  # Bars:        0      1      2      3      4
  open_price = [100.0, 100.0, 110.0, 120.0, 108.0]
  close = [100.0, 110.0, 121.0, 108.0, 108.0]
  features = np.arange(10, dtype=np.float32).reshape(5, 2)
  params = env.make_params(features, open_price, close, episode_length=4, fee_rate=0.001,
                           slippage_bps=10.0)
  observations, rewards, infos, states = _run(params, [BUY, HOLD, SELL, HOLD])
  # Buy at bar 1's open: fill 100 * 1.001 = 100.1, units 1 / 100.1, fee 0.1% of 1.0 = 0.001.
  assert infos[0]['fill'] == pytest.approx(100.1, rel=1e-6)
  assert infos[0]['trade'] == pytest.approx(0.00999001, rel=1e-6)
  assert infos[0]['fee'] == pytest.approx(0.001, rel=1e-5)
  # Marked at the closes: 0.00999001 * 110 - 0.001 and 0.00999001 * 121 - 0.001.
  equity = [float(s.equity) for s in states]
  np.testing.assert_allclose(equity[1:3], [1.0979011, 1.2077912], rtol=1e-6)
  # Hold: no trade and no fee.
  assert infos[1]['trade'] == 0 and infos[1]['fee'] == 0
  # Sell at bar 3's open: fill 120 * 0.999 = 119.88, proceeds 1.1976024, fee 0.0011976.
  assert infos[2]['fill'] == pytest.approx(119.88, rel=1e-6)
  assert infos[2]['fee'] == pytest.approx(0.0011976, rel=1e-4)
  np.testing.assert_allclose(equity[3:], [1.1954048, 1.1954048], rtol=1e-6)
  np.testing.assert_allclose(rewards, [0.0934003, 0.0953930, -0.0103084, 0.0], atol=2e-6)
  assert rewards.sum() == pytest.approx(np.log(1.1954048), abs=2e-6)
  # Observation after the first step: bar 1's features, weight 0.00999001 * 110 / 1.0979011
  # and unrealised PnL 100 * 0.00999001 * (110 - 100.1) / 1.0979011 percent.
  np.testing.assert_allclose(np.asarray(observations[1]), [2.0, 3.0, 1.0009108, 9.0081975],
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(observations[3])[2:], [0.0, 0.0], atol=1e-7)
  # The backtest engine (float64) on the same targets gives the same equity.
  result = engine.run_backtest([1, 1, 0, 0, 0], open_price, close, fee_rate=0.001,
                               slippage_bps=10.0)
  np.testing.assert_allclose(result.equity / 1e4, equity, rtol=1e-6)


def test_adding_to_a_position_averages_the_entry_price():
  open_price = [100.0, 100.0, 104.0, 104.0]
  close = [100.0, 104.0, 106.0, 106.0]
  params = env.make_params(np.zeros((4, 1)), open_price, close, episode_length=3,
                           action_mode='continuous', fee_rate=0.001, slippage_bps=0.0)
  observations, _, infos, states = _run(params, [0.5, 1.0, 1.0])
  # 0.5 at 100: 0.005 units, fee 0.0005, cash 0.4995; equity at 104: 1.0195.
  assert float(states[1].equity) == pytest.approx(1.0195, rel=1e-6)
  # All in at 104: 1.0195 / 104 = 0.00980288 units, buying 0.00480288 for a fee of 0.0004995.
  assert infos[1]['trade'] == pytest.approx(0.00480288, rel=1e-5)
  assert infos[1]['fee'] == pytest.approx(0.0004995, rel=1e-4)
  # Entry (100 * 0.005 + 104 * 0.00480288) / 0.00980288 = 101.95978.
  assert float(states[2].entry_price) == pytest.approx(101.95978, rel=1e-6)
  # At 106: equity 1.0386063, weight 1.0004809, unrealised 3.8133574 percent.
  np.testing.assert_allclose(np.asarray(observations[2])[1:], [1.0004809, 3.8133574], rtol=2e-5)
  # A constant target does not churn: the third step trades nothing.
  assert infos[2]['trade'] == 0


@pytest.mark.parametrize('mode,allow_short,threshold,holes', [
    ('discrete', False, None, 0.0), ('discrete', True, None, 0.0), ('continuous', True, None, 0.0),
    ('continuous', False, 0.1, 0.0), ('discrete', False, None, 0.25),
    ('continuous', True, 0.1, 0.25)])
def test_env_equity_matches_the_backtest_engine(mode, allow_short, threshold, holes):
  """Same equity as the engine; with ``holes``, a share of bars fills holes (observed False): no
  fill at their open, the trade deferred to the next observed one in both."""
  rng = np.random.default_rng(0)
  bars = 600
  close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, bars)))
  open_price = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.002, bars))
  observed = rng.random(bars) >= holes
  params = env.make_params(rng.normal(size=(bars, 3)), open_price, close, observed=observed,
                           episode_length=bars - 1, action_mode=mode, allow_short=allow_short,
                           rebalance_threshold=threshold)
  if mode == 'discrete':
    actions = rng.integers(0, 3, bars - 1)
  else:
    actions = np.round(rng.uniform(-1.2, 1.2, bars - 1) * 4) / 4

  def body(state, action):
    state, reward, info = env.transition(state, env.action_to_target(action, state, params),
                                         params)
    return state, (reward, state.equity, state.target, info['trade'])

  _, (rewards, equity, targets, trades) = jax.lax.scan(body, env.initial_state(0),
                                                       jnp.asarray(actions))
  result = engine.run_backtest(np.r_[np.asarray(targets), 0.0], open_price, close,
                               allow_short=allow_short, rebalance_threshold=threshold,
                               observed=observed)
  assert result.stats['trades'] > 20
  np.testing.assert_allclose(np.asarray(equity), result.equity[1:] / 1e4, rtol=3e-5)
  np.testing.assert_allclose(np.cumsum(rewards), np.log(result.equity[1:] / 1e4), atol=3e-5)
  traded = np.r_[False, np.asarray(trades) != 0]
  np.testing.assert_array_equal(traded, result.traded_units != 0)
  assert not traded[~observed].any()


def test_vmapped_environments_equal_single_environments():
  rng = np.random.default_rng(1)
  bars, count, steps = 300, 6, 90
  close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, bars)))
  params = env.make_params(rng.normal(size=(bars, 2)), np.r_[100.0, close[:-1]], close,
                           episode_length=25, action_mode='continuous', allow_short=True)
  keys = jax.random.split(jax.random.PRNGKey(3), count)
  actions = jnp.asarray(rng.uniform(-1, 1, (steps, count)), jnp.float32)
  step_keys = jax.random.split(jax.random.PRNGKey(4), steps * count).reshape(steps, count, -1)

  batched_observation, batched_state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
  batched_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

  def body(state, inputs):
    action, key = inputs
    observation, state, reward, done, _ = batched_step(key, state, action, params)
    return state, (observation, reward, done)

  _, batched = jax.jit(lambda state: jax.lax.scan(body, state, (actions, step_keys)))(
      batched_state)

  def single_body(state, inputs):
    action, key = inputs
    observation, state, reward, done, _ = env.step(key, state, action, params)
    return state, (observation, reward, done)

  single = jax.jit(lambda state, actions, keys: jax.lax.scan(single_body, state, (actions, keys)))
  for index in range(count):
    observation, state = env.reset(keys[index], params)
    np.testing.assert_array_equal(observation, batched_observation[index])
    _, alone = single(state, actions[:, index], step_keys[:, index])
    np.testing.assert_allclose(alone[0], batched[0][:, index], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(alone[1], batched[1][:, index], atol=1e-6)
    np.testing.assert_array_equal(alone[2], batched[2][:, index])
  # Episodes of 25 steps over 90 steps: every environment finished (and was reset) 3 times.
  np.testing.assert_array_equal(np.asarray(batched[2]).sum(0), [3] * count)


@pytest.fixture(scope='module')
def store_markets(tmp_path_factory):
  """Two symbols over 10 days; AAAUSDT loses 50 bars mid-way (a new segment after the hole)."""
  first = features_lib.compute_features(make_klines(2880, seed=5, start='2024-01-01'))
  hole = slice(1500, 1550)
  first = first.drop(index=range(hole.start, hole.stop)).reset_index(drop=True)
  first.loc[hole.start:, schema.SEGMENT] = 1
  second = features_lib.compute_features(make_klines(2880, seed=6, start='2024-01-01'))
  data_config = ml_collections.ConfigDict({
      'store_dir': str(tmp_path_factory.mktemp('store')),
      'splits': {'train': ('2024-01-01', '2024-01-08'), 'validation': ('2024-01-08', '2024-01-09'),
                 'test': ('2024-01-09', '2024-01-11')}})
  env_config = market.env_config(episode_length=100, lookback=3)
  frames = {'AAAUSDT': first, 'BBBUSDT': second}
  markets, normalizer = market.build_markets(data_config, env_config, frames=frames)
  return markets, normalizer, frames, data_config


def test_episodes_never_cross_a_segment_symbol_or_split(store_markets):
  markets, _, frames, data_config = store_markets
  for name, split_market in markets.items():
    params = split_market.params
    times = np.concatenate([tape.timestamps for tape in split_market.tapes])
    symbol = np.concatenate([np.full(tape.length, i) for i, tape in enumerate(split_market.tapes)])
    starts = np.asarray(params.starts)
    assert len(starts) > 50
    # Look-back rows, every decision bar and the last fill bar of each episode.
    rows = starts[:, None] + np.arange(-params.lookback + 1, params.episode_length + 1)
    assert np.all(np.diff(times[rows], axis=1) == schema.BAR_NANOSECONDS)
    assert np.all(symbol[rows] == symbol[rows[:, :1]])
    start, end = (pd.Timestamp(t, tz='UTC').value for t in data_config.splits[name])
    assert times[rows].min() >= start and times[rows].max() < end
    # No warm-up row (invalid features) is ever observed.
    valid = np.concatenate([frames[tape.symbol].set_index(schema.TIMESTAMP).loc[
        pd.to_datetime(tape.timestamps, utc=True), schema.VALID].to_numpy()
        for tape in split_market.tapes])
    assert valid[rows].all()
  # Episodes reach right up to both sides of the hole in the training split.
  train = markets['train']
  aaa = train.tapes[0]
  hole_row = aaa.first + int(np.flatnonzero(np.diff(aaa.timestamps) > schema.BAR_NANOSECONDS)[0])
  starts = np.asarray(train.params.starts)
  assert (starts + train.params.episode_length == hole_row).any()
  assert (starts - train.params.lookback + 1 == hole_row + 1).any()
  assert not np.asarray(train.params.tradable)[hole_row]


def test_resets_draw_many_starts_and_features_are_train_normalised(store_markets):
  markets, normalizer, _, _ = store_markets
  params = markets['train'].params
  _, states = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(jax.random.PRNGKey(0), 500), params)
  rows = np.asarray(states.row)
  assert np.isin(rows, np.asarray(params.starts)).all()
  assert len(np.unique(rows)) > 250
  # On the training split's tradable bars the varying features are ~standardised.
  values = np.asarray(params.features)[np.asarray(params.tradable)]
  constant = [features_lib.FEATURES.index(name) for name in ('close', 'volume_ma', 'OBV')]
  assert np.all(values[:, constant] == 0)
  varying = np.ones(44, bool)
  varying[constant] = False
  np.testing.assert_allclose(values[:, varying].mean(0), 0.0, atol=0.25)
  np.testing.assert_allclose(values[:, varying].std(0), 1.0, atol=0.25)
  assert normalizer.train_split.name == 'train'
  # The observation is the last 3 bars' features (oldest first), then position and PnL.
  observation = env.observe(env.initial_state(rows[0]), params)
  assert observation.shape == (3 * 44 + 2,)
  np.testing.assert_array_equal(observation[:3 * 44].reshape(3, 44),
                                np.asarray(params.features)[rows[0] - 2:rows[0] + 1])


def test_bad_settings_are_clear_errors(store_markets):
  features, open_price, close = market.planted_signal_market(200)
  with pytest.raises(errors.ConfigError, match='unknown action mode .hybrid.*use one of'):
    env.make_params(features, open_price, close, action_mode='hybrid')
  with pytest.raises(errors.ConfigError, match='episode_length'):
    env.make_params(features, open_price, close, episode_length=0)
  with pytest.raises(errors.DataError, match='no run of 500 consecutive tradable bars'):
    env.make_params(features, open_price, close, episode_length=500)
  with pytest.raises(errors.DataError, match='features .* open .* close'):
    env.make_params(features, open_price[:-1], close)
  bad = close.copy()
  bad[50] = -1.0
  with pytest.raises(errors.DataError, match='non-positive or non-finite'):
    env.make_params(features, open_price, bad)
  discrete = env.make_params(features, open_price, close, episode_length=50)
  continuous = env.make_params(features, open_price, close, episode_length=50,
                               action_mode='continuous')
  with pytest.raises(errors.ConfigError, match='PPO here acts on discrete actions'):
    ppo.PPO.from_config(ppo.config(), continuous)
  with pytest.raises(errors.ConfigError, match='DDPG acts on a continuous'):
    ddpg.DDPG.from_config(ddpg.config(), discrete)
  with pytest.raises(errors.ConfigError, match='does not split into 3 minibatches'):
    ppo.PPO.from_config(ppo.config(num_envs=4, num_steps=4, num_minibatches=3), discrete)
  with pytest.raises(errors.ConfigError, match='unknown noise'):
    ddpg.DDPG.from_config(ddpg.config(noise='pink'), continuous)
  _, _, frames, data_config = store_markets
  with pytest.raises(errors.ConfigError, match='config.env.action_mode'):
    market.build_markets(data_config, market.env_config(action_mode='short'), frames=frames)
