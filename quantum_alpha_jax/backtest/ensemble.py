"""The ensemble rule: the three models' per-bar signals → one target position per bar.

Every signal at bar ``t`` was computed from data up to bar ``t``'s close (the models'
``bar_signals``), and the target it yields is filled at bar ``t + 1``'s open by the backtest engine,
so the rule adds no look-ahead. Signals, per bar:

- Strategist: ``target_position`` ``s_t`` (the Decision Transformer's conditioned rollout), in
  [0, 1], or [-1, 1] when shorts are allowed.
- Oracle: ``p_up`` = P(cumulative log-return over its last horizon > 0) and ``uncertainty`` =
  the width of its outermost quantile interval.
- Guardian: ``regime`` (index into ``schema.REGIMES``: bull, bear, sideways) and ``risk_level``
  (0 low, 1 medium, 2 high).

The rule (``config`` from :func:`ensemble_config`; each component can be switched off):

1. **Proposal**: the first component switched on, in the order Strategist, Oracle, Guardian.
   Strategist: ``s_t``. Oracle: +1 if ``p_up >= oracle.enter``, -1 if ``p_up <= 1 - oracle.enter``
   and shorts are allowed, else 0. Guardian: +1 in bull, -1 in bear when shorts are allowed, else 0.
2. **Oracle gate** (when on and not the proposer): a long is kept only while ``p_up >=
   oracle.gate`` (a short only while ``p_up <= 1 - oracle.gate``), and only while the Oracle is not
   unusually unsure: ``u_t <= oracle.uncertainty_ratio * ema_t(u)``, an exponential moving average
   of its own uncertainty over the preceding bars and this one (half-life
   ``oracle.uncertainty_halflife_bars``; ``uncertainty_ratio <= 0`` switches this part off).
3. **Guardian sizing** (when on and not the proposer): the position is multiplied by
   ``guardian.risk_scale[risk_level]`` and ``guardian.regime_scale[regime]``, and set flat in a
   bear regime at high risk when ``guardian.flat_in_high_risk_bear``.
4. The result is clipped to [0, 1] (or [-1, 1] with shorts).
5. **No signal, no position**: at a bar where a component switched on has no signal
   (``available`` False: its past window is not usable, e.g. the warm-up after a data hole), the
   target is flat. Such a bar is skipped by the uncertainty EMA, which carries its value over it.

Everything is elementwise except the uncertainty EMA, an associative scan; the whole rule is one
jitted function of arrays over the test period (no per-bar Python loop).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema

COMPONENTS = ('strategist', 'oracle', 'guardian')
SIGNALS = {'strategist': ('target_position',), 'oracle': ('p_up', 'uncertainty'),
           'guardian': ('regime', 'risk_level')}
BULL, BEAR, SIDEWAYS = (schema.REGIMES.index(name) for name in ('bull', 'bear', 'sideways'))

# The ablation: the full ensemble, each model alone, and the Strategist with each filter.
ABLATIONS = {
    'ensemble': ('strategist', 'oracle', 'guardian'),
    'strategist + oracle': ('strategist', 'oracle'),
    'strategist + guardian': ('strategist', 'guardian'),
    'strategist alone': ('strategist',),
    'oracle alone': ('oracle',),
    'guardian alone': ('guardian',),
}


def ensemble_config(**overrides) -> ml_collections.ConfigDict:
  """The rule's parameters (module docstring); ``use_*`` switch components on and off."""
  config = ml_collections.ConfigDict({
      'use_strategist': True,
      'use_oracle': True,
      'use_guardian': True,
      'allow_short': False,
      'oracle': {'enter': 0.55, 'gate': 0.5, 'uncertainty_ratio': 1.5,
                 'uncertainty_halflife_bars': 288},
      'guardian': {'risk_scale': (1.0, 0.75, 0.25), 'regime_scale': (1.0, 0.5, 1.0),
                   'flat_in_high_risk_bear': True},
  })
  config.update(overrides)
  return config


