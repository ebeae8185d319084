"""What is attainable on the synthetic market: a Bayes reference from the generator's own parameters.

The generator (``data/synthetic.py``) is known, so the best any model can do from a symbol's own
past is computable. For each symbol this module runs (steps 1-2 live in ``evaluate/bayes_filter.py``):

1. **The forward filter** (a hidden Markov model filter) ``P(regime_t | r_0..r_t)`` from the log
   returns ``r_t = log(close_t / open_t)`` (the generator's ``open_t = close_{t-1}``), with the
   generator's exact emission model: a unit-variance Student-t with ``student_t_degrees_of_freedom``,
   mean ``drift[i] * multiplier - kappa_i * gap_{t-1}`` (``kappa`` only in sideways; the gap
   ``x - anchor`` obeys ``gap_t = (1 - lambda) gap_{t-1} + r_t``, so it is a function of past
   returns) and scale ``vol[i] * multiplier * seasonality(t) * sqrt(h_t)``, and the chain's
   ``transition_matrix``, started from its stationary law. The GARCH variance ``h_t`` depends on
   past innovations, whose regime is unknown: the filter tracks it with the posterior-weighted
   squared innovation, ``h_{t+1} = (1 - a - b) + a E[z_t^2 h_t | r_0..r_t] + b h_t``.
   **Exactness.** With ``garch_alpha = 0`` and ``symbol_deviation_per_day = 0`` (the 'learnable'
   preset) the filter is the exact Bayes posterior. Otherwise it is an approximation: the GARCH
   state is an estimate, and a symbol's own regime (the market chain plus rare deviations) is not
   exactly the Markov chain the filter assumes.
2. **The forecast distribution** of the cumulative log return ``y_h = log(close[t+h] / close[t])``,
   ``h = 1..horizon``, given the filter at ``t``: a mixture over the regime at ``t`` (weights: the
   posterior). Component ``i`` has the exact Markov-propagated mean (drift and sideways reversion
   of the known gap, with the regime law ``e_i P^k`` at each step, taken mean-field in the
   reversion) and variance (noise through the reversion, the expected GARCH path
   ``1 + (a + b)^(k-1) (h_{t+1} - 1)``, the known seasonality, plus the variance of the drift sum
   over regime paths). Its shape is a unit-variance Student-t whose degrees of freedom match the
   density at zero of a sum of ``n_eff`` unit-variance t's (``n_eff``: the effective number of
   equal noise terms), so ``h = 1`` is exact and long horizons tend to the normal.
   ``tests/test_ceiling.py`` checks ``P(up)`` and the quantiles against a Monte Carlo of the
   generator's dynamics.
3. **Scores on ``[start, end)``**: regime accuracy and macro-F1 of the filter's arg-max against the
   true regime (beside the majority class of those same bars, in hindsight: the most favourable
   constant); the direction accuracy of ``P(up at horizon) > 0.5`` at the last horizon on
   non-overlapping windows (every ``horizon``-th anchor per symbol, so the Wilson intervals are
   honest) beside the naive rules (persistence: the sign of the last return; momentum: the sign of
   the trailing ``momentum_bars`` return; always up); the pinball loss of the implied quantiles beside
   climatology (per-horizon quantiles of the targets of every anchor before ``start``); and the
   after-fee return of the policy "long when ``P(up at horizon) > 0.5 + margin``" (long-only:
   flat otherwise; long-short: short below ``0.5 - margin``), backtested by
   ``backtest/engine.run_backtest`` (fills at the next open, fee and slippage per side) beside
   buy-and-hold. The margin is chosen on the ``validation`` range, never on ``[start, end)``.

Units. Returns, quantiles and pinball losses are in log-return units, as ``tasks/oracle.evaluate``
reports them (the Oracle trains on percent, ``target_scale`` 100, and divides its outputs back).

Anchors and warm-up. An anchor ``t`` is the last observed bar; a forecast anchor needs ``t`` and
``t + horizon`` inside ``[start, end)``. The gap (anchor EMA) and the GARCH state need the past, so
the filter runs from the series' first bar (the generator's first bar: its ``open`` is the symbol's
``start_price``; a frame that starts later is refused) and only ``[start, end)`` is scored. The
bars before ``start`` only warm the filter up and feed the climatology.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.evaluate import bayes_filter
from quantum_alpha_jax.evaluate import forecast
from quantum_alpha_jax.evaluate import regime as regime_metrics

_WHERE = 'market_ceiling'

DEFAULT_QUANTILES = (0.1, 0.5, 0.9)  # configs/oracle.py's model.quantiles
DEFAULT_MARGINS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
NAIVE_RULES = ('persistence', 'momentum', 'always_up')


# ------------------------------------------------------------------------------------------------
# The forecast distribution.


# ------------------------------------------------------------------------------------------------
# Scores.


def _indices(open_times: np.ndarray, start, end, where: str) -> np.ndarray:
  """Bar indices with open time in ``[start, end)``; DataError when none."""
  low = schema.to_utc(start, f'{where} start').as_unit('ns').value
  high = schema.to_utc(end, f'{where} end').as_unit('ns').value
  selected = np.flatnonzero((open_times >= low) & (open_times < high))
  if selected.size == 0:
    raise errors.DataError(errors.describe(
        where, f'no bars in [{start}, {end})', 'pass a range inside the series'))
  return selected


def _targets(log_close: np.ndarray, anchors: np.ndarray, horizon: int) -> np.ndarray:
  return log_close[anchors[:, None] + np.arange(1, horizon + 1)[None, :]] - log_close[anchors, None]


def _forecast_anchors(bars: np.ndarray, horizon: int) -> np.ndarray:
  """Anchors ``t`` of a contiguous bar range whose ``t + horizon`` is inside it too."""
  return bars[:max(bars.size - horizon, 0)]


def naive_directions(log_close: np.ndarray, log_return: np.ndarray, anchors: np.ndarray,
                     momentum_bars: int = 60) -> dict[str, np.ndarray]:
  """The naive rules' predicted signs at ``anchors`` (past bars only): persistence, momentum and
  always up. Momentum needs ``momentum_bars`` of past; earlier anchors use what there is."""
  past = np.maximum(anchors - momentum_bars, 0)
  return {'persistence': np.sign(log_return[anchors]),
          'momentum': np.sign(log_close[anchors] - log_close[past]),
          'always_up': np.ones(anchors.size)}


def _policy_targets(probability_up: np.ndarray, margin: float, allow_short: bool) -> np.ndarray:
  long = probability_up > 0.5 + margin
  if allow_short:
    return np.where(long, 1.0, np.where(probability_up < 0.5 - margin, -1.0, 0.0))
  return long.astype(np.float64)


def _backtest(frames, bars, signals, margin, allow_short, costs) -> dict:
  """The policy's backtest per symbol on ``bars`` (indices), with buy-and-hold beside it."""
  from quantum_alpha_jax.backtest import engine  # pylint: disable=g-import-not-at-top (jax)
  per_symbol = {}
  for symbol, frame in frames.items():
    rows = bars[symbol]
    run = engine.run_backtest(
        _policy_targets(signals[symbol], margin, allow_short),
        frame['open'].to_numpy(np.float64)[rows], frame['close'].to_numpy(np.float64)[rows],
        pd.DatetimeIndex(frame[schema.TIMESTAMP])[rows], allow_short=allow_short, **costs)
    per_symbol[symbol] = {
        'total_return': float(run.stats['total_return']),
        'sharpe': run.stats.get('sharpe'),
        'trades': int(len(run.trades)),
        'fees_paid': run.stats.get('fees_paid'),
        'buy_and_hold_total_return': float(run.buy_and_hold_stats['total_return'])}
  mean = lambda key: float(np.mean([entry[key] for entry in per_symbol.values()]))
  return {'margin': margin, 'total_return': mean('total_return'),
          'buy_and_hold_total_return': mean('buy_and_hold_total_return'),
          'per_symbol': per_symbol}


