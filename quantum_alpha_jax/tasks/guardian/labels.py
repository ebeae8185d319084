"""The Guardian's labels and risk levels: realised volatility, the trend statistic, the rule regime
label (which sees the future: a label to train and score against, never an input), risk levels,
and the past-only trailing features its baselines read. numpy in, numpy out; jax in, jax out.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import windows

BULL, BEAR, SIDEWAYS = (schema.REGIMES.index(name) for name in ('bull', 'bear', 'sideways'))
VOLATILITY_FLOOR = 1e-3  # annualised; keeps log RV finite on flat (all filled) stretches


def realised_volatility(returns: Any) -> Any:
  """Annualised realised volatility ``sqrt(mean(r²) · BARS_PER_YEAR)`` of ``returns [..., n]``,
  floored at ``VOLATILITY_FLOOR``. numpy in, numpy out; jax in, jax out."""
  xp = jnp if isinstance(returns, jax.Array) else np
  returns = xp.asarray(returns, dtype=xp.float32)
  return xp.maximum(xp.sqrt(xp.mean(xp.square(returns), axis=-1) * schema.BARS_PER_YEAR),
                    VOLATILITY_FLOOR)


def trend_statistic(returns: Any) -> Any:
  """``τ = Σ r / (sqrt(mean r²) · sqrt(n)) = Σ r / sqrt(Σ r²)`` over ``returns [..., n]``; 0 where
  every return is 0. numpy in, numpy out; jax in, jax out."""
  xp = jnp if isinstance(returns, jax.Array) else np
  returns = xp.asarray(returns, dtype=xp.float32)
  scale = xp.sqrt(xp.sum(xp.square(returns), axis=-1))
  return xp.where(scale > 0, xp.sum(returns, axis=-1) / xp.maximum(scale, 1e-30), 0.0)


def classify_trend(statistic: Any, threshold: float) -> Any:
  xp = jnp if isinstance(statistic, jax.Array) else np
  return xp.where(statistic > threshold, BULL,
                  xp.where(statistic < -threshold, BEAR, SIDEWAYS)).astype(xp.int32)


def rule_labels(encoder_returns: Any, future_returns: Any, *, lookback: int,
                threshold: float) -> Any:
  """The rule regime label (module doc) from the last ``lookback`` bar returns up to the anchor,
  ``encoder_returns [batch, T]``, and the next ones, ``future_returns [batch, H]`` → ``[batch]``
  int32 indices into ``schema.REGIMES``. Uses the future: a training/scoring label only."""
  xp = jnp if isinstance(encoder_returns, jax.Array) else np
  returns = xp.concatenate([xp.asarray(encoder_returns)[..., -lookback:],
                            xp.asarray(future_returns)], axis=-1)
  return classify_trend(trend_statistic(returns), threshold)


def risk_levels(score: Any, thresholds: tuple[float, float]) -> Any:
  """0 (low), 1 (medium), 2 (high): ``score`` above none, one or both ``thresholds``."""
  xp = jnp if isinstance(score, jax.Array) else np
  return ((score > thresholds[0]).astype(xp.int32) + (score > thresholds[1]).astype(xp.int32))



def window_returns(source: windows.WindowSource, anchors: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
  """``(encoder_returns [n, T], future_returns [n, H])`` at ``anchors``, read from the arrays."""
  returns = np.take(source.arrays.log_return, anchors[:, None] + source.spec.offsets)
  return returns[:, :source.spec.encoder_length], returns[:, source.spec.encoder_length:]


def trailing_features(encoder_returns: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
  """Past-only ``(trend statistic τ, realised volatility)`` of the last ``lookback`` returns."""
  past = np.asarray(encoder_returns)[..., -lookback:]
  return trend_statistic(past), realised_volatility(past)

