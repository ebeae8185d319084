"""Forecast, trading and regime metrics on host (numpy) arrays, returned JSON-ready."""

from __future__ import annotations

from quantum_alpha_jax.evaluate.forecast import coverage
from quantum_alpha_jax.evaluate.forecast import diebold_mariano
from quantum_alpha_jax.evaluate.forecast import direction_accuracy
from quantum_alpha_jax.evaluate.forecast import direction_accuracy_per_horizon
from quantum_alpha_jax.evaluate.forecast import forecast_report
from quantum_alpha_jax.evaluate.forecast import mae
from quantum_alpha_jax.evaluate.forecast import normalized_quantile_loss
from quantum_alpha_jax.evaluate.forecast import pinball_loss
from quantum_alpha_jax.evaluate.forecast import r2
from quantum_alpha_jax.evaluate.forecast import rmse
from quantum_alpha_jax.evaluate.regime import classification_metrics
from quantum_alpha_jax.evaluate.regime import regime_report
from quantum_alpha_jax.evaluate.regime import silhouette
from quantum_alpha_jax.evaluate.trading import trading_stats