def market_ceiling(frames: Mapping[str, pd.DataFrame],
                   parameters: synthetic.MarketParameters | None = None, *,
                   start: Any, end: Any, validation: tuple[Any, Any] | None = None,
                   horizon: int = 24, quantiles: Sequence[float] = DEFAULT_QUANTILES,
                   momentum_bars: int = 60, margins: Sequence[float] = DEFAULT_MARGINS,
                   fee_rate: float = 0.001, slippage_bps: float = 1.0,
                   initial_capital: float = 10_000.0) -> dict:
  """The filter's ceiling on ``[start, end)`` beside the naive baselines (JSON-ready).

  frames: symbol -> its whole synthetic series from the generator's first bar (kline or store
  frame with ``timestamp``, ``open``, ``close`` and the true ``regime``). parameters: the
  ``MarketParameters`` that generated them (None: the default, 'realistic'). validation: the
  ``[start, end)`` range on which the policy's margin is chosen (None: every bar before
  ``start``). Keys: ``regime``, ``direction``, ``pinball``, ``policy``, ``filter_exact``,
  ``settings`` (see the module docstring; :func:`format_ceiling` prints them).
  """
  parameters = parameters or synthetic.MarketParameters()
  if not frames:
    raise errors.DataError(errors.describe(_WHERE, 'no frames', 'pass {symbol: frame}'))
  if horizon < 1:
    raise errors.ConfigError(errors.describe(_WHERE, f'horizon={horizon}', 'use horizon >= 1'))
  quantiles = tuple(float(q) for q in quantiles)
  true_regimes, predicted_regimes = [], []
  targets, predictions, climatology = [], [], []
  directions = {name: [] for name in ('filter', *NAIVE_RULES)}
  direction_truth = []
  coverage_hits = []
  signals, validation_signals, bars, validation_bars = {}, {}, {}, {}
  for symbol, frame in frames.items():
    if schema.REGIME not in frame:
      raise errors.DataError(errors.describe(
          f'{_WHERE}: {symbol}', 'no true regime column',
          'the ceiling needs the synthetic market (real data has no true regime)'))
    result = bayes_filter.regime_filter(frame, parameters, symbol)
    scored = _indices(result.open_times, start, end, f'{_WHERE}: {symbol}')
    regime = frame[schema.REGIME].to_numpy()
    true_regimes.append(regime[scored])
    predicted_regimes.append(np.argmax(result.posterior[scored], axis=1))
    anchors = _forecast_anchors(scored, horizon)
    if anchors.size == 0:
      raise errors.DataError(errors.describe(
          f'{_WHERE}: {symbol}', f'[{start}, {end}) holds no {horizon}-bar forecast window',
          'widen the range'))
    distribution = bayes_filter.forecast_distribution(result, parameters, symbol, anchors, horizon)
    probability = distribution.probability_up()
    target = _targets(result.log_close, anchors, horizon)
    predicted = distribution.quantiles(quantiles)
    targets.append(target)
    predictions.append(predicted)
    coverage_hits.append((predicted[..., 0] <= target) & (target <= predicted[..., -1]))
    past = _forecast_anchors(np.arange(scored[0]), horizon)
    if past.size < 10:
      raise errors.DataError(errors.describe(
          f'{_WHERE}: {symbol}', f'{past.size} anchors before {start} for the climatology',
          'start the series (its warm-up) earlier than the scored range'))
    climatology.append(np.broadcast_to(
        np.quantile(_targets(result.log_close, past, horizon), quantiles, axis=0).T,
        predicted.shape))
    independent = np.arange(0, anchors.size, horizon)
    direction_truth.append(target[independent, -1])
    directions['filter'].append(probability[independent, -1] - 0.5)
    for name, values in naive_directions(result.log_close, result.log_return, anchors[independent],
                                         momentum_bars).items():
      directions[name].append(values)
    # The policy signal: P(up at the horizon) at every bar of the range (the last one's is unused).
    full = bayes_filter.forecast_distribution(result, parameters, symbol, scored, horizon)
    signals[symbol] = full.probability_up()[:, -1]
    bars[symbol] = scored
    if validation is None:
      chosen = np.arange(scored[0])
    else:
      chosen = _indices(result.open_times, *validation, f'{_WHERE}: {symbol} validation')
    validation_bars[symbol] = chosen
    validation_signals[symbol] = bayes_filter.forecast_distribution(
        result, parameters, symbol, chosen, horizon).probability_up()[:, -1]
  true_regimes, predicted_regimes = np.concatenate(true_regimes), np.concatenate(predicted_regimes)
  regime_report = regime_metrics.classification_metrics(true_regimes, predicted_regimes)
  counts = np.bincount(true_regimes.astype(np.int64), minlength=3)
  majority = int(np.argmax(counts))
  majority_report = regime_metrics.classification_metrics(
      true_regimes, np.full_like(true_regimes, majority))
  truth = np.concatenate(direction_truth)
  direction = {name: forecast.direction_accuracy(truth, np.concatenate(values))
               for name, values in directions.items()}
  best_naive = max(NAIVE_RULES, key=lambda name: direction[name]['accuracy'] or 0.0)
  targets, predictions = np.concatenate(targets), np.concatenate(predictions)
  climatology = np.concatenate(climatology)
  costs = {'fee_rate': fee_rate, 'slippage_bps': slippage_bps, 'initial_capital': initial_capital}
  policy = {}
  for variant, allow_short in (('long_only', False), ('long_short', True)):
    tried = [_backtest(frames, validation_bars, validation_signals, margin, allow_short, costs)
             for margin in margins]
    best = max(tried, key=lambda entry: entry['total_return'])
    policy[variant] = {
        'margin': best['margin'],
        'validation_total_return': best['total_return'],
        'test': _backtest(frames, bars, signals, best['margin'], allow_short, costs)}
  filter_pinball = forecast.pinball_loss(targets, predictions, quantiles)
  climatology_pinball = forecast.pinball_loss(targets, climatology, quantiles)
  return {
      'settings': {
          'start': str(start), 'end': str(end),
          'validation': None if validation is None else [str(v) for v in validation],
          'symbols': list(frames), 'horizon': horizon, 'quantiles': list(quantiles),
          'momentum_bars': momentum_bars, 'margins': list(margins), **costs,
          'units': 'log return (the Oracle\'s evaluate units; x100 for its training percent)'},
      'filter_exact': parameters.garch_alpha == 0 and parameters.symbol_deviation_per_day == 0,
      'regime': {
          'bars': int(true_regimes.size),
          'filter': {key: regime_report[key] for key in ('accuracy', 'f1_macro',
                                                          'confusion_matrix')},
          'majority_class': {'class': schema.REGIMES[majority],
                             'accuracy': majority_report['accuracy'],
                             'f1_macro': majority_report['f1_macro'],
                             'note': 'the most frequent true regime of these very bars '
                                     '(hindsight: the most favourable constant)'},
          'true_shares': {name: float(counts[i] / counts.sum())
                          for i, name in enumerate(schema.REGIMES)}},
      'direction': {
          'horizon': horizon, 'windows': int(truth.size),
          'note': 'last horizon, every horizon-th anchor per symbol (non-overlapping windows)',
          **direction, 'best_naive': best_naive,
          'filter_beats_best_naive': bool(
              (direction['filter']['low'] or 0.0) > (direction[best_naive]['accuracy'] or 0.0))},
      'pinball': {
          'anchors': int(targets.shape[0]), 'filter': filter_pinball,
          'climatology': climatology_pinball,
          'filter_vs_climatology': filter_pinball / climatology_pinball,
          'interval_coverage': float(np.mean(np.concatenate(coverage_hits))),
          'nominal_coverage': quantiles[-1] - quantiles[0],
          'note': 'climatology: per-horizon quantiles of the targets of every anchor before start'},
      'policy': policy,
  }


