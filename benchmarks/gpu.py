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
  child process, so the peak is that model's). The CPU backend returns no memory stats (None);
- projected hours of the seed's full training (:func:`project_training`): the seed config's steps
  (``num_steps``, else ``num_epochs`` x steps per epoch) x the step time, plus its periodic
  validation (every ``eval_every_steps``, else once per epoch; ``max_eval_batches`` batches, else
  the whole split) x the eval step time, timed the same way. Steps per epoch come from the seed's
  train split: the windows (episodes for the Strategist) counted in the six-week data, extrapolated
  to the seed's split length (the market is gapless, so a split of B bars per symbol yields
  ``(B - edge) / stride`` windows, the edge bars measured). It is the whole configured run: early
  stopping (``patience``) can end it sooner; the loader, checkpoints and the rollout evaluation
  after training are not in it. The Strategist's figure assumes
  ``--config.train.accumulation_steps=1`` (how it is stepped here).

The script keeps to a time budget (``--budget_seconds``, 270 by default, for the 5 minutes one
H100 is given): the timed steps of a model stop after ``--max_timed_seconds``, each child gets the
time left as its timeout, a model that no longer fits is skipped with a line saying so, and the
elapsed time is printed at the end.

Without a GPU or TPU the script says so and stops, unless ``--allow-cpu``: then it runs the same
measurement on the CPU (float32, no peak FLOP/s figure, memory stats None), which tests the script
end to end.

  python -m benchmarks.gpu [--models=oracle,lstm,guardian,strategist] [--steps=20] [--allow-cpu]
      [--budget_seconds=270] [--json=FILE]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
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
_MAX_TIMED = flags.DEFINE_float('max_timed_seconds', 20.0, 'Stop timing a model\'s train (and '
                                'eval) steps after this many seconds, even before --steps.')
_BUDGET = flags.DEFINE_float('budget_seconds', 270.0, 'Wall-clock budget of the whole script: '
                             'models that no longer fit are skipped.')
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


MEASURED_SPLITS = {'train': ('2024-01-01', '2024-01-29'), 'validation': ('2024-01-29', '2024-02-05'),
                   'test': ('2024-02-05', '2024-02-12')}
BAR_MINUTES = 5


def full_seed_config(model: str):
  """``configs/<model>.py`` at the seed (``''``) variant, as a full training run reads it."""
  import importlib  # pylint: disable=g-import-not-at-top
  if model not in MODELS:
    from quantum_alpha_jax.errors import ConfigError, describe  # pylint: disable=g-import-not-at-top
    raise ConfigError(describe('--models', f'unknown model {model!r}', f'use some of {MODELS}'))
  return importlib.import_module(f'configs.{model}').get_config('')


def seed_config(model: str, store_dir: str):
  """``configs/<model>.py`` at the seed (``''``) variant, its data splits cut to six weeks."""
  config = full_seed_config(model)
  config.data.store_dir = store_dir
  config.data.splits.update(**MEASURED_SPLITS)
  return config


def split_bars(split: Sequence[str]) -> int:
  """5-minute bars per symbol in a ``(start, end)`` split of a gapless market."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  start, end = (pd.Timestamp(value) for value in split)
  return int((end - start) / pd.Timedelta(minutes=BAR_MINUTES))


def window_strides(model: str, config) -> tuple[int, int]:
  """Bars between consecutive windows of one symbol, ``(train, validation)``: 1 for the window
  models; the Strategist's episode strides (``evaluation_stride`` 0 = one context apart)."""
  if model != 'strategist':
    return 1, 1
  return (int(config.trajectories.stride),
          int(config.trajectories.evaluation_stride or config.model.context_length))


def extrapolate_windows(measured_windows: int, measured_bars: int, bars: int, symbols: int,
                        stride: int) -> int:
  """Windows of a split of ``bars`` per symbol, from a measured split of the same kind: each
  symbol loses a constant ``edge`` of bars (window length, warm-up, purge) and keeps one window
  per ``stride`` of the rest."""
  edge = measured_bars - measured_windows * stride / symbols
  return max(0, int(round(symbols * (bars - edge) / stride)))


