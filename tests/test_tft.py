"""Temporal Fusion Transformer and its layers, checked against independent numpy computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantum_alpha_jax.models import layers
from quantum_alpha_jax.models import variable_selection
from quantum_alpha_jax.models.tft import TemporalFusionTransformer

BATCH, ENCODER, DECODER, OBSERVED, KNOWN = 3, 12, 5, 6, 3
MODEL = TemporalFusionTransformer(
    num_symbols=4, num_observed=OBSERVED, num_known=KNOWN, encoder_length=ENCODER,
    decoder_length=DECODER, hidden_size=16, num_heads=2, hidden_continuous_size=8,
    lstm_layers=2, dropout_rate=0.1, quantiles=(0.1, 0.5, 0.9))


def make_inputs(seed: int = 0, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  encoder = rng.normal(size=(batch, ENCODER, OBSERVED)).astype(np.float32)
  decoder = rng.normal(size=(batch, DECODER, KNOWN)).astype(np.float32)
  symbol = (np.arange(batch) % MODEL.num_symbols).astype(np.int32)
  return encoder, decoder, symbol


def random_params(module, *inputs, seed: int = 0):
  """Parameters of ``module`` drawn in numpy: norm scales ~1, everything else N(0, 0.3²).

  Cheaper than ``module.init`` (whose many threefry draws take seconds to compile on CPU) and
  with non-zero biases, so that an indexing mistake cannot hide behind a zero.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape)
    value = 1.0 + 0.1 * noise if path[-1].key == 'scale' else 0.3 * noise
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def params():
  return random_params(MODEL, *make_inputs())


def test_init_creates_float32_params():
  shapes = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), *make_inputs()))
  leaves = jax.tree.leaves(shapes)
  assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
  names = set(shapes['params'])
  assert {'symbol_embedding', 'static_context_grn', 'encoder_variable_selection',
          'decoder_variable_selection', 'lstm_encoder', 'lstm_decoder', 'static_enrichment',
          'attention', 'position_wise_feed_forward', 'quantile_output'} <= names
  lstm = shapes['params']['lstm_encoder']
  assert set(lstm) == {'layer_0', 'layer_1'}
  assert lstm['layer_0']['recurrent_kernel'].shape == (16, 64)  # The 4 gates in one matmul.


@pytest.fixture(scope='module')
def forward():
  """The deterministic forward pass, jitted once for the module."""
  return jax.jit(lambda params, encoder, decoder, symbol: MODEL.apply(
      params, encoder, decoder, symbol, deterministic=True))


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def layer_norm(x, scale, bias, epsilon=1e-6):
  mean = x.mean(-1, keepdims=True)
  variance = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(variance + epsilon) * scale + bias


def softmax(x):
  exponent = np.exp(x - x.max(-1, keepdims=True))
  return exponent / exponent.sum(-1, keepdims=True)


def as_numpy(tree):
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), tree)


def test_output_shapes_and_dtypes(params, forward):
  outputs = forward(params, *make_inputs())
  expected = {
      'quantiles': (BATCH, DECODER, 3),
      'attention': (BATCH, DECODER, ENCODER + DECODER),
      'encoder_variable_weights': (BATCH, ENCODER, OBSERVED),
      'decoder_variable_weights': (BATCH, DECODER, KNOWN),
      'static_variable_weights': (BATCH, 1),
  }
  assert {name: value.shape for name, value in outputs.items()} == expected
  for name, value in outputs.items():
    assert value.dtype == jnp.float32, name
    assert np.all(np.isfinite(value)), name


def test_selection_weights_are_distributions(params, forward):
  outputs = forward(params, *make_inputs())
  for name in ('encoder_variable_weights', 'decoder_variable_weights',
               'static_variable_weights'):
    weights = np.asarray(outputs[name])
    assert np.all(weights >= 0), name
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5, err_msg=name)
  # Selection is not trivially uniform: the weights vary across variables and steps.
  assert np.asarray(outputs['encoder_variable_weights']).std() > 1e-3


