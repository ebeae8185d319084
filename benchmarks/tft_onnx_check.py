"""Exports the Temporal Fusion Transformer with jax2onnx and checks onnxruntime against JAX.

Not part of CI (it needs the `export` extras: jax2onnx, onnxruntime). Run it in a separate venv:

  python3 -m venv /tmp/onnxenv && /tmp/onnxenv/bin/pip install -e . jax2onnx onnxruntime
  /tmp/onnxenv/bin/python -m benchmarks.tft_onnx_check [--small]

It exports the deterministic model (params closed over) with a symbolic batch dimension 'B',
runs the ONNX graph on two batch sizes and prints the largest absolute difference per output.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from jax2onnx import to_onnx
import numpy as np
import onnxruntime

from quantum_alpha_jax.models import layers
from quantum_alpha_jax.models.tft import TemporalFusionTransformer

OUTPUT_NAMES = ('quantiles', 'attention', 'encoder_variable_weights', 'decoder_variable_weights',
                'static_variable_weights')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--small', action='store_true', help='a small config (seconds)')
  parser.add_argument('--tolerance', type=float, default=1e-5)
  args = parser.parse_args()
  logging.getLogger('onnx_ir.serde').setLevel(logging.ERROR)  # Untyped shape constants.
  if args.small:
    model = TemporalFusionTransformer(num_observed=44, encoder_length=12, decoder_length=5,
                                      hidden_size=16, num_heads=2, hidden_continuous_size=8)
  else:
    model = TemporalFusionTransformer()  # The production defaults.
  rng = np.random.default_rng(0)

  def make_inputs(batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    encoder = rng.normal(size=(batch, model.encoder_length, model.num_observed)).astype(np.float32)
    decoder = rng.normal(size=(batch, model.decoder_length, model.num_known)).astype(np.float32)
    symbol = rng.integers(0, model.num_symbols, size=(batch,)).astype(np.int32)
    return encoder, decoder, symbol

  params = model.init(jax.random.key(0), *make_inputs(2))

  def forward(encoder, decoder_known, symbol):
    outputs = model.apply(params, encoder, decoder_known, symbol, deterministic=True)
    return tuple(outputs[name] for name in OUTPUT_NAMES)

  specs = [('B', model.encoder_length, model.num_observed),
           ('B', model.decoder_length, model.num_known),
           jax.ShapeDtypeStruct(('B',), jnp.int32)]  # jax2onnx resolves 'B' in one scope.
  started = time.perf_counter()
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, 'tft.onnx')
    to_onnx(forward, specs, model_name='tft', return_mode='file', output_path=path,
            input_names=['encoder', 'decoder_known', 'symbol'], output_names=list(OUTPUT_NAMES))
    print(f'exported in {time.perf_counter() - started:.1f} s, '
          f'{os.path.getsize(path) / 1e6:.1f} MB')
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    print('inputs:', [(i.name, i.shape, i.type) for i in session.get_inputs()])
    worst = 0.0
    for batch in (3, 8):
      encoder, decoder, symbol = make_inputs(batch)
      expected = jax.jit(forward)(encoder, decoder, symbol)
      actual = session.run(None, {'encoder': encoder, 'decoder_known': decoder,
                                  'symbol': symbol})
      for name, want, got in zip(OUTPUT_NAMES, expected, actual):
        difference = float(np.max(np.abs(np.asarray(want) - got)))
        worst = max(worst, difference)
        print(f'batch {batch:2d} {name:26s} shape {tuple(got.shape)} max|diff| {difference:.2e}')
  lstm_difference = check_scan_lstm()
  print(f'ScanLSTM (zero initial state built from the input) max|diff| {lstm_difference:.2e}')
  worst = max(worst, lstm_difference)
  print(f'max abs difference {worst:.2e} (tolerance {args.tolerance:g})')
  return 0 if worst <= args.tolerance else 1


def check_scan_lstm() -> float:
  """Exports a bare 2-layer ScanLSTM (zero initial state) and returns the max abs difference."""
  module = layers.ScanLSTM(hidden_size=16, num_layers=2)
  inputs = np.random.default_rng(1).normal(size=(5, 9, 4)).astype(np.float32)
  variables = module.init(jax.random.key(0), inputs)

  def forward(inputs):
    outputs, state = module.apply(variables, inputs)
    return outputs, state[-1][0]

  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, 'lstm.onnx')
    to_onnx(forward, [('B', 9, 4)], return_mode='file', output_path=path)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    actual = session.run(None, {session.get_inputs()[0].name: inputs})
  expected = forward(inputs)
  return max(float(np.max(np.abs(np.asarray(want) - got))) for want, got in zip(expected, actual))


if __name__ == '__main__':
  sys.exit(main())