def components(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The components switched on, in proposal order."""
  return tuple(name for name in COMPONENTS if config[f'use_{name}'])


def check_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for a rule that cannot work."""
  if not components(config):
    raise errors.ConfigError(errors.describe(
        'ensemble', 'every component is switched off',
        'switch one on (use_strategist/use_oracle/use_guardian); buy-and-hold is always reported'))
  for name in ('enter', 'gate'):
    value = float(config.oracle[name])
    if not 0.0 <= value <= 1.0:
      raise errors.ConfigError(errors.describe(f'ensemble.oracle.{name}', f'{value} is not in [0, 1]'))
  for name, length in (('risk_scale', 3), ('regime_scale', len(schema.REGIMES))):
    values = tuple(config.guardian[name])
    if len(values) != length or min(values) < 0:
      raise errors.ConfigError(errors.describe(
          f'ensemble.guardian.{name}', f'{values} must be {length} non-negative factors'))
  if config.oracle.uncertainty_halflife_bars <= 0:
    raise errors.ConfigError(errors.describe(
        'ensemble.oracle.uncertainty_halflife_bars',
        f'{config.oracle.uncertainty_halflife_bars} must be positive'))


def causal_ema(values: jax.Array, halflife: float, available: jax.Array | None = None
               ) -> jax.Array:
  """``ema_t = a ema_{t-1} + (1 - a) x_t`` started at the first ``x`` (``a = 0.5 ** (1 /
  halflife)``), as an associative scan of the affine maps ``e -> a e + b``; uses bars ``<= t``
  only. Bars where ``available`` is False are skipped (``ema_t = ema_{t-1}``; 0 before the first)."""
  decay = 0.5 ** (1.0 / halflife)
  values = jnp.asarray(values, jnp.float32)
  available = (jnp.ones(values.shape, bool) if available is None
               else jnp.asarray(available, bool))
  first = available & (jnp.cumsum(available) == 1)
  a = jnp.where(first, 0.0, jnp.where(available, decay, 1.0))
  b = jnp.where(available, (1.0 - a) * values, 0.0)

  def combine(first, second):
    return first[0] * second[0], second[0] * first[1] + second[1]

  return jax.lax.associative_scan(combine, (a, b))[1]


def required_signals(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(signal for name in components(config) for signal in SIGNALS[name])


def _positions(signals: Mapping[str, jax.Array], available: jax.Array, *,
               active: tuple[str, ...], allow_short: bool,
               enter: float, gate: float, uncertainty_ratio: float, halflife: float,
               risk_scale: tuple[float, ...], regime_scale: tuple[float, ...],
               flat_in_high_risk_bear: bool) -> jax.Array:
  proposer = active[0]
  if proposer == 'strategist':
    position = jnp.asarray(signals['target_position'], jnp.float32)
  elif proposer == 'oracle':
    p_up = jnp.asarray(signals['p_up'], jnp.float32)
    position = jnp.where(p_up >= enter, 1.0, 0.0)
    if allow_short:
      position = jnp.where(p_up <= 1.0 - enter, -1.0, position)
  else:
    regime = jnp.asarray(signals['regime'], jnp.int32)
    position = jnp.where(regime == BULL, 1.0, 0.0)
    if allow_short:
      position = jnp.where(regime == BEAR, -1.0, position)

  if 'oracle' in active[1:]:
    p_up = jnp.asarray(signals['p_up'], jnp.float32)
    keep = jnp.where(position > 0, p_up >= gate, jnp.where(position < 0, p_up <= 1.0 - gate, True))
    if uncertainty_ratio > 0:
      uncertainty = jnp.asarray(signals['uncertainty'], jnp.float32)
      keep &= uncertainty <= uncertainty_ratio * causal_ema(uncertainty, halflife, available)
    position = jnp.where(keep, position, 0.0)

  if 'guardian' in active[1:]:
    regime = jnp.clip(jnp.asarray(signals['regime'], jnp.int32), 0, len(regime_scale) - 1)
    risk = jnp.clip(jnp.asarray(signals['risk_level'], jnp.int32), 0, len(risk_scale) - 1)
    position = position * jnp.asarray(risk_scale, jnp.float32)[risk]
    position = position * jnp.asarray(regime_scale, jnp.float32)[regime]
    if flat_in_high_risk_bear:
      position = jnp.where((regime == BEAR) & (risk == 2), 0.0, position)

  position = jnp.where(available, position, 0.0)
  return jnp.clip(position, -1.0 if allow_short else 0.0, 1.0)


_positions_jit = jax.jit(_positions, static_argnames=(
    'active', 'allow_short', 'enter', 'gate', 'uncertainty_ratio', 'halflife', 'risk_scale',
    'regime_scale', 'flat_in_high_risk_bear'))


def positions(signals: Mapping[str, np.ndarray], config: ml_collections.ConfigDict,
              available: np.ndarray | None = None) -> np.ndarray:
  """Target positions ``[time]`` from per-bar signal arrays ``[time]`` (names in ``SIGNALS``);
  flat where ``available [time]`` (default: every bar) is False, whatever the signals hold there
  (NaN included)."""
  check_config(config)
  needed = required_signals(config)
  missing = [name for name in needed if name not in signals]
  if missing:
    raise errors.DataError(errors.describe(
        'ensemble signals', f'missing {missing} for components {components(config)}',
        'compute them with the models\' bar_signals, or switch those components off'))
  arrays = {name: np.asarray(signals[name]) for name in needed}
  lengths = {value.shape for value in arrays.values()}
  if len(lengths) != 1 or len(next(iter(lengths))) != 1:
    raise errors.DataError(errors.describe('ensemble signals', f'shapes {lengths} differ',
                                           'give every signal as one [time] array'))
  length = len(next(iter(arrays.values())))
  available = (np.ones(length, bool) if available is None
               else np.asarray(available, bool).reshape(-1))
  if available.shape != (length,):
    raise errors.DataError(errors.describe('ensemble available', f'shape {available.shape}',
                                           f'one flag per bar: ({length},)'))
  for name, value in arrays.items():
    if np.issubdtype(value.dtype, np.floating):
      if not np.all(np.isfinite(value[available])):
        raise errors.DataError(errors.describe(
            f'ensemble signal {name!r}', 'holds NaN or inf at a bar marked available',
            'mark the bars without a signal with available=False'))
      arrays[name] = np.where(available, value, 0)
  result = _positions_jit(
      arrays, available, active=components(config), allow_short=bool(config.allow_short),
      enter=float(config.oracle.enter), gate=float(config.oracle.gate),
      uncertainty_ratio=float(config.oracle.uncertainty_ratio),
      halflife=float(config.oracle.uncertainty_halflife_bars),
      risk_scale=tuple(float(x) for x in config.guardian.risk_scale),
      regime_scale=tuple(float(x) for x in config.guardian.regime_scale),
      flat_in_high_risk_bear=bool(config.guardian.flat_in_high_risk_bear))
  return np.asarray(result, np.float64)


def ablation_configs(config: ml_collections.ConfigDict, available: Sequence[str] = COMPONENTS
                     ) -> dict[str, ml_collections.ConfigDict]:
  """One config per row of the ablation table whose components are all ``available``."""
  rows = {}
  for name, parts in ABLATIONS.items():
    if not set(parts) <= set(available):
      continue
    row = ml_collections.ConfigDict(config.to_dict())
    for component in COMPONENTS:
      row[f'use_{component}'] = component in parts
    rows[name] = row
  return rows
