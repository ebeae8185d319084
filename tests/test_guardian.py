"""The Guardian: loss pieces against numpy, augmentations, rule labels against pandas, learning
that beats chance and the baselines on held-out time, bar signals without look-ahead, load(),
1 vs 4 devices and clear config errors."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from configs import guardian as guardian_config
from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, DataError
from quantum_alpha_jax.tasks import guardian
from tests.devices import run_with_devices

SPLITS = {'train': ('2024-01-01', '2024-02-05'), 'validation': ('2024-02-05', '2024-02-15'),
          'test': ('2024-02-15', '2024-02-26')}


# ----------------------------------------------------------------------------------------------
# Loss pieces against independent numpy computations.


def _reference_nt_xent(first, second, temperature, mask, related):
  """SimCLR's NT-Xent written out with loops (independent of the vectorised version)."""
  batch = len(first)
  views = np.concatenate([first, second]).astype(np.float64)
  views /= np.linalg.norm(views, axis=1, keepdims=True)
  losses = np.zeros(2 * batch)
  for i in range(2 * batch):
    partner = (i + batch) % (2 * batch)
    denominator = 0.0
    for k in range(2 * batch):
      if k == i or not mask[k % batch]:
        continue
      if k != partner and related[i % batch, k % batch]:
        continue
      denominator += math.exp(views[i] @ views[k] / temperature)
    losses[i] = -(views[i] @ views[partner] / temperature) + math.log(denominator)
  return 0.5 * (losses[:batch] + losses[batch:])


def test_nt_xent_matches_a_loop_over_pairs_with_padding_and_related_windows():
  rng = np.random.default_rng(0)
  batch = 7
  first = rng.normal(size=(batch, 5))
  second = first + 0.3 * rng.normal(size=(batch, 5))
  mask = np.array([1, 1, 1, 1, 1, 0, 0], np.float32)
  anchors = np.array([0, 10, 200, 215, 600, 0, 0])
  related = np.abs(anchors[:, None] - anchors[None, :]) < 20
  nt_xent = jax.jit(guardian.nt_xent, static_argnums=2)
  got, top1 = nt_xent(jnp.asarray(first), jnp.asarray(second), 0.5, jnp.asarray(mask),
                      guardian.overlapping(jnp.asarray(anchors), 20))
  expected = _reference_nt_xent(first, second, 0.5, mask, related)
  np.testing.assert_allclose(np.asarray(got)[:5], expected[:5], rtol=1e-5)
  assert np.all((np.asarray(top1) >= 0) & (np.asarray(top1) <= 1))
  # Without the related pairs every other real view is a negative.
  plain, _ = nt_xent(jnp.asarray(first), jnp.asarray(second), 0.2, jnp.asarray(mask))
  expected = _reference_nt_xent(first, second, 0.2, mask, np.zeros((batch, batch), bool))
  np.testing.assert_allclose(np.asarray(plain)[:5], expected[:5], rtol=1e-5)
  # Identical, orthogonal views: the loss is log(1 + (2n - 2) e^0) minus 1/τ, top-1 is perfect.
  eye = np.eye(4)
  loss, top1 = nt_xent(jnp.asarray(eye), jnp.asarray(eye), 0.5, jnp.ones(4))
  np.testing.assert_allclose(np.asarray(loss), math.log(math.exp(2.0) + 6.0) - 2.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(top1), 1.0)


def test_gaussian_kl_matches_the_textbook_form_and_a_monte_carlo_estimate():
  rng = np.random.default_rng(1)
  mean, log_variance = rng.normal(size=(3, 4)), rng.normal(scale=0.7, size=(3, 4))
  got = np.asarray(guardian.gaussian_kl(jnp.asarray(mean), jnp.asarray(log_variance)))
  sigma = np.exp(0.5 * log_variance)
  # KL(N(μ, σ²) ‖ N(0, 1)) = log(1 / σ) + (σ² + μ²) / 2 - 1/2.
  np.testing.assert_allclose(got, np.log(1 / sigma) + (sigma ** 2 + mean ** 2) / 2 - 0.5,
                             rtol=1e-5, atol=1e-6)
  # E_q[log q(z) - log p(z)] by sampling, for one latent.
  z = mean[0, 0] + sigma[0, 0] * rng.normal(size=400_000)
  log_q = -0.5 * ((z - mean[0, 0]) / sigma[0, 0]) ** 2 - np.log(sigma[0, 0])
  log_p = -0.5 * z ** 2
  assert abs(np.mean(log_q - log_p) - got[0, 0]) < 0.01
  assert np.all(np.asarray(guardian.gaussian_kl(jnp.zeros(3), jnp.zeros(3))) == 0)


