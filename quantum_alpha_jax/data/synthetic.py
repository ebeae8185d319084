"""The embedded default market: regime-switching 5-minute klines with the real ingest's schema.

``generate_market`` returns one kline frame per symbol (see ``schema``), with every bar observed, a
single segment and the true regime per bar (``regime``, an index into ``schema.REGIMES``), so the
whole project runs offline and the Guardian has ground truth. Everything is vectorised numpy; the
default (2 symbols x 6 years, about 1.26 M rows) takes well under a second.

The model, per bar t (5 minutes) and symbol s:

1. **Regimes.** A Markov chain over (bull, bear, sideways) shared by all symbols (crypto majors move
   together). Regime i lasts a geometric number of bars with mean ``mean_dwell_hours[i]`` (per-bar
   switch probability 1 / dwell bars), then jumps to j with ``regime_jump_probabilities[i][j]``;
   ``transition_matrix`` gives the equivalent per-bar matrix. Each symbol rarely deviates on its own
   (``symbol_deviation_per_day`` episodes lasting ``symbol_deviation_mean_hours`` on average, in one
   of the two other regimes); ``regime`` is the symbol's own regime.
2. **Innovations.** Multivariate Student-t with ``student_t_degrees_of_freedom`` scaled to unit
   variance: ``z_s = (sqrt(rho) m + sqrt(1 - rho) e_s) sqrt((df - 2) / chi2)``, with a market factor
   ``m``, an idiosyncratic ``e_s`` and a market-wide ``chi2`` (tail shocks hit every asset at once);
   ``rho = cross_asset_correlation``.
3. **Volatility.** A multiplicative-component GARCH (Engle and Sokalska, 2012): a unit-mean
   GARCH(1,1) ``h_t = (1 - alpha - beta) + (alpha z_{t-1}^2 + beta) h_{t-1}`` times a
   deterministic part:
   ``sigma_t = vol[regime] / sqrt(BARS_PER_YEAR) * multiplier_s * seasonality(t) * sqrt(h_t)``.
   The seasonality is ``exp(A cos(2 pi (hour - peak) / 24))``, damped at weekends, normalised to
   unit mean variance over a week.
4. **Log price.** ``r_t = mu[regime] multiplier_s - kappa_t (x_{t-1} - a_{t-1}) + sigma_t z_t`` with
   ``mu = drift / BARS_PER_YEAR``; in sideways ``kappa`` pulls the log price ``x`` towards an anchor
   ``a`` (an EMA of ``x`` with half-life ``anchor_half_life_hours``), elsewhere ``kappa = 0``. Per
   bar the drift is ~2% of the noise; over a 3-day regime it is comparable to it.
5. **Bars.** ``close = exp(x)``, ``open_t = close_{t-1}`` exactly; the high and low extend beyond
   ``max/min(open, close)`` by ``sigma_t * wick_scale * Exponential(1)`` in log space.
6. **Volume.** ``base_volume * volume_seasonality(t) * lognormal(AR(1) + iid)`` times
   ``(1 + k |r_t| / sigma_ref)``, with ``sigma_ref`` the symbol's average per-bar volatility, so
   volume tracks absolute returns and volatility clusters. ``quote_volume = volume * (high + low +
   close) / 3``; ``count`` is about ``trades_per_unit_volume * volume`` (rounded, >= 1); the
   taker-buy fraction is ``sigmoid(tilt * tanh(r_t / sigma_t) + noise)``, above 1/2 on up bars.

The two linear recursions (GARCH variance, price-minus-anchor gap) are solved by
``linear_recurrence``: cumulative products within chunks of 1,024 bars and a short loop over chunks.

Determinism: the market-wide draws come from ``(seed, 'market', ...)`` streams and each symbol's own
draws from ``(seed, symbol, ...)`` streams, so a symbol's frame does not depend on which other
symbols are generated alongside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import zlib

import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema

BULL, BEAR, SIDEWAYS = (schema.REGIMES.index(name) for name in ('bull', 'bear', 'sideways'))
BARS_PER_HOUR = 12
BARS_PER_DAY = 24 * BARS_PER_HOUR
BARS_PER_WEEK = 7 * BARS_PER_DAY
COLUMNS = (schema.TIMESTAMP, *schema.OHLCV, *schema.EXTRA_KLINE_COLUMNS, schema.OBSERVED,
           schema.SEGMENT, schema.REGIME)
_WHERE = 'generate_market'
_SECONDS_PER_DAY = 86_400
_NANOSECONDS_PER_SECOND = 1_000_000_000
_EPOCH_DAY_OF_WEEK = 3  # 1970-01-01 was a Thursday (Monday = 0).
_RECURRENCE_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class SymbolParameters:
  """Per-symbol scale: 2019-01 price level, volatility (and drift) multiplier, volume per bar."""
  start_price: float
  volatility_multiplier: float = 1.0
  base_volume: float = 100.0  # base asset per 5-minute bar on a quiet (|return| = 0) average bar.
  trades_per_unit_volume: float = 10.0  # trades per unit of base-asset volume.


def _default_symbols() -> dict[str, SymbolParameters]:
  return {
      # Binance spot 2019-01: BTC ~3,700 USDT, ~100-200 BTC and ~2,000 trades per 5 minutes.
      'BTCUSDT': SymbolParameters(
          start_price=3700.0, volatility_multiplier=1.0, base_volume=150.0,
          trades_per_unit_volume=12.0),
      # ETH ~130 USDT, about 1.25x BTC's volatility, ~1,500 ETH and ~1,500 trades per 5 minutes.
      'ETHUSDT': SymbolParameters(
          start_price=130.0, volatility_multiplier=1.25, base_volume=1500.0,
          trades_per_unit_volume=1.0),
  }


@dataclasses.dataclass(frozen=True)
class MarketParameters:
  """Every knob of the synthetic market; per-regime tuples follow ``schema.REGIMES`` order."""
  # Regimes (bull, bear, sideways). Drift: annualised log drift (3.0 = e^3 a year if it lasted).
  annual_drift: tuple[float, float, float] = (3.0, -3.5, 0.0)
  # Annualised volatility of BTC in each regime (bear is the most volatile, sideways the calmest).
  annual_volatility: tuple[float, float, float] = (0.60, 0.85, 0.40)
  # Mean time in each regime; the per-bar switch probability is 1 / (12 * hours).
  mean_dwell_hours: tuple[float, float, float] = (72.0, 48.0, 60.0)
  # Where a regime goes when it ends (row: from, column: to; zero diagonal, rows sum to 1).
  regime_jump_probabilities: tuple[tuple[float, float, float], ...] = (
      (0.0, 0.35, 0.65),
      (0.45, 0.0, 0.55),
      (0.55, 0.45, 0.0),
  )
  # Sideways: the log price reverts towards its anchor with this half-life...
  sideways_reversion_half_life_hours: float = 4.0
  # ... and the anchor is an EMA of the log price with this half-life (all regimes).
  anchor_half_life_hours: float = 24.0
  # Rare symbol-specific regime deviations: episodes per day per symbol, mean length (0 disables).
  symbol_deviation_per_day: float = 0.05
  symbol_deviation_mean_hours: float = 6.0
  # Volatility clustering on 5-minute bars: unit-mean GARCH(1,1), persistence alpha + beta = 0.98
  # (shock half-life ~3 hours).
  garch_alpha: float = 0.05
  garch_beta: float = 0.93
  # Fat tails: Student-t innovations (scaled to unit variance).
  student_t_degrees_of_freedom: float = 4.0
  # Correlation of the innovations of any two symbols.
  cross_asset_correlation: float = 0.8
  # Intraday seasonality: log-amplitude of a daily cosine peaking at this UTC hour (US/EU overlap).
  seasonality_peak_hour: float = 14.5
  volatility_seasonality_amplitude: float = 0.3
  volume_seasonality_amplitude: float = 0.4
  weekend_volatility_factor: float = 0.75
  weekend_volume_factor: float = 0.6
  # Volume = base * seasonality * lognormal noise * (1 + sensitivity * |return| / sigma_ref).
  volume_return_sensitivity: float = 1.0
  volume_noise: float = 0.3  # iid log-volume noise (standard deviation).
  volume_persistent_noise: float = 0.4  # AR(1) log-volume noise (stationary standard deviation).
  volume_persistence_hours: float = 6.0  # half-life of the AR(1) log-volume noise.
  trade_count_noise: float = 0.15  # log-noise of trades per unit volume.
  # Taker-buy fraction = sigmoid(tilt * tanh(return / sigma) + noise * N(0, 1)).
  taker_buy_tilt: float = 0.6
  taker_buy_noise: float = 0.2
  # High/low extend beyond the body by sigma * wick_scale * Exponential(1) (log space).
  wick_scale: float = 0.5
  symbols: Mapping[str, SymbolParameters] = dataclasses.field(default_factory=_default_symbols)

  def __post_init__(self):
    where = 'MarketParameters'
    checks = (
        (all(len(values) == len(schema.REGIMES) for values in (
            self.annual_drift, self.annual_volatility, self.mean_dwell_hours)),
         'annual_drift, annual_volatility and mean_dwell_hours need one value per regime'),
        (min(self.annual_volatility) > 0, 'annual_volatility must be positive'),
        (min(self.mean_dwell_hours) >= 1 / BARS_PER_HOUR, 'mean_dwell_hours must be >= 1 bar'),
        (_is_jump_matrix(self.regime_jump_probabilities),
         'regime_jump_probabilities must be 3x3, non-negative, zero diagonal, rows summing to 1'),
        (self.sideways_reversion_half_life_hours > 0 and self.anchor_half_life_hours > 0,
         'half-lives must be positive'),
        (self.symbol_deviation_per_day >= 0 and self.symbol_deviation_mean_hours > 0,
         'symbol deviations need a rate >= 0 and a positive mean length'),
        (self.garch_alpha >= 0 and self.garch_beta >= 0 and self.garch_alpha + self.garch_beta < 1,
         'GARCH needs alpha, beta >= 0 and alpha + beta < 1'),
        (math.isfinite(self.student_t_degrees_of_freedom)
         and self.student_t_degrees_of_freedom > 2,
         'student_t_degrees_of_freedom must be finite and > 2 (unit variance)'),
        (0 <= self.cross_asset_correlation < 1, 'cross_asset_correlation must be in [0, 1)'),
        (self.weekend_volatility_factor > 0 and self.weekend_volume_factor > 0,
         'weekend factors must be positive'),
        (min(self.volume_noise, self.volume_persistent_noise, self.trade_count_noise,
             self.taker_buy_noise, self.volume_return_sensitivity, self.wick_scale) >= 0
         and self.volume_persistence_hours > 0, 'noise scales must be >= 0'),
        (all(p.start_price > 0 and p.volatility_multiplier > 0 and p.base_volume > 0
             and p.trades_per_unit_volume > 0 for p in self.symbols.values()),
         'symbol start_price, volatility_multiplier, base_volume and trades_per_unit_volume must'
         ' be > 0'),
    )
    for ok, problem in checks:
      if not ok:
        raise errors.ConfigError(errors.describe(where, problem, 'fix the value passed'))


def _is_jump_matrix(matrix) -> bool:
  try:
    array = np.asarray(matrix, dtype=np.float64)
  except (TypeError, ValueError):
    return False
  return (array.shape == (3, 3) and bool(np.all(array >= 0)) and bool(np.all(np.diag(array) == 0))
          and bool(np.allclose(array.sum(axis=1), 1.0)))


def transition_matrix(parameters: MarketParameters | None = None) -> np.ndarray:
  """The per-bar regime transition matrix ``[3, 3]`` (row: from, column: to) the chain follows."""
  parameters = parameters or MarketParameters()
  switch = 1.0 / (np.asarray(parameters.mean_dwell_hours) * BARS_PER_HOUR)
  jumps = np.asarray(parameters.regime_jump_probabilities, dtype=np.float64)
  return switch[:, None] * jumps + np.diag(1.0 - switch)


def stationary_distribution(parameters: MarketParameters | None = None) -> np.ndarray:
  """The long-run fraction of bars in each regime, ``[3]``."""
  matrix = transition_matrix(parameters)
  eigenvalues, eigenvectors = np.linalg.eig(matrix.T)
  vector = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1.0))])
  return vector / vector.sum()


# The learnable preset: a clean, identifiable version of the same model, the yardstick on which a
# model that works must beat the naive rules (evaluate/ceiling.py measures its ceiling; figures in
# its report). A toy by design: the trend drifts are far beyond any real market's.
# - Regimes last 12 h on average, so a five-day test split holds about ten of them (the majority
#   class is no longer a 0.85 free lunch) while a 2-hour (24-bar) forecast rarely spans a switch.
# - Regimes differ by volatility (0.6 / 0.9 / 0.2 a year) and strongly by drift (+-60 a year,
#   about 0.3 noise standard deviations a bar in bull): once the regime is known, the sign of a
#   24-bar return is right ~85% of the time in a trend.
# - Sideways pulls the price back to an anchor (an EMA of the log price with a 6-hour half-life)
#   with a 2-hour half-life, so after a trend the price reverts against recent momentum: no naive
#   rule (persistence, momentum, always-up) is right in every regime; the filter is.
# - No GARCH (alpha = 0) and no symbol-specific deviations: the forward filter of
#   evaluate/ceiling.py is then the exact Bayes posterior, not an approximation.
LEARNABLE = MarketParameters(
    annual_drift=(60.0, -60.0, 0.0),
    annual_volatility=(0.6, 0.9, 0.2),
    mean_dwell_hours=(12.0, 12.0, 12.0),
    regime_jump_probabilities=((0.0, 0.3, 0.7), (0.3, 0.0, 0.7), (0.5, 0.5, 0.0)),
    sideways_reversion_half_life_hours=2.0,
    anchor_half_life_hours=6.0,
    symbol_deviation_per_day=0.0,
    garch_alpha=0.0,
)
PRESETS: Mapping[str, MarketParameters] = {'realistic': MarketParameters(), 'learnable': LEARNABLE}


def preset(name: str) -> MarketParameters:
  """The ``MarketParameters`` of a named preset: 'realistic' (the default market) or 'learnable'."""
  if name not in PRESETS:
    raise errors.ConfigError(errors.describe(
        'synthetic preset', f'unknown preset {name!r}', f'use one of {", ".join(PRESETS)}'))
  return PRESETS[name]


def parameters_to_dict(parameters: MarketParameters) -> dict:
  """JSON-ready ``MarketParameters`` (symbols included), the inverse of ``parameters_from_dict``."""
  return dataclasses.asdict(parameters)


def parameters_from_dict(values: Mapping) -> MarketParameters:
  """``MarketParameters`` from ``parameters_to_dict``'s output (lists read back as tuples)."""
  values = dict(values)
  symbols = {name: SymbolParameters(**fields) for name, fields in values.pop('symbols').items()}
  fields = {name: tuple(tuple(row) for row in value) if name == 'regime_jump_probabilities'
            else tuple(value) if isinstance(value, list) else value
            for name, value in values.items()}
  try:
    return MarketParameters(**fields, symbols=symbols)
  except TypeError as error:
    raise errors.ConfigError(errors.describe(
        'parameters_from_dict', f'not a MarketParameters record ({error})',
        'pass the dict that parameters_to_dict wrote (a store sidecar\'s generator.parameters)')
    ) from error


