"""Offline trajectories: fee accounting by hand, RTG discounting, the hindsight DP, the source."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data import trajectories as tr
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError


@pytest.fixture(scope='module')
def market():
  frames = synthetic.generate_market(('BTCUSDT', 'ETHUSDT'), start='2024-01-01', end='2024-01-09',
                                     seed=2)
  return {symbol: features.compute_features(frame) for symbol, frame in frames.items()}


@pytest.fixture(scope='module')
def datasets(market, tmp_path_factory):
  spec = tr.TrajectorySpec(episode_length=12, stride=3, allow_short=False)
  splits = [windows.Split('train', '2024-01-01', '2024-01-06'),
            windows.Split('validation', '2024-01-06', '2024-01-09')]
  data, normalizer = tr.make_datasets(market, spec, splits, 32,
                                      tmp_path_factory.mktemp('cache'), num_devices=1,
                                      shard_index=0, shard_count=1)
  return spec, data, normalizer


def test_rewards_match_a_hand_computed_episode_with_fees_and_slippage():
  spec = tr.TrajectorySpec(episode_length=3, fee_rate=0.001, slippage_bps=1.0, reward_scale=2.0)
  # Bars r-1 .. r+3. Enter from flat: buy at bar r+1's open, hold, sell at bar r+3's open.
  open_price = np.array([[100.0, 101.0, 102.0, 103.0, 104.0]])
  close = np.array([[100.5, 101.5, 102.5, 103.5, 104.5]])
  rewards = tr.episode_rewards(np.zeros(1), np.array([[1.0, 1.0, 0.0]]), open_price, close, spec)
  fee, slip = 0.001, 1e-4
  equity_r = 10_000.0  # flat through bar r
  buy_fill = 102.0 * (1 + slip)
  units = equity_r / buy_fill  # target 1 of the equity at the open
  cash = equity_r - units * buy_fill - fee * units * buy_fill
  equity_1 = cash + units * 102.5
  equity_2 = cash + units * 103.5
  sell_fill = 104.0 * (1 - slip)
  equity_3 = cash + units * sell_fill - fee * units * sell_fill
  expected = 2.0 * np.log([equity_1 / equity_r, equity_2 / equity_1, equity_3 / equity_2])
  np.testing.assert_allclose(rewards[0], expected, rtol=1e-12, atol=1e-14)
  # An initial long held into the episode pays no fee when it is kept, and the total reward is
  # the log of the final over the initial equity.
  held = tr.episode_rewards(np.array([0.5]), np.array([[0.5, 0.5, 0.5]]), open_price, close, spec)
  fill = 101.0 * (1 + slip)
  units = 0.5 * 10_000.0 / fill
  cash = 10_000.0 - units * fill - fee * units * fill
  marks = cash + units * close[0, 1:]
  np.testing.assert_allclose(held[0], 2.0 * np.diff(np.log(marks)), rtol=1e-12)


def test_returns_to_go_match_a_direct_discounted_sum():
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=(5, 17))
  gamma = 0.9
  got = tr.discounted_returns_to_go(rewards, gamma)
  expected = np.array([[sum(gamma**k * row[t + k] for k in range(len(row) - t))
                        for t in range(len(row))] for row in rewards])
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  assert np.allclose(tr.discounted_returns_to_go(rewards, 1.0)[:, 0], rewards.sum(1))


def test_hindsight_dp_is_the_brute_force_optimum():
  rng = np.random.default_rng(1)
  gains = rng.normal(0, 0.002, size=(30, 7))
  cost = 0.0011
  for allow_short, levels in ((False, (0.0, 1.0)), (True, (-1.0, 0.0, 1.0))):
    initial = rng.choice(levels, size=30)
    got = tr.hindsight_levels(gains, cost, initial, allow_short)
    for episode in range(30):
      def value(path):
        previous = np.concatenate([[initial[episode]], path[:-1]])
        return np.dot(path, gains[episode]) - cost * np.abs(np.asarray(path) - previous).sum()
      best = max(value(np.array(path)) for path in itertools.product(levels, repeat=7))
      assert value(got[episode]) == pytest.approx(best, abs=1e-12)


def test_actions_and_positions_round_trip():
  rng = np.random.default_rng(2)
  for allow_short in (False, True):
    low = -1.0 if allow_short else 0.0
    positions = np.round(rng.choice([low, 0.0, 0.5, 1.0, 0.25], size=(20, 15)), 2)
    initial = rng.choice([0.0, 0.5], size=20)
    actions, sizes = tr.actions_from_positions(positions, initial)
    assert set(np.unique(actions)) <= {tr.HOLD, tr.BUY, tr.SELL}
    previous = initial.astype(np.float32)
    for t in range(15):
      previous = tr.next_position(previous, actions[:, t], sizes[:, t], allow_short)
      np.testing.assert_array_equal(previous, positions[:, t].astype(np.float32))
    if not allow_short:
      assert np.all(sizes[actions == tr.SELL] == 0)


def test_heuristics_are_causal():
  rng = np.random.default_rng(3)
  raw = np.abs(rng.normal(100, 5, size=(200, len(features.FEATURES))))
  raw[:, features.FEATURES.index('RSI_14')] = rng.uniform(10, 90, 200)
  for name in tr.HEURISTICS:
    base = tr.heuristic_positions(name, raw, seed=4)
    changed = raw.copy()
    changed[120:] = rng.permutation(changed[120:])
    np.testing.assert_array_equal(tr.heuristic_positions(name, changed, seed=4)[:120], base[:120])
    assert base.min() >= 0 and base.max() <= 1


def test_momentum_rules_match_pandas_and_their_actions_are_canonical(market):
  frame = market['BTCUSDT'].iloc[300:900].reset_index(drop=True)
  raw = frame[list(features.FEATURES)].to_numpy(np.float64)
  for bars, threshold in ((3, 0.0), (12, 0.5), (60, 1.0)):
    scale = threshold * frame['volatility_240'] * np.sqrt(bars)
    events = np.where(frame[f'returns_{bars}'] > scale, 1.0,
                      np.where(frame[f'returns_{bars}'] < -scale, 0.0, np.nan))
    expected = pd.Series(events).ffill().fillna(0.0).to_numpy()
    levels = tr.momentum_levels(raw[None], np.zeros(1), False, bars, threshold)[0]
    np.testing.assert_array_equal(levels, expected)
    assert 0 < levels.mean() < 1
    # The rule's action from the position it holds is the canonical action of its own path.
    held = np.r_[0.0, levels[:-1]]
    np.testing.assert_array_equal(
        tr.rule_actions('momentum', raw, held, False, (bars, threshold)),
        tr.actions_from_positions(levels)[0])


def test_behaviour_conditioning_gives_each_episode_its_behaviours_mean_training_return(
    market, tmp_path):
  spec = tr.TrajectorySpec(episode_length=12, stride=3, policies=('trend', 'random', 'momentum'),
                           policy_weights=(1.0, 1.0, 2.0), momentum_rules=((3, 0.0), (60, 1.0)),
                           rule_noise=0.05, condition_on='behaviour')
  splits = [windows.Split('train', '2024-01-01', '2024-01-06'),
            windows.Split('validation', '2024-01-06', '2024-01-09')]
  data, _ = tr.make_datasets(market, spec, splits, 32, tmp_path, num_devices=1, shard_index=0,
                             shard_count=1)
  train = data['train'].source.episodes
  means = pd.Series(train['returns_to_go'][:, 0].astype(np.float64)).groupby(
      [train['behaviour'], train['size']]).mean()
  assert len(means) == len(spec.behaviours) * len(spec.sizes) == 16
  for split in data.values():
    source = split.source
    batch = source.gather(np.arange(len(source)))
    # The same token at every step: the mean first return-to-go of the episode's behaviour at its
    # size, on the TRAINING split.
    size = source.episodes['size']
    assert set(np.unique(size)) <= set(np.float32(spec.sizes))
    expected = spec.rtg_scale * means.loc[list(zip(batch['behaviour'], size))].to_numpy()
    np.testing.assert_allclose(batch['rtg'], np.repeat(expected[:, None], 12, 1), rtol=1e-5,
                               atol=1e-6)
  quantiles = tr.initial_return_quantiles(data['train'].source)
  assert quantiles['max'] == pytest.approx(means.max(), rel=1e-5)


def test_episodes_stay_in_one_segment_and_split_and_score_consistently(datasets):
  spec, data, _ = datasets
  for name, split in data.items():
    source = split.source
    arrays = source.arrays
    starts = source.episodes['start_row']
    span = starts[:, None] + np.arange(-1, spec.episode_length + 1)
    segment = np.asarray(arrays.segment)[span]
    assert np.all(segment == segment[:, :1])
    times = np.asarray(arrays.timestamp)[span]
    assert times.min() >= split.split.start_ns and times.max() < split.split.end_ns
    assert np.all(np.isin(span, source.rows))
    # The stored rewards are those of the engine on the episode's own bars.
    rows = span[:5]
    rewards = tr.episode_rewards(
        source.episodes['initial_position'][:5], source.episodes['positions'][:5],
        arrays.features[:, features.FEATURES.index('open')][rows].astype(np.float64),
        np.asarray(arrays.close)[rows], spec)
    np.testing.assert_allclose(source.episodes['rewards'][:5], rewards, rtol=1e-5, atol=1e-7)
  assert len(data['train'].source) > len(data['validation'].source)
  behaviours = data['train'].source.summary()['behaviours']
  assert set(behaviours) == set(spec.behaviours)
  # The exact hindsight oracle earns more than random trading, on average, after fees.
  assert behaviours['oracle(noise=0)']['mean_return'] > behaviours['random']['mean_return'] + 1e-3


def test_gather_builds_the_model_inputs(datasets):
  spec, data, normalizer = datasets
  source = data['train'].source
  batch = source.gather(np.array([3, 0, -1]))
  length = spec.episode_length
  assert batch['states'].shape == (3, length, tr.STATE_SIZE)
  assert batch['mask'].tolist() == [1.0, 1.0, 0.0]
  assert np.all(batch['step_mask'][2] == 0) and np.all(batch['size_mask'][2] == 0)
  np.testing.assert_array_equal(batch['timesteps'][0], np.arange(length))
  # States: each bar normalised relative to itself, then the position held into the decision.
  start = source.episodes['start_row'][3]
  values = np.asarray(source.arrays.features[start:start + length], np.float32)
  expected = normalizer.apply(values[:, None, :], values)[:, 0]
  np.testing.assert_allclose(batch['states'][0, :, :-1], expected, rtol=1e-6, atol=1e-6)
  positions = source.episodes['positions'][3]
  previous = np.r_[source.episodes['initial_position'][3], positions[:-1]]
  np.testing.assert_array_equal(batch['states'][0, :, -1], previous)
  # Return tokens: rtg_scale times the discounted sum of the episode's rewards.
  rewards = source.episodes['rewards'][3].astype(np.float64)
  discounted = [sum(spec.discount**k * rewards[t + k] for k in range(length - t))
                for t in range(length)]
  np.testing.assert_allclose(batch['rtg'][0], spec.rtg_scale * np.array(discounted), rtol=1e-4,
                             atol=1e-4)
  # The normaliser was fitted on the training split's bars alone, one bar at a time.
  assert normalizer.spec.encoder_length == 1 and normalizer.train_split.name == 'train'


def test_bad_trajectory_settings_are_config_errors():
  with pytest.raises(ConfigError, match='discount'):
    tr.TrajectorySpec(episode_length=10, discount=1.5)
  with pytest.raises(ConfigError, match='policies'):
    tr.TrajectorySpec(episode_length=10, policies=('oracle', 'breakout'), policy_weights=(1, 1))
  with pytest.raises(ConfigError, match='momentum_rules'):
    tr.TrajectorySpec(episode_length=10, policies=('momentum',), policy_weights=(1,),
                      momentum_rules=((5, 1.0),))
  with pytest.raises(ConfigError, match='condition_on'):
    tr.TrajectorySpec(episode_length=10, condition_on='luck')
  with pytest.raises(ConfigError, match='policy_weights'):
    tr.TrajectorySpec(episode_length=10, policy_weights=(1.0,))
  with pytest.raises(ConfigError, match='sizes'):
    tr.TrajectorySpec(episode_length=10, sizes=(0.0, 1.5))
  with pytest.raises(ConfigError, match='unknown keys'):
    tr.TrajectorySpec.from_config({'strides': 4}, 10)
  assert math.isclose(tr.TrajectorySpec(episode_length=4).cost, 0.0011)


def test_best_selection_keeps_the_behaviour_with_the_highest_return_after_fees(market, tmp_path):
  """selection='best' keeps, per start, the behaviour whose episode return is the highest of those
  acted one at a time from the same start (rule_noise 0: every rule is deterministic); with
  condition_on='behaviour' every episode then carries one token, the kept episodes' mean R_0."""
  common = dict(episode_length=24, stride=5, allow_short=False, rule_noise=0.0, sizes=(1.0,),
                policies=('trend', 'mean_reversion', 'flat'), policy_weights=(1.0, 1.0, 1.0))
  best = tr.TrajectorySpec(selection='best', **common)
  arrays = windows.WindowArrays.from_frames(market, tmp_path / 'cache')
  rows = np.flatnonzero(np.asarray(arrays.valid))
  starts = tr.episode_starts(arrays, rows, 24, 5)
  kept = tr.generate_episodes(arrays, starts, best, seed=3)
  alone = {name: tr.generate_episodes(arrays, starts, best, seed=3, policies=(name,))
           for name in ('trend', 'mean_reversion', 'flat')}
  totals = np.stack([alone[name]['rewards'].sum(axis=1) for name in best.behaviours])  # [3, E]
  np.testing.assert_allclose(kept['rewards'].sum(axis=1), totals.max(axis=0), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(kept['behaviour'], totals.argmax(axis=0))
  for index, name in enumerate(best.behaviours):
    chosen = kept['behaviour'] == index
    np.testing.assert_array_equal(kept['positions'][chosen], alone[name]['positions'][chosen])
  # Every behaviour wins somewhere on this market, so the test sees a real choice.
  assert set(np.unique(kept['behaviour'])) == {0, 1, 2}
  # The flat behaviour holds nothing after the first open.
  assert not alone['flat']['positions'].any()
  splits = [windows.Split('train', '2024-01-01', '2024-01-06'),
            windows.Split('validation', '2024-01-06', '2024-01-09')]
  conditioned = tr.TrajectorySpec(selection='best', condition_on='behaviour', **common)
  data, _ = tr.make_datasets(market, conditioned, splits, 16, tmp_path / 'cache2', num_devices=1,
                             shard_index=0, shard_count=1)
  train = data['train'].source
  tokens = train.return_tokens(np.arange(len(train)))
  first = train.episodes['returns_to_go'][:, 0].astype(np.float64)
  np.testing.assert_allclose(tokens, first.mean(), rtol=1e-5)  # unscaled, as every token
  with pytest.raises(ConfigError, match='selection'):
    tr.TrajectorySpec(selection='greedy', **common)


def test_contrast_episodes_keep_another_behaviour_and_carry_a_lower_token(market, tmp_path):
  """selection='best' with contrast_fraction: that share of the starts keeps a behaviour other than
  the winner (acted exactly as alone), the rest the winner; with condition_on='behaviour' the
  winners carry their mean R_0 and each contrast behaviour its own mean among contrast episodes,
  every one of them below the winners' token."""
  common = dict(episode_length=24, stride=5, allow_short=False, rule_noise=0.0, sizes=(1.0,),
                policies=('trend', 'mean_reversion', 'flat'), policy_weights=(1.0, 1.0, 1.0),
                selection='best')
  spec = tr.TrajectorySpec(contrast_fraction=0.4, **common)
  arrays = windows.WindowArrays.from_frames(market, tmp_path / 'cache')
  starts = tr.episode_starts(arrays, np.flatnonzero(np.asarray(arrays.valid)), 24, 5)
  kept = tr.generate_episodes(arrays, starts, spec, seed=3)
  alone = {name: tr.generate_episodes(arrays, starts, spec, seed=3, policies=(name,))
           for name in spec.behaviours}
  totals = np.stack([alone[name]['rewards'].sum(axis=1) for name in spec.behaviours])
  winner = totals.argmax(axis=0)
  contrast = ~kept['best']
  assert 0.3 < contrast.mean() < 0.5, contrast.mean()
  np.testing.assert_array_equal(kept['behaviour'][~contrast], winner[~contrast])
  assert (kept['behaviour'][contrast] != winner[contrast]).all()
  for index, name in enumerate(spec.behaviours):
    chosen = kept['behaviour'] == index
    np.testing.assert_array_equal(kept['positions'][chosen], alone[name]['positions'][chosen])
  # contrast_policies: the contrast episodes follow those behaviours only (here flat; a start
  # whose winner is flat has no other and keeps it).
  only_flat = tr.generate_episodes(arrays, starts, tr.TrajectorySpec(
      contrast_fraction=0.4, contrast_policies=('flat',), **common), seed=3)
  flat = spec.behaviours.index('flat')
  assert (only_flat['behaviour'][~only_flat['best']] == flat).all()
  assert 0.2 < (~only_flat['best']).mean() < 0.45
  assert only_flat['best'][winner == flat].all()
  with pytest.raises(ConfigError, match='contrast_policies'):
    tr.TrajectorySpec(contrast_fraction=0.4, contrast_policies=('random',), **common)
  # Without contrast nothing changes: every episode keeps its winner.
  assert tr.generate_episodes(arrays, starts, tr.TrajectorySpec(**common), seed=3)['best'].all()
  splits = [windows.Split('train', '2024-01-01', '2024-01-06'),
            windows.Split('validation', '2024-01-06', '2024-01-09')]
  conditioned = tr.TrajectorySpec(contrast_fraction=0.4, condition_on='behaviour', **common)
  data, _ = tr.make_datasets(market, conditioned, splits, 16, tmp_path / 'cache2', num_devices=1,
                             shard_index=0, shard_count=1)
  train = data['train'].source
  tokens = train.return_tokens(np.arange(len(train)))[:, 0].astype(np.float64)
  first = train.episodes['returns_to_go'][:, 0].astype(np.float64)
  best = train.episodes['best']
  np.testing.assert_allclose(tokens[best], first[best].mean(), rtol=1e-5)
  for index in np.unique(train.episodes['behaviour'][~best]):
    group = ~best & (train.episodes['behaviour'] == index)
    np.testing.assert_allclose(tokens[group], first[group].mean(), rtol=1e-5, atol=1e-9)
  assert tokens[~best].max() < tokens[best].min()
  with pytest.raises(ConfigError, match='contrast_fraction'):
    tr.TrajectorySpec(contrast_fraction=1.0, **common)


def test_selection_horizon_chooses_the_winner_over_the_episode_and_the_bars_after_it(market,
                                                                                     tmp_path):
  """selection_horizon H: the kept behaviour is the one with the highest return over the episode's
  L bars and the next H, acting on through them (each acted alone over L + H bars from the same
  start), and the episode keeps its first L bars and their rewards."""
  length, horizon = 24, 48
  common = dict(stride=5, allow_short=False, rule_noise=0.0, sizes=(1.0,),
                policies=('trend', 'mean_reversion', 'flat'), policy_weights=(1.0, 1.0, 1.0))
  spec = tr.TrajectorySpec(episode_length=length, selection='best', selection_horizon=horizon,
                           **common)
  arrays = windows.WindowArrays.from_frames(market, tmp_path / 'cache')
  starts = tr.episode_starts(arrays, np.flatnonzero(np.asarray(arrays.valid)), length + horizon, 5)
  kept = tr.generate_episodes(arrays, starts, spec, seed=3)
  long = tr.TrajectorySpec(episode_length=length + horizon, **common)
  alone = {name: tr.generate_episodes(arrays, starts, long, seed=3, policies=(name,))
           for name in spec.behaviours}
  totals = np.stack([alone[name]['rewards'].sum(axis=1) for name in spec.behaviours])
  np.testing.assert_array_equal(kept['behaviour'], totals.argmax(axis=0))
  for index, name in enumerate(spec.behaviours):
    chosen = kept['behaviour'] == index
    np.testing.assert_array_equal(kept['positions'][chosen],
                                  alone[name]['positions'][chosen, :length])
  short = tr.generate_episodes(arrays, starts, tr.TrajectorySpec(
      episode_length=length, selection='best', **common), seed=3)
  # The horizon changes the choice (else this test could not tell it from the episode alone).
  assert (short['behaviour'] != kept['behaviour']).mean() > 0.1
  same = short['behaviour'] == kept['behaviour']
  np.testing.assert_allclose(kept['rewards'][same], short['rewards'][same], atol=1e-7)
  with pytest.raises(ConfigError, match='selection_horizon'):
    tr.TrajectorySpec(episode_length=length, selection_horizon=-1, **common)


def test_oracle_plans_over_the_horizon_with_the_cost_multiplier(market, tmp_path):
  """oracle_cost_multiplier k and selection_horizon H: the oracle's positions are the first L of
  the exact hindsight plan over the episode and the next H bars at k times the cost (an
  independent DP run here), and a larger k trades less."""
  length, horizon, multiplier = 24, 36, 6.0
  common = dict(episode_length=length, stride=7, allow_short=False, sizes=(1.0,),
                policies=('oracle',), policy_weights=(1.0,), oracle_noise=(0.0,))
  spec = tr.TrajectorySpec(oracle_cost_multiplier=multiplier, selection_horizon=horizon, **common)
  arrays = windows.WindowArrays.from_frames(market, tmp_path / 'cache')
  starts = tr.episode_starts(arrays, np.flatnonzero(np.asarray(arrays.valid)), length + horizon, 7)
  episodes = tr.generate_episodes(arrays, starts, spec, seed=1)
  log_close = np.log(np.asarray(arrays.close, np.float64))
  gains = log_close[starts[:, None] + np.arange(1, length + horizon + 1)] - log_close[
      starts[:, None] + np.arange(length + horizon)]
  levels = np.array([0.0, 1.0])
  value = np.zeros((len(starts), 2))
  choice = np.zeros((len(starts), length + horizon, 2), int)
  for t in range(length + horizon - 1, -1, -1):  # value by the level held before step t
    total = (levels[None, None, :] * gains[:, t, None, None]
             - spec.cost * multiplier * np.abs(levels[:, None] - levels[None, :])[None]
             + value[:, None, :])
    choice[:, t], value = total.argmax(axis=2), total.max(axis=2)
  state = (episodes['initial_position'] > 0).astype(int)
  expected = np.empty((len(starts), length))
  for t in range(length):
    state = choice[np.arange(len(starts)), t, state]
    expected[:, t] = levels[state]
  np.testing.assert_array_equal(episodes['positions'], expected)
  plain = tr.generate_episodes(arrays, starts, tr.TrajectorySpec(**common), seed=1)
  changes = lambda e: np.abs(np.diff(e['positions'], axis=1)).sum()
  assert changes(episodes) < 0.5 * changes(plain)
  with pytest.raises(ConfigError, match='oracle_cost_multiplier'):
    tr.TrajectorySpec(oracle_cost_multiplier=0.5, **common)


def test_each_bar_selection_acts_the_rule_that_does_best_over_the_next_bars(market, tmp_path):
  """selection='each_bar': at every bar the position is the first step of whichever behaviour,
  acted from the position held into that bar, earns most over the next H bars after fees; checked
  on a sample of episodes against the single-series engine (fills.simulate) and the rules alone."""
  from quantum_alpha_jax import fills  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import policies  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data.features import FEATURES  # pylint: disable=g-import-not-at-top
  length, horizon = 24, 12
  spec = tr.TrajectorySpec(episode_length=length, stride=11, allow_short=False, sizes=(1.0,),
                           policies=('trend', 'mean_reversion', 'flat'),
                           policy_weights=(1.0, 1.0, 1.0), selection='each_bar',
                           selection_horizon=horizon)
  arrays = windows.WindowArrays.from_frames(market, tmp_path / 'cache')
  starts = tr.episode_starts(arrays, np.flatnonzero(np.asarray(arrays.valid)), length + horizon, 11)
  episodes = tr.generate_episodes(arrays, starts, spec, seed=2)
  features = np.asarray(arrays.features, np.float64)
  open_price, close = features[:, FEATURES.index('open')], np.asarray(arrays.close, np.float64)
  observed = np.asarray(arrays.observed, bool)
  switches = 0
  for number in range(0, len(starts), max(1, len(starts) // 12)):
    held, start = float(episodes['initial_position'][number]), int(starts[number])
    for t in range(length):
      bars = np.arange(start + t - 1, start + t + horizon + 1)  # r+t-1 .. r+t+H
      ahead = features[start + t:start + t + horizon]
      plans = [policies.forward_fill(policies.rule_events(name, ahead[None], False),
                                     np.array([np.sign(held)]))[0]
               for name in ('trend', 'mean_reversion')] + [np.zeros(horizon)]
      totals = []
      for plan in plans:
        target = np.concatenate([[held], plan, plan[-1:]])
        state = fills.simulate(target, open_price[bars], 1.0, spec.fee_rate, spec.slippage_bps,
                               None, observed=observed[bars])
        equity = state['cash'] + state['units'] * close[bars]
        totals.append(np.log(equity[-1] / equity[1]))
      chosen = plans[int(np.argmax(np.round(totals, 10)))][0]
      assert episodes['positions'][number, t] == chosen, (number, t, totals)
      switches += chosen != held
      held = chosen
  assert switches > 5  # the sample trades, so it checks decisions and not only holds
  with pytest.raises(ConfigError, match='each_bar'):
    tr.generate_episodes(arrays, starts, dataclasses.replace(spec, selection_horizon=0), seed=2)


def test_the_reference_rule_of_a_hindsight_selection_is_the_one_kept_most_often(market, tmp_path):
  """With selection='best' a kept rule's mean return is conditioned on its having won, so the
  reference behaviour the reports score agreement with is the rule kept most often; with sampled
  behaviours it is the rule with the highest mean return."""
  from quantum_alpha_jax.tasks.strategist.imitation import best_causal_behaviour  # pylint: disable=g-import-not-at-top
  common = dict(episode_length=24, stride=3, allow_short=False, rule_noise=0.0, sizes=(1.0,),
                policies=('trend', 'momentum', 'flat'), policy_weights=(1.0, 1.0, 1.0),
                momentum_rules=((3, 0.0), (12, 0.5), (60, 0.5)))
  splits = [windows.Split('train', '2024-01-01', '2024-01-06'),
            windows.Split('validation', '2024-01-06', '2024-01-09')]
  for selection in ('best', 'sampled'):
    spec = tr.TrajectorySpec(selection=selection, **common)
    data, _ = tr.make_datasets(market, spec, splits, 16, tmp_path / selection, num_devices=1,
                               shard_index=0, shard_count=1)
    summary = data['train'].source.summary()['behaviours']
    rules = {name: entry for name, entry in summary.items() if name != 'flat'}
    key = 'episodes' if selection == 'best' else 'mean_return'
    expected = max(rules, key=lambda name: rules[name][key])
    assert best_causal_behaviour(data['train'].source) == expected
    if selection == 'best':  # the case that matters: the most often kept is not the top mean
      assert expected != max(rules, key=lambda name: rules[name]['mean_return'])
