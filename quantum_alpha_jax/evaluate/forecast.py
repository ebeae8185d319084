"""Forecast metrics on host arrays: quantile losses, point errors, direction, coverage, DM test.

Shapes: ``y_true [items, horizon]``, point forecasts ``[items, horizon]``, quantile forecasts
``[items, horizon, quantiles]``. Every metric takes an optional ``mask [items]`` (or the shape of
``y_true``): entries with mask 0 (the padding rows of the last evaluation batch) are left out.

Scalar metrics return a Python float (NaN where the metric is undefined, as documented on each);
functions that return a dict return it JSON-ready, with ``None`` wherever a value is undefined.
Items are assumed to be in time order wherever serial correlation matters (the DM test).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from quantum_alpha_jax import errors

# Two-sided 95% normal quantile, for the Wilson interval.
Z_95 = 1.959963984540054


def _as_float_array(values, name: str, check: bool = True) -> np.ndarray:
  """values as float64; DataError on NaN/inf unless ``check`` is False (masked entries may be)."""
  array = np.asarray(values, dtype=np.float64)
  if check and not np.all(np.isfinite(array)):
    raise errors.DataError(errors.describe(
        name, f'{int((~np.isfinite(array)).sum())} non-finite values',
        'drop or fill them (or mask those items out) before evaluating'))
  return array


def _selection(mask, shape: tuple[int, ...], name: str = 'mask') -> np.ndarray:
  """A boolean array of ``shape`` that is True on the entries to evaluate."""
  if mask is None:
    return np.ones(shape, dtype=bool)
  mask = np.asarray(mask)
  if mask.shape == shape[:1] and len(shape) > 1:
    mask = mask.reshape(mask.shape + (1,) * (len(shape) - 1))
  try:
    return np.broadcast_to(mask != 0, shape)
  except ValueError:
    raise errors.DataError(errors.describe(
        name, f'shape {mask.shape} does not fit the data shape {shape}',
        'pass a mask of shape [items] or the shape of y_true')) from None


def _pair(y_true, y_pred, mask, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Flattened, masked (y_true, y_pred); DataError if shapes differ, on NaN, or if none is left."""
  y_true = _as_float_array(y_true, f'{where}: y_true', check=False)
  y_pred = _as_float_array(y_pred, f'{where}: y_pred', check=False)
  if y_true.shape != y_pred.shape:
    raise errors.DataError(errors.describe(
        where, f'y_true has shape {y_true.shape} but y_pred has {y_pred.shape}',
        'pass arrays of the same shape'))
  keep = _selection(mask, y_true.shape)
  if not keep.any():
    raise errors.DataError(errors.describe(where, 'no items left after masking',
                                           'check the mask (1 = real item, 0 = padding)'))
  return (_as_float_array(y_true[keep], f'{where}: y_true'),
          _as_float_array(y_pred[keep], f'{where}: y_pred'))


def _pinball(y_true: np.ndarray, y_pred: np.ndarray, quantile: float) -> np.ndarray:
  error = y_true - y_pred
  return np.maximum(quantile * error, (quantile - 1.0) * error)


def _none_if_nan(value):
  return None if value is None or not math.isfinite(value) else float(value)


def pinball_loss(y_true, y_pred, quantiles: Sequence[float], mask=None) -> float:
  """Mean pinball (quantile) loss over items, horizons and quantiles.

  y_true [items, horizon], y_pred [items, horizon, quantiles], mask [items] or None.
  """
  y_true = _as_float_array(y_true, 'pinball_loss: y_true', check=False)
  y_pred = _as_float_array(y_pred, 'pinball_loss: y_pred', check=False)
  quantiles = np.asarray(quantiles, dtype=np.float64)
  if y_pred.shape != y_true.shape + quantiles.shape:
    raise errors.DataError(errors.describe(
        'pinball_loss',
        f'y_pred has shape {y_pred.shape}, expected {y_true.shape + quantiles.shape}',
        'pass quantile forecasts as [items, horizon, quantiles]'))
  keep = _selection(mask, y_true.shape)
  if not keep.any():
    raise errors.DataError(errors.describe('pinball_loss', 'no items left after masking'))
  y_true = _as_float_array(y_true[keep], 'pinball_loss: y_true')
  y_pred = _as_float_array(y_pred[keep], 'pinball_loss: y_pred')
  return float(_pinball(y_true[..., None], y_pred, quantiles).mean())


