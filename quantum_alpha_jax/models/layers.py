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
rather than 44 small ones, and no Python loop runs over variables.

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
def _normalize(inputs: jax.Array, epsilon: float) -> jax.Array:
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


_normalize.defvjp(_normalize_forward, _normalize_backward)


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
    return _normalize(inputs.astype(jnp.float32), self.epsilon) * scale + bias


def _hash_uint32(values: jax.Array) -> jax.Array:
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
  MurmurHash3 finaliser (:func:`_hash_uint32`). The keep probability is ``1 - p`` to within
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
    keep = _hash_uint32(index ^ seed) >= jnp.uint32(min(round(self.rate * 2**32), 2**32 - 1))
    scale = jnp.asarray(1.0 / (1.0 - self.rate), inputs.dtype)
    return jnp.where(keep, inputs * scale, jnp.zeros((), inputs.dtype))


# Stacked kernels [networks, in, out]: fan-in and fan-out per network.
_STACKED_KERNEL_INIT = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))


class StackedDense(nn.Module):
  """Independent dense layers stacked on axis 0: ``y[n] = x[n] W_n + b_n``.

  Maps ``[networks, ..., in_features]`` to ``[networks, ..., features]`` with one batched matmul
  over kernels ``[networks, in_features, features]``. The network axis leads and the middle axes
  are merged before the matmul, the layout XLA's CPU batched matmul handles fastest (a network
  axis in the middle, or several free axes, is several times slower, mostly in the gradient).
  """

  features: int
  use_bias: bool = True
  kernel_init: Initializer = _STACKED_KERNEL_INIT
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


# Rows of the per-variable GRNs evaluated together (see VariableSelectionNetwork, "Chunks"): at
# the seed size (44 variables, width 128) one chunk's widest activation is 44·128·128·4 B = 2.9 MB,
# which stays in cache, where the unchunked arrays (173-346 MB) stream through DRAM. Measured on
# the 2-core EPYC (CPU seconds of the encoder VSN's gradient at batch 256, alternating in one
# process, loaded machine): 128 rows 2.66-2.84 s, 64 rows 2.75, 256 rows 2.78-3.06, 512 rows
# 3.41; chunks of whole variables instead of rows (1, 2, 4 variables × all rows) 5.37, 3.07, 3.92.
VARIABLE_CHUNK_ROWS = 128


def _hash_dropout(inputs: jax.Array, index: jax.Array, seed: jax.Array, rate: float) -> jax.Array:
  """:class:`Dropout`'s mask and scaling for elements whose row-major indices in the array
  that the mask is drawn for are ``index`` (uint32, the shape of ``inputs``): a chunk of a larger
  array gets the elements of the mask that the whole array would."""
  keep = (_hash_uint32(index * jnp.uint32(0x9E3779B9) ^ seed)
          >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1)))
  return jnp.where(keep, inputs * jnp.asarray(1.0 / (1.0 - rate), inputs.dtype),
                   jnp.zeros((), inputs.dtype))


def default_chunk_rows() -> int:
  """The variable selection's chunk size when none is given: :data:`VARIABLE_CHUNK_ROWS` on a
  CPU backend, unbounded (one chunk) on accelerators."""
  return VARIABLE_CHUNK_ROWS if jax.default_backend() == 'cpu' else 2**62


