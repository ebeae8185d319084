"""The Oracle TFT against pytorch-forecasting's TemporalFusionTransformer, side by side.

  python -m benchmarks.oracle_vs_pytorch_forecasting [--rounds 3] [--steps 6] [--threads 0]

Both sides run the same model at the same config: 44 continuous inputs in the encoder (60 steps),
the 3 known-future calendar inputs (``hour``, ``day_of_week``, ``is_trading_hour``, what
``WindowSource.gather`` puts in ``decoder_known``) in the decoder (24 steps), one static
categorical (the symbol), hidden 128, 4 attention heads, hidden continuous 64, 2 LSTM layers,
dropout 0.1, 7 quantiles (pytorch-forecasting's ``QuantileLoss`` default levels), batch 256, fp32,
the same thread count and CPUs (:mod:`benchmarks.side_by_side`).

- ``--child ours``: :func:`benchmarks.oracle.measure` — the shared jitted train step (Adam(W)
  with clipping, from the seed config) on one cached device batch ("model step") and on a fresh
  batch from the Grain iterator every step ("end to end"), then the jitted ``predict_batch``
  (forward, quantile sorting, P(up)) on one batch. FLOPs from XLA's cost analysis of the same
  model with its variable selection in one chunk (``benchmarks.oracle.unchunked``): the model's
  FLOPs, without the chunks' recomputation in the backward pass.
- ``--child peer``: ``TemporalFusionTransformer.from_dataset`` over a ``TimeSeriesDataSet`` of
  synthetic data with the same shapes (the 41 other features as unknown reals, the 3 calendar
  inputs as known reals, so the encoder selects among 44 variables and the decoder among 3);
  forward, ``QuantileLoss``, backward and ``Adam.step`` per batch, on batches from its own
  dataloader (end to end) and on one cached batch (model step); inference under
  ``torch.no_grad`` in eval mode on one batch. FLOPs from ``torch.utils.flop_counter``.

The parent alternates the children (ours, peer, peer, ours, ...), measures the dense fp32 matmul
rate of both libraries in the same run (before and after the rounds, keeping the higher: the less
disturbed), and prints the medians, the median per-round ratios and the achieved fraction of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks import side_by_side

# pytorch-forecasting's QuantileLoss() levels; ours is configured with the same ones here.
QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
KNOWN = ('hour', 'day_of_week', 'is_trading_hour')
CONFIG = {'encoder_length': 60, 'decoder_length': 24, 'hidden_size': 128, 'num_heads': 4,
          'hidden_continuous_size': 64, 'lstm_layers': 2, 'dropout': 0.1}


def ours_child(steps: int, batch_size: int) -> dict:
  threads = side_by_side.apply_threads()
  from benchmarks import oracle  # pylint: disable=g-import-not-at-top
  result = oracle.measure('float32', steps, batch_size, quantiles=QUANTILES, inference=True)
  result.pop('matmul_gflops', None)  # Measured once by the parent for both sides.
  return {**result, 'threads': threads}


def _peer_frame(rows_per_symbol: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data.features import FEATURES  # pylint: disable=g-import-not-at-top
  unknown = [name for name in FEATURES if name not in KNOWN]
  rng = np.random.default_rng(seed)
  frames = []
  for symbol in ('BTCUSDT', 'ETHUSDT'):
    frame = pd.DataFrame(rng.standard_normal((rows_per_symbol, len(FEATURES))).astype(np.float32),
                         columns=list(KNOWN) + unknown)
    frame['target'] = rng.standard_normal(rows_per_symbol).astype(np.float32)
    frame['symbol'] = symbol
    frame['time_idx'] = np.arange(rows_per_symbol)
    frames.append(frame)
  return pd.concat(frames, ignore_index=True), unknown


def peer_child(steps: int, batch_size: int) -> dict:
  threads = side_by_side.apply_threads()
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings('ignore')
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
  from pytorch_forecasting import TemporalFusionTransformer  # pylint: disable=g-import-not-at-top
  from pytorch_forecasting import TimeSeriesDataSet  # pylint: disable=g-import-not-at-top
  from pytorch_forecasting.data.encoders import TorchNormalizer  # pylint: disable=g-import-not-at-top
  from pytorch_forecasting.metrics import QuantileLoss  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  # Enough rows for (steps + 2) batches of distinct windows per epoch.
  rows = (steps + 2) * batch_size // 2 + CONFIG['encoder_length'] + CONFIG['decoder_length'] + 1
  frame, unknown = _peer_frame(rows)
  dataset = TimeSeriesDataSet(
      frame, time_idx='time_idx', target='target', group_ids=['symbol'],
      max_encoder_length=CONFIG['encoder_length'], min_encoder_length=CONFIG['encoder_length'],
      max_prediction_length=CONFIG['decoder_length'],
      min_prediction_length=CONFIG['decoder_length'], static_categoricals=['symbol'],
      time_varying_known_reals=list(KNOWN), time_varying_unknown_reals=unknown,
      target_normalizer=TorchNormalizer(method='identity', center=False),
      add_encoder_length=False, add_relative_time_idx=False, add_target_scales=False,
      scalers={name: None for name in list(KNOWN) + unknown})
  model = TemporalFusionTransformer.from_dataset(
      dataset, hidden_size=CONFIG['hidden_size'], attention_head_size=CONFIG['num_heads'],
      hidden_continuous_size=CONFIG['hidden_continuous_size'], lstm_layers=CONFIG['lstm_layers'],
      dropout=CONFIG['dropout'], loss=QuantileLoss(list(QUANTILES)))
  if (len(model.encoder_variables), len(model.decoder_variables)) != (44, 3):
    raise RuntimeError(f'peer model selects {len(model.encoder_variables)} encoder and '
                       f'{len(model.decoder_variables)} decoder variables, expected 44 and 3')
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loader = dataset.to_dataloader(train=True, batch_size=batch_size, num_workers=0)

  def train_step(x, y):
    optimizer.zero_grad(set_to_none=True)
    loss = model.loss.loss(model(x)['prediction'], y[0]).mean()
    loss.backward()
    optimizer.step()
    return loss

  def batches():
    while True:
      yield from loader

  model.train()
  stream = batches()
  cached = next(stream)
  with flop_counter.FlopCounterMode(display=False) as counter:
    train_step(*cached)
  train_flops = counter.get_total_flops()
  rates = []
  for fetch in (lambda: cached, lambda: next(stream)):
    start = time.perf_counter()
    for _ in range(steps):
      loss = train_step(*fetch())
    rates.append(steps * batch_size / (time.perf_counter() - start))
  model.eval()
  with torch.no_grad():
    with flop_counter.FlopCounterMode(display=False) as counter:
      model(cached[0])
    inference_flops = counter.get_total_flops()
    start = time.perf_counter()
    for _ in range(steps):
      model(cached[0])
    inference = steps * batch_size / (time.perf_counter() - start)
  return {'threads': threads, 'torch_threads': torch.get_num_threads(),
          'param_count': int(sum(p.numel() for p in model.parameters())),
          'gflop_per_sample': train_flops / batch_size / 1e9,
          'inference_gflop_per_sample': inference_flops / batch_size / 1e9,
          'model_step_samples_per_second': rates[0], 'end_to_end_samples_per_second': rates[1],
          'inference_samples_per_second': inference, 'loss': float(loss)}


FIGURES = (('end_to_end_samples_per_second', 'train samples/s, end to end (loader → step)'),
           ('model_step_samples_per_second', 'train samples/s, model step (cached batch)'),
           ('inference_samples_per_second', 'inference samples/s (batch 256, forward)'))


def report(results: dict, rates: dict, args: argparse.Namespace) -> str:
  ours, peer = results['ours'], results['peer']
  med = side_by_side.median
  lines = [f'Oracle TFT vs pytorch-forecasting TFT, batch {args.batch}, {args.steps} steps per '
           f'figure, {args.rounds} rounds, {ours[0]["threads"]} threads (median over rounds)', '',
           f'params: ours {ours[0]["param_count"]:,}, pytorch-forecasting '
           f'{peer[0]["param_count"]:,}',
           f'GFLOP per sample, train step: ours {med(ours, "gflop_per_sample"):.3f} (XLA cost '
           f'analysis, variable selection unchunked), pytorch-forecasting {med(peer, "gflop_per_sample"):.3f} (torch FLOP '
           'counter)',
           f'GFLOP per sample, inference: ours {med(ours, "inference_gflop_per_sample"):.3f}, '
           f'pytorch-forecasting {med(peer, "inference_gflop_per_sample"):.3f}',
           f'dense 2048² fp32 matmul, this run: JAX {rates["jax_float32"]:.0f} GFLOP/s, torch '
           f'{rates.get("torch_float32", float("nan")):.0f} GFLOP/s', '',
           '| figure | ours | pytorch-forecasting | ours / peer (median of rounds) '
           '| ours % of JAX fp32 matmul | peer % of torch fp32 matmul |',
           '|---|---|---|---|---|---|']
  for key, label in FIGURES:
    flops = 'inference_gflop_per_sample' if key.startswith('inference') else 'gflop_per_sample'
    ours_rate, peer_rate = med(ours, key), med(peer, key)
    ours_fraction = ours_rate * med(ours, flops) / rates['jax_float32']
    peer_fraction = peer_rate * med(peer, flops) / rates.get('torch_float32', float('nan'))
    lines.append(f'| {label} | {ours_rate:.0f} | {peer_rate:.1f} '
                 f'| **{side_by_side.median_ratio(ours, peer, key):.2f}×** '
                 f'| {100 * ours_fraction:.0f}% | {100 * peer_fraction:.0f}% |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=6, help='timed steps per figure')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--threads', type=int, default=0, help='0: every CPU this process may use')
  parser.add_argument('--child', choices=('ours', 'peer'), default='')
  args = parser.parse_args()
  if args.child:
    child = ours_child if args.child == 'ours' else peer_child
    side_by_side.emit(child(args.steps, args.batch))
    return
  threads = len(side_by_side.cpu_list(args.threads))
  module = ['-m', 'benchmarks.oracle_vs_pytorch_forecasting', '--steps', str(args.steps),
            '--batch', str(args.batch)]
  before = side_by_side.matmul_rates(threads)
  results = side_by_side.alternate({'ours': module + ['--child', 'ours'],
                                    'peer': module + ['--child', 'peer']}, args.rounds, threads)
  # Measured before and after the rounds; the higher is the less disturbed by other jobs.
  after = side_by_side.matmul_rates(threads)
  rates = {name: max(value, after.get(name, value)) for name, value in before.items()}
  print(report(results, rates, args))


if __name__ == '__main__':
  os.environ.setdefault('PYTHONWARNINGS', 'ignore')
  sys.exit(main())
