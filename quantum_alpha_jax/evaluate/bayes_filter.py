"""The exact Bayes filter of the synthetic market and the forecast distribution it implies: the
forward (HMM) filter ``P(regime_t | returns up to t)`` with the generator's emission model and
transition matrix, and the 1..24-bar cumulative-return distribution (P(up), quantiles) it implies.
``evaluate/ceiling.py`` scores both as the market's ceiling; its docstring has the maths. Split out
of ``evaluate/ceiling.py`` (issue #17).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import integrate, optimize, special

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import synthetic


_WHERE = 'market_ceiling'


@dataclasses.dataclass(frozen=True)
class FilterResult:
  """The forward filter's output for one symbol; arrays are ``[time]`` over the whole series."""
  posterior: np.ndarray  # [time, 3] P(regime_t | r_0..r_t), columns in schema.REGIMES order
  log_return: np.ndarray  # r_t = log(close_t / open_t)
  gap: np.ndarray  # x_t - anchor_t after bar t (the next bar's sideways reversion acts on it)
  next_variance: np.ndarray  # the GARCH h_{t+1} expected after bar t
  open_times: np.ndarray  # int64 ns since the epoch (UTC)
  log_close: np.ndarray


def _series(frame: pd.DataFrame, symbol: str, parameters: synthetic.MarketParameters):
  """(open_times ns, log open, log close) of a whole synthetic series; DataError on a bad frame."""
  where = f'{_WHERE}: {symbol}'
  missing = [c for c in (schema.TIMESTAMP, 'open', 'close') if c not in frame]
  if missing:
    raise errors.DataError(errors.describe(where, f'missing column(s) {", ".join(missing)}',
                                           'pass the synthetic kline or store frame'))
  if symbol not in parameters.symbols:
    raise errors.ConfigError(errors.describe(
        where, 'MarketParameters.symbols has no entry for it',
        'pass the parameters the market was generated with'))
  open_times = pd.DatetimeIndex(frame[schema.TIMESTAMP]).as_unit('ns').asi8
  if len(open_times) < 2 or np.any(np.diff(open_times) != schema.BAR_NANOSECONDS):
    raise errors.DataError(errors.describe(
        where, 'bars are not one unbroken 5-minute series',
        'pass the synthetic market as generated (every bar, in time order)'))
  open_price = frame['open'].to_numpy(np.float64)
  close = frame['close'].to_numpy(np.float64)
  start_price = parameters.symbols[symbol].start_price
  if not math.isclose(open_price[0], start_price, rel_tol=1e-9):
    raise errors.DataError(errors.describe(
        where, f'the first open is {open_price[0]:.6g}, not the generator\'s start price '
        f'{start_price:.6g}: the series does not start at the generator\'s first bar',
        'pass the whole series from its first bar (the filter needs it to warm up) and the '
        'start/end of the range to score'))
  return open_times, np.log(open_price), np.log(close)


def _emission_inputs(log_return, open_times, parameters, symbol):
  """Per-bar regime means ``[time, 3]``, scales ``[time, 3]`` (without sqrt(h)) and the gap."""
  multiplier = parameters.symbols[symbol].volatility_multiplier
  drift = np.asarray(parameters.annual_drift) / schema.BARS_PER_YEAR * multiplier
  volatility = np.asarray(parameters.annual_volatility) / math.sqrt(schema.BARS_PER_YEAR)
  anchor_rate = synthetic.half_life_rate(parameters.anchor_half_life_hours)
  kappa = synthetic.half_life_rate(parameters.sideways_reversion_half_life_hours)
  gap = synthetic.linear_recurrence(np.full(log_return.size, 1.0 - anchor_rate), log_return)
  previous_gap = np.concatenate([[0.0], gap[:-1]])
  means = np.broadcast_to(drift, (log_return.size, 3)).copy()
  means[:, synthetic.SIDEWAYS] -= kappa * previous_gap
  season = synthetic.volatility_seasonality(open_times, parameters)
  scales = volatility[None, :] * multiplier * season[:, None]
  return means, scales, gap


