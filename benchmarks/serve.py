"""The decision service's latency per decision and symbol, at seed sizes on one CPU thread.

  python -m benchmarks.serve [--bars 2000] [--backend onnx|jax|both] [--peers]

The seed configs' default variants (Oracle TFT: encoder 60, decoder 24, hidden 128; Guardian:
window 120, latent 64; Strategist: K = 90, hidden 256, 6 layers, 8 heads) with random weights
(latency does not depend on them) behind a :class:`~quantum_alpha_jax.serve.decider.Decider`:
exported to ONNX (the Oracle, the Guardian and the Strategist's cached ``strategist_step``) and
run in onnxruntime with one intra-op thread (``--backend onnx``, the service's default), or their
``jax.jit`` functions (``--backend jax``). Real BTC/USDT klines (../shared/data) go through
``Decider.push`` one closed bar at a time, feature update included; after the warm-up (300 bars
of features, then the Guardian's 120-bar window) every bar is timed. Per decision: p50 and p99 of
the whole push (features, the three models, the ensemble rule, the record) and of each model's
part (its window normalisation included), wall time; and the process CPU time of the whole push
(on a shared, loaded machine closer to what a quiet core would take than the wall time).

The process is pinned to one CPU, and XLA and onnxruntime to one thread. ``--peers`` also runs
``benchmarks/strategist_latency.py``'s side-by-side comparison (our cached step and full context
against HF DecisionTransformerModel's full-context ``get_action``; run under /work/bench-venv,
where transformers is installed) and prints the Strategist's figures beside the service's.
Target: p99 <= 5 ms for the whole ensemble.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from typing import Any

os.environ.setdefault('XLA_FLAGS', '--xla_cpu_multi_thread_eigen=false '
                      'intra_op_parallelism_threads=1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
for _name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
  os.environ.setdefault(_name, '1')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

TARGET_P99_MS = 5.0
REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
KLINES = REPOSITORY.parent / 'shared' / 'data' / 'binance-spot-5m' / 'BTC_USDT-5m.parquet'
PARTS = ('features', 'oracle', 'guardian', 'strategist', 'whole', 'whole_cpu')


def seed_models(directory: pathlib.Path, backend: str) -> Any:
  """The seed-size models with random weights as the service loads them (``LoadedModels``)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from configs import guardian as guardian_config  # pylint: disable=g-import-not-at-top
  from configs import oracle as oracle_config  # pylint: disable=g-import-not-at-top
  from configs import strategist as strategist_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import windows  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.ship.export import inference as inference_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.serve import models as models_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import guardian  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import strategist  # pylint: disable=g-import-not-at-top

  key = jax.random.PRNGKey(0)
  window_models = {}
  for name, config, task in (
      ('oracle', oracle_config.get_config(''), None), ('guardian', guardian_config.get_config(''),
                                                       None)):
    if name == 'oracle':
      task = oracle.OracleTask.from_config(config)
      params = task.init_params(key, oracle.example_batch(task.model))
      spec = oracle.window_spec(config)
    else:
      task = guardian.GuardianTask.from_config(config)
      window = np.zeros((1, task.model.window, task.model.num_features), np.float32)
      params = task.init_params(key, {'encoder': window})
      spec = guardian.window_spec(config)
    normalizer = windows.Normalizer.identity(spec)
    record = {'normalizer': normalizer.to_dict()}
    function = inference_lib.MODELS[name].build(task, params, config, record)
    if backend == 'onnx':
      path = onnx_lib.export_onnx(function, directory / f'{name}.onnx')
      run = models_lib._onnx_runner(  # pylint: disable=protected-access
          path, {'inputs': [s.to_dict() for s in function.inputs],
                 'outputs': [s.to_dict() for s in function.outputs]})
    else:
      run = lambda *arrays, function=function: {
          k: np.asarray(v) for k, v in jax.device_get(function(*arrays)).items()}
    metadata = dict(function.metadata)
    metadata.setdefault('risk_thresholds', [0.5, 1.0])
    window_models[name] = models_lib.WindowModel(
        name, run, normalizer, windows.WindowSpec(spec.encoder_length, 0, spec.max_hole_bars),
        metadata, backend, {s.name: s.shape for s in function.inputs})
  config = strategist_config.get_config('')
  task = strategist.StrategistTask.from_config(config)
  params = task.init_params(key, strategist.example_batch(task))
  task = dataclasses.replace(task, normalizer=windows.Normalizer.identity(windows.WindowSpec(1)),
                             target_return=0.01)
  decode = 'jax'
  if backend == 'onnx':
    step = inference_lib.MODELS['strategist_step'].build(task, params, config, {})
    path = onnx_lib.export_onnx(step, directory / 'strategist_step.onnx')
    decode = models_lib._onnx_runner(  # pylint: disable=protected-access
        path, {'inputs': [s.to_dict() for s in step.inputs],
               'outputs': [s.to_dict() for s in step.outputs]})
  return models_lib.LoadedModels(window_models, (task, params), {}, directory, decode)