class _StackedDenseWeights(nn.Module):
  """The parameters of a :class:`StackedDense` (same names, shapes and initialisers), returned
  rather than applied, for code that applies them itself."""

  features: int

  @nn.compact
  def __call__(self, networks: int, in_features: int) -> tuple[jax.Array, jax.Array]:
    """Returns ``(kernel [networks, in_features, features], bias [networks, features])``."""
    kernel = self.param('kernel', _STACKED_KERNEL_INIT, (networks, in_features, self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (networks, self.features))
    return kernel, bias


class _DropoutSeed(nn.Module):
  """The 32-bit seed that a :class:`Dropout` at this module's path would draw (same rng)."""

  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(self) -> jax.Array:
    return jax.random.bits(self.make_rng(self.rng_collection), (), jnp.uint32)


class _StackedGateAddNormWeights(nn.Module):
  """The parameters of a stacked :class:`GateAddNorm` (same tree: ``glu/{value,gate}/{kernel,
  bias}`` and ``norm/{scale,bias}``) and the seed its GLU's dropout would draw, returned for code
  that applies them itself: ``(weights, seed)``, where ``seed`` is None without dropout."""

  features: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, networks: int, in_features: int, *, deterministic: bool = True
               ) -> tuple[dict[str, jax.Array], jax.Array | None]:
    glu = _StackedGluWeights(self.features, self.dropout_rate, name='glu')
    (value_kernel, value_bias), (gate_kernel, gate_bias), seed = glu(
        networks, in_features, deterministic=deterministic)
    norm = _StackedNormWeights(name='norm')(networks, self.features)
    return {'value_kernel': value_kernel, 'value_bias': value_bias, 'gate_kernel': gate_kernel,
            'gate_bias': gate_bias, 'norm_scale': norm[0], 'norm_bias': norm[1]}, seed


class _StackedGluWeights(nn.Module):
  """``value`` and ``gate`` of a stacked :class:`GatedLinearUnit`, and its dropout seed."""

  features: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, networks: int, in_features: int, *, deterministic: bool = True):
    seed = None
    if not deterministic and self.dropout_rate > 0.0:
      seed = _DropoutSeed(name='Dropout_0')()  # GatedLinearUnit's Dropout is 'Dropout_0'.
    value = _StackedDenseWeights(self.features, name='value')(networks, in_features)
    gate = _StackedDenseWeights(self.features, name='gate')(networks, in_features)
    return value, gate, seed


class _StackedNormWeights(nn.Module):
  """``scale`` and ``bias`` of a stacked :class:`LayerNorm`."""

  @nn.compact
  def __call__(self, networks: int, features: int) -> tuple[jax.Array, jax.Array]:
    scale = self.param('scale', nn.initializers.ones_init(), (networks, features))
    return scale, self.param('bias', nn.initializers.zeros_init(), (networks, features))


def _selected_variable_grns(inputs: jax.Array, weights: jax.Array, params: dict[str, jax.Array],
                            *, first_row: jax.Array | int = 0, total_rows: int | None = None,
                            seed: jax.Array | None = None, rate: float = 0.0) -> jax.Array:
  """``Σ_v w_v GRN_v(x_v)`` for rows ``inputs [rows, V]`` with ``weights [rows, V]``.

  ``params`` holds the per-variable GRNs in factored form (see :class:`VariableSelectionNetwork`):
  ``first_{kernel,bias} [V, h]``, ``hidden_{kernel [V, h, h], bias [V, h]}``,
  ``{value,gate}_{kernel [V, h, H], bias [V, H]}``, ``skip_{kernel,bias} [V, H]`` and
  ``norm_{scale,bias} [V, H]``. With ``seed``, the GLU input is dropped with the mask that
  :class:`Dropout` draws for the whole ``[V, total_rows, h]`` array, of which these rows start at
  ``first_row``: chunked or not, the same elements are dropped. Returns ``[rows, H]``.
  """
  by_variable = jnp.swapaxes(inputs, 0, 1)[..., None]  # [V, rows, 1]
  per_variable = lambda name: params[name][:, None, :]
  hidden = nn.elu(by_variable * per_variable('first_kernel') + per_variable('first_bias'))
  hidden = (jnp.einsum('vri,vio->vro', hidden, params['hidden_kernel'])
            + per_variable('hidden_bias'))
  if seed is not None:
    variables, rows, width = hidden.shape
    total_rows = rows if total_rows is None else total_rows
    index = (jax.lax.broadcasted_iota(jnp.uint32, hidden.shape, 0)
             * jnp.uint32(total_rows * width % 2**32)
             + (jax.lax.broadcasted_iota(jnp.uint32, hidden.shape, 1)
                + jnp.asarray(first_row, jnp.uint32)) * jnp.uint32(width)
             + jax.lax.broadcasted_iota(jnp.uint32, hidden.shape, 2))
    hidden = _hash_dropout(hidden, index, seed, rate)
  value = jnp.einsum('vri,vio->vro', hidden, params['value_kernel']) + per_variable('value_bias')
  gate = jnp.einsum('vri,vio->vro', hidden, params['gate_kernel']) + per_variable('gate_bias')
  residual = by_variable * per_variable('skip_kernel') + per_variable('skip_bias')
  summed = (value * nn.sigmoid(gate)).astype(jnp.float32) + residual.astype(jnp.float32)
  transformed = (_normalize(summed, 1e-6) * per_variable('norm_scale').astype(jnp.float32)
                 + per_variable('norm_bias').astype(jnp.float32)).astype(value.dtype)
  by_variable_weights = jnp.swapaxes(weights, 0, 1)[..., None].astype(transformed.dtype)
  return jnp.sum(transformed * by_variable_weights, axis=0)


