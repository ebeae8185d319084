"""Side-by-side timing of this project against a peer library, in one process tree.

Every comparison script in this folder has a parent that calls :func:`alternate` and children that
do the timing. The parent starts the children one at a time, alternating sides (ours, peer, peer,
ours, ...), so that slow drifts of a shared machine hit both sides alike, and prints the median of
every figure and the median of the per-round ratios. Both sides get the same environment: the same
thread count (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, torch's ``set_num_threads`` through
:func:`apply_threads`, XLA's Eigen pool through ``taskset``-style CPU affinity) and the same
``GLIBC_TUNABLES`` our entry points use.

A child prints exactly one line ``RESULT {json}`` on stdout; everything else it prints is ignored.

  python -m benchmarks.side_by_side --matmul   # the machine's dense matmul rates, this run
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

RESULT_PREFIX = 'RESULT '


def cpu_list(threads: int) -> list[int]:
  """The first ``threads`` CPUs this process may run on (both sides are pinned to the same ones)."""
  available = sorted(os.sched_getaffinity(0))
  if threads <= 0 or threads > len(available):
    threads = len(available)
  return available[:threads]


def child_environment(threads: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
  from quantum_alpha_jax.cli import MALLOC_TUNABLES  # pylint: disable=g-import-not-at-top
  environment = dict(os.environ)
  environment.update({
      'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads),
      'OPENBLAS_NUM_THREADS': str(threads), 'BENCH_THREADS': str(threads),
      'JAX_PLATFORMS': 'cpu', 'GLIBC_TUNABLES': MALLOC_TUNABLES,
      'TF_CPP_MIN_LOG_LEVEL': '3', 'PYTHONWARNINGS': 'ignore'})
  environment.update(extra or {})
  return environment


def apply_threads() -> int:
  """In a child: pins the process to the parent's CPUs and torch (if imported later) to as many
  threads. Call before importing jax or torch. Returns the thread count."""
  threads = int(os.environ.get('BENCH_THREADS', '0')) or len(os.sched_getaffinity(0))
  os.sched_setaffinity(0, cpu_list(threads))
  return threads


def run_child(argv: Sequence[str], environment: Mapping[str, str], timeout: float = 1800
              ) -> dict[str, Any]:
  """Runs one child (``python -m ...``) and returns its ``RESULT`` dict plus ``wall_seconds``."""
  started = time.perf_counter()
  completed = subprocess.run([sys.executable, *argv], env=dict(environment), capture_output=True,
                             text=True, timeout=timeout, check=False)
  lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
  if completed.returncode or not lines:
    raise RuntimeError(f'benchmark child {" ".join(argv)} failed (exit {completed.returncode}):\n'
                       f'{completed.stderr[-3000:]}')
  result = json.loads(lines[-1][len(RESULT_PREFIX):])
  result['wall_seconds'] = time.perf_counter() - started
  return result


def emit(result: Mapping[str, Any]) -> None:
  """In a child: prints the one ``RESULT`` line the parent reads."""
  print(RESULT_PREFIX + json.dumps(dict(result)), flush=True)


def alternate(sides: Mapping[str, Sequence[str]], rounds: int, threads: int,
              environments: Mapping[str, Mapping[str, str]] | None = None,
              verbose: bool = True) -> dict[str, list[dict[str, Any]]]:
  """Runs every side ``rounds`` times, alternating the order each round; returns the results per
  side in round order."""
  names = list(sides)
  results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
  for round_index in range(rounds):
    order = names if round_index % 2 == 0 else names[::-1]
    for name in order:
      environment = child_environment(threads, (environments or {}).get(name))
      result = run_child(sides[name], environment)
      results[name].append(result)
      if verbose:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()
                 if not isinstance(v, (dict, list))}
        print(f'  round {round_index + 1} {name}: {shown}', file=sys.stderr, flush=True)
  return results


def median(results: Sequence[Mapping[str, Any]], key: str) -> float:
  return float(statistics.median(float(r[key]) for r in results))


def median_ratio(ours: Sequence[Mapping[str, Any]], peer: Sequence[Mapping[str, Any]], key: str,
                 higher_is_better: bool = True) -> float:
  """Median over rounds of ours/peer (or peer/ours for times): how many times we lead."""
  ratios = [(float(a[key]) / float(b[key])) if higher_is_better else float(b[key]) / float(a[key])
            for a, b in zip(ours, peer)]
  return float(statistics.median(ratios))


def jax_matmul_gflops(size: int = 2048, repeats: int = 10, dtype: str = 'float32') -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((size, size), getattr(jnp, dtype))
  multiply = jax.jit(lambda x: x @ x)
  multiply(a).block_until_ready()
  best = float('inf')
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(repeats):
      multiply(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 * repeats / best / 1e9


def torch_matmul_gflops(size: int = 2048, repeats: int = 10, dtype: str = 'float32') -> float:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(int(os.environ.get('BENCH_THREADS', '0')) or torch.get_num_threads())
  a = torch.ones((size, size), dtype=getattr(torch, dtype))
  with torch.no_grad():
    a @ a
    best = float('inf')
    for _ in range(3):
      start = time.perf_counter()
      for _ in range(repeats):
        a @ a
      best = min(best, time.perf_counter() - start)
  return 2 * size**3 * repeats / best / 1e9


def matmul_rates(threads: int) -> dict[str, float]:
  """Dense 2048² matmul GFLOP/s of JAX fp32/bf16 and (if installed) torch fp32/bf16, measured
  now in a child pinned like the comparison children."""
  return run_child(['-m', 'benchmarks.side_by_side', '--matmul-child'],
                   child_environment(threads))


def _matmul_child() -> None:
  apply_threads()
  rates = {'jax_float32': jax_matmul_gflops(), 'jax_bfloat16': jax_matmul_gflops(dtype='bfloat16')}
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pass
  else:
    rates['torch_float32'] = torch_matmul_gflops()
    rates['torch_bfloat16'] = torch_matmul_gflops(dtype='bfloat16')
  emit(rates)


if __name__ == '__main__':
  if '--matmul-child' in sys.argv:
    _matmul_child()
  else:
    import argparse  # pylint: disable=g-import-not-at-top
    parser = argparse.ArgumentParser()
    parser.add_argument('--matmul', action='store_true')
    parser.add_argument('--threads', type=int, default=0)
    args = parser.parse_args()
    count = len(cpu_list(args.threads))
    rates = matmul_rates(count)
    print(f'dense 2048² matmul, {count} threads, GFLOP/s:')
    for name, value in rates.items():
      if name != 'wall_seconds':
        print(f'  {name:16s} {value:8.1f}')
