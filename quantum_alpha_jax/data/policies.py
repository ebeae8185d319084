"""Trading actions and the behaviour policies of the Strategist's trajectories: the action/position
maths (hold/buy/sell, sizes, returns-to-go), the hindsight policy (training data only: it reads the
future by design) and the causal rules (trend, momentum, mean reversion, random) that are also run
over whole test periods as baselines (:func:`heuristic_positions`). Split out of
``data/trajectories.py`` (issue #17), which builds the episodes from them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantum_alpha_jax import errors
from quantum_alpha_jax.data.features import FEATURES


# Behaviours of a mixture ('flat': out of the market from the episode's first bar on).
POLICIES = ('oracle', 'trend', 'mean_reversion', 'random', 'momentum', 'flat')
ACTIONS = ('hold', 'buy', 'sell')


HOLD, BUY, SELL = 0, 1, 2


HEURISTICS = ('trend', 'mean_reversion', 'random')


RULES = ('trend', 'momentum', 'mean_reversion')  # the causal rule behaviours


_COLUMN = {name: FEATURES.index(name) for name in ('EMA_12', 'EMA_26', 'SMA_50', 'close', 'open',
                                                    'RSI_14', 'returns_3', 'returns_12',
                                                    'returns_60', 'volatility_240')}


MOMENTUM_LOOKBACKS = (3, 12, 60)  # the trailing returns among FEATURES


def actions_from_positions(positions: np.ndarray, initial: np.ndarray | float = 0.0
                           ) -> tuple[np.ndarray, np.ndarray]:
  """Canonical ``(actions int32, sizes float32)`` of positions ``[..., time]`` entered from
  ``initial [...]``: hold where the position is unchanged, else buy (long) or sell (flat/short)."""
  positions = np.asarray(positions, np.float32)
  initial = np.broadcast_to(np.asarray(initial, np.float32), positions.shape[:-1])
  previous = np.concatenate([initial[..., None], positions[..., :-1]], axis=-1)
  changed = positions != previous
  actions = np.where(changed, np.where(positions > 0, BUY, SELL), HOLD).astype(np.int32)
  sizes = np.where(changed, np.abs(positions), 0.0).astype(np.float32)
  return actions, sizes


def next_position(previous, action, size, allow_short: bool, xp=np):
  """The position after ``action`` with ``size`` from ``previous`` (numpy or ``xp=jax.numpy``)."""
  sold = -size if allow_short else xp.zeros_like(size)
  return xp.where(action == HOLD, previous, xp.where(action == BUY, size, sold))


def discounted_returns_to_go(rewards: np.ndarray, discount: float) -> np.ndarray:
  """``R_t = Σ_{j>=t} γ^{j-t} ρ_j`` over the last axis of ``rewards [..., time]`` (float64)."""
  rewards = np.asarray(rewards, np.float64)
  output = np.empty_like(rewards)
  running = np.zeros(rewards.shape[:-1])
  for t in range(rewards.shape[-1] - 1, -1, -1):
    running = rewards[..., t] + discount * running
    output[..., t] = running
  return output


def forward_fill(events: np.ndarray, initial: np.ndarray) -> np.ndarray:
  """Levels ``[E, T]``: each NaN of ``events`` keeps the previous level (``initial`` before t=0)."""
  values = np.concatenate([np.asarray(initial, np.float64)[:, None], events], axis=1)
  index = np.where(np.isnan(values), 0, np.arange(values.shape[1])[None, :])
  np.maximum.accumulate(index, axis=1, out=index)
  return np.take_along_axis(values, index, axis=1)[:, 1:]


def hindsight_policy(gains: np.ndarray, cost: float, allow_short: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The exact hindsight oracle as a policy: ``(levels [n], choice [E, T, n])`` where
  ``levels[choice[e, t, i]]`` is the level to hold after step t when ``levels[i]`` is held before
  it, maximising ``Σ_{j>=t} ℓ_j g_j - cost Σ_{j>=t} |ℓ_j - ℓ_{j-1}|`` over ``gains [E, T]`` (DP)."""
  levels = np.array([-1.0, 0.0, 1.0] if allow_short else [0.0, 1.0])
  episodes, steps = gains.shape
  switch = cost * np.abs(levels[:, None] - levels[None, :])  # [previous, next]
  value = np.zeros((episodes, len(levels)))  # best value from step t on, by previous level
  choice = np.zeros((episodes, steps, len(levels)), np.int8)
  for t in range(steps - 1, -1, -1):
    # total[e, previous, next] = next * g_t - switch + value_{t+1}(next)
    total = (levels[None, None, :] * gains[:, t, None, None] - switch[None]
             + value[:, None, :])
    choice[:, t] = np.argmax(total, axis=2)
    value = np.max(total, axis=2)
  return levels, choice


def hindsight_levels(gains: np.ndarray, cost: float, initial_level: np.ndarray,
                     allow_short: bool) -> np.ndarray:
  """Levels ``[E, T]`` in {0, 1} ({-1, 0, 1} with shorts) maximising
  ``Σ_t ℓ_t g_t - cost Σ_t |ℓ_t - ℓ_{t-1}|`` from ``ℓ_{-1} = initial_level [E]`` (exact DP)."""
  levels, choice = hindsight_policy(gains, cost, allow_short)
  episodes, steps = gains.shape
  state = np.searchsorted(levels, np.asarray(initial_level, np.float64))
  path = np.empty((episodes, steps))
  rows = np.arange(episodes)
  for t in range(steps):
    state = choice[rows, t, state]
    path[:, t] = levels[state]
  return path