def project_training(config, row: Mapping[str, Any]) -> dict[str, Any]:
  """Projected wall time of the seed's full training from a measured ``row`` (:func:`measure`):
  ``total_steps x step_seconds + evaluations x eval_batches x eval_step_seconds`` (the module
  docstring; ``config`` is the full seed config)."""
  train = config.train
  batch = int(train.batch_size)
  symbols = int(row['symbols'])
  train_windows = extrapolate_windows(row['train_windows'], row['measured_train_bars'],
                                      split_bars(config.data.splits.train), symbols,
                                      row['train_stride'])
  validation_windows = extrapolate_windows(
      row['validation_windows'], row['measured_validation_bars'],
      split_bars(config.data.splits.validation), symbols, row['validation_stride'])
  steps_per_epoch = train_windows // batch
  total_steps = (int(train.num_steps) if train.num_steps > 0
                 else int(train.num_epochs) * steps_per_epoch)
  eval_every = int(train.eval_every_steps) or steps_per_epoch
  evaluations = total_steps // eval_every + (1 if total_steps % eval_every else 0)
  eval_batches = math.ceil(validation_windows / batch)
  if train.max_eval_batches > 0:
    eval_batches = min(eval_batches, int(train.max_eval_batches))
  train_seconds = total_steps * row['step_seconds']
  eval_seconds = evaluations * eval_batches * row['eval_step_seconds']
  return {'train_windows': train_windows, 'validation_windows': validation_windows,
          'steps_per_epoch': steps_per_epoch, 'total_steps': total_steps,
          'evaluations': evaluations, 'eval_batches': eval_batches,
          'train_hours': train_seconds / 3600, 'eval_hours': eval_seconds / 3600,
          'projected_hours': (train_seconds + eval_seconds) / 3600}


def task_and_batch(model: str, config, frames: Mapping[str, Any], with_data: bool = False
                   ) -> tuple[Any, dict[str, Any]] | tuple[Any, dict[str, Any], Mapping[str, Any]]:
  """The model's task (as its ``run`` builds it) and one real training batch (numpy); with
  ``with_data`` also the split data (``{split: SplitData}``)."""
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
  batch = next(data['train'].iterator())
  return (task, batch, data) if with_data else (task, batch)


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', 0.0))


def memory_stats() -> dict[str, Any] | None:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.local_devices()[0].memory_stats()


def timed_median(function, steps: int, max_seconds: float) -> tuple[float, int]:
  """The median wall time of up to ``steps`` calls of ``function()`` (each ended by
  ``block_until_ready`` inside it), stopping after ``max_seconds``; and how many ran."""
  times = []
  started = time.perf_counter()
  while len(times) < max(1, steps) and (not times or time.perf_counter() - started < max_seconds):
    begin = time.perf_counter()
    function()
    times.append(time.perf_counter() - begin)
  return statistics.median(times), len(times)