def normalized_quantile_loss(y_true, y_pred_q, quantile: float, mask=None) -> float:
  """The TFT paper's q-risk: ``2 * sum(pinball_q) / sum(|y_true|)``; NaN when all y_true are 0.

  y_true and y_pred_q (the forecast of quantile ``quantile``) are [items, horizon].
  """
  y_true, y_pred = _pair(y_true, y_pred_q, mask, 'normalized_quantile_loss')
  scale = np.abs(y_true).sum()
  if scale == 0:
    return math.nan
  return float(2.0 * _pinball(y_true, y_pred, quantile).sum() / scale)


def rmse(y_true, y_pred, mask=None) -> float:
  """Root mean squared error over all unmasked entries (any matching shapes)."""
  y_true, y_pred = _pair(y_true, y_pred, mask, 'rmse')
  return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def mae(y_true, y_pred, mask=None) -> float:
  """Mean absolute error over all unmasked entries (any matching shapes)."""
  y_true, y_pred = _pair(y_true, y_pred, mask, 'mae')
  return float(np.mean(np.abs(y_true - y_pred)))


def r2(y_true, y_pred, mask=None) -> float:
  """Coefficient of determination ``1 - SSE / SST`` on the flattened unmasked entries.

  SST is about the mean of y_true. As sklearn's ``r2_score``: 1.0 for a constant y_true that is
  predicted exactly, 0.0 for a constant y_true that is not.
  """
  y_true, y_pred = _pair(y_true, y_pred, mask, 'r2')
  sse = np.sum((y_true - y_pred) ** 2)
  sst = np.sum((y_true - y_true.mean()) ** 2)
  if sst == 0:
    return 1.0 if sse == 0 else 0.0
  return float(1.0 - sse / sst)


def wilson_interval(successes: int, count: int, z: float = Z_95) -> tuple[float, float]:
  """Wilson score interval ``(low, high)`` of a binomial proportion; (NaN, NaN) when count is 0."""
  if count == 0:
    return math.nan, math.nan
  proportion = successes / count
  denominator = 1.0 + z * z / count
  centre = (proportion + z * z / (2 * count)) / denominator
  half = z / denominator * math.sqrt(proportion * (1 - proportion) / count
                                     + z * z / (4 * count * count))
  return max(0.0, centre - half), min(1.0, centre + half)


def direction_accuracy(y_true, y_pred, mask=None) -> dict:
  """Share of entries where sign(y_pred) == sign(y_true), with a 95% Wilson interval.

  Entries where y_true is exactly 0 have no direction and are excluded (a prediction of exactly 0
  counts as wrong). Returns {accuracy, low, high, count}; None values when count is 0.
  """
  y_true, y_pred = _pair(y_true, y_pred, mask, 'direction_accuracy')
  moved = y_true != 0
  count = int(moved.sum())
  if count == 0:
    return {'accuracy': None, 'low': None, 'high': None, 'count': 0}
  hits = int((np.sign(y_pred[moved]) == np.sign(y_true[moved])).sum())
  low, high = wilson_interval(hits, count)
  return {'accuracy': hits / count, 'low': low, 'high': high, 'count': count}


def direction_accuracy_per_horizon(y_true, y_pred, mask=None) -> list[dict]:
  """:func:`direction_accuracy` of each step; y_true, y_pred [items, horizon], mask [items]."""
  y_true = _as_float_array(y_true, 'direction_accuracy_per_horizon: y_true', check=False)
  y_pred = _as_float_array(y_pred, 'direction_accuracy_per_horizon: y_pred', check=False)
  if y_true.ndim != 2 or y_true.shape != y_pred.shape:
    raise errors.DataError(errors.describe(
        'direction_accuracy_per_horizon',
        f'expected two [items, horizon] arrays, got {y_true.shape} and {y_pred.shape}'))
  keep = _selection(mask, y_true.shape)
  return [direction_accuracy(y_true[:, step], y_pred[:, step], keep[:, step])
          for step in range(y_true.shape[1])]


