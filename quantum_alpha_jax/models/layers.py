"""Building blocks of the Temporal Fusion Transformer and the other sequence models.

Each block is a Flax linen module whose docstring states the maths. Notation: ``x`` is the input,
``W`` and ``b`` are learned weights and biases, ``σ`` the logistic sigmoid, ``⊙`` the element-wise
product, and ``LayerNorm`` normalises the last axis.

Precision. Blocks compute in the dtype of their inputs and parameters (the train step may cast
both to bf16), except softmaxes and layer norms, which run in float32 and are cast back. Parameters
are created in float32.

Stacked networks. Variable selection applies one small network per input variable. Here the
per-variable parameters are stacked on a leading network axis and applied with one batched matmul
(``stacked=True``: inputs ``[networks, ..., feature]``), so 44 variables cost one matmul per layer
rather than 44 small ones, and no Python loop runs over variables (the variable selection network
itself, which evaluates them in chunks of rows, is ``models/variable_selection.py``).

Dropout. :class:`Dropout` draws its masks from a counter-based hash of the element index, about
as cheap as one element-wise pass, where threefry bits cost ~8x that on XLA's CPU backend.

Export. The recurrences are written as ``jax.lax.scan`` over time with an explicit carry built
from the inputs, so that every block converts to ONNX with jax2onnx.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp
import numpy as np

LSTMState = tuple[jax.Array, jax.Array]
Initializer = Callable[..., jax.Array]

# Added to the attention scores of masked keys before the softmax (float32).
_MASK_VALUE = -1e9


def _per_network(values: jax.Array, ndim: int) -> jax.Array:
  """Reshapes per-network values ``[networks, features]`` to broadcast against ``ndim`` axes."""
  return values.reshape(values.shape[:1] + (1,) * (ndim - 2) + values.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def normalize(inputs: jax.Array, epsilon: float) -> jax.Array:
  """``(x - mean(x)) / sqrt(var(x) + epsilon)`` over the last axis."""
  mean = jnp.mean(inputs, axis=-1, keepdims=True)
  centered = inputs - mean
  variance = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
  return centered * jax.lax.rsqrt(variance + epsilon)


def _normalize_forward(inputs: jax.Array, epsilon: float) -> tuple[jax.Array, Any]:
  mean = jnp.mean(inputs, axis=-1, keepdims=True)
  centered = inputs - mean
  inverse_std = jax.lax.rsqrt(jnp.mean(jnp.square(centered), axis=-1, keepdims=True) + epsilon)
  normalized = centered * inverse_std
  return normalized, (normalized, inverse_std)


def _normalize_backward(epsilon: float, residuals: Any,
                        cotangent: jax.Array) -> tuple[jax.Array]:
  # d x̂ / d x applied to g: (g - mean(g) - x̂ mean(g x̂)) / σ. Written out because XLA's CPU
  # backend runs the autodiff version of this (several broadcast reductions) ~2x slower.
  normalized, inverse_std = residuals
  gradient = inverse_std * (cotangent - jnp.mean(cotangent, axis=-1, keepdims=True)
                            - normalized * jnp.mean(cotangent * normalized, axis=-1,
                                                    keepdims=True))
  del epsilon  # Folded into inverse_std.
  return (gradient,)


normalize.defvjp(_normalize_forward, _normalize_backward)


class LayerNorm(nn.Module):
  """Layer normalisation in float32: ``y = (x - μ) / sqrt(σ² + ε) ⊙ γ + β`` over the last axis.

  Always computes and returns float32, whatever the input dtype. With ``stacked=True`` axis 0
  indexes independent networks, each with its own ``γ, β`` (parameters ``[networks, features]``).
  """

  epsilon: float = 1e-6
  stacked: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Normalises ``[..., features]`` (``[networks, ..., features]`` if stacked) in float32."""
    shape = (inputs.shape[0], inputs.shape[-1]) if self.stacked else (inputs.shape[-1],)
    scale = self.param('scale', nn.initializers.ones_init(), shape).astype(jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), shape).astype(jnp.float32)
    if self.stacked:
      scale, bias = _per_network(scale, inputs.ndim), _per_network(bias, inputs.ndim)
    return normalize(inputs.astype(jnp.float32), self.epsilon) * scale + bias