def test_augmentations_keep_shapes_are_deterministic_and_do_what_they_say():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(32, 24, 6)), jnp.float32)
  augment = guardian.Augmentation(jitter=0.05, scale=0.1, max_shift=3, mask_probability=0.2)
  key = jax.random.PRNGKey(3)
  a, b = augment(key, x), augment(key, x)
  assert a.shape == x.shape and a.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(augment(jax.random.PRNGKey(4), x)))
  assert augment(key, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  x_np = np.asarray(x)
  view = lambda *parameters: np.asarray(guardian.Augmentation(*parameters)(key, x))
  # Shift only: every row is the window moved by s in [-3, 3] bars, the edge bar repeated.
  shifted = view(0.0, 0.0, 3, 0.0)
  seen = set()
  for item in range(32):
    matches = [s for s in range(-3, 4) if np.array_equal(
        shifted[item], x_np[item][np.clip(np.arange(24) - s, 0, 23)])]
    assert matches, item
    seen.add(matches[0])
  assert len(seen) > 3
  # Scale only: one factor per (window, feature), constant over time.
  scaled = view(0.0, 0.1, 0, 0.0)
  ratio = scaled / x_np
  np.testing.assert_allclose(ratio, ratio[:, :1, :].repeat(24, axis=1), rtol=1e-4)
  assert 0.05 < ratio[:, 0, :].std() < 0.15
  # Jitter only: additive noise of the given size.
  jittered = view(0.05, 0.0, 0, 0.0)
  assert abs((jittered - x_np).std() - 0.05) < 0.005
  # Mask only: whole bars set to 0, about the given share.
  masked = view(0.0, 0.0, 0, 0.5)
  zero_bars = np.all(masked == 0, axis=-1)
  np.testing.assert_array_equal(masked[~zero_bars], x_np[~zero_bars])
  assert 0.4 < zero_bars.mean() < 0.6


def test_rule_labels_match_a_pandas_rolling_computation():
  rng = np.random.default_rng(5)
  drift = np.repeat(rng.choice([-0.002, 0.0, 0.002], 40), 50)
  returns = drift + rng.normal(0, 0.004, drift.size)
  lookback, horizon, window = 30, 20, 40
  # Pandas: the trend statistic over the lookback + horizon returns ending at t + horizon.
  series = pd.Series(returns)
  span = lookback + horizon
  statistic = (series.rolling(span).sum() / np.sqrt((series ** 2).rolling(span).sum())).shift(
      -horizon)
  anchors = np.arange(window - 1, len(returns) - horizon)
  expected = np.select([statistic[anchors] > 0.5, statistic[anchors] < -0.5],
                       [synthetic.BULL, synthetic.BEAR], synthetic.SIDEWAYS)
  encoder = returns[anchors[:, None] + np.arange(-window + 1, 1)]
  future = returns[anchors[:, None] + np.arange(1, horizon + 1)]
  got = guardian.rule_labels(encoder, future, lookback=lookback, threshold=0.5)
  np.testing.assert_array_equal(got, expected)
  assert set(np.unique(got)) == {0, 1, 2}
  # The jax version agrees, and a flat stretch is sideways.
  np.testing.assert_array_equal(np.asarray(guardian.rule_labels(
      jnp.asarray(encoder), jnp.asarray(future), lookback=lookback, threshold=0.5)), expected)
  assert guardian.rule_labels(np.zeros((1, 40)), np.zeros((1, 20)), lookback=30,
                              threshold=0.5)[0] == synthetic.SIDEWAYS


def test_realised_volatility_and_risk_levels():
  returns = np.array([[0.001, -0.001, 0.001, -0.001], [0.0, 0.0, 0.0, 0.0]])
  np.testing.assert_allclose(guardian.realised_volatility(returns),
                             [0.001 * math.sqrt(schema.BARS_PER_YEAR), guardian.VOLATILITY_FLOOR],
                             rtol=1e-5)
  np.testing.assert_array_equal(guardian.risk_levels(np.array([0.1, 0.5, 0.9, 0.3]), (0.3, 0.6)),
                                [0, 1, 2, 0])


# ----------------------------------------------------------------------------------------------
# Learning on a regime-switching market, held-out time.


@pytest.fixture(scope='module')
def regime_market():
  """Eight synthetic weeks whose regimes last a day on average (about 50 spells) and differ in
  drift alone: every regime has volatility 0.5, so no volatility rule can tell them apart, and
  bull / bear drift ±0.3 sigma a bar (±48.6 a year). Seed 1, test split: accuracy 0.69 (majority
  class 0.34, trailing trend rule 0.60)."""
  parameters = synthetic.MarketParameters(annual_drift=(48.6, -48.6, 0.0),
                                          annual_volatility=(0.5, 0.5, 0.5),
                                          mean_dwell_hours=(24.0, 24.0, 24.0))
  frames = synthetic.generate_market(('BTCUSDT', 'ETHUSDT'), start='2024-01-01', end='2024-02-26',
                                     seed=1, parameters=parameters)
  return {symbol: features.compute_features(frame) for symbol, frame in frames.items()}


def _small_config(store_dir):
  config = guardian_config.get_config('quick')
  config.data.splits.update(SPLITS)
  config.data.store_dir = str(store_dir)
  config.model.update(window=32, latent_dim=8, hidden_dims=(32, 16), projection_dim=8,
                      head_hidden=16, dropout_rate=0.1)
  config.labels.update(horizon=24, lookback=24)
  config.augment.max_shift = 2
  config.train.update(batch_size=64, num_steps=250, eval_every_steps=250, max_eval_batches=10)
  config.evaluation.batch_size = 512
  return config


@pytest.fixture(scope='module')
def trained(regime_market, tmp_path_factory):
  directory = tmp_path_factory.mktemp('guardian')
  config = _small_config(directory / 'store')
  task, result, data, statistics = guardian.train(config, directory / 'run', frames=regime_market)
  report = guardian.evaluate(task, result.params, data['test'], statistics, directory / 'test',
                             progress=False)
  return {'config': config, 'task': task, 'params': result.params, 'data': data,
          'statistics': statistics, 'report': report, 'workdir': directory / 'run',
          'directory': directory}


def test_guardian_beats_chance_and_the_baselines_on_held_out_time(trained):
  report = trained['report']
  guardian_metrics, baselines = report['guardian'], report['baselines']
  assert report['labels'].startswith("the synthetic market's true regimes")
  assert report['windows'] > 5000
  assert guardian_metrics['accuracy'] > 0.6  # chance is 1/3
  assert guardian_metrics['accuracy'] > baselines['majority_class']['accuracy'] + 0.2
  assert guardian_metrics['f1_macro'] > baselines['majority_class']['f1_macro'] + 0.3
  # Past-only rules over the same bars: the learned detector beats the better of them by a margin
  # (measured: macro-F1 0.687 against 0.590 for the trend rule and 0.522 for the volatility rule,
  # which equal volatilities leave no edge). A detector that copies either rule scores a margin of 0.
  best_rule = max(baselines[name]['f1_macro']
                  for name in ('trailing_trend_rule', 'trailing_trend_volatility_rule'))
  assert guardian_metrics['f1_macro'] > best_rule + 0.05, (guardian_metrics['f1_macro'], best_rule)
  assert np.asarray(guardian_metrics['confusion_matrix']).sum() == report['windows']
  # Risk: realised forward volatility rises with the predicted level, and the score ranks it.
  assert report['risk']['monotone_increasing']
  assert report['risk']['spearman_score_vs_realised'] > 0.4
  assert report['latent']['active_units'] >= 4
  for name in ('regime_timeline', 'latent_projection', 'confusion_matrix', 'risk_calibration'):
    assert pathlib.Path(report['plots'][name]).stat().st_size > 10_000
  json.dumps(report, allow_nan=False)


def test_training_statistics_come_from_the_training_split(trained):
  statistics, data = trained['statistics'], trained['data']
  source = data['train'].source
  future = np.take(source.arrays.log_return, source.anchors[:, None] + np.arange(1, 25))
  realised = np.sqrt(np.mean(future.astype(np.float64) ** 2, axis=1) * schema.BARS_PER_YEAR)
  np.testing.assert_allclose(statistics['risk_thresholds'],
                             np.quantile(realised, [1 / 3, 2 / 3]), rtol=1e-4)
  counts = np.bincount(source.arrays.regime[source.anchors], minlength=3)
  assert [statistics['label_counts'][name] for name in schema.REGIMES] == counts.tolist()
  assert statistics['majority_class'] == int(np.argmax(counts))


def test_bar_signals_cover_every_bar_of_the_split_and_never_look_ahead(trained, regime_market):
  task, params, data = trained['task'], trained['params'], trained['data']
  signals = guardian.bar_signals(task, params, data['test'], batch_size=500, progress=False)
  assert list(signals.columns) == ['symbol', 'timestamp', *guardian.SIGNAL_COLUMNS]
  assert str(signals['timestamp'].dtype) == 'datetime64[ns, UTC]'
  assert set(signals['symbol']) == {'BTCUSDT', 'ETHUSDT'}
  start, end = (pd.Timestamp(value, tz='UTC') for value in SPLITS['test'])
  assert signals['timestamp'].min() >= start and signals['timestamp'].max() < end
  # One row per bar: consecutive 5-minute bars up to the split's last bar (no label horizon cut).
  for _, group in signals.groupby('symbol'):
    assert group['timestamp'].is_monotonic_increasing
    assert (group['timestamp'].diff().dropna() == schema.BAR).all()
    assert group['timestamp'].max() == end - schema.BAR
  assert len(signals) > len(data['test'].source)
  probabilities = signals[['p_bull', 'p_bear', 'p_sideways']].to_numpy()
  np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(signals['regime'], probabilities.argmax(1))
  np.testing.assert_array_equal(signals['risk_level'],
                                guardian.risk_levels(signals['risk_score'].to_numpy(),
                                                     task.risk_thresholds))
  assert signals['risk_level'].nunique() == 3

  # Rewrite the market after a cut inside the test split: earlier rows must not change.
  cut = pd.Timestamp('2024-02-21', tz='UTC')
  changed = {}
  for symbol, frame in regime_market.items():
    raw = frame[[schema.TIMESTAMP, *schema.OHLCV, schema.OBSERVED, schema.SEGMENT,
                 schema.REGIME]].copy()
    after = (raw[schema.TIMESTAMP] >= cut).to_numpy()
    shock = np.exp(np.cumsum(np.where(after, 0.01, 0.0)))  # a 1% rise every bar after the cut
    for column in ('open', 'high', 'low', 'close'):
      raw[column] = raw[column] * shock
    raw.loc[after, 'volume'] *= 3.0
    changed[symbol] = features.compute_features(raw)
  splits = windows.splits_from_config(SPLITS)
  other, _ = windows.make_datasets(changed, guardian.window_spec(trained['config']), splits, 64,
                                   trained['directory'] / 'changed', normalizer=task.normalizer,
                                   num_devices=1, shard_index=0, shard_count=1)
  again = guardian.bar_signals(task, params, other['test'], batch_size=500, progress=False)
  assert len(again) == len(signals)
  before = signals['timestamp'] < cut
  pd.testing.assert_frame_equal(again[before].reset_index(drop=True),
                                signals[before].reset_index(drop=True))
  assert not np.allclose(again.loc[~before, 'risk_score'], signals.loc[~before, 'risk_score'])
  # Windows normalised with other statistics than the run's are refused.
  statistics = task.normalizer.to_dict()
  statistics['mean'] = [value + 1.0 for value in statistics['mean']]
  other_task = dataclasses.replace(task, normalizer=windows.Normalizer.from_dict(statistics))
  with pytest.raises(ConfigError, match='normalizer=task.normalizer'):
    guardian.bar_signals(other_task, params, data['test'], progress=False)


def test_load_round_trips_the_best_checkpoint(trained):
  task, params, config = guardian.load(trained['workdir'])
  assert task.risk_thresholds == trained['task'].risk_thresholds
  assert config.model.window == 32 and tuple(config.model.hidden_dims) == (32, 16)
  np.testing.assert_array_equal(task.normalizer.mean, trained['task'].normalizer.mean)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params),
               jax.device_get(trained['params']))
  batch = trained['data']['test'].source.gather(trained['data']['test'].source.anchors[:64])
  first = jax.device_get(guardian.predict_batch(trained['task'], trained['params'],
                                                batch['encoder']))
  second = jax.device_get(guardian.predict_batch(task, params, batch['encoder']))
  for name in first:
    np.testing.assert_array_equal(first[name], second[name])
  with pytest.raises(Exception, match='no such checkpoint directory'):
    guardian.load(trained['directory'] / 'nowhere')