def coverage(y_true, lower, upper, mask=None) -> float:
  """Share of unmasked entries with ``lower <= y_true <= upper`` (all of one shape)."""
  full_true = _as_float_array(y_true, 'coverage: y_true', check=False)
  y_true, lower = _pair(full_true, lower, mask, 'coverage')
  _, upper = _pair(full_true, upper, mask, 'coverage')
  return float(np.mean((lower <= y_true) & (y_true <= upper)))


def student_t_two_sided_p(statistic: float, degrees_of_freedom: float) -> float:
  """Two-sided p-value ``P(|T| >= |statistic|)`` of Student's t, via the incomplete beta."""
  if not math.isfinite(statistic):
    return 0.0
  x = degrees_of_freedom / (degrees_of_freedom + statistic * statistic)
  return _regularized_incomplete_beta(degrees_of_freedom / 2.0, 0.5, x)


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
  """I_x(a, b) by the continued fraction of Numerical Recipes (modified Lentz), to ~1e-14."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only on this side
    return 1.0 - _regularized_incomplete_beta(b, a, 1.0 - x)
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
               + a * math.log(x) + b * math.log1p(-x))
  tiny = 1e-300
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > tiny else tiny)
  result = d
  for m in range(1, 10_000):
    for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                      -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + numerator * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + numerator / c
      c = c if abs(c) > tiny else tiny
      result *= c * d
    if abs(c * d - 1.0) < 1e-15:
      break
  return math.exp(log_front) * result / a


def diebold_mariano(loss_a, loss_b, horizon: int = 1) -> dict:
  """Diebold–Mariano test of equal expected loss, with Harvey–Leybourne–Newbold's correction.

  loss_a, loss_b [items] in time order; a positive statistic means loss_a is larger (b is better).
  Returns {statistic, p_value (two-sided, Student t with items-1 dof), mean_difference, count}.
  """
  loss_a = _as_float_array(loss_a, 'diebold_mariano: loss_a').ravel()
  loss_b = _as_float_array(loss_b, 'diebold_mariano: loss_b').ravel()
  if loss_a.shape != loss_b.shape:
    raise errors.DataError(errors.describe(
        'diebold_mariano', f'loss_a has {loss_a.size} items but loss_b has {loss_b.size}'))
  if horizon < 1:
    raise errors.ConfigError(errors.describe('diebold_mariano', f'horizon={horizon}',
                                             'use a horizon of at least 1'))
  count = loss_a.size
  if count < 2:
    raise errors.DataError(errors.describe('diebold_mariano', f'{count} items',
                                           'the test needs at least 2 paired losses'))
  difference = loss_a - loss_b
  mean = difference.mean()
  centred = difference - mean
  # Newey–West long-run variance of the mean loss difference, Bartlett weights, horizon-1 lags.
  variance = centred @ centred / count
  for lag in range(1, min(horizon, count)):
    weight = 1.0 - lag / horizon
    variance += 2.0 * weight * (centred[lag:] @ centred[:-lag]) / count
  result = {'statistic': None, 'p_value': None, 'mean_difference': float(mean), 'count': count}
  if variance <= 0:
    if mean == 0:
      result.update(statistic=0.0, p_value=1.0)
    return result
  statistic = mean / math.sqrt(variance / count)
  correction = math.sqrt((count + 1 - 2 * horizon + horizon * (horizon - 1) / count) / count)
  statistic *= correction
  result.update(statistic=float(statistic),
                p_value=float(student_t_two_sided_p(statistic, count - 1)))
  return result


def _point_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
  return {
      'q_risk_p50': _none_if_nan(normalized_quantile_loss(y_true, y_pred, 0.5)),
      'rmse': rmse(y_true, y_pred),
      'mae': mae(y_true, y_pred),
      'r2': r2(y_true, y_pred),
      'direction_accuracy': direction_accuracy(y_true, y_pred),
      'direction_accuracy_per_horizon': direction_accuracy_per_horizon(y_true, y_pred),
  }


def _quantile_index(quantiles: np.ndarray, value: float) -> int | None:
  matches = np.flatnonzero(np.isclose(quantiles, value))
  return int(matches[0]) if matches.size else None


def forecast_report(y_true, quantile_predictions, quantiles: Sequence[float], mask=None,
                    baselines: Mapping[str, np.ndarray] | None = None) -> dict:
  """JSON-ready metrics of the median forecast, its outermost interval, and point baselines.

  y_true [items, horizon], quantile_predictions [items, horizon, quantiles], mask [items], each
  baseline [items, horizon]: cumulative returns to each step, so ``[:, -1]`` is the return over the
  whole horizon. Baselines are DM-tested against the model on the squared error of that last
  column (the horizon's cumulative return; items overlap, hence ``horizon - 1`` HAC lags); a
  positive statistic means the model's loss is lower.
  """
  y_true = _as_float_array(y_true, 'forecast_report: y_true', check=False)
  predictions = _as_float_array(quantile_predictions, 'forecast_report: quantile_predictions',
                                check=False)
  quantiles = np.asarray(quantiles, dtype=np.float64)
  if y_true.ndim != 2 or predictions.shape != y_true.shape + quantiles.shape:
    raise errors.DataError(errors.describe(
        'forecast_report', f'y_true {y_true.shape} and quantile_predictions {predictions.shape} '
        f'do not fit [items, horizon] and [items, horizon, {quantiles.size}]'))
  median = _quantile_index(quantiles, 0.5)
  if median is None:
    raise errors.ConfigError(errors.describe(
        'forecast_report', f'quantiles {quantiles.tolist()} have no 0.5',
        'include the median among the quantiles'))
  keep = _selection(mask, y_true.shape[:1])
  if not keep.any():
    raise errors.DataError(errors.describe('forecast_report', 'no items left after masking'))
  baselines = {name: _as_float_array(value, f'forecast_report: baseline {name!r}', check=False)
               for name, value in (baselines or {}).items()}
  for name, baseline in baselines.items():
    if baseline.shape != y_true.shape:
      raise errors.DataError(errors.describe(
          f'forecast_report: baseline {name!r}',
          f'shape {baseline.shape}, expected {y_true.shape}'))
  # Drop the padding rows once; everything below sees real items only.
  y_true = _as_float_array(y_true[keep], 'forecast_report: y_true')
  predictions = _as_float_array(predictions[keep], 'forecast_report: quantile_predictions')
  baselines = {name: _as_float_array(value[keep], f'forecast_report: baseline {name!r}')
               for name, value in baselines.items()}
  p90 = _quantile_index(quantiles, 0.9)
  lowest, highest = int(np.argmin(quantiles)), int(np.argmax(quantiles))
  lower, upper = predictions[..., lowest], predictions[..., highest]
  report = {
      'count': int(len(y_true)),
      'horizon': int(y_true.shape[1]),
      'quantiles': quantiles.tolist(),
      'pinball_loss': pinball_loss(y_true, predictions, quantiles),
      'q_risk_p90': (None if p90 is None else _none_if_nan(
          normalized_quantile_loss(y_true, predictions[..., p90], 0.9))),
      **_point_metrics(y_true, predictions[..., median]),
      'interval': {
          'lower_quantile': float(quantiles[lowest]),
          'upper_quantile': float(quantiles[highest]),
          'nominal_coverage': float(quantiles[highest] - quantiles[lowest]),
          'coverage': coverage(y_true, lower, upper),
          'mean_width': float(np.mean(upper - lower)),
      },
      'baselines': {},
  }
  # The targets are already cumulative: the horizon's return is the last column, not a sum.
  model_cumulative_loss = (y_true[:, -1] - predictions[:, -1, median]) ** 2
  for name, baseline in baselines.items():
    baseline_loss = (y_true[:, -1] - baseline[:, -1]) ** 2
    report['baselines'][name] = {
        **_point_metrics(y_true, baseline),
        'dm_vs_model': diebold_mariano(baseline_loss, model_cumulative_loss,
                                       horizon=y_true.shape[1]),
    }
  return report