def hash_uint32(values: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 that mixes every input bit into every
  output bit (avalanche), so consecutive inputs give statistically independent-looking outputs."""
  values = values ^ (values >> 16)
  values = values * jnp.uint32(0x85EBCA6B)
  values = values ^ (values >> 13)
  values = values * jnp.uint32(0xC2B2AE35)
  return values ^ (values >> 16)


def _element_index(shape: Sequence[int]) -> jax.Array:
  """The row-major flat index of every element of ``shape`` as uint32 (wrapping past 2³²)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  return index


class Dropout(nn.Module):
  """Inverted dropout: ``y = x ⊙ m / (1 - p)`` with ``m_i ~ Bernoulli(1 - p)``.

  The mask comes from a counter-based hash rather than ``jax.random.bernoulli``: one 32-bit seed
  ``s`` is drawn from the ``'dropout'`` rng stream per call, and element ``i`` (row-major index) is
  kept iff ``hash(i · φ ⊕ s) ≥ round(p · 2³²)``, with ``φ = 0x9E3779B9`` and ``hash`` the
  MurmurHash3 finaliser (:func:`hash_uint32`). The keep probability is ``1 - p`` to within
  ``2⁻³²``. On XLA's CPU backend this costs about as much as one element-wise pass over ``x``,
  where threefry bits cost ~8x that, which made dropout a quarter of the TFT's train step. The
  mask is deterministic given the rng (same seed, same mask), as reproducibility requires.

  Attributes:
    rate: drop probability ``p`` in [0, 1).
  """

  rate: float
  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(self, inputs: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Drops elements of ``inputs [...]`` when not ``deterministic``; identity otherwise."""
    if deterministic or self.rate == 0.0:
      return inputs
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f'dropout rate {self.rate} must lie in [0, 1)')
    seed = jax.random.bits(self.make_rng(self.rng_collection), (), jnp.uint32)
    index = _element_index(inputs.shape) * jnp.uint32(0x9E3779B9)
    keep = hash_uint32(index ^ seed) >= jnp.uint32(min(round(self.rate * 2**32), 2**32 - 1))
    scale = jnp.asarray(1.0 / (1.0 - self.rate), inputs.dtype)
    return jnp.where(keep, inputs * scale, jnp.zeros((), inputs.dtype))


# Stacked kernels [networks, in, out]: fan-in and fan-out per network.
STACKED_KERNEL_INIT = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))


class StackedDense(nn.Module):
  """Independent dense layers stacked on axis 0: ``y[n] = x[n] W_n + b_n``.

  Maps ``[networks, ..., in_features]`` to ``[networks, ..., features]`` with one batched matmul
  over kernels ``[networks, in_features, features]``. The network axis leads and the middle axes
  are merged before the matmul, the layout XLA's CPU batched matmul handles fastest (a network
  axis in the middle, or several free axes, is several times slower, mostly in the gradient).
  """

  features: int
  use_bias: bool = True
  kernel_init: Initializer = STACKED_KERNEL_INIT
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies network n to ``inputs[n]``: ``[networks, ..., in]`` -> ``[networks, ..., out]``."""
    networks, in_features = inputs.shape[0], inputs.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (networks, in_features, self.features))
    bias = (self.param('bias', self.bias_init, (networks, self.features)) if self.use_bias
            else None)
    inputs, kernel, bias = promote_dtype(inputs, kernel, bias)
    flat = inputs.reshape(networks, -1, in_features)
    outputs = jnp.einsum('nmi,nio->nmo', flat, kernel)
    if bias is not None:
      outputs = outputs + bias[:, None, :]
    return outputs.reshape(inputs.shape[:-1] + (self.features,))


def _dense(features: int, *, stacked: bool, use_bias: bool = True, name: str) -> nn.Module:
  if stacked:
    return StackedDense(features, use_bias=use_bias, name=name)
  return nn.Dense(features, use_bias=use_bias, name=name)


