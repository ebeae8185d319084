"""Oracle (TFT) training throughput at the seed config on this CPU, fp32 and bf16 compute.

  python -m benchmarks.oracle [--steps 12] [--batch 256] [--variants fp32,bf16,fp32-onednn]

Each variant runs in its own process (XLA flags are per process) and prints: FLOPs per training
sample from XLA's cost analysis of the train step with the variable selection unchunked
(:func:`unchunked`), the model step alone (batches already on
the device) and end to end (Grain iterator → shard → step), with the achieved GFLOP/s and the dense
fp32 matmul rate measured in the same process. This script compares our own variants; the
comparison with pytorch-forecasting's TFT, timed side by side in one process tree (same config,
threads and CPUs), is ``benchmarks/oracle_vs_pytorch_forecasting.py`` (figures in RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from quantum_alpha_jax.cli import MALLOC_TUNABLES

# name: (compute dtype, XLA_FLAGS, GLIBC_TUNABLES). The experiments run with the malloc tunables
# set (quantum_alpha_jax.cli re-executes itself with them); "-plain-malloc" shows the difference.
VARIANTS = {
    'fp32': ('float32', '', MALLOC_TUNABLES),
    'bf16': ('bfloat16', '', MALLOC_TUNABLES),
    'fp32-plain-malloc': ('float32', '', ''),
    'fp32-onednn': ('float32', '--xla_cpu_use_onednn=true', MALLOC_TUNABLES),
    'bf16-onednn': ('bfloat16', '--xla_cpu_use_onednn=true', MALLOC_TUNABLES),
}


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((size, size), jnp.float32)
  multiply = jax.jit(lambda x: x @ x)
  multiply(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    multiply(a).block_until_ready()
  return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def step_rates(train_step, state, device_batch, next_batch, steps: int, batch_size: int):
  """Items/s of ``train_step`` after one warm-up step: on the same device batch again and again
  (the model step alone), then on a fresh ``next_batch()`` every step (end to end, loader included).
  Returns ``(state, metrics, model_step_rate, end_to_end_rate)``."""
  import jax  # pylint: disable=g-import-not-at-top
  state, metrics = train_step(state, device_batch)
  jax.block_until_ready(metrics)
  rates = []
  for fetch in (lambda: device_batch, next_batch):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = train_step(state, fetch())
    jax.block_until_ready(metrics)
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return state, metrics, rates[0], rates[1]


def inference_rate(predict, params, inputs, steps: int, batch_size: int) -> float:
  """Items/s of the jitted ``predict(params, inputs)`` on one device batch, after one warm-up."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(predict(params, inputs))
  start = time.perf_counter()
  for _ in range(steps):
    outputs = predict(params, inputs)
  jax.block_until_ready(outputs)
  return steps * batch_size / (time.perf_counter() - start)


def unchunked(task: Any) -> Any:
  """``task`` with its TFT's per-variable GRNs in one chunk, for FLOP counting: XLA's cost
  analysis counts a ``lax.scan`` body once, not once per chunk, so the chunked step would show a
  third of its FLOPs. The unchunked model computes the same function (tests/test_tft.py), without
  the chunks' recomputation in the backward pass: these are the model's FLOPs, not the executed
  ones."""
  if not hasattr(task.model, 'variable_chunk_rows'):
    return task
  return dataclasses.replace(task, model=task.model.clone(variable_chunk_rows=2**62))


def flops(lowered: Any) -> float:
  """FLOPs of a lowered (not compiled) computation by XLA's cost analysis."""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get('flops', 0.0))


