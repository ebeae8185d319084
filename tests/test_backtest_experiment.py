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
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.tasks import saved


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


def test_every_bar_of_the_split_is_kept_and_each_model_is_left_joined():
  """The split's price grid defines the bars; a model without a signal at a bar leaves NaN there
  and never removes the bar (nor from buy-and-hold)."""
  frames = _frames()
  split = windows.Split('test', '2024-01-01 01:00', '2024-01-02 07:40')  # bars 12..379
  signals = _signals(frames, start=60)
  signals['oracle'] = _signals(frames, start=0, stop=376)['oracle']  # none for the last 24
  joined = experiment.join_signals(signals, frames, split)
  assert len(joined) == 2 * (380 - 12)
  for symbol, part in joined.groupby('symbol'):
    frame = frames[symbol].set_index('timestamp')
    np.testing.assert_array_equal(part['timestamp'], frame.index[12:380])
    np.testing.assert_array_equal(part['open'], frame['open'].iloc[12:380])
    assert part['usable'].all() and part['observed'].all()
    np.testing.assert_array_equal(part['p_up'].isna(), np.arange(12, 380) >= 376)
    np.testing.assert_array_equal(part['regime'].isna(), np.arange(12, 380) < 60)
  oracle = signals['oracle'].set_index(['symbol', 'timestamp'])
  has = joined['p_up'].notna().to_numpy()
  np.testing.assert_array_equal(
      joined.loc[has, 'p_up'],
      oracle.loc[list(zip(joined.loc[has, 'symbol'], joined.loc[has, 'timestamp'])), 'p_up'])
  assert experiment.signal_coverage(joined, ('oracle',)) == {'oracle': (376 - 12) / (380 - 12)}
  with pytest.raises(errors.DataError, match='guardian has a signal for none'):
    experiment.join_signals({'oracle': _signals(frames, 0, 100)['oracle'],
                             'guardian': _signals(frames, 390)['guardian']}, frames, split)
  with pytest.raises(errors.DataError, match='holds 0 bars'):
    experiment.join_signals(signals, frames, windows.Split('late', '2025-01-01', '2025-02-01'))
  with pytest.raises(errors.ConfigError, match='no model'):
    experiment.join_signals({}, frames)


def test_targets_cover_every_loaded_ablation_and_the_heuristics_per_symbol():
  frames = _frames()
  config = backtest_config.get_config('quick')
  signals = {k: v for k, v in _signals(frames, start=30).items() if k != 'strategist'}
  joined = experiment.join_signals(signals, frames)  # no signal for each symbol's first 30 bars
  joined.loc[joined.index[5], 'usable'] = False
  targets = experiment.strategy_targets(joined, config, ('oracle', 'guardian'))
  assert set(targets) == {'oracle alone', 'guardian alone', 'heuristic: trend',
                          'heuristic: mean_reversion'}
  for symbol, rows in joined.groupby('symbol', sort=False).indices.items():
    expected = trajectories.heuristic_positions('mean_reversion',
                                                joined[list(FEATURES)].to_numpy()[rows])
    expected[~joined['usable'].to_numpy()[rows]] = 0.0
    np.testing.assert_array_equal(targets['heuristic: mean_reversion'][rows], expected)
    rule = ensemble.ablation_configs(config.ensemble)['oracle alone']
    # Flat before the models' first signal, then the rule on the bars that have one.
    assert np.all(targets['oracle alone'][rows[:30]] == 0.0)
    np.testing.assert_array_equal(targets['oracle alone'][rows[30:]], ensemble.positions(
        {name: joined[name].to_numpy()[rows[30:]] for name in ('p_up', 'uncertainty')}, rule))


