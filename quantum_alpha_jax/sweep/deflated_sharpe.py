"""The Deflated Sharpe Ratio (Bailey & López de Prado, 2014, "The Deflated Sharpe Ratio: Correcting
for Selection Bias, Backtest Overfitting and Non-Normality", J. Portfolio Management 40(5)).

After ``N`` trials, the best observed Sharpe ratio ``SR*`` is compared with the Sharpe ratio the best
of ``N`` skill-less trials would reach by luck alone,

    SR₀ = √V[SRₙ] · ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e))),

with ``V[SRₙ]`` the variance of the trials' Sharpe ratios and ``γ`` the Euler–Mascheroni constant.
The DSR is the probabilistic Sharpe ratio of ``SR*`` against that benchmark, which corrects for the
length ``T`` of the track record and the skewness ``γ₃`` and (non-excess) kurtosis ``γ₄`` of its
returns:

    DSR = Φ( (SR* − SR₀) √(T − 1) / √(1 − γ₃ SR* + (γ₄ − 1)/4 · SR*²) ).

Every Sharpe ratio here is per observation (not annualised): divide an annual figure by
``√periods_per_year`` first (:func:`per_period`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

EULER_GAMMA = 0.5772156649015329


def per_period(annual_sharpe: float, periods_per_year: float) -> float:
  """An annualised Sharpe ratio → per observation (``SR / √periods_per_year``)."""
  return float(annual_sharpe) / math.sqrt(float(periods_per_year))


def expected_maximum_sharpe(variance: float, trials: int) -> float:
  """``SR₀``: the expected maximum Sharpe ratio of ``trials`` skill-less trials whose Sharpe ratios
  have variance ``variance`` (per observation)."""
  if trials < 2 or variance <= 0:
    return 0.0
  return float(math.sqrt(variance)) * float(
      (1 - EULER_GAMMA) * scipy_stats.norm.ppf(1 - 1 / trials)
      + EULER_GAMMA * scipy_stats.norm.ppf(1 - 1 / (trials * math.e)))


def probabilistic_sharpe(sharpe: float, benchmark: float, observations: int, skewness: float,
                         kurtosis: float) -> float:
  """``P(true SR > benchmark)`` for an observed per-observation ``sharpe`` over ``observations``
  returns of the given skewness and (non-excess; normal = 3) kurtosis."""
  denominator = 1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe ** 2
  if observations < 2 or denominator <= 0:
    return float('nan')
  z = (sharpe - benchmark) * math.sqrt(observations - 1) / math.sqrt(denominator)
  return float(scipy_stats.norm.cdf(z))


def deflated_sharpe(sharpe: float, trial_sharpes: Sequence[float], observations: int,
                    skewness: float, kurtosis: float, *,
                    trials: int | None = None, variance: float | None = None
                    ) -> dict[str, float]:
  """The DSR of the best trial's per-observation ``sharpe`` given every trial's Sharpe ratio
  (``trials`` and ``variance`` override their count and variance, e.g. to count pruned trials
  too). Returns the DSR, ``SR₀`` and the inputs, JSON-ready."""
  values = np.asarray([s for s in trial_sharpes if s is not None and np.isfinite(s)], np.float64)
  count = int(trials if trials is not None else values.size)
  if variance is None:
    variance = float(values.var(ddof=1)) if values.size > 1 else 0.0
  benchmark = expected_maximum_sharpe(variance, count)
  return {'deflated_sharpe_ratio': probabilistic_sharpe(sharpe, benchmark, observations,
                                                        skewness, kurtosis),
          'expected_maximum_sharpe': benchmark, 'sharpe': float(sharpe),
          'trials': count, 'sharpe_variance': variance, 'observations': int(observations),
          'skewness': float(skewness), 'kurtosis': float(kurtosis)}