# ----------------------------------------------------------------------------------------------
# Devices and errors.


_DEVICES_SCRIPT = textwrap.dedent('''
    import json, jax, numpy as np
    from configs import guardian as guardian_config
    from quantum_alpha_jax.tasks import guardian
    from quantum_alpha_jax.train import state as state_lib, step as step_lib
    assert jax.device_count() == 4, jax.devices()
    config = guardian_config.get_config('quick')
    config.model.update(window=16, latent_dim=4, hidden_dims=(16,), projection_dim=4,
                        head_hidden=8, dropout_rate=0.1)
    config.labels.update(horizon=8, lookback=8)
    config.augment.max_shift = 2
    task = guardian.GuardianTask.from_config(config)
    rng = np.random.default_rng(0)
    size = 16
    batch = {'encoder': rng.normal(size=(size, 16, 44)).astype(np.float32),
             'encoder_returns': rng.normal(0, 0.003, (size, 16)).astype(np.float32),
             'future_returns': rng.normal(0, 0.003, (size, 8)).astype(np.float32),
             'regime': rng.integers(0, 3, size).astype(np.int32),
             'anchor': (np.arange(size) * 10).astype(np.int64),
             'mask': np.r_[np.ones(size - 3), np.zeros(3)].astype(np.float32)}
    optimizer, schedule = state_lib.make_optimizer(config.train.optimizer, 10)
    out = {}
    for count in (1, 4):
      mesh = step_lib.make_mesh(count)
      params = task.init_params(jax.random.PRNGKey(0), batch)
      initial = np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(params)])
      state = step_lib.replicate(state_lib.TrainState.create(params, optimizer,
                                                             jax.random.PRNGKey(1)), mesh)
      train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh)
      for _ in range(3):
        state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
      leaves = [np.asarray(leaf).ravel() for leaf in jax.tree.leaves(state.params)]
      out[count] = {'params': np.concatenate(leaves).tolist(),
                    'moved': float(np.abs(np.concatenate(leaves) - initial).max()),
                    'metrics': {name: float(value) for name, value in metrics.items()},
                    'shards': len(jax.tree.leaves(state.params)[0].sharding.device_set)}
    print(json.dumps(out))
''')