def _chunked_variable_grns(inputs: jax.Array, weights: jax.Array, params: dict[str, jax.Array],
                           *, chunk_rows: int, seed: jax.Array | None = None, rate: float = 0.0,
                           remat: bool = False) -> jax.Array:
  """:func:`_selected_variable_grns` over ``inputs [rows, V]`` in chunks of ``chunk_rows`` rows
  (a ``lax.scan``; the last chunk zero-padded), each chunk under ``jax.checkpoint`` when ``remat``
  so that the gradient recomputes a chunk's activations rather than storing them all. Same values
  and dropout masks as one call over all rows. A symbolic row count (a batch dimension left open
  for export) or rows ≤ ``chunk_rows`` is one call."""
  rows = inputs.shape[0]
  if not isinstance(rows, int) or rows <= chunk_rows:
    return _selected_variable_grns(inputs, weights, params, seed=seed, rate=rate)
  chunks = -(-rows // chunk_rows)
  padding = chunks * chunk_rows - rows
  if padding:
    inputs = jnp.pad(inputs, ((0, padding), (0, 0)))
    weights = jnp.pad(weights, ((0, padding), (0, 0)))

  def chunk(params, inputs, weights, first_row):
    return _selected_variable_grns(inputs, weights, params, first_row=first_row, total_rows=rows,
                                   seed=seed, rate=rate)

  if remat:
    chunk = jax.checkpoint(chunk, prevent_cse=False)
  first_rows = jnp.arange(chunks, dtype=jnp.uint32) * jnp.uint32(chunk_rows)
  _, outputs = jax.lax.scan(
      lambda carry, xs: (carry, chunk(params, *xs)), None,
      (inputs.reshape(chunks, chunk_rows, -1), weights.reshape(chunks, chunk_rows, -1),
       first_rows))
  return outputs.reshape(chunks * chunk_rows, -1)[:rows]


class VariableSelectionNetwork(nn.Module):
  """Variable selection network (VSN) over scalar continuous variables (TFT eqs. 6-8).

  For variables ``x_1..x_m`` at one time step, with ``E = embedding_size``:

  - prescaler: ``e_v = x_v a_v + b_v`` (1 -> E, per variable);
  - per-variable processing: ``ξ̃_v = GRN_v(e_v)``, each variable with its own weights, all run
    as one stacked GRN (a batched matmul over the variable axis, never a loop);
  - selection weights: ``w = softmax(GRN_w([e_1, ..., e_m], c))`` from the flattened embeddings
    and the optional static context ``c`` (softmax in float32);
  - output: ``Σ_v w_v ξ̃_v``.

  Exact savings. Because ``e_v`` is affine in the scalar ``x_v``, the first layer of each GRN is
  evaluated in factored form: ``e_v W_v + β_v = x_v (a_v W_v) + (b_v W_v + β_v)`` and
  ``[e_1..e_m] W + β = Σ_v x_v (a_v W_[v]) + (Σ_v b_v W_[v] + β)``. This is the same function of
  the same parameters (same gradients), without ever materialising the ``[..., m, E]`` embeddings.

  Residuals. The GRNs change width (E -> hidden, m E -> m), so they need a linear skip. A linear
  skip of an affine ``e`` is an affine map of ``x`` with the same expressive power, so the skips
  are parameterised on the raw scalars: ``r_v = x_v s_v + t_v`` and ``x S + t``.

  Chunks. The per-variable GRNs and the weighted sum run over ``chunk_rows`` rows (batch × time)
  at a time, in a ``lax.scan``, and only the ``[rows, hidden]`` sum leaves a chunk. Unchunked, every
  elementwise pass of the GRNs (ELU, bias, dropout, GLU, residual, LayerNorm and their gradients)
  streamed ``[m, rows, hidden]`` arrays (346 MB at the seed size) through DRAM, because XLA:CPU
  materialises every matmul output; a chunk's arrays stay in cache. In training
  (``deterministic=False``) each chunk runs under ``jax.checkpoint``: the backward pass recomputes
  the chunk's activations (a third more GRN FLOPs) instead of storing them all. Values, dropout
  masks (drawn for the whole ``[m, rows, h]`` array, as unchunked) and gradients do not depend on
  the chunk size, up to float rounding.

  Parameters: ``prescaler_{kernel,bias} [m, E]``; ``variable_input_{kernel [m, E, h], bias
  [m, h]}``, ``variable_skip_{kernel,bias} [m, hidden]``, ``variable_hidden`` and
  ``variable_gate_add_norm`` (stacked, ``h = min(E, hidden)``); ``selection_input_{kernel
  [m E, h_w], bias [h_w]}``, ``selection_context``, ``selection_skip``, ``selection_hidden``,
  ``selection_gate_add_norm``.

  Attributes:
    hidden_size: width of the selected output and of each ``ξ̃_v``.
    embedding_size: prescaler width E ("hidden continuous size").
    dropout_rate: dropout in the GRNs.
    selection_hidden_size: hidden width ``h_w`` of ``GRN_w``; defaults to
      ``min(hidden_size, m)`` as in pytorch-forecasting.
    chunk_rows: rows per chunk of the per-variable GRNs (a speed knob; see "Chunks"). None:
      :data:`VARIABLE_CHUNK_ROWS` on CPU, one chunk on accelerators (whose memory bandwidth
      does not need chunks, and which would pay a kernel launch per op per chunk).
  """

  hidden_size: int
  embedding_size: int
  dropout_rate: float = 0.0
  selection_hidden_size: int | None = None
  chunk_rows: int | None = None

  @nn.compact
  def __call__(self, inputs: jax.Array, context: jax.Array | None = None, *,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Selects among ``inputs [..., variables]``: returns ``([..., hidden], [..., variables])``.

    The second output is the selection weights. ``context [..., context_size]`` broadcasts against the leading axes of ``inputs``. The weights
    are float32, non-negative and sum to 1 over the variable axis.
    """
    variables, embedding = inputs.shape[-1], self.embedding_size
    variable_hidden = min(embedding, self.hidden_size)
    init = nn.initializers
    stacked_init = init.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
    prescaler_kernel = self.param('prescaler_kernel', init.normal(1.0), (variables, embedding))
    prescaler_bias = self.param('prescaler_bias', init.zeros_init(), (variables, embedding))
    input_kernel = self.param('variable_input_kernel', stacked_init,
                              (variables, embedding, variable_hidden))
    input_bias = self.param('variable_input_bias', init.zeros_init(), (variables, variable_hidden))
    skip_kernel = self.param('variable_skip_kernel', init.normal(1.0),
                             (variables, self.hidden_size))
    skip_bias = self.param('variable_skip_bias', init.zeros_init(), (variables, self.hidden_size))
    (inputs, prescaler_kernel, prescaler_bias, input_kernel, input_bias, skip_kernel,
     skip_bias) = promote_dtype(inputs, prescaler_kernel, prescaler_bias, input_kernel,
                                input_bias, skip_kernel, skip_bias)

    first_kernel = jnp.einsum('ve,veh->vh', prescaler_kernel, input_kernel)
    first_bias = jnp.einsum('ve,veh->vh', prescaler_bias, input_kernel) + input_bias
    hidden_kernel, hidden_bias = _StackedDenseWeights(variable_hidden, name='variable_hidden')(
        variables, variable_hidden)
    gate_add_norm, seed = _StackedGateAddNormWeights(
        self.hidden_size, self.dropout_rate, name='variable_gate_add_norm')(
            variables, variable_hidden, deterministic=deterministic)
    grn_params = {'first_kernel': first_kernel, 'first_bias': first_bias,
                  'hidden_kernel': hidden_kernel, 'hidden_bias': hidden_bias,
                  'skip_kernel': skip_kernel, 'skip_bias': skip_bias, **gate_add_norm}
    grn_params = {name: value if name.startswith('norm_') else value.astype(inputs.dtype)
                  for name, value in grn_params.items()}

    if variables == 1:  # Nothing to select: the single variable has weight 1.
      weights = jnp.ones(inputs.shape, jnp.float32)
    else:
      weights = self._selection_weights(inputs, prescaler_kernel, prescaler_bias, context,
                                        deterministic)
    rows = inputs.shape[:-1]
    chunk_rows = default_chunk_rows() if self.chunk_rows is None else self.chunk_rows
    selected = _chunked_variable_grns(
        inputs.reshape(-1, variables), weights.reshape(-1, variables).astype(inputs.dtype),
        grn_params, chunk_rows=chunk_rows, seed=seed, rate=self.dropout_rate,
        remat=not deterministic)
    return selected.reshape(*rows, self.hidden_size), weights

  def _selection_weights(self, inputs: jax.Array, prescaler_kernel: jax.Array,
                         prescaler_bias: jax.Array, context: jax.Array | None,
                         deterministic: bool) -> jax.Array:
    """``softmax(GRN_w([e_1, ..., e_m], c))`` in float32, ``[..., variables]``, the flattened
    embeddings in factored form (class docstring)."""
    variables, embedding = inputs.shape[-1], self.embedding_size
    init = nn.initializers
    selection_hidden = self.selection_hidden_size or min(self.hidden_size, variables)
    selection_kernel = self.param('selection_input_kernel', init.lecun_normal(),
                                  (variables * embedding, selection_hidden))
    selection_bias = self.param('selection_input_bias', init.zeros_init(), (selection_hidden,))
    selection_kernel, selection_bias = promote_dtype(selection_kernel, selection_bias,
                                                     dtype=inputs.dtype)
    selection_kernel = selection_kernel.reshape(variables, embedding, selection_hidden)
    hidden = inputs @ jnp.einsum('ve,veh->vh', prescaler_kernel, selection_kernel)
    hidden = hidden + jnp.einsum('ve,veh->h', prescaler_bias, selection_kernel) + selection_bias
    if context is not None:
      hidden = hidden + nn.Dense(selection_hidden, use_bias=False, name='selection_context')(
          context)
    hidden = nn.Dense(selection_hidden, name='selection_hidden')(nn.elu(hidden))
    residual = nn.Dense(variables, name='selection_skip')(inputs)
    logits = GateAddNorm(variables, self.dropout_rate, name='selection_gate_add_norm')(
        hidden, residual, deterministic=deterministic)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


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