def test_attention_rows_sum_to_one_and_mask_is_causal(params, forward):
  attention = np.asarray(forward(params, *make_inputs())['attention'])
  np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)
  future = np.triu(np.ones((DECODER, DECODER), bool), k=1)  # query i, decoder key j > i
  assert np.all(attention[:, :, ENCODER:][:, future] == 0.0)
  assert np.all(attention[:, :, :ENCODER] > 0.0)  # Every encoder step is visible.
  assert np.all(attention[:, :, ENCODER:][:, ~future] > 0.0)


def test_causal_mask_helper():
  mask = layers.encoder_decoder_causal_mask(2, 3)
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])


@pytest.mark.parametrize('step', [0, 2])
def test_future_known_inputs_do_not_change_earlier_forecasts(params, forward, step):
  encoder, decoder, symbol = make_inputs()
  changed = decoder.copy()
  changed[:, step + 1:] += np.random.default_rng(1).normal(
      size=changed[:, step + 1:].shape).astype(np.float32) * 3.0
  before = np.asarray(forward(params, encoder, decoder, symbol)['quantiles'])
  after = np.asarray(forward(params, encoder, changed, symbol)['quantiles'])
  np.testing.assert_allclose(after[:, :step + 1], before[:, :step + 1], rtol=0, atol=1e-6)
  assert np.abs(after[:, step + 1] - before[:, step + 1]).max() > 1e-3


def test_encoder_and_symbol_are_used(params, forward):
  encoder, decoder, symbol = make_inputs()
  base = np.asarray(forward(params, encoder, decoder, symbol)['quantiles'])
  changed_encoder = encoder.copy()
  changed_encoder[:, :ENCODER // 2] += 2.0  # Only the older half: the LSTM carries it forward.
  other_encoder = np.asarray(forward(params, changed_encoder, decoder, symbol)['quantiles'])
  assert np.abs(other_encoder - base).max() > 1e-3
  other_symbol = np.asarray(
      forward(params, encoder, decoder, (symbol + 1) % MODEL.num_symbols)['quantiles'])
  assert np.abs(other_symbol - base).max() > 1e-3


def numpy_lstm(params, inputs, initial_state):
  """Step-by-step stacked LSTM in float64 numpy, gates ordered (input, forget, cell, output)."""
  outputs, final_state = inputs, []
  for layer, (hidden, cell) in enumerate(initial_state):
    weights = params[f'layer_{layer}']
    steps = []
    for t in range(outputs.shape[1]):
      z = (outputs[:, t] @ weights['input_kernel'] + hidden @ weights['recurrent_kernel']
           + weights['bias'])
      i, f, g, o = np.split(z, 4, axis=-1)
      cell = sigmoid(f) * cell + sigmoid(i) * np.tanh(g)
      hidden = sigmoid(o) * np.tanh(cell)
      steps.append(hidden)
    outputs = np.stack(steps, axis=1)
    final_state.append((hidden, cell))
  return outputs, final_state


@pytest.mark.parametrize('with_state', [False, True])
def test_scan_lstm_matches_numpy(with_state):
  rng = np.random.default_rng(2)
  batch, time, features, hidden, num_layers = 4, 7, 5, 6, 2
  inputs = rng.normal(size=(batch, time, features)).astype(np.float32)
  state = None
  numpy_state = [(np.zeros((batch, hidden)), np.zeros((batch, hidden)))] * num_layers
  if with_state:
    numpy_state = [(rng.normal(size=(batch, hidden)), rng.normal(size=(batch, hidden)))
                   for _ in range(num_layers)]
    state = tuple((jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32))
                  for h, c in numpy_state)
  module = layers.ScanLSTM(hidden, num_layers)
  variables = random_params(module, inputs, state, seed=3)
  outputs, final_state = module.apply(variables, inputs, state)
  expected, expected_state = numpy_lstm(as_numpy(variables['params']), inputs, numpy_state)
  assert outputs.shape == (batch, time, hidden)
  np.testing.assert_allclose(outputs, expected, atol=1e-5)
  for (h, c), (expected_h, expected_c) in zip(final_state, expected_state):
    np.testing.assert_allclose(h, expected_h, atol=1e-5)
    np.testing.assert_allclose(c, expected_c, atol=1e-5)


