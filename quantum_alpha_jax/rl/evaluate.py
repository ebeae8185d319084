"""A policy on a split: one pass over each symbol's tape, then the backtest engine on its targets.

Tape rollout. A symbol's bars of the split are walked in order from a flat book (equity 1), one
:func:`quantum_alpha_jax.rl.env.transition` per bar, so the position and unrealised PnL the policy
sees are those its own past decisions produced. At a bar that is not ``tradable`` (warm-up rows, the
bar before a gap in the data, the last bar) the target is forced to 0: no position is carried
across a gap. All tapes of a split run at once (``vmap``), padded to the longest.

Backtest. The per-bar targets go to :func:`quantum_alpha_jax.backtest.engine.run_backtest` with the
environment's fee, slippage, short and rebalance rules (fills at the next bar's open), beside its
buy-and-hold and a uniformly random policy on the same tape. The environment's float32 equity and
the engine's float64 equity are the same model, so their largest relative difference is reported
as a check (float32 round-off: ~1e-5 over a year of bars).

Any per-bar target series (the Strategist's, say) can be scored the same way with
:func:`backtest_targets`.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.backtest import report as report_lib
from quantum_alpha_jax.rl import env as env_lib
from quantum_alpha_jax.rl import market as market_lib

# (params, observation [D], key) -> action; deterministic policies ignore the key.
Policy = Callable[[Any, jax.Array, jax.Array], jax.Array]


def _rollout(policy: Policy, policy_params: Any, params: env_lib.EnvParams, firsts: jax.Array,
             lengths: jax.Array, key: jax.Array, num_steps: int) -> tuple[jax.Array, jax.Array]:
  """Targets and equity ``[tapes, num_steps]`` of decisions at tape bars 0..num_steps-1."""

  def one_tape(first, length, key):
    def body(state, inputs):
      index, step_key = inputs
      moving = index < length - 1
      active = moving & params.tradable[state.row]
      action = policy(policy_params, env_lib.observe(state, params), step_key)
      target = jnp.where(active, env_lib.action_to_target(action, state, params), 0.0)
      moved, _, _ = env_lib.transition(state, target, params)
      state = jax.tree.map(lambda new, old: jnp.where(moving, new, old), moved, state)
      return state, (target, state.equity)

    _, outputs = jax.lax.scan(body, env_lib.initial_state(first),
                              (jnp.arange(num_steps), jax.random.split(key, num_steps)))
    return outputs

  keys = jax.random.split(key, firsts.shape[0])
  return jax.vmap(one_tape)(firsts, lengths, keys)


class TapeEvaluator:
  """Runs ``policy`` over the tapes of a split (compiled once per policy and tape length)."""

  def __init__(self, policy: Policy):
    self.policy = policy
    self._rollout = jax.jit(functools.partial(_rollout, policy), static_argnames=('num_steps',))

  def targets(self, policy_params: Any, market: market_lib.SplitMarket,
              key: jax.Array | None = None) -> list[dict[str, np.ndarray]]:
    """Per tape: ``target [length]`` (decided at each bar's close; the last one 0) and the
    environment's ``equity [length]`` (marked at each close, starting at 1)."""
    key = jax.random.PRNGKey(0) if key is None else key
    firsts = np.array([tape.first for tape in market.tapes], np.int32)
    lengths = np.array([tape.length for tape in market.tapes], np.int32)
    targets, equity = jax.device_get(self._rollout(
        policy_params, market.params, jnp.asarray(firsts), jnp.asarray(lengths), key,
        num_steps=int(lengths.max()) - 1))
    return [{'target': np.r_[targets[i, :n - 1], 0.0].astype(np.float64),
             'equity': np.r_[1.0, equity[i, :n - 1]].astype(np.float64)}
            for i, n in enumerate(lengths)]

  def log_returns(self, policy_params: Any, market: market_lib.SplitMarket) -> dict[str, float]:
    """The environment's log equity growth per symbol over its tape, and their mean (fast: no
    backtest), for choosing the best checkpoint."""
    paths = self.targets(policy_params, market)
    result = {tape.symbol: float(np.log(path['equity'][-1]))
              for tape, path in zip(market.tapes, paths)}
    result['log_return'] = float(np.mean(list(result.values())))
    result['trade_bars'] = float(np.mean([np.count_nonzero(np.diff(np.r_[0.0, p['target']]))
                                          for p in paths]))
    return result


def backtest_targets(tape: market_lib.Tape, target: np.ndarray, params: env_lib.EnvParams
                     ) -> engine.BacktestResult:
  """``run_backtest`` of per-bar targets ``[tape.length]`` on a tape, with the env's rules."""
  target = np.asarray(target, np.float64)
  if target.shape != (tape.length,):
    raise errors.DataError(errors.describe(
        f'backtest_targets {tape.symbol}', f'{target.shape} targets for a tape of {tape.length} '
        'bars', 'pass one target per bar of the tape (0 where there is no signal)'))
  return engine.run_backtest(target, tape.open, tape.close, tape.timestamps,
                             observed=tape.observed, fee_rate=params.fee_rate, slippage_bps=params.slippage_bps,
                             allow_short=params.allow_short,
                             rebalance_threshold=params.rebalance_threshold)


def random_evaluator(params: env_lib.EnvParams) -> TapeEvaluator:
  """A :class:`TapeEvaluator` of the uniformly random policy of the environment's action space."""
  return _random_evaluator(params.low, params.action_mode)


@functools.lru_cache(maxsize=None)
def _random_evaluator(low: float, action_mode: str) -> TapeEvaluator:
  return TapeEvaluator(lambda _, __, key: env_lib.sample_action(key, action_mode, low))


def _summary(stats: Mapping[str, Any]) -> dict[str, Any]:
  keys = ('total_return', 'annual_return', 'sharpe', 'sortino', 'max_drawdown', 'trades',
          'win_rate', 'exposure', 'turnover_per_year', 'fees_paid', 'final_equity')
  return {key: stats.get(key) for key in keys}


def evaluate_split(evaluator: TapeEvaluator, policy_params: Any, market: market_lib.SplitMarket,
                   directory: str | pathlib.Path | None = None, *, random_seeds: int = 5,
                   seed: int = 0, label: str = 'agent',
                   extra_targets: Mapping[str, Sequence[np.ndarray]] | None = None
                   ) -> dict[str, Any]:
  """Backtests the policy on every tape of ``market`` beside buy-and-hold and ``random_seeds``
  random policies; with ``directory``, writes a backtest report per symbol, ``targets.csv`` (every
  bar's target, the hook for comparing other policies) and ``equity.png``.

  ``extra_targets``: ``{name: [target per tape]}`` of other policies to backtest alongside.
  Returns a JSON-ready dict; the per-bar targets are under ``'targets'`` as numpy arrays.
  """
  from quantum_alpha_jax.rl import plots  # pylint: disable=g-import-not-at-top

  paths = evaluator.targets(policy_params, market)
  randomizer = random_evaluator(market.params)
  random_paths = [randomizer.targets(None, market, jax.random.PRNGKey(seed + 1000 + index))
                  for index in range(max(random_seeds, 1))]
  directory = None if directory is None else pathlib.Path(directory)
  symbols, curves, frames = {}, {}, []
  for index, tape in enumerate(market.tapes):
    result = backtest_targets(tape, paths[index]['target'], market.params)
    engine_equity = result.equity / result.equity[0]
    difference = float(np.max(np.abs(paths[index]['equity'] / engine_equity - 1.0)))
    random_results = [backtest_targets(tape, run[index]['target'], market.params)
                      for run in random_paths]
    random_returns = np.array([r.stats['total_return'] for r in random_results])
    entry = {
        'bars': tape.length,
        'start': str(pd.Timestamp(tape.timestamps[0], tz='UTC')),
        'end': str(pd.Timestamp(tape.timestamps[-1], tz='UTC')),
        label: result.stats,
        'buy_and_hold': result.buy_and_hold_stats,
        'random': {**_summary(random_results[0].stats),
                   'seeds': len(random_results),
                   'total_return_mean': float(random_returns.mean()),
                   'total_return_std': float(random_returns.std()),
                   'total_return_best': float(random_returns.max())},
        'env_vs_engine_equity_max_relative_difference': difference,
        'target_changes': int(np.count_nonzero(np.diff(np.r_[0.0, paths[index]['target']]))),
    }
    curve = {label: result.equity, 'buy and hold': result.buy_and_hold_equity,
             'random (seed 0)': random_results[0].equity}
    for name, targets in (extra_targets or {}).items():
      other = backtest_targets(tape, targets[index], market.params)
      entry[name] = other.stats
      curve[name] = other.equity
    if directory is not None:
      report = report_lib.write_report(result, directory / tape.symbol,
                                       f'{label} on {tape.symbol}, {market.name} split')
      entry['report'] = str(report['report'])
    symbols[tape.symbol] = entry
    curves[tape.symbol] = (pd.DatetimeIndex(pd.to_datetime(tape.timestamps, utc=True)), curve)
    frames.append(pd.DataFrame({
        'timestamp': pd.to_datetime(tape.timestamps, utc=True), 'symbol': tape.symbol,
        'open': tape.open, 'close': tape.close, 'target': paths[index]['target'],
        'env_equity': paths[index]['equity']}))
  summary = {
      'total_return_mean': float(np.mean([s[label]['total_return'] for s in symbols.values()])),
      'buy_and_hold_total_return_mean': float(np.mean(
          [s['buy_and_hold']['total_return'] for s in symbols.values()])),
      'random_total_return_mean': float(np.mean(
          [s['random']['total_return_mean'] for s in symbols.values()])),
      'sharpe_mean': float(np.mean([s[label]['sharpe'] or 0.0 for s in symbols.values()])),
  }
  output = {'split': market.split.to_dict(), 'symbols': symbols, 'summary': summary,
            'rules': market.params.rules(),
            'targets': {tape.symbol: paths[i]['target'] for i, tape in enumerate(market.tapes)}}
  if directory is not None:
    directory.mkdir(parents=True, exist_ok=True)
    targets_csv = directory / 'targets.csv'
    pd.concat(frames, ignore_index=True).to_csv(targets_csv, index=False)
    output['targets_csv'] = str(targets_csv)
    output['equity_png'] = str(plots.plot_equity_curves(
        curves, directory / 'equity.png', f'{market.name} split: {label} vs baselines'))
  return output
