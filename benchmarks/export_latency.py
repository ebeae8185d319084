"""Serving latency at batch 1: onnxruntime (one thread, and its default threads) against JAX jit,
per exported model, on this CPU.

  python -m benchmarks.export_latency [--models oracle,lstm,guardian,strategist,strategist_step]
      [--size seed|quick]
      [--calls 2000]
      [--workdir oracle=checkpoints/oracle --workdir lstm=checkpoints/lstm] [--json out.json]

Needs the export extra (pip install -e '.[export]'). Each model is built at the config's size
(``seed``: the default configs, the production sizes; ``quick``: the :quick ones) with random
params, or restored from a training workdir, exported to ONNX, and called ``--calls`` times one
window at a time after a warm-up (each call timed alone; p50, p99 and the mean, in ms). The inputs
are one random window; latency does not depend on the weights. The ensemble decision needs every
model once per bar; run one after another on one core, its latency is about the sum of the
per-model figures of the Oracle, the Guardian and the Strategist's cached step
(``strategist_step``, one bar of an episode with a random cache: its cost does not depend on the
values; the full-context ``strategist`` is measured beside it) (the target: p99 <= 2 ms); the LSTM
is the baseline, not part of the ensemble. benchmarks/strategist_latency.py steps the cache through
episodes and sets the Strategist beside HF's DecisionTransformerModel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from quantum_alpha_jax.ship.export import inference as inference_lib
from quantum_alpha_jax.ship.export import onnx as onnx_lib

TARGET_P99_MS = 2.0
ENSEMBLE = ('oracle', 'guardian', 'strategist_step')


def _random_task(name: str, config: Any) -> tuple[Any, dict[str, np.ndarray]]:
  """The task of model ``name`` built from ``config`` and an example batch for its init."""
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(inference_lib.MODELS[name].task_module)
  if name in ('oracle', 'lstm'):
    task = (module.LSTMTask if name == 'lstm' else module.OracleTask).from_config(config)
    from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top
    return task, oracle.example_batch(task.model)
  if name == 'guardian':
    task = module.GuardianTask.from_config(config)
    return task, {'encoder': np.zeros((1, task.model.window, task.model.num_features), np.float32)}
  task = module.StrategistTask.from_config(config)
  return task, module.example_batch(task)


def latency(call: Callable[[], Any], calls: int, warmup: int = 50) -> dict[str, float]:
  """p50, p99 and mean wall time of ``call()`` in milliseconds, each call timed alone, and the
  process CPU time per call (all threads; on a shared machine it is closer to the quiet-machine
  latency of a single-threaded call than the wall time is)."""
  for _ in range(warmup):
    call()
  times = np.empty(calls)
  cpu_start = time.process_time()
  for index in range(calls):
    start = time.perf_counter_ns()
    call()
    times[index] = time.perf_counter_ns() - start
  cpu = (time.process_time() - cpu_start) / calls * 1e3
  times /= 1e6
  return {'p50': float(np.percentile(times, 50)), 'p99': float(np.percentile(times, 99)),
          'mean': float(times.mean()), 'cpu_mean': float(cpu)}


def build(name: str, size: str, workdir: str | None) -> inference_lib.InferenceFunction:
  if workdir:
    return inference_lib.load_inference(name, workdir)
  import importlib  # pylint: disable=g-import-not-at-top
  # The config of the task the model belongs to (strategist_step: the Strategist's).
  config_name = inference_lib.MODELS[name].task_module.rsplit('.', 1)[-1]
  config = importlib.import_module(f'configs.{config_name}').get_config(
      '' if size == 'seed' else size)
  task, example = _random_task(name, config)
  params = task.init_params(jax.random.PRNGKey(0), example)
  return inference_lib.MODELS[name].build(task, params, config, {})


def measure(inference: inference_lib.InferenceFunction, calls: int,
            directory: str) -> dict[str, Any]:
  path = onnx_lib.export_onnx(inference, os.path.join(directory, f'{inference.name}.onnx'))
  inputs = inference.random_inputs(1)
  feeds = dict(zip(inference.input_names, inputs))
  results = {'parameters': int(sum(np.size(x) for x in jax.tree.leaves(inference.params))),
             'onnx_megabytes': os.path.getsize(path) / 1e6}
  for label, threads in (('onnxruntime_1_thread', 1), ('onnxruntime_default', 0)):
    session = onnx_lib.session(path, threads)
    results[label] = latency(lambda session=session: session.run(None, feeds), calls)
  device_inputs = [jax.device_put(x) for x in inputs]
  forward = inference.jitted
  results['jax_jit'] = latency(
      lambda: jax.block_until_ready(forward(inference.params, *device_inputs)), calls)
  return results


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='oracle,lstm,guardian,strategist,strategist_step')
  parser.add_argument('--size', default='seed', choices=('seed', 'quick'))
  parser.add_argument('--calls', type=int, default=2000)
  parser.add_argument('--workdir', action='append', default=[],
                      help='NAME=WORKDIR: measure a trained run instead of random params')
  parser.add_argument('--json', help='also write the figures to this file')
  args = parser.parse_args()
  workdirs = dict(item.split('=', 1) for item in args.workdir)
  names = [name for name in args.models.split(',') if name]
  print(f'batch 1, {args.calls} calls each; {os.cpu_count()} CPUs; jax {jax.__version__} on '
        f'{jax.devices()[0].platform}; load average {os.getloadavg()[0]:.1f}')
  figures = {}
  with tempfile.TemporaryDirectory() as directory:
    for name in names:
      figures[name] = measure(build(name, args.size, workdirs.get(name)), args.calls, directory)
  print(f'{"":<26}{"ORT 1 thread":>26}  {"ORT default":>19}  {"JAX jit":>26}')
  print(f'{"model":<16} {"params":>9}  {"p50 / p99 (cpu) ms":>26}  {"p50 / p99 ms":>19}  '
        f'{"p50 / p99 (cpu) ms":>26}')
  for name, entry in figures.items():
    one, default, jit = (entry[k] for k in ('onnxruntime_1_thread', 'onnxruntime_default',
                                            'jax_jit'))
    cell = lambda e, cpu=True: (f'{e["p50"]:.3f} / {e["p99"]:.3f}'
                                + (f' ({e["cpu_mean"]:.3f})' if cpu else ''))
    print(f'{name:<16} {entry["parameters"]:>9,}  {cell(one):>26}  {cell(default, False):>19}  '
          f'{cell(jit):>26}')
  members = [name for name in ENSEMBLE if name in figures]
  totals = {label: sum(figures[name][key]['p99'] for name in members)
            for label, key in (('ORT 1 thread', 'onnxruntime_1_thread'), ('JAX jit', 'jax_jit'))}
  print(f'ensemble decision ({" + ".join(members)}), sum of per-model p99: ' + ', '.join(
      f'{label} {value:.3f} ms' for label, value in totals.items())
        + f' (target <= {TARGET_P99_MS} ms)')
  if args.json:
    with open(args.json, 'w') as handle:
      json.dump({'size': args.size, 'calls': args.calls, 'load_average': os.getloadavg()[0],
                 'models': figures, 'ensemble_members': members,
                 'ensemble_sum_p99_ms': totals}, handle, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