def generate_market(
    symbols: Sequence[str] | str = ('BTCUSDT', 'ETHUSDT'),
    start: str | pd.Timestamp = '2019-01-01',
    end: str | pd.Timestamp = '2025-01-01',
    seed: int = 0,
    parameters: MarketParameters | None = None,
) -> dict[str, pd.DataFrame]:
  """One kline frame per symbol, a bar every 5 minutes with open time in ``[start, end)`` (UTC).

  Same seed, same frames (bitwise). ``parameters=None`` means ``MarketParameters()``.
  """
  parameters = parameters or MarketParameters()
  symbols = _check_symbols(symbols, parameters)
  seed = _check_seed(seed)
  open_times = _open_times(start, end)
  count = open_times.size

  market_rng = _streams(seed, 'market')
  regime = _markov_regimes(market_rng['regime'], count, parameters)
  chi_square = market_rng['tails'].chisquare(parameters.student_t_degrees_of_freedom, count)
  tail_scale = np.sqrt((parameters.student_t_degrees_of_freedom - 2.0) / chi_square)
  market_factor = market_rng['factor'].standard_normal(count)
  hours, weekend = _clock(open_times)
  volatility_season = volatility_seasonality(open_times, parameters)
  volume_season = _seasonality(
      hours, weekend, parameters.volume_seasonality_amplitude, parameters.weekend_volume_factor,
      parameters.seasonality_peak_hour, power=1)
  timestamps = pd.DatetimeIndex(open_times.astype('datetime64[ns]')).tz_localize('UTC')

  frames = {}
  for symbol in symbols:
    frames[symbol] = _generate_symbol(
        symbol, seed, parameters, timestamps, regime, market_factor, tail_scale,
        volatility_season, volume_season)
  return frames


