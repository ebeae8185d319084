"""Backtests of target-weight policies: next-open fills, fees, slippage, trade lists and reports."""

from __future__ import annotations

from quantum_alpha_jax.backtest.engine import BacktestResult
from quantum_alpha_jax.backtest.engine import run_backtest
