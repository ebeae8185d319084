"""Per-bar cost of the streaming features (serve/stream.py) beside recomputing them in batch.

Replays real 5-minute klines (the shared BTC/USDT data from 2023, or the synthetic market when the
shared data is absent) one kline at a time through ``SymbolStream.push``, timing every push, and
prints p50 / p99 / mean per bar, in wall time and in CPU time (on a shared machine the wall-clock
tail mostly measures the neighbours). Beside it: what a service without the rolling state would pay
per bar, ``compute_features`` over the last 600 bars (two warm-ups: the shortest history that gives
a valid row), and ``push_frame``'s throughput when catching up on history.

  python -m benchmarks.stream_features [--bars 20000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from absl import logging
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import klines
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.serve import stream

SHARED_BTC = (Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'binance-spot-5m'
              / 'BTC_USDT-5m.parquet')
RECOMPUTE_BARS = 2 * features.WARMUP_BARS


def _klines(bars: int) -> tuple[pd.DataFrame, str]:
  """``bars`` raw klines from 2023 (real when available) and where they came from."""
  if SHARED_BTC.exists():
    frame = pd.read_parquet(SHARED_BTC, filters=[('date', '>=', pd.Timestamp('2023-01-01',
                                                                             tz='UTC'))])
    frame = frame.rename(columns={'date': schema.TIMESTAMP}).drop(columns=['source'])
    return frame.iloc[:bars].reset_index(drop=True), f'real BTCUSDT from 2023 ({SHARED_BTC})'
  market = synthetic.generate_market(('BTCUSDT',), start='2023-01-01', end='2023-12-31', seed=0)
  frame = market['BTCUSDT'][[schema.TIMESTAMP, *schema.OHLCV]]
  return frame.iloc[:bars].reset_index(drop=True), 'the synthetic market (shared data absent)'


def _summary(seconds: np.ndarray) -> str:
  micro = seconds * 1e6
  return (f'p50 {np.percentile(micro, 50):6.1f} us  p99 {np.percentile(micro, 99):6.1f} us  '
          f'mean {micro.mean():6.1f} us')


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--bars', type=int, default=20_000)
  args = parser.parse_args()
  logging.set_verbosity(logging.ERROR)
  frame, source = _klines(args.bars)
  rows = [{'open_time_ns': time_ns, **dict(zip(schema.OHLCV, values))}
          for time_ns, *values in zip(schema.timestamps_ns(frame).tolist(),
                                      *(frame[name].tolist() for name in schema.OHLCV))]
  print(f'{len(rows):,} klines of {source}')

  symbol_stream = stream.SymbolStream('BTCUSDT')
  wall = np.empty(len(rows))
  cpu = np.empty(len(rows))
  for index, row in enumerate(rows):
    wall_start, cpu_start = time.perf_counter(), time.thread_time()
    symbol_stream.push(row)
    cpu[index] = time.thread_time() - cpu_start
    wall[index] = time.perf_counter() - wall_start
  # thread_time ticks coarsely on some kernels: its mean is exact, its percentiles may not be.
  print(f'SymbolStream.push, wall: {_summary(wall)}')
  print(f'SymbolStream.push, CPU:  {_summary(cpu)}')

  began = time.perf_counter()
  stream.SymbolStream('BTCUSDT').push_frame(frame, keep_rows=False)
  seconds = time.perf_counter() - began
  print(f'push_frame catch-up: {len(frame) / seconds:,.0f} bars/s ({seconds:.2f} s for '
        f'{len(frame):,} bars)')

  regular, _ = klines.regularize(frame)
  samples = []
  for end in np.linspace(RECOMPUTE_BARS, len(regular), 200).astype(int):
    began = time.perf_counter()
    features.compute_features(regular.iloc[end - RECOMPUTE_BARS:end])
    samples.append(time.perf_counter() - began)
  print(f'compute_features over the last {RECOMPUTE_BARS} bars (the batch alternative), wall: '
        f'{_summary(np.array(samples))}')


if __name__ == '__main__':
  main()