def _generate_symbol(symbol, seed, parameters, timestamps, market_regime, market_factor,
                     tail_scale, volatility_season, volume_season) -> pd.DataFrame:
  """Bars for one symbol given the market-wide draws."""
  symbol_parameters = parameters.symbols[symbol]
  rng = _streams(seed, symbol)
  count = market_regime.size
  regime = _symbol_regimes(rng['deviation'], market_regime, parameters)

  rho = parameters.cross_asset_correlation
  idiosyncratic = rng['innovation'].standard_normal(count)
  shocks = (math.sqrt(rho) * market_factor + math.sqrt(1.0 - rho) * idiosyncratic) * tail_scale

  # Unit-mean GARCH(1,1) on the standardised shocks: h_t = omega + (alpha z_{t-1}^2 + beta) h_{t-1}.
  alpha, beta = parameters.garch_alpha, parameters.garch_beta
  coefficients = np.empty(count)
  coefficients[0] = 1.0
  coefficients[1:] = alpha * shocks[:-1] ** 2 + beta
  offsets = np.full(count, 1.0 - alpha - beta)
  offsets[0] = 0.0
  # Without shocks (alpha = 0) h stays at its unit start; linear_recurrence needs coefficients > 0.
  garch_variance = (linear_recurrence(coefficients, offsets, initial=1.0) if alpha > 0
                    else np.ones(count))

  multiplier = symbol_parameters.volatility_multiplier
  bar_volatility = np.asarray(parameters.annual_volatility) / math.sqrt(schema.BARS_PER_YEAR)
  bar_drift = np.asarray(parameters.annual_drift) / schema.BARS_PER_YEAR
  sigma = bar_volatility[regime] * multiplier * volatility_season * np.sqrt(garch_variance)
  noise = sigma * shocks
  drift = bar_drift[regime] * multiplier

  # Sideways mean reversion: with d = x - a (log price minus anchor),
  # d_t = (1 - kappa_t - lambda) d_{t-1} + drift_t + noise_t, and the return is
  # r_t = drift_t - kappa_t d_{t-1} + noise_t.
  kappa = np.where(regime == SIDEWAYS,
                   half_life_rate(parameters.sideways_reversion_half_life_hours), 0.0)
  anchor_rate = half_life_rate(parameters.anchor_half_life_hours)
  gap = linear_recurrence(1.0 - kappa - anchor_rate, drift + noise, initial=0.0)
  previous_gap = np.concatenate([[0.0], gap[:-1]])
  log_return = drift - kappa * previous_gap + noise
  log_close = math.log(symbol_parameters.start_price) + np.cumsum(log_return)
  close = np.exp(log_close)
  open_ = np.empty(count)
  open_[0] = symbol_parameters.start_price
  open_[1:] = close[:-1]
  wicks = rng['wick'].standard_exponential((2, count)) * (parameters.wick_scale * sigma)
  high = np.maximum(open_, close) * np.exp(wicks[0])
  low = np.minimum(open_, close) * np.exp(-wicks[1])

  # Volume: lognormal (persistent AR(1) + iid) x seasonality x (1 + k |r| / sigma_ref).
  volume_rng = rng['volume']
  persistence = math.exp(-math.log(2.0) / (parameters.volume_persistence_hours * BARS_PER_HOUR))
  persistent = linear_recurrence(
      np.full(count, persistence),
      volume_rng.standard_normal(count) * parameters.volume_persistent_noise
      * math.sqrt(1.0 - persistence ** 2),
      initial=0.0)
  log_noise = (persistent + volume_rng.standard_normal(count) * parameters.volume_noise
               - 0.5 * (parameters.volume_persistent_noise ** 2 + parameters.volume_noise ** 2))
  reference_sigma = multiplier * float(np.mean(bar_volatility))
  volume = (symbol_parameters.base_volume * volume_season * np.exp(log_noise)
            * (1.0 + parameters.volume_return_sensitivity * np.abs(log_return) / reference_sigma))
  typical_price = (high + low + close) / 3.0
  quote_volume = volume * typical_price
  trades = volume * symbol_parameters.trades_per_unit_volume * np.exp(
      parameters.trade_count_noise * rng['count'].standard_normal(count))
  trades = np.maximum(1.0, np.round(trades))
  taker_logit = (parameters.taker_buy_tilt * np.tanh(log_return / sigma)
                 + parameters.taker_buy_noise * rng['taker'].standard_normal(count))
  taker_fraction = np.clip(1.0 / (1.0 + np.exp(-taker_logit)), 0.01, 0.99)
  taker_buy_volume = volume * taker_fraction

  return pd.DataFrame({
      schema.TIMESTAMP: timestamps,
      'open': open_,
      'high': high,
      'low': low,
      'close': close,
      'volume': volume,
      'quote_volume': quote_volume,
      'count': trades,
      'taker_buy_volume': taker_buy_volume,
      'taker_buy_quote_volume': taker_buy_volume * typical_price,
      schema.OBSERVED: np.ones(count, dtype=bool),
      schema.SEGMENT: np.zeros(count, dtype=np.int32),
      schema.REGIME: regime.astype(np.int8),
  }, columns=list(COLUMNS))