def format_ceiling(report: Mapping[str, Any]) -> str:
  """The ceiling report as a short text table, for people."""
  settings, regime = report['settings'], report['regime']
  direction, pinball = report['direction'], report['pinball']

  def interval(entry):
    return f'{entry["accuracy"]:.3f} [{entry["low"]:.3f}, {entry["high"]:.3f}]'

  lines = [
      f'Ceiling of the synthetic market on [{settings["start"]}, {settings["end"]}) '
      f'({", ".join(settings["symbols"])}; forward filter '
      f'{"exact" if report["filter_exact"] else "approximate: GARCH / symbol deviations"})',
      f'  regime ({regime["bars"]} bars)        accuracy  macro-F1',
      f'    filter                      {regime["filter"]["accuracy"]:.3f}     '
      f'{regime["filter"]["f1_macro"]:.3f}',
      f'    majority class ({regime["majority_class"]["class"]:<8})   '
      f'{regime["majority_class"]["accuracy"]:.3f}     {regime["majority_class"]["f1_macro"]:.3f}',
      f'  direction at {direction["horizon"]} bars, {direction["windows"]} non-overlapping '
      'windows (accuracy [95% Wilson])']
  for name in ('filter', *NAIVE_RULES):
    marker = '  <- best naive' if name == direction['best_naive'] else ''
    lines.append(f'    {name:<26}  {interval(direction[name])}{marker}')
  lines += [
      f'  pinball ({pinball["anchors"]} anchors, log-return units)  filter {pinball["filter"]:.6f}'
      f'  climatology {pinball["climatology"]:.6f}  ratio {pinball["filter_vs_climatology"]:.3f}'
      f'  coverage {pinball["interval_coverage"]:.3f} (nominal {pinball["nominal_coverage"]:.2f})',
      '  policy after fees (margin chosen on validation)  total return   buy-and-hold']
  for variant, entry in report['policy'].items():
    test = entry['test']
    lines.append(f'    {variant:<11} margin {entry["margin"]:<5g}               '
                 f'{test["total_return"]:+.4f}        {test["buy_and_hold_total_return"]:+.4f}')
  return '\n'.join(lines)