def regime_filter(frame: pd.DataFrame, parameters: synthetic.MarketParameters,
                  symbol: str) -> FilterResult:
  """The forward filter over a symbol's whole series (see the module docstring), from its first bar.

  frame: the symbol's synthetic kline (or store) frame with ``timestamp``, ``open``, ``close``.
  """
  open_times, log_open, log_close = _series(frame, symbol, parameters)
  log_return = log_close - log_open
  means, scales, gap = _emission_inputs(log_return, open_times, parameters, symbol)
  posterior, next_variance = _forward(
      log_return, means, scales ** 2, synthetic.transition_matrix(parameters),
      synthetic.stationary_distribution(parameters), parameters.student_t_degrees_of_freedom,
      parameters.garch_alpha, parameters.garch_beta)
  return FilterResult(posterior=posterior, log_return=log_return, gap=gap,
                      next_variance=next_variance, open_times=open_times, log_close=log_close)


def _forward(returns, means, variances, transition, initial, df, alpha, beta):
  """The filter recursion over ``[time]`` (scalar Python floats: 3 regimes, ~1 us a bar)."""
  count = returns.size
  posterior = np.empty((count, 3))
  next_variance = np.empty(count)
  (p00, p01, p02), (p10, p11, p12), (p20, p21, p22) = transition.tolist()
  exponent = -(df + 1.0) / 2.0
  tail = 1.0 / (df - 2.0)
  omega = 1.0 - alpha - beta
  q0, q1, q2 = (float(value) for value in initial)
  h = 1.0
  rows = zip(returns.tolist(), means.tolist(), variances.tolist())
  for t, (r, (m0, m1, m2), (v0, v1, v2)) in enumerate(rows):
    e0, e1, e2 = (r - m0) ** 2 / v0, (r - m1) ** 2 / v1, (r - m2) ** 2 / v2  # z^2 h
    l0 = q0 * (1.0 + e0 * tail / h) ** exponent / math.sqrt(v0)
    l1 = q1 * (1.0 + e1 * tail / h) ** exponent / math.sqrt(v1)
    l2 = q2 * (1.0 + e2 * tail / h) ** exponent / math.sqrt(v2)
    total = l0 + l1 + l2
    if not total > 0:  # every likelihood underflowed: keep the prediction
      l0, l1, l2, total = q0, q1, q2, q0 + q1 + q2
    a0, a1, a2 = l0 / total, l1 / total, l2 / total
    posterior[t] = a0, a1, a2
    h = omega + alpha * (a0 * e0 + a1 * e1 + a2 * e2) + beta * h
    next_variance[t] = h
    q0 = a0 * p00 + a1 * p10 + a2 * p20
    q1 = a0 * p01 + a1 * p11 + a2 * p21
    q2 = a0 * p02 + a1 * p12 + a2 * p22
  return posterior, next_variance


@functools.lru_cache(maxsize=64)
def matched_degrees_of_freedom(df: float, terms: int) -> float:
  """Degrees of freedom of the unit-variance Student-t whose density at zero equals that of the
  standardised sum of ``terms`` iid unit-variance t(``df``) (``inf`` once it is normal)."""
  if terms <= 1:
    return float(df)
  shape = df / 2.0

  def characteristic(u):  # of a unit-variance t(df): K_v(a) a^v / (Gamma(v) 2^(v-1)), a = sqrt(df-2)|u|
    a = max(math.sqrt(df - 2.0) * abs(u), 1e-300)
    return math.exp(math.log(special.kve(shape, a)) - a + shape * math.log(a)
                    - special.gammaln(shape) - (shape - 1.0) * math.log(2.0))

  scale = 1.0 / math.sqrt(terms)
  density = integrate.quad(lambda u: characteristic(u * scale) ** terms, 0.0, math.inf,
                           limit=400)[0] / math.pi

  def unit_t_density(d):
    return math.exp(special.gammaln((d + 1) / 2) - special.gammaln(d / 2)
                    - 0.5 * math.log(math.pi * (d - 2)))

  if density <= unit_t_density(1e6):
    return math.inf
  return float(optimize.brentq(lambda d: unit_t_density(d) - density, df, 1e6, xtol=1e-6))


