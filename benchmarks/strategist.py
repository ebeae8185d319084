"""Strategist (Decision Transformer) training throughput at the seed config on this CPU.

  python -m benchmarks.strategist [--steps 4] [--batch 128] [--variants fp32,bf16,...]

Seed config: context 90 (270 tokens), hidden 256, 6 layers, 8 heads, batch 128 (as 8 accumulated
micro-batches of 16, the config's default; "fp32-one-batch" runs it unsplit). Each variant runs in
its own process (XLA flags are per process) and prints the FLOPs per training sequence (XLA's cost
analysis of the compiled train step, beside the analytic count), sequences/s for the model step
alone (the same device batch) and end to end (Grain iterator over trajectory episodes → shard →
step), the achieved GFLOP/s and the dense fp32 matmul rate measured in the same process, plus how
many dot ops the optimised HLO of the step holds (QKV is one fused [H, 3H] projection per block).

This script compares our own variants (micro-batch sizes, dtypes, flags). The comparison with HF
transformers' DecisionTransformerModel, timed side by side in one process tree, is
benchmarks/strategist_vs_hf.py (needs the ``bench`` extra); its figures are in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

from benchmarks import oracle as oracle_benchmark
from benchmarks.oracle import matmul_gflops
from benchmarks.oracle import step_rates
from quantum_alpha_jax.cli import MALLOC_TUNABLES

# name: (compute dtype, XLA_FLAGS, GLIBC_TUNABLES, attention-weight dropout, accumulation steps).
# The seed config accumulates 8 micro-batches of 16: the same update as one batch of 128 (the
# trainer's test), but the [16, 8, 270, 270] attention tensors stay small; "fp32-one-batch" shows
# the difference.
VARIANTS = {
    'fp32': ('float32', '', MALLOC_TUNABLES, 0.0, 8),
    'fp32-one-batch': ('float32', '', MALLOC_TUNABLES, 0.0, 1),
    'fp32-4x32': ('float32', '', MALLOC_TUNABLES, 0.0, 4),
    'fp32-16x8': ('float32', '', MALLOC_TUNABLES, 0.0, 16),
    'bf16': ('bfloat16', '', MALLOC_TUNABLES, 0.0, 8),
    'fp32-attention-dropout': ('float32', '', MALLOC_TUNABLES, 0.1, 8),
    'fp32-plain-malloc': ('float32', '', '', 0.0, 8),
    'fp32-onednn': ('float32', '--xla_cpu_use_onednn=true', MALLOC_TUNABLES, 0.0, 8),
}


def analytic_gflop_per_sequence(context: int, hidden: int, layers: int, state_size: int) -> float:
  """Training FLOPs of one sequence: 3x the forward (backward = 2x forward), matmuls only.

  Forward per token and layer: QKV 6H², output 2H², MLP 16H²; attention scores and values
  4·T·H over all T = 3K keys (the masked half is computed too); embeddings and heads are small.
  """
  tokens = 3 * context
  per_layer = tokens * 24 * hidden**2 + 4 * tokens * tokens * hidden
  embeddings = context * 2 * hidden * (state_size + 1 + 1) + context * 2 * hidden * 4
  return 3 * (layers * per_layer + embeddings) / 1e9


def inference_rate(apply_fn, params, device_batch, steps: int, batch_size: int
                   ) -> tuple[float, float]:
  """Sequences/s of the jitted deterministic forward ``apply_fn(params, batch)`` on one device
  batch (:func:`benchmarks.oracle.inference_rate`) and XLA's FLOPs per sequence of that forward."""
  import jax  # pylint: disable=g-import-not-at-top
  compiled = jax.jit(apply_fn).lower(params, device_batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return (oracle_benchmark.inference_rate(compiled, params, device_batch, steps, batch_size),
          float(cost.get('flops', 0.0)) / batch_size)


def measure(dtype: str, steps: int, batch_size: int, attention_dropout: float,
            accumulation_steps: int, inference_steps: int = 0) -> dict:
  """Compiles the seed-config train step (the config's model, ``batch_size``, the given compute
  dtype, attention dropout and accumulation) on synthetic trajectories and times it: the model step
  alone and end to end from the Grain iterator, ``steps`` steps each; with ``inference_steps > 0``
  also the deterministic forward pass at ``batch_size`` (``inference_*`` keys)."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import strategist as strategist_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import features, synthetic, trajectories, windows  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import strategist  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  config = strategist_config.get_config('')
  config.train.batch_size = batch_size
  config.model.attention_dropout_rate = attention_dropout
  task = strategist.StrategistTask.from_config(config)
  frames = {s: features.compute_features(f) for s, f in synthetic.generate_market(
      ('BTCUSDT', 'ETHUSDT'), start='2023-01-01', end='2023-03-01').items()}
  splits = [windows.Split('train', '2023-01-01', '2023-03-01')]
  matmul_before = matmul_gflops()
  with tempfile.TemporaryDirectory() as cache:
    data, _ = trajectories.make_datasets(frames, task.spec, splits, batch_size, cache,
                                         num_devices=1, shard_index=0, shard_count=1)
    iterator = data['train'].iterator()
    mesh = step_lib.make_mesh(1)
    optimizer, schedule = state_lib.make_optimizer(config.train.optimizer, 10_000)
    first = next(iterator)
    started = time.perf_counter()
    params = task.init_params(jax.random.PRNGKey(0), first)
    state = step_lib.replicate(
        state_lib.TrainState.create(params, optimizer, jax.random.PRNGKey(1)), mesh)
    train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh,
                                          dtype=step_lib.compute_dtype(dtype),
                                          accumulation_steps=accumulation_steps)
    sharded = step_lib.shard_batch(first, mesh)
    compiled = train_step.lower(state, sharded).compile()
    compile_seconds = time.perf_counter() - started
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA counts a scan's body once: the accumulation loop runs it accumulation_steps times.
    flops_per_sequence = float(cost.get('flops', 0.0)) * accumulation_steps / batch_size
    hlo = compiled.as_text()
    dots = hlo.count(' dot(') + hlo.count('custom-call(')
    state, metrics, model_step, end_to_end = step_rates(
        train_step, state, sharded, lambda: step_lib.shard_batch(next(iterator), mesh), steps,
        batch_size)
    inference = {}
    if inference_steps > 0:
      rate, flops = inference_rate(task.apply, state.params, sharded, inference_steps, batch_size)
      inference = {'inference_sequences_per_second': rate, 'inference_gflop_per_sequence':
                   flops / 1e9}
  model = task.model
  return {'compute_dtype': dtype, 'attention_dropout': attention_dropout,
          'accumulation_steps': accumulation_steps, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
          'compile_seconds': compile_seconds,
          'gflop_per_sequence': flops_per_sequence / 1e9,
          'analytic_gflop_per_sequence': analytic_gflop_per_sequence(
              model.context_length, model.hidden_size, model.num_layers, model.state_size),
          'model_step_sequences_per_second': model_step,
          'end_to_end_sequences_per_second': end_to_end,
          'model_step_gflops': model_step * flops_per_sequence / 1e9,
          'end_to_end_gflops': end_to_end * flops_per_sequence / 1e9,
          'hlo_dot_ops': dots,
          'parameters': int(sum(x.size for x in jax.tree.leaves(state.params))), **inference,
          'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          'matmul_gflops': max(matmul_before, matmul_gflops()), 'loss': float(metrics['loss'])}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--variants', default='fp32,fp32-one-batch,fp32-attention-dropout')
  parser.add_argument('--child', default='')
  args = parser.parse_args()
  if args.child:
    dtype, _, _, attention_dropout, accumulation = VARIANTS[args.child]
    print(json.dumps(measure(dtype, args.steps, args.batch, attention_dropout, accumulation)))  # noqa
    return
  rows = oracle_benchmark.run_variants(
      'benchmarks.strategist', {name: VARIANTS[name][1:3] for name in args.variants.split(',')},
      ['--steps', str(args.steps), '--batch', str(args.batch)])
  print(f'Strategist Decision Transformer, seed config (batch {args.batch}, context 90 = 270 '
        f'tokens, hidden 256, 6 layers, 8 heads), {args.steps} steps per figure\n')
  print('| variant | GFLOP/seq (XLA) | GFLOP/seq (analytic) | model step seq/s | end-to-end seq/s '
        '| model step GFLOP/s | % of dense matmul | dense matmul GFLOP/s | dots in HLO '
        '| compile s | peak RSS GiB |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for name, row in rows:
    print(f'| {name} | {row["gflop_per_sequence"]:.2f} | {row["analytic_gflop_per_sequence"]:.2f} '
          f'| {row["model_step_sequences_per_second"]:.2f} '
          f'| {row["end_to_end_sequences_per_second"]:.2f} | {row["model_step_gflops"]:.1f} '
          f'| {100 * row["model_step_gflops"] / row["matmul_gflops"]:.0f}% '
          f'| {row["matmul_gflops"]:.0f} | {row["hlo_dot_ops"]} | {row["compile_seconds"]:.1f} '
          f'| {row["peak_rss_gib"]:.1f} |')
  print('\nAgainst HF transformers side by side: python -m benchmarks.strategist_vs_hf')

if __name__ == '__main__':
  main()
