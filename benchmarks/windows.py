"""Grain window throughput at batch 256 on the 6-year, 2-symbol synthetic store (1.26 M rows).

  python -m benchmarks.windows [--years 6] [--batch 256] [--steps 200]

Prints windows/s for the vectorised gather alone, the training iterator (in-process and with 2 Grain
workers) and the evaluation iterator, for the Oracle's spec (encoder 60, decoder 24).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

from quantum_alpha_jax.data import synthetic, windows
from quantum_alpha_jax.data.features import compute_features

# Issue #3's end-to-end target for the Oracle train step on this CPU (5x pytorch-forecasting).
ORACLE_TARGET_SAMPLES_PER_SECOND = 140


def timed_batches(iterator, steps: int, batch: int) -> float:
  for _ in range(5):  # warm-up: thread pools, page cache
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return steps * batch / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--years', type=int, default=6)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--steps', type=int, default=200)
  args = parser.parse_args()
  end_year = 2019 + args.years
  market = synthetic.generate_market(start='2019-01-01', end=f'{end_year}-01-01', seed=0)
  frames = {s: compute_features(f) for s, f in market.items()}
  spec = windows.WindowSpec(60, 24)
  splits = [windows.Split('train', '2019-01-01', f'{end_year - 1}-01-01'),
            windows.Split('validation', f'{end_year - 1}-01-01', f'{end_year}-01-01')]
  with tempfile.TemporaryDirectory() as cache:
    for attempt in ('build', 'reuse'):
      start = time.perf_counter()
      data, _ = windows.make_datasets(frames, spec, splits, args.batch, cache, seed=0, num_devices=1)
      print(f'make_datasets ({attempt} cache): {time.perf_counter() - start:.2f} s; '
            f'{data["train"].num_windows:,} train windows, {data["validation"].num_windows:,} validation')
    source = data['train'].source
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(args.steps):
      source.gather(rng.choice(source.anchors, args.batch))
    gather_rate = args.steps * args.batch / (time.perf_counter() - start)
    print(f'gather + normalise only, random anchors: {gather_rate:,.0f} windows/s')
    rates = {}
    for workers in (0, 2):
      iterator = windows.make_iterator(data['train'].dataset, num_workers=workers)
      rates[workers] = timed_batches(iterator, args.steps, args.batch)
      print(f'train iterator, {workers} Grain workers: {rates[workers]:,.0f} windows/s '
            f'({args.batch / rates[workers] * 1e3:.1f} ms per batch of {args.batch})')
      del iterator
    iterator = windows.make_iterator(data['validation'].dataset)
    eval_rate = timed_batches(iterator, min(args.steps, data['validation'].steps_per_epoch - 6),
                              args.batch)
    print(f'evaluation iterator: {eval_rate:,.0f} windows/s')
  best = max(rates.values())
  print(f'train loader / Oracle target step rate ({ORACLE_TARGET_SAMPLES_PER_SECOND} samples/s): '
        f'{best / ORACLE_TARGET_SAMPLES_PER_SECOND:.0f}x (needs >= 10x; re-measure against the real '
        'step once it exists)')
  print(f'peak resident memory of this process: '
        f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB (the frames, '
        'the memory-mapped cache pages and the iterators)')


if __name__ == '__main__':
  main()