def linear_recurrence(coefficients: np.ndarray, offsets: np.ndarray,
                      initial: float = 0.0) -> np.ndarray:
  """``y_t = coefficients_t * y_{t-1} + offsets_t`` over ``[time]``, with ``y_{-1} = initial``.

  Vectorised in chunks (cumulative products within a chunk, a short loop over chunks); needs
  coefficients > 0 whose products over 1,024 steps stay within float64 range.
  """
  coefficients = np.asarray(coefficients, dtype=np.float64)
  offsets = np.asarray(offsets, dtype=np.float64)
  length = coefficients.size
  if length == 0:
    return np.empty(0)
  chunks = -(-length // _RECURRENCE_CHUNK)
  padding = chunks * _RECURRENCE_CHUNK - length
  coefficients = np.pad(coefficients, (0, padding), constant_values=1.0)
  coefficients = coefficients.reshape(chunks, _RECURRENCE_CHUNK)
  offsets = np.pad(offsets, (0, padding)).reshape(chunks, _RECURRENCE_CHUNK)
  products = np.cumprod(coefficients, axis=1)
  local = products * np.cumsum(offsets / products, axis=1)  # The solution from a zero start.
  carries = np.empty(chunks)
  value = float(initial)
  for index in range(chunks):
    carries[index] = value
    value = products[index, -1] * value + local[index, -1]
  return (local + products * carries[:, None]).reshape(-1)[:length]


def half_life_rate(hours: float) -> float:
  """The per-bar rate ``1 - 0.5 ** (1 / bars)`` of an exponential decay with this half-life."""
  return 1.0 - 0.5 ** (1.0 / (hours * BARS_PER_HOUR))


def _markov_regimes(rng: np.random.Generator, count: int,
                    parameters: MarketParameters) -> np.ndarray:
  """The shared regime path ``[time]``: geometric dwell times, then a jump to another regime."""
  dwell_bars = np.asarray(parameters.mean_dwell_hours) * BARS_PER_HOUR
  jumps = np.asarray(parameters.regime_jump_probabilities, dtype=np.float64)
  regime = np.empty(count, dtype=np.int8)
  current = int(rng.choice(len(schema.REGIMES), p=stationary_distribution(parameters)))
  position = 0
  while position < count:
    length = int(rng.geometric(1.0 / dwell_bars[current]))
    regime[position:position + length] = current
    position += length
    current = int(rng.choice(len(schema.REGIMES), p=jumps[current]))
  return regime


def _symbol_regimes(rng: np.random.Generator, market_regime: np.ndarray,
                    parameters: MarketParameters) -> np.ndarray:
  """The market regime with rare symbol-specific episodes in one of the two other regimes."""
  regime = market_regime.copy()
  if parameters.symbol_deviation_per_day == 0:
    return regime
  follow_bars = BARS_PER_DAY / parameters.symbol_deviation_per_day
  deviation_bars = max(1.0, parameters.symbol_deviation_mean_hours * BARS_PER_HOUR)
  position = int(rng.geometric(1.0 / follow_bars))
  while position < regime.size:
    length = int(rng.geometric(1.0 / deviation_bars))
    others = [index for index in range(len(schema.REGIMES)) if index != market_regime[position]]
    regime[position:position + length] = others[int(rng.integers(len(others)))]
    position += length + int(rng.geometric(1.0 / follow_bars))
  return regime


def volatility_seasonality(open_times: np.ndarray,
                           parameters: MarketParameters | None = None) -> np.ndarray:
  """The deterministic volatility factor ``seasonality(t)`` ``[time]`` of bars opening at
  ``open_times`` (int64 ns since the epoch, UTC): the one ``generate_market`` multiplies in."""
  parameters = parameters or MarketParameters()
  hours, weekend = _clock(np.asarray(open_times, dtype=np.int64))
  return _seasonality(hours, weekend, parameters.volatility_seasonality_amplitude,
                      parameters.weekend_volatility_factor, parameters.seasonality_peak_hour,
                      power=2)


def _clock(open_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """UTC hour of the bar's middle (fractional) and a weekend flag, from open times in ns."""
  seconds = open_times // _NANOSECONDS_PER_SECOND + 150
  hours = (seconds % _SECONDS_PER_DAY) / 3600.0
  day_of_week = (seconds // _SECONDS_PER_DAY + _EPOCH_DAY_OF_WEEK) % 7
  return hours, day_of_week >= 5


def _seasonality(hours, weekend, amplitude, weekend_factor, peak_hour, power) -> np.ndarray:
  """``exp(A cos(2 pi (hour - peak) / 24))``, damped at weekends, with mean(m**power) = 1 a week."""

  def shape(hour, is_weekend):
    return (np.exp(amplitude * np.cos(2.0 * np.pi * (hour - peak_hour) / 24.0))
            * np.where(is_weekend, weekend_factor, 1.0))

  week = np.arange(BARS_PER_WEEK)
  week_hours = (week % BARS_PER_DAY + 0.5) / BARS_PER_HOUR
  normaliser = np.mean(shape(week_hours, week // BARS_PER_DAY >= 5) ** power) ** (1.0 / power)
  return shape(hours, weekend) / normaliser


def _streams(seed: int, name: str) -> dict[str, np.random.Generator]:
  """Independent named random generators for ``(seed, name, purpose)``."""
  purposes = ('regime', 'tails', 'factor', 'deviation', 'innovation', 'wick', 'volume', 'count',
              'taker')
  return {
      purpose: np.random.default_rng(np.random.SeedSequence(
          [seed, zlib.crc32(name.encode()), zlib.crc32(purpose.encode())]))
      for purpose in purposes
  }


def _check_symbols(symbols, parameters: MarketParameters) -> tuple[str, ...]:
  if isinstance(symbols, str):
    symbols = (symbols,)
  symbols = tuple(symbols)
  if not symbols:
    raise errors.ConfigError(errors.describe(
        _WHERE, 'no symbols requested', f'pass some of {", ".join(schema.KNOWN_SYMBOLS)}'))
  for symbol in symbols:
    if symbol not in schema.KNOWN_SYMBOLS:
      raise errors.DataError(errors.describe(
          _WHERE, f'unknown symbol {symbol!r}',
          f'the synthetic market knows {", ".join(schema.KNOWN_SYMBOLS)}'))
    if symbol not in parameters.symbols:
      raise errors.ConfigError(errors.describe(
          _WHERE, f'MarketParameters.symbols has no entry for {symbol!r}',
          'add a SymbolParameters for it'))
  if len(set(symbols)) != len(symbols):
    raise errors.ConfigError(errors.describe(
        _WHERE, f'duplicate symbols in {list(symbols)}', 'list each symbol once'))
  return symbols


def _check_seed(seed) -> int:
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise errors.ConfigError(errors.describe(
        _WHERE, f'seed={seed!r} is not a non-negative integer', 'pass e.g. seed=0'))
  return int(seed)


def _open_times(start, end) -> np.ndarray:
  """Bar open times in int64 ns: the 5-minute grid points in ``[start, end)``."""
  start_time, end_time = (schema.to_utc(start, f'{_WHERE} start'),
                          schema.to_utc(end, f'{_WHERE} end'))
  if start_time >= end_time:
    raise errors.ConfigError(errors.describe(
        _WHERE, f'start {start_time} is not before end {end_time}', 'pass start < end'))
  start_ns, end_ns = start_time.as_unit('ns').value, end_time.as_unit('ns').value
  first = -(-start_ns // schema.BAR_NANOSECONDS) * schema.BAR_NANOSECONDS
  if first >= end_ns:
    raise errors.ConfigError(errors.describe(
        _WHERE, f'no 5-minute bar opens in [{start_time}, {end_time})', 'widen the span'))
  return np.arange(first, end_ns, schema.BAR_NANOSECONDS, dtype=np.int64)