@dataclasses.dataclass(frozen=True)
class Forecast:
  """The mixture forecast of ``y_h`` at ``anchors``: ``[anchors, horizon, components]``, each a
  unit-variance Student-t (or a normal) scaled to its mean and variance."""
  weights: np.ndarray  # [anchors, horizon, components], summing to 1 over components
  mean: np.ndarray  # [anchors, horizon, components]
  variance: np.ndarray  # [anchors, horizon, components]
  degrees_of_freedom: np.ndarray  # [anchors, horizon, components] (inf: normal)

  def _components(self):
    """Flattened ``[items, components]`` weights, means, scales, finite dfs and a normal flag."""
    components = self.mean.shape[-1]
    df = np.broadcast_to(self.degrees_of_freedom, self.mean.shape).reshape(-1, components)
    normal = ~np.isfinite(df)
    df = np.where(normal, 3.0, df)
    scale = np.sqrt(self.variance.reshape(-1, components)
                    * np.where(normal, 1.0, (df - 2.0) / df))
    weights = self.weights.reshape(-1, components)
    return weights, self.mean.reshape(-1, components), scale, df, normal

  @staticmethod
  def _cdf(value, weights, mean, scale, df, normal):
    standard = (value[:, None] - mean) / scale
    values = np.where(normal, special.ndtr(standard), special.stdtr(df, standard))
    return np.sum(values * weights, axis=1)

  @staticmethod
  def _pdf(value, weights, mean, scale, df, normal):
    standard = (value[:, None] - mean) / scale
    log_t = (special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * np.log(np.pi * df)
             - (df + 1) / 2 * np.log1p(standard ** 2 / df))
    log_normal = -0.5 * standard ** 2 - 0.5 * math.log(2 * math.pi)
    return np.sum(np.exp(np.where(normal, log_normal, log_t)) / scale * weights, axis=1)

  def cdf(self, value: np.ndarray) -> np.ndarray:
    """``P(y_h <= value)`` for value ``[anchors, horizon]`` (or broadcastable to it)."""
    value = np.broadcast_to(np.asarray(value, dtype=np.float64), self.mean.shape[:2])
    return self._cdf(value.ravel(), *self._components()).reshape(self.mean.shape[:2])

  def probability_up(self) -> np.ndarray:
    """``P(y_h > 0)`` ``[anchors, horizon]``."""
    return 1.0 - self.cdf(0.0)

  def quantiles(self, levels: Sequence[float], tolerance: float = 1e-9,
                iterations: int = 60) -> np.ndarray:
    """The mixture's quantiles ``[anchors, horizon, levels]``: Newton steps kept inside a
    shrinking bisection bracket, iterated on the items not yet within ``tolerance`` of the level."""
    weights, mean, scale, df, normal = self._components()
    centre = np.sum(weights * mean, axis=1)
    spread = np.sqrt(np.sum(weights * (self.variance.reshape(weights.shape) + mean ** 2), axis=1)
                     - centre ** 2)
    result = []
    for level in levels:
      low = np.min(mean - 60.0 * scale, axis=1)
      high = np.max(mean + 60.0 * scale, axis=1)
      value = centre + spread * special.ndtri(level)
      active = np.arange(value.size)
      for _ in range(iterations):
        parts = (weights[active], mean[active], scale[active], df[active], normal[active])
        current = value[active]
        error = self._cdf(current, *parts) - level
        done = np.abs(error) < tolerance
        low[active] = np.where(error < 0, current, low[active])
        high[active] = np.where(error >= 0, current, high[active])
        step = current - error / np.maximum(self._pdf(current, *parts), 1e-300)
        inside = (step > low[active]) & (step < high[active])
        value[active] = np.where(done, current,
                                 np.where(inside, step, 0.5 * (low[active] + high[active])))
        active = active[~done]
        if active.size == 0:
          break
      result.append(value.reshape(self.mean.shape[:2]))
    return np.stack(result, axis=-1)


