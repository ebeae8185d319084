"""The ensemble backtest's plumbing (joins, targets) and the saved-run evaluation's range rules."""

import ml_collections
import numpy as np
import pandas as pd
import pytest

from configs import backtest as backtest_config
from configs import data as data_config
from configs import evaluate as evaluate_config
from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import ensemble
from quantum_alpha_jax.backtest import experiment
from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.evaluate import saved


def _frames(n=400, seed=0):
  rng = np.random.default_rng(seed)
  frames = {}
  for symbol in ('BTCUSDT', 'ETHUSDT'):
    times = pd.date_range('2024-01-01', periods=n, freq='5min', tz='UTC')
    values = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    frame = pd.DataFrame(values, columns=list(FEATURES))
    frame['close'] = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    frame['open'] = np.concatenate([[100.0], frame['close'].to_numpy()[:-1]])
    frame['RSI_14'] = rng.uniform(10, 90, n)
    frame.insert(0, 'timestamp', times)
    frames[symbol] = frame
  return frames


def _signals(frames, start=0, stop=None, seed=1):
  rng = np.random.default_rng(seed)
  parts = []
  for symbol, frame in frames.items():
    times = frame['timestamp'].iloc[start:stop]
    parts.append(pd.DataFrame({'symbol': symbol, 'timestamp': times.to_numpy()}))
  base = pd.concat(parts, ignore_index=True)
  n = len(base)
  return {
      'oracle': base.assign(p_up=rng.uniform(0.3, 0.7, n), uncertainty=rng.uniform(0.5, 1.5, n),
                            q50=rng.normal(size=n)),
      'guardian': base.assign(regime=rng.integers(0, 3, n), p_bull=0.3, p_bear=0.3,
                              p_sideways=0.4, risk_level=rng.integers(0, 3, n), risk_score=0.5),
      'strategist': base.assign(action=0, size=1.0, target_position=rng.choice([0.0, 1.0], n)),
  }


def test_signals_join_on_the_bars_every_model_has_and_carry_the_prices():
  frames = _frames()
  signals = _signals(frames, start=60)
  signals['oracle'] = _signals(frames, start=0, stop=376)['oracle']  # no signal for the last 24
  joined = experiment.join_signals(signals, frames)
  assert len(joined) == 2 * (376 - 60)
  for symbol, part in joined.groupby('symbol'):
    frame = frames[symbol].set_index('timestamp')
    np.testing.assert_array_equal(part['open'], frame.loc[part['timestamp'], 'open'])
    assert part['timestamp'].is_monotonic_increasing
  oracle = signals['oracle'].set_index(['symbol', 'timestamp'])
  np.testing.assert_array_equal(
      joined['p_up'], oracle.loc[list(zip(joined['symbol'], joined['timestamp'])), 'p_up'])
  with pytest.raises(errors.DataError, match='share only 0 bars'):
    experiment.join_signals({'oracle': _signals(frames, 0, 100)['oracle'],
                             'guardian': _signals(frames, 200)['guardian']}, frames)
  with pytest.raises(errors.ConfigError, match='no model'):
    experiment.join_signals({}, frames)


def test_targets_cover_every_loaded_ablation_and_the_heuristics_per_symbol():
  frames = _frames()
  config = backtest_config.get_config('quick')
  joined = experiment.join_signals({k: v for k, v in _signals(frames).items()
                                    if k != 'strategist'}, frames)
  targets = experiment.strategy_targets(joined, config, ('oracle', 'guardian'))
  assert set(targets) == {'oracle alone', 'guardian alone', 'heuristic: trend',
                          'heuristic: mean_reversion'}
  for symbol, rows in joined.groupby('symbol', sort=False).indices.items():
    expected = trajectories.heuristic_positions('mean_reversion',
                                                joined[list(FEATURES)].to_numpy()[rows])
    np.testing.assert_array_equal(targets['heuristic: mean_reversion'][rows], expected)
    rule = ensemble.ablation_configs(config.ensemble)['oracle alone']
    np.testing.assert_array_equal(targets['oracle alone'][rows], ensemble.positions(
        {name: joined[name].to_numpy()[rows] for name in ('p_up', 'uncertainty')}, rule))


def _saved_config():
  config = ml_collections.ConfigDict()
  config.data = data_config.get_config('quick')
  return config


def test_saved_run_evaluation_ranges():
  saved_config = _saved_config()
  config = evaluate_config.get_config()
  data = saved.evaluation_data_config(saved_config, config)
  assert tuple(data.splits.evaluation) == tuple(saved_config.data.splits.test)
  assert list(data.splits) == ['evaluation']
  config.start, config.end = '2024-01-10', '2024-01-20'
  with pytest.raises(errors.ConfigError, match='overlaps the run.s training split'):
    saved.evaluation_data_config(saved_config, config)
  config.end = ''
  with pytest.raises(errors.ConfigError, match='only one of them'):
    saved.evaluation_data_config(saved_config, config)
  config.start, config.data = '', '/nonexistent/store'
  with pytest.raises(errors.ConfigError, match='not a feature store'):
    saved.evaluation_data_config(saved_config, config)
  with pytest.raises(errors.ConfigError, match='unknown model'):
    saved._module('transformer')  # pylint: disable=protected-access


def test_a_missing_checkpoint_names_the_command_that_trains_it(tmp_path):
  with pytest.raises(errors.ConfigError, match='python -m experiments.guardian'):
    experiment.model_signals('guardian', tmp_path / 'nothing', data_config.get_config('quick'),
                             'test')
