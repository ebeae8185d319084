"""Ingest + features for 6 years x 2 symbols of 5-minute bars (about 1.26 M rows).

Writes the synthetic market as Binance public-dump monthly zips (untimed), then times:
read + validate + merge + regularise (ingest), compute_features, and the store write.

  python -m benchmarks.ingest [--years 6] [--format zip|csv]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from quantum_alpha_jax.data import klines, store, synthetic
from quantum_alpha_jax.data.features import compute_features


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--years', type=int, default=6)
  parser.add_argument('--format', choices=('zip', 'csv'), default='zip')
  args = parser.parse_args()
  start, end = '2019-01-01', f'{2019 + args.years}-01-01'
  began = time.perf_counter()
  market = synthetic.generate_market(start=start, end=end, seed=0)
  generate_seconds = time.perf_counter() - began
  with tempfile.TemporaryDirectory() as directory:
    directory = Path(directory)
    files = {s: klines.write_binance(f, s, directory, fmt=args.format) for s, f in market.items()}
    rows = sum(len(f) for f in market.values())
    timings = {'ingest': 0.0, 'features': 0.0, 'store write': 0.0}
    featured = {}
    for symbol, paths in files.items():
      t0 = time.perf_counter()
      frame, _ = klines.load_symbol(paths, symbol)
      t1 = time.perf_counter()
      featured[symbol] = compute_features(frame)
      t2 = time.perf_counter()
      timings['ingest'] += t1 - t0
      timings['features'] += t2 - t1
    t0 = time.perf_counter()
    store.write_store(directory / 'store', featured)
    timings['store write'] = time.perf_counter() - t0
  total = timings['ingest'] + timings['features']
  print(f'rows: {rows:,} ({len(market)} symbols x {args.years} years, '
        f'{sum(len(p) for p in files.values())} monthly {args.format} files)')
  print(f'synthetic market generation (not in the target): {generate_seconds:.2f} s')
  for name, seconds in timings.items():
    print(f'{name:>12}: {seconds:6.2f} s  ({rows / seconds / 1e6:.2f} M rows/s)')
  print(f'ingest + features: {total:.2f} s (target <= 10 s): {"PASS" if total <= 10 else "MISS"}')
  print(f'peak resident memory of this process: '
        f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB')


if __name__ == '__main__':
  main()