def test_one_device_and_four_devices_give_the_same_train_steps():
  out = run_with_devices(_DEVICES_SCRIPT, devices=4)
  assert out['1']['shards'] == 1 and out['4']['shards'] == 4
  np.testing.assert_allclose(out['1']['params'], out['4']['params'], rtol=1e-4, atol=1e-6)
  for name, value in out['1']['metrics'].items():
    np.testing.assert_allclose(value, out['4']['metrics'][name], rtol=1e-4, atol=1e-6)
  assert out['1']['moved'] > 1e-3  # the steps did change the params


def test_bad_configs_are_clear_errors(regime_market, tmp_path):
  config = guardian_config.get_config('quick')
  config.model.window = 8
  with pytest.raises(ConfigError, match='config.model.window: 8 bars is too short'):
    guardian.GuardianTask.from_config(config)
  config = guardian_config.get_config('quick')
  config.labels.source = 'oracle'
  config.augment.max_shift = 40
  with pytest.raises(ConfigError, match="unknown label source 'oracle'.*max_shift"):
    guardian.GuardianTask.from_config(config)
  with pytest.raises(ConfigError, match='unknown variant'):
    guardian_config.get_config('fast')
  # 'true' labels need the synthetic market's regimes; real data has none.
  config = _small_config(tmp_path / 'store')
  config.labels.source = 'true'
  no_regimes = {symbol: frame.drop(columns=[schema.REGIME]) for symbol, frame in
                regime_market.items()}
  with pytest.raises(DataError, match="use labels.source='auto' or 'rule'"):
    guardian.train(config, tmp_path / 'run', frames=no_regimes)
