"""Forecast, trading and regime metrics against sklearn, scipy, numpy and hand-worked answers."""

from __future__ import annotations

import json
import math

import ml_collections
import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy import stats as scipy_stats
from sklearn import metrics as sk

from configs import data as data_config
from configs import evaluate as evaluate_config
from quantum_alpha_jax import errors
from quantum_alpha_jax.evaluate import forecast
from quantum_alpha_jax.evaluate import regime
from quantum_alpha_jax.evaluate import trading
from quantum_alpha_jax.tasks import saved

QUANTILES = (0.1, 0.5, 0.9)


def _strict_json(value) -> str:
  return json.dumps(value, allow_nan=False)


@pytest.fixture
def forecasts():
  rng = np.random.default_rng(0)
  items, horizon = 300, 4
  y_true = rng.normal(0, 1, (items, horizon))
  y_true[:5, 0] = 0.0  # no direction
  median = 0.6 * y_true + rng.normal(0, 0.8, (items, horizon))
  spread = np.abs(rng.normal(1.2, 0.2, (items, horizon)))
  quantiles = np.stack([median - spread, median, median + spread], axis=-1)
  return y_true, quantiles


def _padded(array, rows=7, value=1e6):
  return np.concatenate([array, np.full((rows,) + array.shape[1:], value)])


def test_pinball_hand_worked_and_sklearn(forecasts):
  # y = 1; predictions 0, 1, 3 at q 0.1, 0.5, 0.9: losses 0.1, 0, 0.2 -> mean 0.1.
  assert forecast.pinball_loss([[1.0]], [[[0.0, 1.0, 3.0]]], QUANTILES) == pytest.approx(0.1)
  y_true, predictions = forecasts
  expected = np.mean([sk.mean_pinball_loss(y_true.ravel(), predictions[..., i].ravel(), alpha=q)
                      for i, q in enumerate(QUANTILES)])
  assert forecast.pinball_loss(y_true, predictions, QUANTILES) == pytest.approx(expected, rel=1e-12)
  mask = np.r_[np.ones(len(y_true)), np.zeros(7)]
  assert forecast.pinball_loss(_padded(y_true), _padded(predictions, value=np.nan), QUANTILES,
                               mask) == (
      pytest.approx(expected, rel=1e-12))


def test_normalized_quantile_loss_is_q_risk(forecasts):
  y_true, predictions = forecasts
  for index, q in enumerate(QUANTILES):
    expected = (2 * sk.mean_pinball_loss(y_true.ravel(), predictions[..., index].ravel(), alpha=q)
                * y_true.size / np.abs(y_true).sum())
    assert forecast.normalized_quantile_loss(y_true, predictions[..., index], q) == (
        pytest.approx(expected, rel=1e-12))
  # Hand-worked: y = [2, -2], p90 forecast 0 -> pinball 0.9*2 + 0.1*2 = 2; q-risk 2 * 2 / 4 = 1.
  assert forecast.normalized_quantile_loss([[2.0, -2.0]], [[0.0, 0.0]], 0.9) == pytest.approx(1.0)
  assert math.isnan(forecast.normalized_quantile_loss([[0.0]], [[1.0]], 0.5))


def test_point_errors_match_sklearn(forecasts):
  y_true, predictions = forecasts
  median = predictions[..., 1]
  flat_true, flat_pred = y_true.ravel(), median.ravel()
  assert forecast.rmse(y_true, median) == pytest.approx(
      sk.root_mean_squared_error(flat_true, flat_pred), rel=1e-12)
  assert forecast.mae(y_true, median) == pytest.approx(
      sk.mean_absolute_error(flat_true, flat_pred), rel=1e-12)
  assert forecast.r2(y_true, median) == pytest.approx(sk.r2_score(flat_true, flat_pred), rel=1e-12)
  mask = np.r_[np.ones(len(y_true)), np.zeros(7)]
  assert forecast.r2(_padded(y_true), _padded(median, value=-3.0), mask) == pytest.approx(
      sk.r2_score(flat_true, flat_pred), rel=1e-12)
  for constant_pred in ([[1.0, 1.0]], [[2.0, 1.0]]):
    assert forecast.r2([[1.0, 1.0]], constant_pred) == sk.r2_score([1.0, 1.0], constant_pred[0])
  with pytest.raises(errors.DataError, match='no items'):
    forecast.rmse(y_true, median, np.zeros(len(y_true)))
  with pytest.raises(errors.DataError, match='shape'):
    forecast.mae(y_true, median[:, :2])
  with pytest.raises(errors.DataError, match='non-finite'):
    forecast.rmse([[np.nan]], [[0.0]])
  assert forecast.rmse([[np.nan], [1.0]], [[0.0], [3.0]], mask=[0, 1]) == 2.0


