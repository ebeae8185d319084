"""The ensemble rule one bar at a time, its causal uncertainty EMA carried as state.

``backtest/ensemble.py`` ``positions`` applies the rule to whole arrays (the EMA as an associative
scan over the test period); :class:`EnsembleState` applies the same rule to one bar, in float32
like the batch path, keeping ``ema_t`` between bars: started at the first available bar, carried
unchanged over bars where a component has no signal.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np

from quantum_alpha_jax.backtest import ensemble


class EnsembleState:
  """``step(signals, available) -> target``: ``ensemble.positions`` for one bar (one symbol)."""

  def __init__(self, config: ml_collections.ConfigDict):
    ensemble.check_config(config)
    self.config = config
    self.active = ensemble.components(config)
    self.needed = ensemble.required_signals(config)
    self.decay = np.float32(0.5 ** (1.0 / float(config.oracle.uncertainty_halflife_bars)))
    self.ema: np.float32 | None = None  # None before the first available bar

  def step(self, signals: Mapping[str, float], available: bool) -> float:
    """The target of one bar (flat where ``available`` is False, which leaves the EMA as it is)."""
    config, active = self.config, self.active
    if not available:
      return 0.0
    f32 = np.float32
    enter, gate = f32(config.oracle.enter), f32(config.oracle.gate)
    allow_short = bool(config.allow_short)
    if active[0] == 'strategist':
      position = f32(signals['target_position'])
    elif active[0] == 'oracle':
      p_up = f32(signals['p_up'])
      position = f32(1.0) if p_up >= enter else f32(0.0)
      if allow_short and p_up <= f32(1.0) - enter:
        position = f32(-1.0)
    else:
      regime = int(signals['regime'])
      position = f32(1.0) if regime == ensemble.BULL else f32(0.0)
      if allow_short and regime == ensemble.BEAR:
        position = f32(-1.0)
    if 'oracle' in active[1:]:
      p_up = f32(signals['p_up'])
      keep = (p_up >= gate if position > 0 else p_up <= f32(1.0) - gate if position < 0
              else True)
      if float(config.oracle.uncertainty_ratio) > 0:
        uncertainty = f32(signals['uncertainty'])
        self.ema = (uncertainty if self.ema is None
                    else f32(self.decay * self.ema + (f32(1.0) - self.decay) * uncertainty))
        keep = keep and uncertainty <= f32(config.oracle.uncertainty_ratio) * self.ema
      position = position if keep else f32(0.0)
    if 'guardian' in active[1:]:
      risk_scale = np.asarray(tuple(config.guardian.risk_scale), np.float32)
      regime_scale = np.asarray(tuple(config.guardian.regime_scale), np.float32)
      regime = int(np.clip(int(signals['regime']), 0, len(regime_scale) - 1))
      risk = int(np.clip(int(signals['risk_level']), 0, len(risk_scale) - 1))
      position = f32(f32(position * risk_scale[risk]) * regime_scale[regime])
      if config.guardian.flat_in_high_risk_bear and regime == ensemble.BEAR and risk == 2:
        position = f32(0.0)
    return float(np.clip(position, -1.0 if allow_short else 0.0, 1.0))