def measure(dtype: str, steps: int, batch_size: int, quantiles: tuple[float, ...] | None = None,
            inference: bool = False) -> dict:
  """Compiles and times the seed-config Oracle train step (see the module docstring) in
  ``dtype``; ``quantiles`` overrides the config's, and ``inference`` adds the samples/s and
  FLOPs of the jitted ``predict_batch`` at the same batch size (``steps`` calls)."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import oracle as oracle_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import features, synthetic, windows  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  config = oracle_config.get_config('')
  config.train.batch_size = batch_size
  if quantiles:
    config.model.quantiles = tuple(quantiles)
  task = oracle.OracleTask.from_config(config)
  frames = {s: features.compute_features(f) for s, f in synthetic.generate_market(
      ('BTCUSDT', 'ETHUSDT'), start='2023-01-01', end='2023-04-01').items()}
  splits = [windows.Split('train', '2023-01-01', '2023-04-01')]
  with tempfile.TemporaryDirectory() as cache:
    data, _ = windows.make_datasets(frames, oracle.window_spec(config), splits, batch_size, cache,
                                    num_devices=1, shard_index=0, shard_count=1)
    iterator = data['train'].iterator()
    mesh = step_lib.make_mesh(1)
    optimizer, schedule = state_lib.make_optimizer(config.train.optimizer, 10_000)
    first = next(iterator)
    started = time.perf_counter()
    params = jax.jit(task.init_params)(jax.random.PRNGKey(0), first)
    state = step_lib.replicate(
        state_lib.TrainState.create(params, optimizer, jax.random.PRNGKey(1)), mesh)
    train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh,
                                          dtype=step_lib.compute_dtype(dtype))
    sharded = step_lib.shard_batch(first, mesh)
    train_step.lower(state, sharded).compile()
    compile_seconds = time.perf_counter() - started
    flops_step = step_lib.make_train_step(unchunked(task).loss_fn, optimizer, schedule, mesh,
                                          dtype=step_lib.compute_dtype(dtype))
    flops_per_sample = flops(flops_step.lower(state, sharded)) / batch_size
    state, metrics, model_step, end_to_end = step_rates(
        train_step, state, sharded, lambda: step_lib.shard_batch(next(iterator), mesh), steps,
        batch_size)
    extra = {'param_count': int(sum(x.size for x in jax.tree.leaves(params)))}
    if inference:
      inputs = {name: sharded[name] for name in oracle.MODEL_INPUTS}
      predict = lambda p, x: oracle.predict_batch(task, p, x)
      extra['inference_gflop_per_sample'] = flops(oracle.predict_batch.lower(
          unchunked(task), state.params, inputs)) / batch_size / 1e9
      extra['inference_samples_per_second'] = inference_rate(predict, state.params, inputs,
                                                             steps, batch_size)
  return {**extra, 'compute_dtype': dtype, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
          'compile_seconds': compile_seconds, 'gflop_per_sample': flops_per_sample / 1e9,
          'model_step_samples_per_second': model_step,
          'end_to_end_samples_per_second': end_to_end,
          'model_step_gflops': model_step * flops_per_sample / 1e9,
          'end_to_end_gflops': end_to_end * flops_per_sample / 1e9,
          'matmul_gflops': matmul_gflops(), 'loss': float(metrics['loss'])}


def run_variants(module: str, variants: dict[str, tuple[str, str]], argv: list[str]
                 ) -> list[tuple[str, dict]]:
  """Runs ``python -m module --child NAME *argv`` for each ``NAME: (XLA_FLAGS, GLIBC_TUNABLES)``,
  one process per variant (XLA flags are read once per process); returns ``(name, its JSON)`` for
  those that succeeded and prints the error of the others."""
  rows = []
  for name, (flags, tunables) in variants.items():
    environment = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
    environment.pop('GLIBC_TUNABLES', None)
    if tunables:
      environment['GLIBC_TUNABLES'] = tunables
    completed = subprocess.run([sys.executable, '-m', module, '--child', name, *argv],
                               env=environment, capture_output=True, text=True, check=False)
    if completed.returncode:
      print(f'{name}: failed\n{completed.stderr[-2000:]}')
      continue
    rows.append((name, json.loads(completed.stdout.strip().splitlines()[-1])))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=12)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--variants', default='fp32,bf16,fp32-plain-malloc,fp32-onednn')
  parser.add_argument('--child', default='')
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(VARIANTS[args.child][0], args.steps, args.batch)))  # noqa
    return
  rows = run_variants('benchmarks.oracle', {name: VARIANTS[name][1:3] for name in
                                            args.variants.split(',')},
                      ['--steps', str(args.steps), '--batch', str(args.batch)])
  print(f'Oracle TFT, seed config (batch {args.batch}, hidden 128, 4 heads, hidden continuous 64, '
        f'2 LSTM layers, encoder 60, decoder 24), {args.steps} steps per figure\n')
  print('| variant | GFLOP/sample | model step samples/s | end-to-end samples/s | end-to-end GFLOP/s '
        '| % of dense matmul | dense matmul GFLOP/s | compile s |')
  print('|---|---|---|---|---|---|---|---|')
  for name, row in rows:
    print(f'| {name} | {row["gflop_per_sample"]:.3f} | {row["model_step_samples_per_second"]:.0f} '
          f'| {row["end_to_end_samples_per_second"]:.0f} | {row["end_to_end_gflops"]:.1f} '
          f'| {100 * row["end_to_end_gflops"] / row["matmul_gflops"]:.0f}% '
          f'| {row["matmul_gflops"]:.0f} | {row["compile_seconds"]:.1f} |')
  print('\nAgainst pytorch-forecasting side by side: '
        'python -m benchmarks.oracle_vs_pytorch_forecasting')

if __name__ == '__main__':
  main()
