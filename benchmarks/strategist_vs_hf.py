"""Strategist (Decision Transformer) against HF transformers' DecisionTransformerModel, side by side.

  python -m benchmarks.strategist_vs_hf [--rounds 3] [--steps 2] [--inference-steps 3]
      [--batch 128] [--threads 0]

Both sides train the seed size: context K = 90 (270 tokens), hidden 256, 6 layers, 8 heads, MLP
4H, batch 128, embedding/residual dropout 0.1 and no attention-weight dropout (the seed config),
AdamW with gradient clipping. The children run one at a time, alternating (benchmarks/
side_by_side.py), pinned to the same CPUs with the same thread count.

- ours (``--child ours``): the seed-config train step (:func:`benchmarks.strategist.measure`: the
  config's accumulation of micro-batches, fp32), timed on the same device batch (model step) and end
  to end from the Grain trajectory iterator; then the deterministic forward at batch 128.
  FLOPs per sequence from XLA's cost analysis of the compiled step.
- peer (``--child peer``): ``transformers.DecisionTransformerModel`` with ``state_dim`` = our state
  width (45), ``act_dim`` = our action encoding (3 one-hot actions + the size = 4), ``max_ep_len`` =
  K, ``n_positions`` = 3K, no tanh on the action head. The loss is ours on its ``action_preds``:
  the cross-entropy of the first 3 outputs against the action plus the squared error of
  ``sigmoid`` of the 4th against the size on sized steps. Forward + backward + clip + AdamW step
  timed on one fixed batch (a peer has no loader of ours), inference under ``torch.no_grad`` in
  eval mode; FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward.

The parent prints the medians over rounds, the median per-round ratios ours/peer, the achieved
fraction of the dense fp32 matmul rate measured in the same run
(:func:`benchmarks.side_by_side.matmul_rates`) and both parameter counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from benchmarks import side_by_side

CONTEXT, HIDDEN, LAYERS, HEADS = 90, 256, 6, 8
NUM_ACTIONS = 3  # hold, buy, sell (data/trajectories.py ACTIONS)


def ours_child(args: argparse.Namespace) -> None:
  side_by_side.apply_threads()
  from benchmarks import strategist  # pylint: disable=g-import-not-at-top
  from configs import strategist as strategist_config  # pylint: disable=g-import-not-at-top
  accumulation = strategist_config.get_config('').train.accumulation_steps
  result = strategist.measure('float32', args.steps, args.batch, 0.0, accumulation,
                              inference_steps=args.inference_steps)
  side_by_side.emit({
      'train_sequences_per_second': result['end_to_end_sequences_per_second'],
      'model_step_sequences_per_second': result['model_step_sequences_per_second'],
      'inference_sequences_per_second': result['inference_sequences_per_second'],
      'train_gflop_per_sequence': result['gflop_per_sequence'],
      'inference_gflop_per_sequence': result['inference_gflop_per_sequence'],
      'parameters': result['parameters'], 'accumulation_steps': accumulation,
      'compile_seconds': result['compile_seconds'], 'loss': result['loss']})


def hf_config() -> Any:
  """HF's ``DecisionTransformerConfig`` at the seed sizes (our loss reads its action logits)."""
  import transformers  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data.features import FEATURES  # pylint: disable=g-import-not-at-top
  return transformers.DecisionTransformerConfig(
      state_dim=len(FEATURES) + 1, act_dim=NUM_ACTIONS + 1, hidden_size=HIDDEN, n_layer=LAYERS,
      n_head=HEADS, n_inner=4 * HIDDEN, max_ep_len=CONTEXT, n_positions=3 * CONTEXT,
      action_tanh=False, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.0)