def measure(model: str, steps: int, warmup: int, frames: Mapping[str, Any] | None = None,
            config=None, max_timed_seconds: float = 20.0) -> dict[str, Any]:
  """Compiles and times ``model``'s train and eval steps (see the module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as store_dir:
    config = seed_config(model, store_dir) if config is None else config
    task, batch, data = task_and_batch(model, config,
                                       synthetic_frames() if frames is None else frames,
                                       with_data=True)
    train_stride, validation_stride = window_strides(model, config)
    windows = {'train_windows': int(data['train'].num_windows),
               'validation_windows': int(data['validation'].num_windows),
               'measured_train_bars': split_bars(config.data.splits.train),
               'measured_validation_bars': split_bars(config.data.splits.validation),
               'symbols': len(config.data.symbols), 'train_stride': train_stride,
               'validation_stride': validation_stride}
  dtype_name = step_lib.resolve_compute_dtype(config.train.compute_dtype)
  mesh = step_lib.make_mesh()
  optimizer, schedule = state_lib.make_optimizer(config.train.optimizer, 10_000)
  params = task.init_params(jax.random.PRNGKey(0), batch)
  state = step_lib.replicate(
      state_lib.TrainState.create(params, optimizer, jax.random.PRNGKey(1)), mesh)
  num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  dtype = step_lib.COMPUTE_DTYPES[dtype_name]
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh, dtype=dtype)
  eval_step = step_lib.make_eval_step(task.loss_fn, mesh, dtype=dtype)
  sharded = step_lib.shard_batch(batch, mesh)
  started = time.perf_counter()
  compiled = train_step.lower(state, sharded).compile()
  compile_seconds = time.perf_counter() - started
  flops = flops_of(compiled)
  for _ in range(warmup):
    state, metrics = compiled(state, sharded)
  jax.block_until_ready(state)

  def one_step():
    nonlocal state, metrics
    state, metrics = compiled(state, sharded)
    jax.block_until_ready((state, metrics))

  step_seconds, timed_steps = timed_median(one_step, steps, max_timed_seconds)
  compiled_eval = eval_step.lower(state.params, sharded).compile()
  jax.block_until_ready(compiled_eval(state.params, sharded))  # warm-up
  eval_step_seconds, _ = timed_median(
      lambda: jax.block_until_ready(compiled_eval(state.params, sharded)), steps,
      max_timed_seconds / 2)
  batch_size = int(len(batch['mask']))
  stats = memory_stats()
  return {'model': model, 'backend': jax.default_backend(),
          'device_kind': jax.local_devices()[0].device_kind, 'num_devices': mesh.size,
          'compute_dtype': dtype_name, 'batch_size': batch_size, 'num_params': num_params,
          'compile_seconds': compile_seconds, 'step_seconds': step_seconds,
          'timed_steps': timed_steps, 'eval_step_seconds': eval_step_seconds, **windows,
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
           'TFLOP/s | MFU vs peak | of measured matmul | peak device MiB | seed run: steps '
           '| seed run: projected hours (train + eval) |',
           '|' + '---|' * 12]
  for row in rows:
    achieved = row['achieved_tflops']
    mfu = f'{achieved / peak:.1%}' if peak else 'n/a (no peak for this device)'
    memory = ('None (no memory stats on this backend)' if row['peak_bytes_in_use'] is None
              else f'{row["peak_bytes_in_use"] / 2**20:.0f}')
    lines.append(f'| {row["model"]} | {row["compute_dtype"]} | {row["batch_size"]} | '
                 f'{row["step_seconds"] * 1e3:.1f} | {row["samples_per_second"]:.0f} | '
                 f'{row["flops_per_step"] / 1e9:.1f} | {achieved:.3f} | {mfu} | '
                 f'{achieved / matmul:.1%} | {memory} | {row["total_steps"]:,} '
                 f'| {row["projected_hours"]:.2f} ({row["train_hours"]:.2f} + '
                 f'{row["eval_hours"]:.2f}) |')
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  if _MODEL.value:
    from benchmarks import side_by_side  # pylint: disable=g-import-not-at-top
    side_by_side.emit(measure(_MODEL.value, _STEPS.value, _WARMUP.value,
                              max_timed_seconds=_MAX_TIMED.value))
    return
  started = time.perf_counter()
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
  rows, skipped = [], []
  for model in _MODELS.value:
    left = _BUDGET.value - (time.perf_counter() - started)
    if left < 10:
      skipped.append(model)
      print(f'{model}: skipped, {_BUDGET.value:.0f} s budget spent (--budget_seconds)', flush=True)
      continue
    # One child per model: the device's peak-memory counter then belongs to that model alone.
    try:
      row = side_by_side.run_child(
          ['-m', 'benchmarks.gpu', f'--child={model}', f'--steps={_STEPS.value}',
           f'--warmup={_WARMUP.value}', f'--max_timed_seconds={_MAX_TIMED.value}'], environment,
          timeout=left)
    except subprocess.TimeoutExpired:
      skipped.append(model)
      print(f'{model}: stopped after {left:.0f} s, the rest of the --budget_seconds', flush=True)
      continue
    row.update(project_training(full_seed_config(model), row))
    rows.append(row)
    print(f'{model}: {row["step_seconds"] * 1e3:.1f} ms/step ({row["timed_steps"]} timed), '
          f'{row["samples_per_second"]:.0f} samples/s; seed run {row["total_steps"]:,} steps '
          f'({row["steps_per_epoch"]:,}/epoch) + {row["evaluations"]} x {row["eval_batches"]} eval '
          f'batches = {row["projected_hours"]:.2f} h; child {row["wall_seconds"]:.0f} s',
          flush=True)
  print(format_table(rows, peak, matmul))
  print('Projected hours: the seed config\'s whole run (steps x step time + its periodic '
        'validation x eval step time); early stopping can end it sooner; loader, checkpoints and '
        'the post-training evaluation excluded. Strategist: with accumulation_steps=1.')
  if backend == 'cpu':
    print('CPU: peak FLOP/s unknown (MFU n/a); the CPU backend returns no memory stats (None).')
  print('FLOPs: XLA cost analysis counts a while-loop body once, so the Oracle and LSTM '
        '(lax.scan recurrences) figures are lower bounds.')
  elapsed = time.perf_counter() - started
  print(f'elapsed {elapsed:.0f} s (budget {_BUDGET.value:.0f} s)'
        + (f'; skipped: {", ".join(skipped)}' if skipped else ''))
  if _JSON.value:
    with open(_JSON.value, 'w') as handle:
      json.dump({'peak_tflops_per_device': peak_one, 'matmul_tflops': matmul,
                 'matmul_dtype': matmul_dtype, 'rows': rows, 'skipped': skipped,
                 'elapsed_seconds': elapsed}, handle, indent=2)


if __name__ == '__main__':
  app.run(main)