def numpy_variable_selection(params, inputs, context):
  """The VSN with an explicit loop over variables, unfactored first layers, float64."""
  p = params
  variables = inputs.shape[-1]
  embeddings, transformed = [], []
  for v in range(variables):
    embedding = inputs[..., v:v + 1] * p['prescaler_kernel'][v] + p['prescaler_bias'][v]
    hidden = elu(embedding @ p['variable_input_kernel'][v] + p['variable_input_bias'][v])
    hidden = hidden @ p['variable_hidden']['kernel'][v] + p['variable_hidden']['bias'][v]
    glu = p['variable_gate_add_norm']['glu']
    gated = ((hidden @ glu['value']['kernel'][v] + glu['value']['bias'][v])
             * sigmoid(hidden @ glu['gate']['kernel'][v] + glu['gate']['bias'][v]))
    residual = inputs[..., v:v + 1] * p['variable_skip_kernel'][v] + p['variable_skip_bias'][v]
    norm = p['variable_gate_add_norm']['norm']
    transformed.append(layer_norm(gated + residual, norm['scale'][v], norm['bias'][v]))
    embeddings.append(embedding)
  flattened = np.concatenate(embeddings, axis=-1)
  hidden = (flattened @ p['selection_input_kernel'] + p['selection_input_bias']
            + context @ p['selection_context']['kernel'])
  hidden = elu(hidden) @ p['selection_hidden']['kernel'] + p['selection_hidden']['bias']
  glu = p['selection_gate_add_norm']['glu']
  gated = ((hidden @ glu['value']['kernel'] + glu['value']['bias'])
           * sigmoid(hidden @ glu['gate']['kernel'] + glu['gate']['bias']))
  residual = inputs @ p['selection_skip']['kernel'] + p['selection_skip']['bias']
  norm = p['selection_gate_add_norm']['norm']
  weights = softmax(layer_norm(gated + residual, norm['scale'], norm['bias']))
  selected = sum(weights[..., v:v + 1] * transformed[v] for v in range(variables))
  return selected, weights


@pytest.mark.parametrize('chunk_rows', [5, 256])  # 12 rows: 3 chunks (the last padded), or 1.
def test_vectorised_variable_selection_matches_per_variable_loop(chunk_rows):
  rng = np.random.default_rng(4)
  inputs = rng.normal(size=(3, 4, 7)).astype(np.float32)
  context = rng.normal(size=(3, 1, 5)).astype(np.float32)
  module = variable_selection.VariableSelectionNetwork(hidden_size=6, embedding_size=4, chunk_rows=chunk_rows)
  variables = random_params(module, inputs, context, seed=5)
  selected, weights = jax.jit(module.apply)(variables, inputs, context)
  expected, expected_weights = numpy_variable_selection(
      as_numpy(variables['params']), inputs.astype(np.float64), context.astype(np.float64))
  np.testing.assert_allclose(weights, expected_weights, atol=1e-5)
  np.testing.assert_allclose(selected, expected, atol=1e-4)


def test_chunked_variable_selection_trains_like_one_chunk(params):
  """With dropout on, chunks of 5 rows (36 encoder and 15 decoder rows: 8 and 3 chunks, the
  last padded, under jax.checkpoint) give the outputs and gradients of one chunk: same dropout
  masks, padding without effect, every chunk's parameter gradient summed."""
  inputs = make_inputs()
  key = jax.random.key(11, impl='rbg')

  def run(chunk_rows):
    model = MODEL.clone(variable_chunk_rows=chunk_rows)

    def loss(params):
      outputs = model.apply(params, *inputs, deterministic=False, rngs={'dropout': key})
      return jnp.sum(jnp.sin(outputs['quantiles'])), outputs
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (loss, outputs), gradients = run(5)
  (expected_loss, expected), expected_gradients = run(10_000)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  for name in expected:
    np.testing.assert_allclose(outputs[name], expected[name], atol=1e-5, err_msg=name)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(gradients),
                               jax.tree.leaves(expected_gradients)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))
  # Dropout is on inside the chunks: the same loss without it differs.
  deterministic = MODEL.clone(variable_chunk_rows=5).apply(params, *inputs)['quantiles']
  assert np.abs(np.asarray(deterministic) - np.asarray(outputs['quantiles'])).max() > 1e-4