def _wilson_by_root_finding(successes, count, z=1.959963984540054):
  """The Wilson bounds are the p where |p_hat - p| = z * sqrt(p (1 - p) / n)."""
  p_hat = successes / count
  gap = lambda p: (p_hat - p) ** 2 - z * z * p * (1 - p) / count
  low = 0.0 if successes == 0 else optimize.brentq(gap, 1e-12, min(p_hat, 1 - 1e-12))
  high = 1.0 if successes == count else optimize.brentq(gap, max(p_hat, 1e-12), 1 - 1e-12)
  return low, high


def test_direction_accuracy_excludes_zero_truth_and_has_wilson_interval():
  y_true = np.array([1.0, -2.0, 0.0, 3.0, -1.0, 0.5])
  y_pred = np.array([0.5, 1.0, 9.0, 0.0, -0.1, 2.0])  # a prediction of exactly 0 is wrong
  result = forecast.direction_accuracy(y_true, y_pred)
  assert result['count'] == 5 and result['accuracy'] == pytest.approx(3 / 5)
  assert (result['low'], result['high']) == pytest.approx(_wilson_by_root_finding(3, 5), abs=1e-9)
  for successes, count in ((8, 10), (0, 7), (50, 50), (513, 1000)):
    assert forecast.wilson_interval(successes, count) == pytest.approx(
        _wilson_by_root_finding(successes, count), abs=1e-9)
  assert forecast.direction_accuracy([0.0, 0.0], [1.0, 1.0]) == {
      'accuracy': None, 'low': None, 'high': None, 'count': 0}


def test_direction_accuracy_per_horizon_with_mask(forecasts):
  y_true, predictions = forecasts
  median = predictions[..., 1]
  mask = np.r_[np.ones(len(y_true)), np.zeros(7)]
  results = forecast.direction_accuracy_per_horizon(_padded(y_true), _padded(median, value=-1.0),
                                                    mask)
  assert len(results) == y_true.shape[1]
  for step, result in enumerate(results):
    moved = y_true[:, step] != 0
    expected = np.mean(np.sign(median[moved, step]) == np.sign(y_true[moved, step]))
    assert result['accuracy'] == pytest.approx(expected) and result['count'] == moved.sum()
  assert results[0]['count'] == len(y_true) - 5


def test_coverage():
  y_true = np.array([[0.0, 1.0], [2.0, -1.0]])
  lower = np.array([[-1.0, 1.0], [2.5, -2.0]])
  upper = np.array([[1.0, 2.0], [3.0, -1.5]])
  assert forecast.coverage(y_true, lower, upper) == 0.5  # inside, on the edge, below, above
  assert forecast.coverage(y_true, lower, upper, mask=[1, 0]) == 1.0


def test_student_t_tail_matches_scipy():
  for dof in (1, 2, 3, 7.5, 30, 299, 5000):
    for statistic in (0.0, 0.1, -0.7, 1.96, 3.0, -12.0, 40.0):
      assert forecast.student_t_two_sided_p(statistic, dof) == pytest.approx(
          2 * scipy_stats.t.sf(abs(statistic), dof), rel=1e-9, abs=1e-300)


def test_diebold_mariano_horizon_one_is_a_one_sample_t_test():
  rng = np.random.default_rng(1)
  loss_a = rng.normal(1.0, 1.0, 80) ** 2
  loss_b = rng.normal(0.9, 1.0, 80) ** 2
  result = forecast.diebold_mariano(loss_a, loss_b)
  expected = scipy_stats.ttest_1samp(loss_a - loss_b, 0.0)
  assert result['statistic'] == pytest.approx(expected.statistic, rel=1e-10)
  assert result['p_value'] == pytest.approx(expected.pvalue, rel=1e-9)
  assert result['count'] == 80


def test_diebold_mariano_multi_step_against_direct_formula():
  rng = np.random.default_rng(2)
  noise = rng.normal(0, 1, 203)
  difference = noise[3:] + 0.8 * noise[2:-1] + 0.5 * noise[1:-2] + 0.3  # MA(2): needs lags
  horizon, count = 3, difference.size
  centred = difference - difference.mean()
  autocovariance = [np.sum(centred[k:] * centred[:count - k]) / count for k in range(horizon)]
  long_run = autocovariance[0] + 2 * sum((1 - k / horizon) * autocovariance[k]
                                         for k in range(1, horizon))
  statistic = difference.mean() / np.sqrt(long_run / count)
  statistic *= np.sqrt((count + 1 - 2 * horizon + horizon * (horizon - 1) / count) / count)
  result = forecast.diebold_mariano(difference, np.zeros(count), horizon=horizon)
  assert result['statistic'] == pytest.approx(statistic, rel=1e-10)
  assert result['p_value'] == pytest.approx(2 * scipy_stats.t.sf(abs(statistic), count - 1),
                                            rel=1e-9)
  assert result['statistic'] > 0  # loss_a is larger
  same = forecast.diebold_mariano(np.ones(5), np.ones(5))
  assert same['statistic'] == 0.0 and same['p_value'] == 1.0
  with pytest.raises(errors.ConfigError):
    forecast.diebold_mariano(np.ones(5), np.zeros(5), horizon=0)


