"""The contract of the forecasters' ``bar_signals`` (the ensemble backtest reads it), checked
against the task's own ``predict``; shared by the Oracle and LSTM tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantum_alpha_jax.data import windows
from quantum_alpha_jax.tasks import oracle


def check(signals, task, params, split, batch_size):
  """Asserts the contract of ``bar_signals`` on ``signals``, computed from ``split`` with
  ``batch_size``: one row per bar of the split whose past window is usable, whatever follows it
  (also the last ``decoder_length`` bars, whose label horizon leaves the split), each the forecast
  made on that bar's window."""
  assert list(signals.columns) == ['symbol', 'timestamp', 'p_up', 'uncertainty', 'q50']
  source = windows.signal_source(split)
  assert len(signals) == len(source.anchors)
  assert set(split.source.anchors.tolist()) < set(source.anchors.tolist())
  times = source.arrays.timestamp[source.anchors]
  assert times.min() >= split.split.start_ns and times.max() < split.split.end_ns
  for symbol in np.unique(source.arrays.symbol[source.anchors]):  # up to the split's last bar
    rows = source.arrays.symbol_rows(source.arrays.symbols[symbol])
    last = rows.start + np.searchsorted(source.arrays.timestamp[rows], split.split.end_ns) - 1
    assert last in source.anchors
  # At a bar that also has a full window, the signal is the forecast on that window.
  full = split.source.anchors[-3:]
  past, whole = source.gather(full), split.source.gather(full)
  for name in oracle.MODEL_INPUTS:
    np.testing.assert_array_equal(past[name], whole[name])
  assert str(signals['timestamp'].dtype) == 'datetime64[ns, UTC]'
  assert set(signals['symbol']) == {'BTCUSDT', 'ETHUSDT'}
  # The anchor bar's own time and symbol, in order.
  np.testing.assert_array_equal(pd.DatetimeIndex(signals['timestamp']).asi8,
                                source.arrays.timestamp[source.anchors])
  np.testing.assert_array_equal(
      signals['symbol'], np.asarray(source.arrays.symbols)[source.arrays.symbol[source.anchors]])
  # The forecast of the last horizon, as predict gives it on the gathered windows: rows on both
  # sides of a batch boundary, and the last row (in a padded batch unless the count divides by
  # batch_size, which the callers cannot choose); padded to the same batch size, so
  # the compiled predict is shared.
  rows = np.array([0, 1, batch_size - 1, batch_size, len(source.anchors) - 1])
  anchors = np.full(batch_size, -1)
  anchors[:len(rows)] = source.anchors[rows]
  batch = source.gather(anchors)
  outputs = oracle.predict_batch(task, params, {k: batch[k] for k in oracle.MODEL_INPUTS})
  outputs = {k: np.asarray(v)[:len(rows)] for k, v in outputs.items()}
  median = list(task.model.quantiles).index(0.5)
  np.testing.assert_allclose(signals['p_up'].to_numpy()[rows], outputs['p_up'][:, -1],
                             atol=1e-6)
  np.testing.assert_allclose(signals['uncertainty'].to_numpy()[rows],
                             outputs['quantiles'][:, -1, -1] - outputs['quantiles'][:, -1, 0],
                             atol=1e-6)
  np.testing.assert_allclose(signals['q50'].to_numpy()[rows], outputs['quantiles'][:, -1, median],
                             atol=1e-6)
  # With a monotone CDF, P(up) > 1/2 exactly when the median is above zero.
  decided = np.abs(signals['q50']) > 1e-6
  assert np.array_equal((signals['p_up'] > 0.5)[decided], (signals['q50'] > 0)[decided])
  assert signals['uncertainty'].min() >= 0 and signals['p_up'].between(0, 1).all()