def rule_events(policy: str, features: np.ndarray, allow_short: bool, parameter: Any = None
                ) -> np.ndarray:
  """The level a causal rule asks for at each bar of raw features ``[..., 44]``: 1 (long), 0 or -1
  (out, or short with ``allow_short``), NaN where it keeps the level it holds (module docstring).
  ``parameter``: the ``(look-back, threshold)`` of a momentum rule."""
  out = -1.0 if allow_short else 0.0
  if policy == 'trend':
    fast, slow = features[..., _COLUMN['EMA_12']], features[..., _COLUMN['EMA_26']]
    close, long_average = features[..., _COLUMN['close']], features[..., _COLUMN['SMA_50']]
    up = (fast > slow) & (close > long_average)
    down = (fast < slow) & (close < long_average)
    return np.where(up, 1.0, np.where(down, out, np.nan))
  if policy == 'momentum':
    bars, threshold = parameter
    trailing = features[..., _COLUMN[f'returns_{bars}']]
    scale = features[..., _COLUMN['volatility_240']] * np.sqrt(bars)
    return np.where(trailing > threshold * scale, 1.0,
                    np.where(trailing < -threshold * scale, out, np.nan))
  if policy == 'mean_reversion':
    rsi = features[..., _COLUMN['RSI_14']]
    return np.where(rsi < 30, 1.0, np.where(rsi > 70, out,
                                            np.where((rsi >= 45) & (rsi <= 55), 0.0, np.nan)))
  raise errors.ConfigError(errors.describe('rule_events', f'{policy!r} is not a causal rule',
                                           'use trend, momentum or mean_reversion'))


def rule_actions(policy: str, features: np.ndarray, held: np.ndarray, allow_short: bool,
                 parameter: Any = None) -> np.ndarray:
  """The canonical action ``[...]`` a causal rule takes at each bar of ``features [..., 44]`` from
  the position ``held [...]`` (hold when it keeps that level's sign, buy to go long, else sell)."""
  level = np.sign(np.asarray(held, np.float64))
  wanted = rule_events(policy, np.asarray(features, np.float64), allow_short, parameter)
  wanted = np.where(np.isnan(wanted), level, wanted)
  return np.where(wanted == level, HOLD, np.where(wanted > 0, BUY, SELL)).astype(np.int32)


def trend_levels(features: np.ndarray, initial_level: np.ndarray, allow_short: bool) -> np.ndarray:
  """Trend following on raw features ``[E, T, 44]`` (module docstring); levels ``[E, T]``."""
  return forward_fill(rule_events('trend', features, allow_short), initial_level)


def momentum_levels(features: np.ndarray, initial_level: np.ndarray, allow_short: bool,
                    bars: int, threshold: float) -> np.ndarray:
  """Momentum on raw features ``[E, T, 44]``: long while the trailing ``bars``-bar return exceeds
  ``threshold`` standard deviations (``volatility_240 · sqrt(bars)``), out (or short) below minus
  that, otherwise keep; levels ``[E, T]``."""
  return forward_fill(rule_events('momentum', features, allow_short, (bars, threshold)),
                       initial_level)


def mean_reversion_levels(features: np.ndarray, initial_level: np.ndarray,
                          allow_short: bool) -> np.ndarray:
  """Mean reversion on ``RSI_14`` of raw features ``[E, T, 44]``; levels ``[E, T]``."""
  return forward_fill(rule_events('mean_reversion', features, allow_short), initial_level)


def random_positions(rng: np.random.Generator, shape: tuple[int, int], initial: np.ndarray,
                     allow_short: bool) -> np.ndarray:
  """Random trading: per-episode action rate in [0.02, 0.15], random sizes; positions ``[E, T]``."""
  episodes, steps = shape
  rate = rng.uniform(0.02, 0.15, size=(episodes, 1))
  acts = rng.random((episodes, steps)) < rate
  buy = rng.random((episodes, steps)) < 0.5
  size = np.round(rng.uniform(0.1, 1.0, size=(episodes, steps)), 2)
  sold = -size if allow_short else np.zeros_like(size)
  events = np.where(acts, np.where(buy, size, sold), np.nan)
  return forward_fill(events, initial)


def heuristic_positions(name: str, features: np.ndarray, allow_short: bool = False,
                        seed: int = 0) -> np.ndarray:
  """A causal behaviour policy at size 1 over one series of raw features ``[time, 44]``, starting
  flat: the target positions ``[time]`` for a whole-period backtest baseline."""
  features = np.asarray(features, np.float64)[None]
  flat = np.zeros(1)
  if name == 'trend':
    return trend_levels(features, flat, allow_short)[0]
  if name == 'mean_reversion':
    return mean_reversion_levels(features, flat, allow_short)[0]
  if name == 'random':
    return random_positions(np.random.default_rng(seed), features.shape[:2], flat, allow_short)[0]
  raise errors.ConfigError(errors.describe('heuristic_positions', f'unknown heuristic {name!r}',
                                           f'use one of {HEURISTICS}'))