def test_forecast_report(forecasts):
  y_true, predictions = forecasts
  median = predictions[..., 1]
  baselines = {'zero': np.zeros_like(y_true), 'truth': y_true.copy()}
  report = forecast.forecast_report(y_true, predictions, QUANTILES, baselines=baselines)
  _strict_json(report)
  assert report['count'] == len(y_true)
  assert report['rmse'] == pytest.approx(sk.root_mean_squared_error(y_true.ravel(), median.ravel()))
  assert report['r2'] == pytest.approx(sk.r2_score(y_true.ravel(), median.ravel()))
  assert report['q_risk_p90'] == pytest.approx(
      forecast.normalized_quantile_loss(y_true, predictions[..., 2], 0.9))
  inside = (predictions[..., 0] <= y_true) & (y_true <= predictions[..., 2])
  assert report['interval']['coverage'] == pytest.approx(inside.mean())
  assert report['interval']['nominal_coverage'] == pytest.approx(0.8)
  assert report['interval']['mean_width'] == pytest.approx(
      (predictions[..., 2] - predictions[..., 0]).mean())
  assert len(report['direction_accuracy_per_horizon']) == y_true.shape[1]
  zero = report['baselines']['zero']
  assert zero['rmse'] == pytest.approx(np.sqrt(np.mean(y_true ** 2)))
  assert zero['dm_vs_model']['statistic'] > 0  # the model beats predicting zero
  assert zero['dm_vs_model'] == forecast.diebold_mariano(  # on the last (whole-horizon) column
      y_true[:, -1] ** 2, (y_true[:, -1] - median[:, -1]) ** 2, horizon=y_true.shape[1])
  assert report['baselines']['truth']['dm_vs_model']['statistic'] < -2  # a perfect baseline wins
  assert zero['direction_accuracy']['accuracy'] == 0.0
  # Padding rows are excluded.
  mask = np.r_[np.ones(len(y_true)), np.zeros(7)]
  padded = forecast.forecast_report(  # padding may hold anything, even NaN
      _padded(y_true), _padded(predictions, value=np.nan), QUANTILES, mask,
      baselines={name: _padded(value, value=5.0) for name, value in baselines.items()})
  assert _strict_json(padded) == _strict_json(report)
  with pytest.raises(errors.ConfigError, match='0.5'):
    forecast.forecast_report(y_true, predictions, (0.1, 0.4, 0.9))


def test_forecast_report_dm_tests_the_horizon_cumulative_return():
  """Targets are cumulative (y[:, h] = r[t+1] + ... + r[t+h+1]); DM must compare the squared errors
  of y[:, -1], checked against a direct Newey-West / HLN / scipy Student-t computation."""
  rng = np.random.default_rng(5)
  items, horizon = 400, 6
  bar_returns = rng.normal(0.0, 1.0, items + horizon)
  steps = np.arange(1, horizon + 1)
  y_true = np.stack([np.cumsum(bar_returns[t + 1:t + 1 + horizon]) for t in range(items)])
  median = y_true + rng.normal(0, 1.0, y_true.shape) * np.sqrt(steps)  # noisier further out
  predictions = np.stack([median - 1, median, median + 1], axis=-1)
  # Right on the whole horizon, wrong at every earlier step: only the last column judges it.
  baseline = y_true[:, -1:] * steps / horizon + rng.normal(0, 3.0, y_true.shape)
  baseline[:, -1] = y_true[:, -1] + rng.normal(0, 1.2, items)
  report = forecast.forecast_report(y_true, predictions, QUANTILES,
                                    baselines={'baseline': baseline})
  dm = report['baselines']['baseline']['dm_vs_model']
  difference = (y_true[:, -1] - baseline[:, -1]) ** 2 - (y_true[:, -1] - median[:, -1]) ** 2
  centred = difference - difference.mean()
  long_run = np.mean(centred ** 2) + 2 * sum(
      (1 - lag / horizon) * np.sum(centred[lag:] * centred[:-lag]) / items
      for lag in range(1, horizon))
  statistic = difference.mean() / np.sqrt(long_run / items) * np.sqrt(
      (items + 1 - 2 * horizon + horizon * (horizon - 1) / items) / items)
  assert dm['count'] == items
  assert dm['mean_difference'] == pytest.approx(difference.mean(), rel=1e-12)
  assert dm['statistic'] == pytest.approx(statistic, rel=1e-9)
  assert dm['p_value'] == pytest.approx(2 * scipy_stats.t.sf(abs(statistic), items - 1), rel=1e-6)