@pytest.fixture(scope='module')
def small_oracle():
  """An untrained small Oracle (its signals need not be good, only causal) and its market."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import oracle as oracle_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import features  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top
  config = oracle_config.get_config('quick')
  config.model.update(encoder_length=24, decoder_length=6, hidden_size=8, num_heads=2,
                      hidden_continuous_size=4, lstm_layers=1, dropout_rate=0.0)
  task = oracle.OracleTask.from_config(config)
  market = {symbol: features.compute_features(frame) for symbol, frame in
            synthetic.generate_market(('BTCUSDT', 'ETHUSDT'), start='2024-01-01',
                                      end='2024-01-06', seed=2).items()}
  params = task.init_params(jax.random.PRNGKey(0), oracle.example_batch(task.model))
  return task, oracle.window_spec(config), params, market


@pytest.mark.parametrize('after_cut', ['the data ends', 'a hole opens'])
def test_bars_signals_and_positions_up_to_t_ignore_every_later_bar(tmp_path, after_cut,
                                                                  small_oracle):
  """Rewrite the market after bar t (cut it there, or open a data hole right after it): the traded
  bars up to t, the Oracle's signals at them and every strategy's targets do not change. The
  Oracle's windows need 6 bars after their anchor, so before the fix the bars just before the cut
  lost their signal and, through the inner join, left every strategy's backtest."""
  from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top

  task, spec, params, market = small_oracle
  splits = [windows.Split('train', '2024-01-01', '2024-01-04'),
            windows.Split('test', '2024-01-04', '2024-01-06')]
  cut = pd.Timestamp('2024-01-05 06:00', tz='UTC')
  changed = dict(market)
  frame = market['BTCUSDT']
  after = (frame['timestamp'] > cut).to_numpy()
  if after_cut == 'a hole opens':  # 50 bars missing after t, then the market goes on
    after = after & (frame['timestamp'] <= cut + 50 * pd.Timedelta('5min')).to_numpy()
  changed['BTCUSDT'] = frame.loc[~after].reset_index(drop=True)
  config = backtest_config.get_config('quick')
  results, normalizer = [], None
  for name, frames in (('original', market), ('changed', changed)):
    data, normalizer = windows.make_datasets(frames, spec, splits, 64, tmp_path / name,
                                             normalizer=normalizer, num_devices=1,
                                             shard_index=0, shard_count=1)
    signals = oracle.bar_signals(task, params, data['test'], batch_size=512, progress=False)
    joined = experiment.join_signals({'oracle': signals}, frames, splits[1])
    if not results:  # enter on the more confident half of the (untrained) forecasts
      config.ensemble.oracle.enter = float(joined['p_up'].median())
    targets = experiment.strategy_targets(joined, config, ('oracle',))
    results.append((joined, targets))
  (before, before_targets), (later, later_targets) = results
  up_to_t = lambda joined: (joined['timestamp'] <= cut).to_numpy()
  assert up_to_t(before).sum() == up_to_t(later).sum() > 600
  columns = ['symbol', 'timestamp', 'open', 'close', 'p_up', 'uncertainty', 'q50']
  pd.testing.assert_frame_equal(before.loc[up_to_t(before), columns].reset_index(drop=True),
                                later.loc[up_to_t(later), columns].reset_index(drop=True))
  btc = (before['symbol'] == 'BTCUSDT').to_numpy() & up_to_t(before)
  assert before.loc[btc, 'p_up'].notna().all()  # the bars just before the cut keep their signal
  for name, target in before_targets.items():
    np.testing.assert_array_equal(target[up_to_t(before)], later_targets[name][up_to_t(later)])
  assert 0 < before_targets['oracle alone'][btc].mean() < 1


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
    registry.get('transformer')


def test_a_missing_checkpoint_names_the_command_that_trains_it(tmp_path):
  with pytest.raises(errors.ConfigError, match='python -m experiments.guardian'):
    experiment.model_signals('guardian', tmp_path / 'nothing', data_config.get_config('quick'),
                             'test')


def test_the_oracle_signals_keep_the_forecasters_contract(tmp_path, small_oracle):
  from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top
  from tests import bar_signals_contract  # pylint: disable=g-import-not-at-top

  task, spec, params, market = small_oracle
  splits = [windows.Split('train', '2024-01-01', '2024-01-04'),
            windows.Split('test', '2024-01-04', '2024-01-06')]
  data, _ = windows.make_datasets(market, spec, splits, 64, tmp_path, num_devices=1,
                                  shard_index=0, shard_count=1)
  bar_signals_contract.check(
      oracle.bar_signals(task, params, data['test'], batch_size=100, progress=False), task, params,
      data['test'], 100)
