"""Step time, MFU and peak device memory of each model's seed-config train step on an accelerator.

For each of the Oracle, the LSTM, the Guardian and the Strategist at the seed config (``''``
variant: model sizes and batch size) the script builds the task, takes one real training batch
from a small synthetic market (the shapes are the seed's; the values only need to be real), and
times the shared jitted train step (``train/step.py``, state donated, ``compute_dtype='auto'``:
bf16 on GPU/TPU) on that batch, already on the device, so that the loader is out of the figure:

- step time: the median of ``--steps`` timed steps (each ended with ``block_until_ready``), after
  the compile and ``--warmup`` steps; samples/s = batch size / step time;
- FLOPs per step: XLA's cost analysis of the compiled step (forward + backward + optimizer).
  XLA counts the body of a ``while`` loop once, whatever its trip count, so for models with a
  ``lax.scan`` recurrence (the LSTMs in the Oracle and the LSTM baseline) the figure, and the MFU
  derived from it, is a lower bound. The Strategist is stepped with ``accumulation_steps=1`` (one
  batch of 128, the same update as the CPU config's 8 micro-batches of 16; micro-batching only
  saves memory, which an accelerator does not need here), so its count is exact;
- MFU = FLOPs per step / step time / the device's peak dense bf16 FLOP/s (``PEAK_BF16_TFLOPS``,
  from the vendors' data sheets, times the number of devices). The dense bf16 matmul rate of one
  device measured in the same run is printed beside it, and the fraction of it reached;
- peak device memory: ``device.memory_stats()['peak_bytes_in_use']`` (each model runs in its own
  child process, so the peak is that model's). The CPU backend returns no memory stats (None).

Without a GPU or TPU the script says so and stops, unless ``--allow-cpu``: then it runs the same
measurement on the CPU (float32, no peak FLOP/s figure, memory stats None), which tests the script
end to end.

  python -m benchmarks.gpu [--models=oracle,lstm,guardian,strategist] [--steps=20] [--allow-cpu]
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags

MODELS = ('oracle', 'lstm', 'guardian', 'strategist')
# Dense (no sparsity) bf16 tensor-core peaks per device in TFLOP/s, from the vendors' data sheets.
# Matched against ``device.device_kind`` in order (the first substring that occurs wins).
PEAK_BF16_TFLOPS = (
    ('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H100', 989.0), ('H200', 989.0), ('GH200', 989.0),
    ('B200', 2250.0), ('A100', 312.0), ('A800', 312.0), ('L40S', 362.0), ('L4', 121.0),
    ('A10G', 70.0), ('A10', 125.0), ('TPU v4', 275.0), ('TPU v5 lite', 197.0), ('TPU v5e', 197.0),
    ('TPU v5p', 459.0), ('TPU v5', 459.0), ('TPU v6', 918.0))

_MODELS = flags.DEFINE_list('models', list(MODELS), f'Models to measure, some of {MODELS}.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed train steps per model.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after the compile.')
_ALLOW_CPU = flags.DEFINE_bool('allow-cpu', False, 'Measure on the CPU when no GPU/TPU is present.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 0, 'Side of the bf16 matmul (0: 8192 on an '
                                    'accelerator, 2048 on the CPU).')
_MODEL = flags.DEFINE_string('child', '', 'Internal: measure this one model and print RESULT.')
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')


def peak_tflops(device_kind: str) -> float | None:
  """The dense bf16 peak of one device of ``device_kind`` (None when unknown, e.g. a CPU)."""
  for name, peak in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def synthetic_frames(start: str = '2024-01-01', end: str = '2024-02-12') -> dict[str, Any]:
  """Feature frames of six synthetic weeks, BTCUSDT and ETHUSDT (in memory, no store)."""
  from quantum_alpha_jax.data import features, synthetic  # pylint: disable=g-import-not-at-top
  return {symbol: features.compute_features(frame) for symbol, frame in
          synthetic.generate_market(('BTCUSDT', 'ETHUSDT'), start=start, end=end).items()}


def seed_config(model: str, store_dir: str):
  """``configs/<model>.py`` at the seed (``''``) variant, its data splits cut to six weeks."""
  import importlib  # pylint: disable=g-import-not-at-top
  if model not in MODELS:
    from quantum_alpha_jax.errors import ConfigError, describe  # pylint: disable=g-import-not-at-top
    raise ConfigError(describe('--models', f'unknown model {model!r}', f'use some of {MODELS}'))
  config = importlib.import_module(f'configs.{model}').get_config('')
  config.data.store_dir = store_dir
  config.data.splits.update(train=('2024-01-01', '2024-01-29'),
                            validation=('2024-01-29', '2024-02-05'),
                            test=('2024-02-05', '2024-02-12'))
  return config


def task_and_batch(model: str, config, frames: Mapping[str, Any]
                   ) -> tuple[Any, dict[str, Any]]:
  """The model's task (as its ``run`` builds it) and one real training batch (numpy)."""
  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import guardian, lstm, oracle, strategist
  from quantum_alpha_jax.train import data as data_lib
  # pylint: enable=g-import-not-at-top
  if model == 'strategist':
    data, normalizer = strategist.make_data(config, frames=frames)
    task = strategist.StrategistTask.from_config(config, normalizer=normalizer)
  elif model == 'guardian':
    data, normalizer = data_lib.make_split_data(config.data, guardian.window_spec(config),
                                                config.train.batch_size, 0, frames=frames)
    task = dataclasses.replace(guardian.GuardianTask.from_config(config), normalizer=normalizer)
  else:
    task = (lstm.LSTMTask if model == 'lstm' else oracle.OracleTask).from_config(config)
    data, _ = data_lib.make_split_data(config.data, oracle.window_spec(config),
                                       config.train.batch_size, 0, frames=frames)
  return task, next(data['train'].iterator())


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', 0.0))