def _propagation(parameters: synthetic.MarketParameters, symbol: str, horizon: int) -> dict:
  """Per starting regime ``i``, the anchor-independent coefficients of the forecast (see above)."""
  multiplier = parameters.symbols[symbol].volatility_multiplier
  drift = np.asarray(parameters.annual_drift) / schema.BARS_PER_YEAR * multiplier
  variance = (np.asarray(parameters.annual_volatility) * multiplier) ** 2 / schema.BARS_PER_YEAR
  kappa = synthetic.half_life_rate(parameters.sideways_reversion_half_life_hours)
  anchor_rate = synthetic.half_life_rate(parameters.anchor_half_life_hours)
  transition = synthetic.transition_matrix(parameters)
  powers = np.stack([np.linalg.matrix_power(transition, k) for k in range(horizon + 1)])
  law = powers[1:]  # [k, i, j]: P(regime_{t+k} = j | regime_t = i), k = 1..horizon
  mean_drift = np.einsum('kij,j->ik', law, drift)  # [i, k]
  mean_kappa = kappa * law[:, :, synthetic.SIDEWAYS].T  # [i, k]
  noise = np.einsum('kij,j->ik', law, variance)  # [i, k] without seasonality and GARCH
  slope, offset, weights = _linear_paths(mean_drift, mean_kappa, noise, anchor_rate)
  # The same for a path that stays in its starting regime (exact: fixed drift, kappa and noise).
  constant = lambda values: np.repeat(np.asarray(values, np.float64)[:, None], horizon, axis=1)
  kappas = np.where(np.arange(3) == synthetic.SIDEWAYS, kappa, 0.0)
  stay_slope, stay_offset, stay_weights = _linear_paths(
      constant(drift), constant(kappas), constant(variance), anchor_rate)
  drift_variance = np.zeros((3, horizon))
  for i in range(3):
    # Variance of the drift sum over regime paths: E[(sum mu)^2] - (E sum mu)^2.
    second = np.zeros(horizon)
    for h in range(horizon):
      cross = sum(law[k, i] @ (drift * (powers[l - k] @ drift))
                  for k in range(h + 1) for l in range(k + 1, h + 1))
      second[h] = sum(law[k, i] @ drift ** 2 for k in range(h + 1)) + 2.0 * cross
    drift_variance[i] = np.maximum(second - np.cumsum(mean_drift[i]) ** 2, 0.0)
  stay = np.diag(transition)[:, None] ** np.arange(1, horizon + 1)[None, :]  # [i, h]
  return {'slope': slope, 'offset': offset, 'weights': weights, 'drift_variance': drift_variance,
          'stay': stay, 'stay_slope': stay_slope, 'stay_offset': stay_offset,
          'stay_weights': stay_weights}