class GatedLinearUnit(nn.Module):
  """Gated linear unit (Dauphin et al., 2017) with input dropout, as in the TFT.

  ``GLU(x) = (x' W_v + b_v) ⊙ σ(x' W_g + b_g)``, with ``x' = dropout(x)``. The gate lets the
  network suppress a whole block (output near 0) when it is not needed. (Two matmuls rather than
  one of width ``2 * features`` and a split: the split costs more than it saves on XLA's CPU.)

  Attributes:
    features: output width.
    dropout_rate: dropout on the input (flax 'dropout' rng).
    stacked: if True, axis 0 indexes independent networks, each with its own weights.
  """

  features: int
  dropout_rate: float = 0.0
  stacked: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Gates ``[..., in]`` to ``[..., features]`` (``[networks, ..., ·]`` when stacked)."""
    inputs = Dropout(self.dropout_rate)(inputs, deterministic=deterministic)
    value = _dense(self.features, stacked=self.stacked, name='value')(inputs)
    gate = _dense(self.features, stacked=self.stacked, name='gate')(inputs)
    return value * nn.sigmoid(gate)


class GateAddNorm(nn.Module):
  """Gated skip connection: ``GateAddNorm(x, r) = LayerNorm(r + GLU(x))``.

  The GLU can close and reduce the block to ``LayerNorm(r)``, letting the network skip a layer it
  does not need. The sum and the norm are computed in float32 and cast back to the GLU's dtype.

  Attributes:
    features: width of the output and of the skip ``r``.
    dropout_rate: dropout on the GLU input.
    stacked: if True, axis 0 indexes independent networks (own GLU and norm parameters).
  """

  features: int
  dropout_rate: float = 0.0
  stacked: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array, skip: jax.Array, *,
               deterministic: bool = True) -> jax.Array:
    """Gates ``inputs [..., in]`` and adds ``skip [..., features]``: returns ``[..., features]``."""
    gated = GatedLinearUnit(self.features, self.dropout_rate, self.stacked, name='glu')(
        inputs, deterministic=deterministic)
    summed = gated.astype(jnp.float32) + skip.astype(jnp.float32)
    return LayerNorm(stacked=self.stacked, name='norm')(summed).astype(gated.dtype)


class GatedResidualNetwork(nn.Module):
  """Gated residual network (GRN) of the TFT (Lim et al., 2019, eqs. 2-4).

  ``η₂ = ELU(a W₂ + b₂ + c W₃)``, ``η₁ = η₂ W₁ + b₁``, ``GRN(a, c) = LayerNorm(r + GLU(η₁))``,
  where ``c`` is an optional context (e.g. a static covariate context) and the residual ``r`` is
  ``a`` itself, ``a W_s + b_s`` when the widths differ, or a ``residual`` given by the caller.

  Attributes:
    features: output width.
    hidden_size: width of ``η₁, η₂``; defaults to ``features``.
    dropout_rate: dropout on the GLU input.
    stacked: if True, axis 0 of ``a`` indexes independent networks, each with its own weights
      (one batched matmul for all of them). Stacked networks take no context.
  """

  features: int
  hidden_size: int | None = None
  dropout_rate: float = 0.0
  stacked: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array, context: jax.Array | None = None,
               residual: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
    """``inputs [..., in]``, ``context [..., context]`` (broadcast) -> ``[..., features]``."""
    hidden_size = self.hidden_size or self.features
    if residual is None:
      if inputs.shape[-1] == self.features:
        residual = inputs
      else:
        residual = _dense(self.features, stacked=self.stacked, name='skip')(inputs)
    hidden = _dense(hidden_size, stacked=self.stacked, name='input')(inputs)
    if context is not None:
      if self.stacked:
        raise ValueError('a stacked GatedResidualNetwork takes no context')
      hidden = hidden + nn.Dense(hidden_size, use_bias=False, name='context')(context)
    hidden = nn.elu(hidden)
    hidden = _dense(hidden_size, stacked=self.stacked, name='hidden')(hidden)
    return GateAddNorm(self.features, self.dropout_rate, self.stacked, name='gate_add_norm')(
        hidden, residual, deterministic=deterministic)


def _lstm_bias_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """Zero gate biases except the forget gate, set to 1 (Jozefowicz et al., 2015)."""
  del key
  hidden = shape[-1] // 4
  return jnp.zeros(shape, dtype).at[..., hidden:2 * hidden].set(1.0)


class LSTMLayer(nn.Module):
  """One LSTM layer unrolled over time with ``jax.lax.scan``.

  With gates in the order (input, forget, cell, output), ``z_t = x_t W_x + h_{t-1} W_h + b``,
  ``[i, f, g, o] = [σ, σ, tanh, σ](z_t)``, ``c_t = f ⊙ c_{t-1} + i ⊙ g``, ``h_t = o ⊙ tanh(c_t)``.
  The input projection ``x_t W_x + b`` of all steps is one matmul before the scan; only the
  recurrent ``h_{t-1} W_h`` (the four gates fused in one matmul) runs inside it.

  Parameters: ``input_kernel [feature, 4 hidden]``, ``recurrent_kernel [hidden, 4 hidden]``,
  ``bias [4 hidden]``.
  """

  hidden_size: int
  unroll: int = 1

  @nn.compact
  def __call__(self, inputs: jax.Array, initial_state: LSTMState) -> tuple[jax.Array, LSTMState]:
    """Runs ``inputs [batch, time, feature]`` from ``(h, c)``, each ``[batch, hidden]``.

    Returns ``(outputs [batch, time, hidden], (h, c) after the last step)``.
    """
    gates = 4 * self.hidden_size
    input_kernel = self.param('input_kernel', nn.initializers.lecun_normal(),
                              (inputs.shape[-1], gates))
    recurrent_kernel = self.param('recurrent_kernel', nn.initializers.orthogonal(),
                                  (self.hidden_size, gates))
    bias = self.param('bias', _lstm_bias_init, (gates,))
    inputs, input_kernel, recurrent_kernel, bias = promote_dtype(
        inputs, input_kernel, recurrent_kernel, bias)
    # Time-major input projection of every step at once: [time, batch, 4 hidden].
    projected = jnp.einsum('btf,fg->tbg', inputs, input_kernel) + bias
    hidden, cell = (state.astype(inputs.dtype) for state in initial_state)

    def step(carry: LSTMState, projected_step: jax.Array) -> tuple[LSTMState, jax.Array]:
      hidden, cell = carry
      z = projected_step + hidden @ recurrent_kernel
      input_gate, forget_gate, cell_gate, output_gate = jnp.split(z, 4, axis=-1)
      cell = nn.sigmoid(forget_gate) * cell + nn.sigmoid(input_gate) * jnp.tanh(cell_gate)
      hidden = nn.sigmoid(output_gate) * jnp.tanh(cell)
      return (hidden, cell), hidden

    (hidden, cell), outputs = jax.lax.scan(step, (hidden, cell), projected, unroll=self.unroll)
    return jnp.swapaxes(outputs, 0, 1), (hidden, cell)


class ScanLSTM(nn.Module):
  """A stack of LSTM layers (see :class:`LSTMLayer`), each a ``jax.lax.scan`` over time.

  Layer ``l`` reads the hidden sequence of layer ``l - 1`` (with dropout between layers, as in
  ``torch.nn.LSTM``). Without an initial state, every layer starts from zeros built from the input
  (``jnp.zeros((batch, hidden), inputs.dtype)``), which keeps the module exportable to ONNX.
  Parameters of layer ``l`` live under ``layer_{l}``.

  Attributes:
    hidden_size: width of ``h`` and ``c``.
    num_layers: number of stacked layers.
    dropout_rate: dropout on the outputs of every layer but the last.
    unroll: steps per scan iteration (a CPU speed knob; results are unchanged).
  """

  hidden_size: int
  num_layers: int = 1
  dropout_rate: float = 0.0
  unroll: int = 1

  @nn.compact
  def __call__(self, inputs: jax.Array, initial_state: Sequence[LSTMState] | None = None, *,
               deterministic: bool = True) -> tuple[jax.Array, tuple[LSTMState, ...]]:
    """Runs ``inputs [batch, time, feature]``; returns ``(outputs [batch, time, hidden], state)``.

    ``state`` holds one ``(h, c)`` pair per layer, each ``[batch, hidden]``.
    """
    if initial_state is None:
      zeros = jnp.zeros((inputs.shape[0], self.hidden_size), inputs.dtype)
      initial_state = tuple((zeros, zeros) for _ in range(self.num_layers))
    if len(initial_state) != self.num_layers:
      raise ValueError(f'initial_state has {len(initial_state)} layers, expected '
                       f'{self.num_layers}')
    outputs = inputs
    final_state = []
    for layer in range(self.num_layers):
      if layer > 0:
        outputs = Dropout(self.dropout_rate)(outputs, deterministic=deterministic)
      outputs, state = LSTMLayer(self.hidden_size, self.unroll, name=f'layer_{layer}')(
          outputs, initial_state[layer])
      final_state.append(state)
    return outputs, tuple(final_state)


def encoder_decoder_causal_mask(encoder_length: int, decoder_length: int) -> np.ndarray:
  """Attention mask ``[decoder, encoder + decoder]`` (True = attend).

  Decoder query i sees every encoder step and the decoder steps j <= i.
  """
  query = np.arange(decoder_length)[:, None]
  key = np.arange(encoder_length + decoder_length)[None, :] - encoder_length
  return key <= query


class InterpretableMultiHeadAttention(nn.Module):
  """Interpretable multi-head attention of the TFT (Lim et al., 2019, eqs. 13-16).

  With ``d = features / heads``: per head ``Q_h = q W_Q^h``, ``K_h = k W_K^h`` (``[·, d]``), and
  one value projection ``V = v W_V`` SHARED by all heads;
  ``A_h = softmax(Q_h K_hᵀ / √d + M)`` with ``M = -1e9`` on masked keys (float32);
  ``H̃ = (1 / heads) Σ_h A_h V``; output ``H̃ W_H``. Because the values are shared, the
  head-averaged weights ``(1 / heads) Σ_h A_h`` say exactly how much each key contributes.
  Dropout acts on each head's ``A_h V`` and on the output, as in pytorch-forecasting.

  Attributes:
    num_heads: number of heads; must divide the feature width.
    dropout_rate: dropout rate.
  """

  num_heads: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
               mask: jax.Array | np.ndarray | None = None, *,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Attends from ``query [batch, q, feature]`` to ``key``, ``value [batch, k, feature]``.

    ``mask [q, k]`` is True where a query may attend. Returns ``(outputs [batch, q, feature], weights [batch, q, k])``; weights are head-averaged
    float32. ``mask`` may also be ``[batch, q, k]``.
    """
    features = query.shape[-1]
    if features % self.num_heads:
      raise ValueError(f'{features} features do not split into {self.num_heads} heads')
    head_size = features // self.num_heads
    queries = nn.DenseGeneral((self.num_heads, head_size), use_bias=False, name='query')(query)
    keys = nn.DenseGeneral((self.num_heads, head_size), use_bias=False, name='key')(key)
    values = nn.Dense(head_size, use_bias=False, name='value')(value)
    scores = jnp.einsum('bqhd,bkhd->bhqk', queries, keys).astype(jnp.float32)
    scores = scores / math.sqrt(head_size)
    if mask is not None:
      mask = jnp.asarray(mask)
      scores = jnp.where(mask[:, None] if mask.ndim == 3 else mask, scores, _MASK_VALUE)
    weights = jax.nn.softmax(scores, axis=-1)
    heads = jnp.einsum('bhqk,bkd->bqhd', weights.astype(values.dtype), values)
    heads = Dropout(self.dropout_rate)(heads, deterministic=deterministic)
    outputs = nn.Dense(features, use_bias=False, name='output')(jnp.mean(heads, axis=-2))
    outputs = Dropout(self.dropout_rate)(outputs, deterministic=deterministic)
    return outputs, jnp.mean(weights, axis=1)


def check_window_inputs(encoder: jax.Array, decoder_known: jax.Array, symbol: jax.Array,
                        encoder_length: int, decoder_length: int, num_observed: int,
                        num_known: int) -> None:
  """Raises ``ValueError`` unless ``encoder [batch, encoder_length, num_observed]`` is floating,
  ``decoder_known`` is ``[batch, decoder_length, num_known]`` and ``symbol [batch]`` is integer."""
  expected = {
      'encoder': (encoder.shape[1:], (encoder_length, num_observed)),
      'decoder_known': (decoder_known.shape[1:], (decoder_length, num_known)),
  }
  for name, (shape, wanted) in expected.items():
    if tuple(shape) != wanted:
      raise ValueError(f'{name} has shape [batch, {", ".join(map(str, shape))}], expected '
                       f'[batch, {", ".join(map(str, wanted))}]')
  if symbol.ndim != 1 or not jnp.issubdtype(symbol.dtype, jnp.integer):
    raise ValueError(f'symbol must be an integer vector [batch], got {symbol.dtype} '
                     f'{tuple(symbol.shape)}')
  if not jnp.issubdtype(encoder.dtype, jnp.floating):
    raise ValueError(f'encoder must be floating point, got {encoder.dtype}')
