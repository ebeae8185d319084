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

from collections.abc import Sequence
import math
import zlib

import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import market_parameters
from quantum_alpha_jax.data import schema

# The market's parameters and presets (data/market_parameters.py), bound here: the generator and its
# parameters are one interface for callers.
SymbolParameters = market_parameters.SymbolParameters
MarketParameters = market_parameters.MarketParameters
LEARNABLE = market_parameters.LEARNABLE
PRESETS = market_parameters.PRESETS
preset = market_parameters.preset
transition_matrix = market_parameters.transition_matrix
stationary_distribution = market_parameters.stationary_distribution
parameters_to_dict = market_parameters.parameters_to_dict
parameters_from_dict = market_parameters.parameters_from_dict

BULL, BEAR, SIDEWAYS = (schema.REGIMES.index(name) for name in ('bull', 'bear', 'sideways'))
BARS_PER_HOUR = market_parameters.BARS_PER_HOUR
BARS_PER_DAY = 24 * BARS_PER_HOUR
BARS_PER_WEEK = 7 * BARS_PER_DAY
COLUMNS = (schema.TIMESTAMP, *schema.OHLCV, *schema.EXTRA_KLINE_COLUMNS, schema.OBSERVED,
           schema.SEGMENT, schema.REGIME)
_WHERE = 'generate_market'
_SECONDS_PER_DAY = 86_400
_NANOSECONDS_PER_SECOND = 1_000_000_000
_EPOCH_DAY_OF_WEEK = 3  # 1970-01-01 was a Thursday (Monday = 0).
_RECURRENCE_CHUNK = 1024


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