def _linear_paths(drift, kappa, noise, anchor_rate):
  """Coefficients of ``y_h = slope * gap_t + offset + sum_j c_jh noise_j`` per regime ``[3, H]``,
  given the per-step drift, reversion rate and noise variance ``[3, H]`` (mean-field along the
  path); ``weights [3, j, h]`` are ``c_jh^2 * noise_j``."""
  horizon = drift.shape[1]
  slope, offset = np.zeros((3, horizon)), np.zeros((3, horizon))
  weights = np.zeros((3, horizon, horizon))
  for i in range(3):
    gap_slope, gap_offset, total_slope, total_offset = 1.0, 0.0, 0.0, 0.0
    for k in range(horizon):
      step_slope = -kappa[i, k] * gap_slope
      step_offset = drift[i, k] - kappa[i, k] * gap_offset
      gap_slope += step_slope - anchor_rate * gap_slope
      gap_offset += step_offset - anchor_rate * gap_offset
      total_slope += step_slope
      total_offset += step_offset
      slope[i, k], offset[i, k] = total_slope, total_offset
    for j in range(horizon):  # noise entering at step j (0-based) reaches y_h through the gap
      coefficient, carried = 1.0, 1.0
      for h in range(j, horizon):
        if h > j:
          coefficient -= kappa[i, h] * carried
          carried *= 1.0 - anchor_rate - kappa[i, h]
        weights[i, j, h] = coefficient ** 2 * noise[i, j]
  return slope, offset, weights


def forecast_distribution(result: FilterResult, parameters: synthetic.MarketParameters,
                          symbol: str, anchors: np.ndarray, horizon: int = 24) -> Forecast:
  """The filter's forecast of ``y_h = log(close[t+h] / close[t])``, ``h = 1..horizon``, at anchor
  bars ``t`` (indices into the series; the bars after them need not exist)."""
  anchors = np.asarray(anchors, dtype=np.int64)
  coefficients = _propagation(parameters, symbol, horizon)
  steps = np.arange(1, horizon + 1)
  future_times = result.open_times[anchors][:, None] + steps[None, :] * schema.BAR_NANOSECONDS
  season = synthetic.volatility_seasonality(future_times.ravel(), parameters).reshape(
      future_times.shape)
  persistence = parameters.garch_alpha + parameters.garch_beta
  garch = 1.0 + persistence ** (steps - 1)[None, :] * (result.next_variance[anchors, None] - 1.0)
  scale = season ** 2 * garch  # [anchors, j]
  gap = result.gap[anchors][:, None, None]
  table = np.array([matched_degrees_of_freedom(parameters.student_t_degrees_of_freedom, n)
                    for n in range(1, horizon + 1)])
  table = np.where(np.isfinite(table), table, 1e9)

  def moments(slope, offset, weights):
    mean = gap * slope.T[None] + offset.T[None]  # [anchors, h, i]
    noise = np.einsum('aj,ijh->ahi', scale, weights)
    squares = np.einsum('aj,ijh->ahi', scale ** 2, weights ** 2)
    terms = np.clip(noise ** 2 / np.maximum(squares, 1e-300), 1, horizon)
    df = np.interp(terms, np.arange(1, horizon + 1), table)
    return mean, noise, np.where(df >= 1e8, np.inf, df)

  # Mixture over the regime at t and whether the path stays in it: the staying path is exact, the
  # rest takes the remaining first two moments of the (mean-field) whole.
  mean, variance, _ = moments(coefficients['slope'], coefficients['offset'],
                              coefficients['weights'])
  variance = variance + coefficients['drift_variance'].T[None]
  stay_mean, stay_variance, stay_df = moments(
      coefficients['stay_slope'], coefficients['stay_offset'], coefficients['stay_weights'])
  stay = coefficients['stay'].T[None]  # [1, h, i]
  leave_mean = (mean - stay * stay_mean) / (1.0 - stay)
  leave_second = (variance + mean ** 2 - stay * (stay_variance + stay_mean ** 2)) / (1.0 - stay)
  leave_variance = np.maximum(leave_second - leave_mean ** 2, 0.1 * stay_variance)
  posterior = result.posterior[anchors][:, None, :]
  return Forecast(
      weights=np.concatenate([posterior * stay, posterior * (1.0 - stay)], axis=-1),
      mean=np.concatenate([stay_mean, leave_mean], axis=-1),
      variance=np.concatenate([stay_variance, leave_variance], axis=-1),
      degrees_of_freedom=np.concatenate([stay_df, np.full_like(stay_df, np.inf)], axis=-1))