def test_attention_matches_numpy():
  rng = np.random.default_rng(7)
  heads, features = 2, 8
  query = rng.normal(size=(2, 3, features)).astype(np.float32)
  memory = rng.normal(size=(2, 5, features)).astype(np.float32)
  mask = layers.encoder_decoder_causal_mask(2, 3)
  module = layers.InterpretableMultiHeadAttention(heads)
  variables = random_params(module, query, memory, memory, mask, seed=8)
  outputs, weights = module.apply(variables, query, memory, memory, mask)
  p = as_numpy(variables['params'])
  assert p['value']['kernel'].shape == (features, features // heads)  # One value projection.
  values = memory @ p['value']['kernel']
  head_weights, head_outputs = [], []
  for h in range(heads):
    queries = query @ p['query']['kernel'][:, h]
    keys = memory @ p['key']['kernel'][:, h]
    scores = queries @ keys.transpose(0, 2, 1) / np.sqrt(features // heads)
    attention = softmax(np.where(mask, scores, -np.inf))
    head_weights.append(attention)
    head_outputs.append(attention @ values)
  np.testing.assert_allclose(weights, np.mean(head_weights, axis=0), atol=1e-6)
  np.testing.assert_allclose(outputs, np.mean(head_outputs, axis=0) @ p['output']['kernel'],
                             atol=1e-5)


def test_layer_norm_gradient_matches_autodiff():
  rng = np.random.default_rng(9)
  inputs = jnp.asarray(rng.normal(size=(3, 4, 6)) * 2 + 1, jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)
  module = layers.LayerNorm(stacked=True)
  variables = random_params(module, inputs, seed=9)

  def reference(variables, inputs):
    scale = variables['params']['scale'][:, None]
    bias = variables['params']['bias'][:, None]
    mean = inputs.mean(-1, keepdims=True)
    variance = jnp.mean(jnp.square(inputs - mean), -1, keepdims=True)
    return (inputs - mean) * jax.lax.rsqrt(variance + 1e-6) * scale + bias

  for function in (module.apply, reference):
    assert function(variables, inputs).dtype == jnp.float32
  np.testing.assert_allclose(module.apply(variables, inputs), reference(variables, inputs),
                             atol=1e-5)
  gradient = jax.grad(lambda v, x: jnp.sum(module.apply(v, x) * cotangent), argnums=(0, 1))
  expected = jax.grad(lambda v, x: jnp.sum(reference(v, x) * cotangent), argnums=(0, 1))
  for got, want in zip(jax.tree.leaves(gradient(variables, inputs)),
                       jax.tree.leaves(expected(variables, inputs))):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bfloat16_run_is_close_to_float32(params, forward):
  inputs = make_inputs()
  reference = forward(params, *inputs)
  half = jax.tree.map(lambda leaf: leaf.astype(jnp.bfloat16), params)
  outputs = forward(half, inputs[0].astype(jnp.bfloat16), inputs[1].astype(jnp.bfloat16),
                    inputs[2])
  for name, value in outputs.items():
    assert value.dtype == jnp.float32, name
  scale = np.abs(np.asarray(reference['quantiles'])).max()
  # Measured: ~1.5% of the scale on the quantiles, ~0.003 on the weights.
  np.testing.assert_allclose(outputs['quantiles'], reference['quantiles'], atol=0.05 * scale)
  np.testing.assert_allclose(outputs['attention'], reference['attention'], atol=0.02)
  np.testing.assert_allclose(outputs['encoder_variable_weights'],
                             reference['encoder_variable_weights'], atol=0.02)


def test_dropout_uses_the_dropout_rng(params, forward):
  inputs = make_inputs()
  # 'rbg' keys: the same dropout wiring, but the threefry bits would take ~10 s to compile here.
  apply = jax.jit(lambda params, key: MODEL.apply(
      params, *inputs, deterministic=False, rngs={'dropout': key})['quantiles'])

  def run(seed):
    return np.asarray(apply(params, jax.random.key(seed, impl='rbg')))

  first, second, first_again = run(1), run(2), run(1)
  assert np.abs(first - second).max() > 1e-4
  np.testing.assert_array_equal(first, first_again)
  deterministic = np.asarray(forward(params, *inputs)['quantiles'])
  assert np.abs(first - deterministic).max() > 1e-4
  np.testing.assert_array_equal(deterministic, np.asarray(forward(params, *inputs)['quantiles']))


def test_samples_do_not_interact(params, forward):
  encoder, decoder, symbol = make_inputs(seed=3)
  base = forward(params, encoder, decoder, symbol)
  # New arrays, not in-place edits: on CPU the dispatched call may still read the numpy buffers it
  # was given (zero-copy, asynchronous), so editing them could change ``base`` too (seen once in CI).
  encoder, decoder = encoder.copy(), decoder.copy()
  encoder[0] += 1.0
  decoder[0] -= 1.0
  changed = forward(params, encoder, decoder, symbol)
  for name in base:
    np.testing.assert_allclose(changed[name][1:], base[name][1:], atol=1e-6, err_msg=name)
  assert np.abs(changed['quantiles'][0] - base['quantiles'][0]).max() > 1e-3


def test_gated_residual_network_jit_matches_eager():
  rng = np.random.default_rng(10)
  inputs = rng.normal(size=(2, 3, 4)).astype(np.float32)
  context = rng.normal(size=(2, 1, 5)).astype(np.float32)
  module = layers.GatedResidualNetwork(6, hidden_size=3)
  variables = random_params(module, inputs, context, seed=10)
  np.testing.assert_allclose(jax.jit(module.apply)(variables, inputs, context),
                             module.apply(variables, inputs, context), atol=1e-6)


def test_wrong_shapes_are_refused(params):
  encoder, decoder, symbol = make_inputs()
  with pytest.raises(ValueError, match='encoder has shape'):
    MODEL.apply(params, encoder[:, 1:], decoder, symbol)
  with pytest.raises(ValueError, match='symbol must be an integer'):
    MODEL.apply(params, encoder, decoder, symbol.astype(np.float32))


def test_hash_dropout_keeps_one_minus_rate_and_rescales():
  inputs = jnp.ones((8, 300, 50), jnp.float32)  # 120,000 elements.
  dropout = layers.Dropout(0.1)
  outputs = np.asarray(dropout.apply({}, inputs, deterministic=False,
                                     rngs={'dropout': jax.random.PRNGKey(3)}))
  kept = outputs != 0
  # Binomial(120000, 0.9): standard deviation of the kept fraction ~0.00087.
  assert abs(kept.mean() - 0.9) < 0.005
  np.testing.assert_allclose(outputs[kept], 1 / 0.9, rtol=1e-6)
  # Masks of neighbouring elements and of different keys look independent.
  other = np.asarray(dropout.apply({}, inputs, deterministic=False,
                                   rngs={'dropout': jax.random.PRNGKey(4)})) != 0
  assert abs((kept & other).mean() - 0.81) < 0.006
  assert abs((kept[..., 1:] & kept[..., :-1]).mean() - 0.81) < 0.006
  again = dropout.apply({}, inputs, deterministic=False, rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(np.asarray(again), outputs)
  np.testing.assert_array_equal(np.asarray(dropout.apply({}, inputs, deterministic=True)),
                                np.asarray(inputs))