def test_trading_stats_hand_worked():
  stats = trading.trading_stats([100.0, 110.0, 99.0, 121.0], [0, 1, 1, 0], bars_per_year=3,
                                timestamps=pd.date_range('2024-01-01', periods=4, freq='5min'))
  assert stats['max_drawdown'] == pytest.approx(0.10)
  assert stats['max_drawdown_duration_bars'] == 2
  assert stats['max_drawdown_duration'] == str(pd.Timedelta(minutes=10))
  assert stats['total_return'] == pytest.approx(0.21)
  assert stats['annual_return'] == pytest.approx(0.21)  # 3 bars = one "year" here
  assert stats['calmar'] == pytest.approx(2.1)
  assert stats['exposure'] == 0.5
  assert stats['turnover_per_year'] == pytest.approx(2.0)  # two changes of 1 in one "year"
  _strict_json(stats)


def test_trading_stats_sharpe_sortino_against_pandas():
  returns = np.array([0.01, -0.005, 0.02, 0.0, -0.01, 0.004])
  equity = 1000 * np.cumprod(np.r_[1.0, 1 + returns])
  series = pd.Series(equity).pct_change().dropna()
  bars_per_year = trading.BARS_PER_YEAR
  stats = trading.trading_stats(equity, np.ones_like(equity))
  assert stats['sharpe'] == pytest.approx(series.mean() / series.std() * np.sqrt(bars_per_year))
  assert stats['annual_volatility'] == pytest.approx(series.std() * np.sqrt(bars_per_year))
  downside = np.sqrt(np.mean(np.minimum(returns, 0) ** 2))
  assert stats['sortino'] == pytest.approx(returns.mean() / downside * np.sqrt(bars_per_year))
  rate = 0.05
  with_rate = trading.trading_stats(equity, np.ones_like(equity), risk_free=rate)
  excess = returns - ((1 + rate) ** (1 / bars_per_year) - 1)
  assert with_rate['sharpe'] == pytest.approx(excess.mean() / series.std() * np.sqrt(bars_per_year))
  # Never recovered: the high is last held at bar 4 (a 0.0 return), under water to bar 6.
  assert stats['max_drawdown_duration_bars'] == 2


def test_trading_stats_trades_and_degenerate_cases():
  equity = np.full(50, 1000.0)
  stats = trading.trading_stats(equity, np.zeros(50))
  assert stats['sharpe'] == 0.0 and stats['sortino'] == 0.0
  assert stats['calmar'] is None and stats['max_drawdown'] == 0.0
  assert stats['win_rate'] is None and stats['profit_factor'] is None
  assert stats['expectancy'] is None and stats['trades'] == 0
  _strict_json(stats)
  rising = trading.trading_stats(np.linspace(100, 200, 20), np.ones(20),
                                 trades=pd.DataFrame({'pnl': [10.0, -5.0, 20.0, -10.0]}),
                                 fees_paid=3.5)
  assert rising['sortino'] is None  # no losing bar: unbounded
  assert rising['annual_return'] is None  # doubling in 19 bars overflows a year
  assert rising['win_rate'] == 0.5 and rising['profit_factor'] == pytest.approx(2.0)
  assert rising['expectancy'] == pytest.approx(3.75) and rising['trades'] == 4
  assert rising['fees_paid'] == 3.5
  _strict_json(rising)
  with pytest.raises(errors.DataError, match='positions'):
    trading.trading_stats(np.ones(5), np.ones(4))


def test_drawdown_duration_picks_the_longest_stretch():
  equity = [10, 9, 10, 12, 11, 10, 9, 11, 13, 12]
  assert trading.max_drawdown_duration(equity) == (5, 3, 8)
  assert trading.max_drawdown_duration([1, 2, 3]) == (0, 0, 0)


