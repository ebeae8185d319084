"""The parameters of the embedded synthetic market (``data/synthetic.py``): per-symbol and market-wide
parameters, the regime transition matrix and its stationary distribution, the named presets
(``realistic``, the default, and ``learnable``) and their JSON round trip (stores record their
generator's parameters in their sidecars). Split out of ``data/synthetic.py`` (issue #17).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import math

import numpy as np

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema

BARS_PER_HOUR = 12  # 5-minute bars


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
