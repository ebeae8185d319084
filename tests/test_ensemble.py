"""The ensemble rule against a plain per-bar Python re-implementation of its docstring."""

import numpy as np
import pytest

from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import ensemble


def _signals(n=500, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'target_position': rng.choice([0.0, 0.3, 1.0], n),
      'p_up': rng.uniform(0.3, 0.7, n),
      'uncertainty': rng.lognormal(0.0, 0.4, n),
      'regime': rng.integers(0, 3, n),
      'risk_level': rng.integers(0, 3, n),
  }


def _reference(signals, config):
  """Bar by bar, straight from the module docstring."""
  active = ensemble.components(config)
  decay = 0.5 ** (1 / config.oracle.uncertainty_halflife_bars)
  out, ema = [], None
  for t in range(len(signals['p_up'])):
    u = signals['uncertainty'][t]
    ema = u if ema is None else decay * ema + (1 - decay) * u
    if active[0] == 'strategist':
      p = signals['target_position'][t]
    elif active[0] == 'oracle':
      p = 1.0 if signals['p_up'][t] >= config.oracle.enter else 0.0
    else:
      p = 1.0 if signals['regime'][t] == 0 else 0.0
    if 'oracle' in active[1:]:
      if p > 0 and signals['p_up'][t] < config.oracle.gate:
        p = 0.0
      if config.oracle.uncertainty_ratio > 0 and u > config.oracle.uncertainty_ratio * ema:
        p = 0.0
    if 'guardian' in active[1:]:
      regime, risk = signals['regime'][t], signals['risk_level'][t]
      p *= config.guardian.risk_scale[risk] * config.guardian.regime_scale[regime]
      if config.guardian.flat_in_high_risk_bear and regime == 1 and risk == 2:
        p = 0.0
    out.append(min(max(p, 0.0), 1.0))
  return np.asarray(out)


@pytest.mark.parametrize('row', list(ensemble.ABLATIONS))
def test_every_ablation_row_matches_the_reference(row):
  signals = _signals()
  config = ensemble.ablation_configs(ensemble.ensemble_config())[row]
  np.testing.assert_allclose(ensemble.positions(signals, config), _reference(signals, config),
                             atol=1e-6)


def test_the_rule_is_causal_and_each_filter_only_reduces_the_strategist():
  signals = _signals(seed=1)
  config = ensemble.ensemble_config()
  base = ensemble.positions(signals, config)
  changed = {k: v.copy() for k, v in signals.items()}
  for name in changed:
    changed[name][300:] = changed[name][::-1][:200]
  np.testing.assert_array_equal(ensemble.positions(changed, config)[:300], base[:300])
  alone = ensemble.positions(signals, ensemble.ablation_configs(config)['strategist alone'])
  np.testing.assert_allclose(alone, signals['target_position'], atol=1e-6)
  assert np.all(base <= alone + 1e-7) and base.sum() < alone.sum()


def test_causal_ema_matches_a_loop():
  values = np.random.default_rng(2).normal(size=100).astype(np.float32)
  expected, ema = [], None
  for v in values:
    ema = v if ema is None else 0.5 ** (1 / 10) * ema + (1 - 0.5 ** (1 / 10)) * v
    expected.append(ema)
  np.testing.assert_allclose(np.asarray(ensemble.causal_ema(values, 10.0)), expected, atol=1e-5)


def test_shorts_and_bad_configs():
  signals = _signals(seed=3)
  config = ensemble.ensemble_config(use_strategist=False, use_guardian=False, allow_short=True)
  result = ensemble.positions(signals, config)
  np.testing.assert_array_equal(result, np.where(signals['p_up'] >= 0.55, 1.0,
                                                 np.where(signals['p_up'] <= 0.45, -1.0, 0.0)))
  with pytest.raises(errors.ConfigError, match='every component is switched off'):
    ensemble.positions(signals, ensemble.ensemble_config(
        use_strategist=False, use_oracle=False, use_guardian=False))
  with pytest.raises(errors.DataError, match='missing'):
    ensemble.positions({'p_up': signals['p_up']}, ensemble.ensemble_config())
  bad = dict(signals, p_up=np.where(np.arange(500) == 7, np.nan, signals['p_up']))
  with pytest.raises(errors.DataError, match='NaN'):
    ensemble.positions(bad, ensemble.ensemble_config())


@pytest.mark.parametrize('row', list(ensemble.ABLATIONS))
def test_bars_without_a_signal_are_flat_and_skipped_by_the_rule(row):
  """Where ``available`` is False (a model has no signal there; NaN in the signals) the target is
  flat, and on the other bars the rule is the reference run on those bars alone (the uncertainty
  EMA carries over the gaps)."""
  signals = _signals(seed=4)
  available = np.ones(500, bool)
  available[:30] = available[200:260] = available[400:403] = False
  holed = {name: np.where(available, value.astype(np.float64), np.nan)
           for name, value in signals.items()}
  config = ensemble.ablation_configs(ensemble.ensemble_config())[row]
  result = ensemble.positions(holed, config, available=available)
  assert np.all(result[~available] == 0.0)
  np.testing.assert_allclose(
      result[available], _reference({k: v[available] for k, v in signals.items()}, config),
      atol=1e-6)
  with pytest.raises(errors.DataError, match='available=False'):
    ensemble.positions(holed, config)


def test_causal_ema_skips_unavailable_bars():
  values = np.random.default_rng(5).normal(size=60).astype(np.float32)
  available = np.random.default_rng(6).random(60) < 0.7
  available[:3] = False
  expected, ema = [], 0.0
  for value, present in zip(values, available):
    if present:
      ema = value if not expected or not np.any(available[:len(expected)]) else (
          0.5 ** 0.1 * ema + (1 - 0.5 ** 0.1) * value)
    expected.append(ema)
  np.testing.assert_allclose(np.asarray(ensemble.causal_ema(values, 10.0, available)), expected,
                             atol=1e-5)


@pytest.mark.parametrize('row', list(ensemble.ABLATIONS))
def test_the_service_rule_one_bar_at_a_time_equals_the_batch_over_gaps(row):
  """serve/ensemble_state.py, stepped bar by bar with bars that have no signal (NaN, available
  False) in long and short runs, gives the batch rule bit for bit: flat at those bars, and the
  uncertainty EMA neither decays nor restarts over them (the real 3-day serve test has no such
  bar, so a decay there would pass it)."""
  from quantum_alpha_jax.serve import ensemble_state  # pylint: disable=g-import-not-at-top
  signals = _signals(n=1500, seed=8)
  available = np.ones(1500, bool)
  available[:40] = available[300:420] = available[700:703] = available[1100:1300] = False
  holed = {name: np.where(available, value.astype(np.float64), np.nan)
           for name, value in signals.items()}
  config = ensemble.ablation_configs(ensemble.ensemble_config())[row]
  batch = ensemble.positions(holed, config, available=available)
  state = ensemble_state.EnsembleState(config)
  stepped = np.array([state.step({name: value[t] for name, value in holed.items()}, available[t])
                      for t in range(1500)])
  # (A decayed or a restarted EMA over the gaps fails the two rows with the uncertainty gate.)
  np.testing.assert_array_equal(stepped, batch)