def peer_child(args: argparse.Namespace) -> None:
  threads = side_by_side.apply_threads()
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data.features import FEATURES  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = transformers.DecisionTransformerModel(hf_config())
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
  batch, steps = args.batch, CONTEXT
  generator = torch.Generator().manual_seed(0)
  actions = torch.randint(0, NUM_ACTIONS, (batch, steps), generator=generator)
  sizes = torch.rand(batch, steps, generator=generator) * (actions == 1)
  inputs = {
      'states': torch.randn(batch, steps, len(FEATURES) + 1, generator=generator),
      'actions': torch.cat([torch.nn.functional.one_hot(actions, NUM_ACTIONS).float(),
                            sizes[..., None]], -1),
      'rewards': torch.zeros(batch, steps, 1),
      'returns_to_go': torch.randn(batch, steps, 1, generator=generator),
      'timesteps': torch.arange(steps).expand(batch, steps).contiguous(),
      'attention_mask': torch.ones(batch, steps, dtype=torch.long)}
  size_mask = (actions == 1).float()

  def loss_fn():
    predictions = model(**inputs, return_dict=True).action_preds  # [batch, K, 4]
    cross_entropy = torch.nn.functional.cross_entropy(
        predictions[..., :NUM_ACTIONS].reshape(-1, NUM_ACTIONS), actions.reshape(-1))
    size_error = (torch.sigmoid(predictions[..., NUM_ACTIONS]) - sizes).square() * size_mask
    return cross_entropy + size_error.mean()

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    optimizer.step()
    return loss

  model.train()
  with FlopCounterMode(display=False) as counter:
    loss = loss_fn()
    loss.backward()
  train_flops = counter.get_total_flops()
  optimizer.zero_grad(set_to_none=True)
  train_step()  # warm-up
  start = time.perf_counter()
  for _ in range(args.steps):
    loss = train_step()
  train_rate = args.steps * batch / (time.perf_counter() - start)

  model.eval()
  with torch.no_grad():
    with FlopCounterMode(display=False) as counter:
      model(**inputs, return_dict=True)
    inference_flops = counter.get_total_flops()
    model(**inputs, return_dict=True)  # warm-up
    start = time.perf_counter()
    for _ in range(args.inference_steps):
      model(**inputs, return_dict=True)
    inference_rate = args.inference_steps * batch / (time.perf_counter() - start)
  side_by_side.emit({
      'train_sequences_per_second': train_rate, 'inference_sequences_per_second': inference_rate,
      'train_gflop_per_sequence': train_flops / batch / 1e9,
      'inference_gflop_per_sequence': inference_flops / batch / 1e9,
      'parameters': sum(p.numel() for p in model.parameters()),
      'attention': model.config._attn_implementation,  # pylint: disable=protected-access
      'loss': float(loss)})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--child', choices=('ours', 'peer'), default=None)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=2, help='timed train steps per child')
  parser.add_argument('--inference-steps', type=int, default=3)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--threads', type=int, default=0, help='0: every CPU this process may use')
  args = parser.parse_args()
  if args.child == 'ours':
    return ours_child(args)
  if args.child == 'peer':
    return peer_child(args)
  threads = len(side_by_side.cpu_list(args.threads))
  common = ['--steps', str(args.steps), '--inference-steps', str(args.inference_steps),
            '--batch', str(args.batch)]
  module = ['-m', 'benchmarks.strategist_vs_hf']
  print(f'Strategist vs HF DecisionTransformerModel: context {CONTEXT} ({3 * CONTEXT} tokens), '
        f'hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads, batch {args.batch}, {threads} threads, '
        f'{args.rounds} rounds x {args.steps} train steps', file=sys.stderr, flush=True)
  results = side_by_side.alternate({'ours': module + ['--child', 'ours'] + common,
                                    'peer': module + ['--child', 'peer'] + common},
                                   rounds=args.rounds, threads=threads)
  rates = side_by_side.matmul_rates(threads)
  ours, peer = results['ours'], results['peer']
  matmul_fp32 = {'ours': rates['jax_float32'], 'peer': rates.get('torch_float32', float('nan'))}
  median = side_by_side.median
  print(f'\nStrategist vs HF DecisionTransformerModel, {threads} threads, medians of '
        f'{args.rounds} rounds (ours: {ours[0]["accumulation_steps"]} accumulated micro-batches, '
        f'fp32; HF attention: {peer[0]["attention"]})\n')
  print('| | ours (JAX) | HF transformers (torch) | ratio ours/HF |')
  print('|---|---|---|---|')
  print(f'| parameters | {ours[0]["parameters"]:,} | {peer[0]["parameters"]:,} | |')
  for key, label in (('train_gflop_per_sequence', 'GFLOP per training sequence'),
                     ('inference_gflop_per_sequence', 'GFLOP per inference sequence')):
    print(f'| {label} | {median(ours, key):.2f} | {median(peer, key):.2f} | |')
  for key, flops, label in (
      ('train_sequences_per_second', 'train_gflop_per_sequence', 'train sequences/s'),
      ('inference_sequences_per_second', 'inference_gflop_per_sequence',
       'inference sequences/s')):
    ratio = side_by_side.median_ratio(ours, peer, key)
    print(f'| {label} | {median(ours, key):.2f} | {median(peer, key):.2f} | **{ratio:.2f}×** |')
    achieved = {name: median(side, key) * median(side, flops) for name, side in
                (('ours', ours), ('peer', peer))}
    print(f'| {label.split()[0]} GFLOP/s (fraction of own fp32 matmul) '
          f'| {achieved["ours"]:.1f} ({achieved["ours"] / matmul_fp32["ours"]:.0%}) '
          f'| {achieved["peer"]:.1f} ({achieved["peer"] / matmul_fp32["peer"]:.0%}) | |')
  print(f'| ours, model step alone (no loader), sequences/s '
        f'| {median(ours, "model_step_sequences_per_second"):.2f} | | |')
  print(f'\ndense 2048² matmul, same run, GFLOP/s: ' + ', '.join(
      f'{name} {value:.0f}' for name, value in rates.items() if name != 'wall_seconds'))


if __name__ == '__main__':
  main()