def memory_stats() -> dict[str, Any] | None:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.local_devices()[0].memory_stats()


def measure(model: str, steps: int, warmup: int, frames: Mapping[str, Any] | None = None,
            config=None) -> dict[str, Any]:
  """Compiles and times ``model``'s train step (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as store_dir:
    config = seed_config(model, store_dir) if config is None else config
    task, batch = task_and_batch(model, config, synthetic_frames() if frames is None else frames)
  dtype_name = step_lib.resolve_compute_dtype(config.train.compute_dtype)
  mesh = step_lib.make_mesh()
  optimizer, schedule = state_lib.make_optimizer(config.train.optimizer, 10_000)
  params = task.init_params(jax.random.PRNGKey(0), batch)
  state = step_lib.replicate(
      state_lib.TrainState.create(params, optimizer, jax.random.PRNGKey(1)), mesh)
  num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh,
                                        dtype=step_lib.COMPUTE_DTYPES[dtype_name])
  sharded = step_lib.shard_batch(batch, mesh)
  started = time.perf_counter()
  compiled = train_step.lower(state, sharded).compile()
  compile_seconds = time.perf_counter() - started
  flops = flops_of(compiled)
  for _ in range(warmup):
    state, metrics = compiled(state, sharded)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    state, metrics = compiled(state, sharded)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - started)
  step_seconds = statistics.median(times)
  batch_size = int(len(batch['mask']))
  stats = memory_stats()
  return {'model': model, 'backend': jax.default_backend(),
          'device_kind': jax.local_devices()[0].device_kind, 'num_devices': mesh.size,
          'compute_dtype': dtype_name, 'batch_size': batch_size, 'num_params': num_params,
          'compile_seconds': compile_seconds, 'step_seconds': step_seconds,
          'samples_per_second': batch_size / step_seconds, 'flops_per_step': flops,
          'achieved_tflops': flops / step_seconds / 1e12, 'loss': float(metrics['loss']),
          'finite': float(metrics['finite']),
          'peak_bytes_in_use': None if stats is None else stats.get('peak_bytes_in_use')}


def matmul_tflops(size: int, dtype: str = 'bfloat16') -> float:
  """Dense ``size``² matmul rate of one device in ``dtype``, this run (best of three, TFLOP/s)."""
  from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top
  return side_by_side.jax_matmul_gflops(size, repeats=10, dtype=dtype) / 1e3


def format_table(rows: Sequence[Mapping[str, Any]], peak: float | None, matmul: float) -> str:
  lines = ['| model | dtype | batch | step ms (median) | samples/s | GFLOP/step (XLA) | '
           'TFLOP/s | MFU vs peak | of measured matmul | peak device MiB |',
           '|' + '---|' * 10]
  for row in rows:
    achieved = row['achieved_tflops']
    mfu = f'{achieved / peak:.1%}' if peak else 'n/a (no peak for this device)'
    memory = ('None (no memory stats on this backend)' if row['peak_bytes_in_use'] is None
              else f'{row["peak_bytes_in_use"] / 2**20:.0f}')
    lines.append(f'| {row["model"]} | {row["compute_dtype"]} | {row["batch_size"]} | '
                 f'{row["step_seconds"] * 1e3:.1f} | {row["samples_per_second"]:.0f} | '
                 f'{row["flops_per_step"] / 1e9:.1f} | {achieved:.3f} | {mfu} | '
                 f'{achieved / matmul:.1%} | {memory} |')
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  if _MODEL.value:
    from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top
    side_by_side.emit(measure(_MODEL.value, _STEPS.value, _WARMUP.value))
    return
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  if backend == 'cpu':
    print('benchmarks/gpu.py: no GPU or TPU here (jax.default_backend() is "cpu"); install '
          'jax[cuda12] on a GPU machine to measure. Pass --allow-cpu to run the same measurement '
          'on the CPU (float32; no peak FLOP/s or memory stats).')
    if not _ALLOW_CPU.value:
      return
  unknown = sorted(set(_MODELS.value) - set(MODELS))
  if unknown:
    raise app.UsageError(f'--models: unknown {unknown}; use some of {MODELS}')
  device = jax.local_devices()[0]
  peak_one = peak_tflops(device.device_kind) if backend != 'cpu' else None
  peak = peak_one * jax.local_device_count() if peak_one else None
  # The matmul in the steps' dtype: bf16 on an accelerator, float32 on the CPU ('auto').
  from quantum_alpha_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  matmul_dtype = step_lib.resolve_compute_dtype('auto')
  matmul = matmul_tflops(_MATMUL_SIZE.value or (2048 if backend == 'cpu' else 8192), matmul_dtype)
  print(f'device: {device.device_kind} x{jax.local_device_count()} ({backend}); peak dense bf16 '
        f'{peak_one or "unknown"} TFLOP/s per device; measured {matmul_dtype} matmul '
        f'{matmul:.3f} TFLOP/s', flush=True)
  from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  rows = []
  for model in _MODELS.value:
    # One child per model: the device's peak-memory counter then belongs to that model alone.
    row = side_by_side.run_child(
        ['-m', 'benchmarks.gpu', f'--child={model}', f'--steps={_STEPS.value}',
         f'--warmup={_WARMUP.value}'], environment)
    rows.append(row)
    print(f'{model}: {row["step_seconds"] * 1e3:.1f} ms/step, '
          f'{row["samples_per_second"]:.0f} samples/s', flush=True)
  print(format_table(rows, peak, matmul))
  if backend == 'cpu':
    print('CPU: peak FLOP/s unknown (MFU n/a); the CPU backend returns no memory stats (None).')
  print('FLOPs: XLA cost analysis counts a while-loop body once, so the Oracle and LSTM '
        '(lax.scan recurrences) figures are lower bounds.')
  if _JSON.value:
    with open(_JSON.value, 'w') as handle:
      json.dump({'peak_tflops_per_device': peak_one, 'matmul_tflops': matmul,
                 'matmul_dtype': matmul_dtype, 'rows': rows},
                handle, indent=2)


if __name__ == '__main__':
  app.run(main)