def test_classification_metrics_match_sklearn():
  rng = np.random.default_rng(3)
  y_true = rng.integers(0, 3, 500)
  y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 3, 500))
  result = regime.classification_metrics(y_true, y_pred)
  _strict_json(result)
  assert result['accuracy'] == pytest.approx(sk.accuracy_score(y_true, y_pred))
  assert result['f1_macro'] == pytest.approx(sk.f1_score(y_true, y_pred, average='macro'))
  assert result['precision_macro'] == pytest.approx(
      sk.precision_score(y_true, y_pred, average='macro'))
  assert result['recall_macro'] == pytest.approx(sk.recall_score(y_true, y_pred, average='macro'))
  per_class_f1 = sk.f1_score(y_true, y_pred, average=None)
  for index, name in enumerate(('bull', 'bear', 'sideways')):
    assert result['per_class'][name]['f1'] == pytest.approx(per_class_f1[index])
    assert result['per_class'][name]['support'] == int((y_true == index).sum())
  assert result['confusion_matrix'] == sk.confusion_matrix(y_true, y_pred).tolist()
  mask = np.r_[np.ones(400), np.zeros(100)]
  masked = regime.classification_metrics(y_true, y_pred, mask=mask)
  assert masked['accuracy'] == pytest.approx(sk.accuracy_score(y_true[:400], y_pred[:400]))
  # A class never predicted: precision 0, still reported.
  never = regime.classification_metrics([0, 1, 2, 2], [0, 1, 1, 1])
  assert never['per_class']['sideways'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0,
                                            'support': 2}
  assert never['confusion_matrix'] == [[1, 0, 0], [0, 1, 0], [0, 2, 0]]
  with pytest.raises(errors.DataError, match='class index'):
    regime.classification_metrics([0, 3], [0, 1])


def test_silhouette_against_sklearn_and_subsampling():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 3, 900)
  latents = rng.normal(0, 1, (900, 4)) + 4 * labels[:, None]
  full = regime.silhouette(latents, labels)
  assert full == pytest.approx(sk.silhouette_score(latents, labels))
  sampled = regime.silhouette(latents, labels, max_points=300, seed=7)
  assert sampled == regime.silhouette(latents, labels, max_points=300, seed=7)
  assert sampled == pytest.approx(full, abs=0.05)
  assert regime.silhouette(latents, np.zeros(900, dtype=int)) is None
  report = regime.regime_report(labels, labels, latents, mask=np.r_[np.ones(600), np.zeros(300)])
  assert report['accuracy'] == 1.0 and report['count'] == 600
  assert report['silhouette'] == pytest.approx(sk.silhouette_score(latents[:600], labels[:600]))


def test_saved_run_refuses_its_validation_split_unless_allowed(tmp_path):
  """Validation chose the checkpoint: scoring it is refused, or labelled when asked for."""
  run = ml_collections.ConfigDict({'data': data_config.get_config('quick')})
  config = evaluate_config.get_config()
  assert config.allow_validation is False
  test = saved.evaluation_data_config(run, config)  # the default: the run's test split
  assert saved.evaluation_label(run, config, test) == saved.HELD_OUT_LABEL
  config.start, config.end = run.data.splits.validation
  with pytest.raises(errors.ConfigError, match=r'overlaps the run.s validation split.*best '
                     r'checkpoint.*test split.*allow_validation=True') as refused:
    saved.evaluation_data_config(run, config)
  assert 'validation or test period' not in str(refused.value)
  config.start, config.end = '2024-01-23', '2024-01-26'  # straddles validation and test
  with pytest.raises(errors.ConfigError, match='validation split'):
    saved.evaluation_data_config(run, config)
  config.allow_validation = True
  allowed = saved.evaluation_data_config(run, config)
  assert tuple(allowed.splits.evaluation) == ('2024-01-23', '2024-01-26')
  assert saved.evaluation_label(run, config, allowed) == 'validation (used for model selection)'
  config.start, config.end = run.data.splits.train  # training data stays refused, flag or not
  with pytest.raises(errors.ConfigError, match='training split.*test split'):
    saved.evaluation_data_config(run, config)
  # Another store: the run never selected on it, so validation dates are held out there.
  other = tmp_path / 'other_store'
  other.mkdir()
  (other / 'store.json').write_text('{}')
  config.allow_validation = False
  config.data, (config.start, config.end) = str(other), run.data.splits.validation
  elsewhere = saved.evaluation_data_config(run, config)
  assert saved.evaluation_label(run, config, elsewhere) == saved.HELD_OUT_LABEL
  results = {'model': 'oracle', 'checkpoint': 'ckpt', 'best_step': 3, 'store': 's',
             'range': ['a', 'b'], 'label': saved.VALIDATION_LABEL, 'evaluation': {'x': 1.0},
             'results_json': 'r.json'}
  assert '(validation (used for model selection))' in saved.format_results(results).splitlines()[0]
