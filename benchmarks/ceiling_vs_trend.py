"""Can a test split tell the best policy from the trend rule? The Bayes filter's after-fee policy
(evaluate/ceiling.py, its margin chosen on validation) beside the causal trend rule, both from flat
at the split's start, as a paired day-block bootstrap of daily log returns (evaluate/intervals.py:
the interval the main job's yardstick puts on the Strategist's gain). Where even this interval
includes zero, no policy can be shown to beat trend on that split.

  python -m benchmarks.ceiling_vs_trend                         # the main job's 115-day test split
  python -m benchmarks.ceiling_vs_trend --end=2024-03-25        # its first 17 days only

Prints the paired difference (filter minus trend, log return a day) with its 95% interval.
"""

import tempfile

from absl import app
from absl import flags
import numpy as np
import pandas as pd

from configs import data
from quantum_alpha_jax import fills
from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.data import policies
from quantum_alpha_jax.data import store
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.evaluate import bayes_filter
from quantum_alpha_jax.evaluate import ceiling
from quantum_alpha_jax.evaluate import intervals

_END = flags.DEFINE_string('end', None, 'end the market and its test split at this date')
_STORE = flags.DEFINE_string('store_dir', None, 'build the store here (default: a temporary one)')


def daily_log_returns(target: np.ndarray, frame: pd.DataFrame, fee_rate: float,
                      slippage_bps: float) -> pd.Series:
  """Daily log returns of ``target`` positions filled at the next open after fees."""
  state = fills.simulate(target, frame['open'].to_numpy(np.float64), 1.0, fee_rate, slippage_bps,
                         None, observed=frame['observed'].to_numpy(bool))
  equity = pd.Series(state['cash'] + state['units'] * frame['close'].to_numpy(np.float64),
                     index=pd.DatetimeIndex(frame['timestamp']))
  last = equity.groupby(equity.index.floor('D')).last()
  return np.log(last / last.shift(1).fillna(1.0))


def main(argv):
  del argv
  config = data.get_config('learnable')
  if _END.value:
    config.end = _END.value
    config.splits.test = (config.splits.test[0], _END.value)
  config.store_dir = _STORE.value or tempfile.mkdtemp(prefix='ceiling-vs-trend-')
  pipeline.build_store(config)
  report = ceiling.store_ceiling(config.store_dir, config.splits, config.symbols)
  margin = report['policy']['long_only']['margin']
  start, end = (pd.Timestamp(value, tz='UTC') for value in config.splits.test)
  frames = store.read_store(config.store_dir)
  model, baseline, days = [], [], []
  for symbol, frame in frames.items():
    result = bayes_filter.regime_filter(frame, synthetic.LEARNABLE, symbol)
    times = pd.DatetimeIndex(frame['timestamp'])
    rows = np.flatnonzero((times >= start) & (times < end))
    p_up = bayes_filter.forecast_distribution(result, synthetic.LEARNABLE, symbol, rows,
                                              24).probability_up()[:, -1]
    part = frame.iloc[rows]
    trend = policies.heuristic_positions('trend', part[list(FEATURES)].to_numpy(np.float64))
    costs = dict(fee_rate=fills.DEFAULT_FEE_RATE, slippage_bps=fills.DEFAULT_SLIPPAGE_BPS)
    filtered = daily_log_returns((p_up > 0.5 + margin).astype(np.float64), part, **costs)
    model.append(filtered.to_numpy())
    baseline.append(daily_log_returns(trend, part, **costs).to_numpy())
    days.append(filtered.index.asi8)
  gain = intervals.paired_difference(np.concatenate(model), np.concatenate(baseline),
                                     intervals.day_blocks(np.concatenate(days)))
  print(f'test split {config.splits.test[0]} .. {config.splits.test[1]} ({gain["blocks"]} days, '
        f'{len(frames)} symbols); filter policy margin {margin:g} (chosen on validation)')
  print(f'filter policy - trend, daily log return: {gain["difference"]:+.4f} '
        f'[{gain["low"]:+.4f}, {gain["high"]:+.4f}] '
        f'({"resolved" if gain["excludes_zero"] else "not resolved: the interval includes 0"})')


if __name__ == '__main__':
  app.run(main)