def store_ceiling(store_dir: Any, splits: Mapping[str, Sequence[Any]],
                  symbols: Sequence[str] | None = None, *, split: str = 'test',
                  validation_split: str = 'validation', **options) -> dict:
  """:func:`market_ceiling` of a synthetic feature store on ``splits[split]``, the policy margin
  chosen on ``splits[validation_split]``, with the parameters its sidecars record (the main job's
  entry point: ``store_ceiling(config.store_dir, config.splits)``). ``options``: market_ceiling's."""
  from quantum_alpha_jax.data import store  # pylint: disable=g-import-not-at-top (pyarrow)
  frames = store.read_store(store_dir, symbols)
  records = {symbol: store.read_generator(store_dir, symbol) for symbol in frames}
  missing = [symbol for symbol, record in records.items() if not record]
  if missing:
    raise errors.DataError(errors.describe(
        str(store_dir), f'no generator record for {", ".join(missing)} (real data, or a store '
        'built before stores recorded their synthetic parameters)',
        'the ceiling needs the synthetic market: ' + store.REBUILD))
  first = next(iter(records.values()))
  if any(record['parameters'] != first['parameters'] for record in records.values()):
    raise errors.DataError(errors.describe(
        str(store_dir), 'its symbols were generated with different parameters',
        'rebuild the store for every symbol at once: ' + store.REBUILD))
  for name in (split, validation_split):
    if name not in splits:
      raise errors.ConfigError(errors.describe(
          'store_ceiling', f'no split {name!r} in {list(splits)}', 'pass the data config\'s splits'))
  report = market_ceiling(frames, synthetic.parameters_from_dict(first['parameters']),
                          start=splits[split][0], end=splits[split][1],
                          validation=tuple(splits[validation_split]), **options)
  report['settings'].update(split=split, validation_split=validation_split,
                            preset=first.get('preset'), seed=first.get('seed'),
                            store_dir=str(store_dir))
  return report