def measure(backend: str, bars: int) -> dict[str, dict[str, float]]:
  """p50/p99 ms per part over ``bars`` decisions after the warm-up (module docstring)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.serve import decider as decider_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.serve import replay  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.serve import stream  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  frame = pd.read_parquet(KLINES).rename(columns={'date': 'timestamp'})
  frame = frame.loc[frame['timestamp'] >= pd.Timestamp('2023-07-01', tz='UTC')]
  klines = list(replay.frame_klines(frame.iloc[:600 + bars]))
  with tempfile.TemporaryDirectory(prefix='serve_bench.') as directory:
    decider = decider_lib.Decider(seed_models(pathlib.Path(directory), backend))
    timings: dict[str, list[float]] = {part: [] for part in PARTS}
    features_stream = stream.SymbolStream('BTCUSDT')
    for kline in klines:
      started = time.perf_counter()
      features_stream.push(kline)  # the feature update alone, on its own stream
      feature_ms = (time.perf_counter() - started) * 1e3
      cpu = time.process_time()
      records = decider.push('BTCUSDT', kline)
      cpu_ms = (time.process_time() - cpu) * 1e3
      for record in records:
        if record.get('status') != 'ready':
          continue
        timings['whole'].append(record['latency_ms'])
        timings['whole_cpu'].append(cpu_ms)
        timings['features'].append(feature_ms)
        for name, value in record['model_ms'].items():
          timings[name].append(value)
  if not timings['whole']:
    raise RuntimeError('no bar got past the warm-up: raise --bars')
  return {part: {'p50': float(np.percentile(values, 50)), 'p99': float(np.percentile(values, 99)),
                 'mean': float(np.mean(values)), 'count': len(values)}
          for part, values in timings.items() if values}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--bars', type=int, default=2000, help='timed decisions (after warm-up)')
  parser.add_argument('--backend', choices=('onnx', 'jax', 'both'), default='both')
  parser.add_argument('--peers', action='store_true',
                      help='also run benchmarks/strategist_latency side by side (needs HF)')
  args = parser.parse_args()
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
  sys.path.insert(0, str(REPOSITORY))
  backends = ('onnx', 'jax') if args.backend == 'both' else (args.backend,)
  print(f'Decision latency per bar and symbol, seed sizes, batch 1, 1 CPU thread, {args.bars} '
        f'timed bars of BTC/USDT from 2023-07-01 after the warm-up; load average '
        f'{os.getloadavg()[0]:.1f}\n')
  print('| backend | part | p50 ms | p99 ms | mean ms |')
  print('|---|---|---|---|---|')
  figures = {}
  for backend in backends:
    figures[backend] = measure(backend, args.bars)
    for part, entry in figures[backend].items():
      label = {'whole': 'whole decision (features + 3 models + rule), wall',
               'whole_cpu': 'whole decision, CPU time of the process'}.get(part, part)
      print(f'| {backend} | {label} | {entry["p50"]:.3f} | {entry["p99"]:.3f} | '
            f'{entry["mean"]:.3f} |', flush=True)
  for backend, entry in figures.items():
    p99 = entry['whole']['p99']
    print(f'\ntarget p99 <= {TARGET_P99_MS:g} ms for the whole ensemble ({backend}): '
          f'{"met" if p99 <= TARGET_P99_MS else "NOT met"} ({p99:.2f} ms); load average after '
          f'{os.getloadavg()[0]:.1f}')
  if args.peers:
    try:
      from benchmarks import strategist_latency  # pylint: disable=g-import-not-at-top
    except ImportError:
      print('\nbenchmarks/strategist_latency.py is not there: no peer figures')
      return
    peers = strategist_latency.side_by_side_figures(rounds=3, calls=400, threads=1,
                                                    verbose=False)
    print('\nThe Strategist\'s decision beside the peer (benchmarks/strategist_latency.py, '
          'separate pinned processes, medians of 3 rounds):\n')
    print('| path | p50 ms | p99 ms |')
    print('|---|---|---|')
    for backend, entry in figures.items():
      print(f'| service, Strategist part ({backend}, state normalisation and account included) | '
            f'{entry["strategist"]["p50"]:.3f} | {entry["strategist"]["p99"]:.3f} |')
    for name in strategist_latency.OURS + ('hf_get_action',):
      print(f'| {strategist_latency.LABELS[name]} | {peers[name]["p50"]:.3f} | '
            f'{peers[name]["p99"]:.3f} |')
    for backend, entry in figures.items():
      ratio = peers['hf_get_action']['p50'] / entry['strategist']['p50']
      print(f'peer get_action p50 / service Strategist p50 ({backend}): {ratio:.1f}x')


if __name__ == '__main__':
  main()
