"""Variable selection: per input variable a gated residual network embeds it, and a softmax over the
variables weights the sum (Lim et al., 2021, section 4.2). The per-variable networks run stacked
(one batched matmul per layer over all variables) and, on a CPU, in chunks of rows under
``jax.checkpoint``, so their large intermediates stay in cache. Split out of ``models/layers.py``
(issue #17), whose blocks it builds on.
"""

from __future__ import annotations


import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp

from quantum_alpha_jax.models import layers


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
  keep = (layers.hash_uint32(index * jnp.uint32(0x9E3779B9) ^ seed)
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
    kernel = self.param('kernel', layers.STACKED_KERNEL_INIT, (networks, in_features, self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (networks, self.features))
    return kernel, bias


class _DropoutSeed(nn.Module):
  """The 32-bit seed that a :class:`Dropout` at this module's path would draw (same rng)."""

  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(self) -> jax.Array:
    return jax.random.bits(self.make_rng(self.rng_collection), (), jnp.uint32)


class _StackedGateAddNormWeights(nn.Module):
  """The parameters of a stacked :class:`layers.GateAddNorm` (same tree: ``glu/{value,gate}/{kernel,
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
  transformed = (layers.normalize(summed, 1e-6) * per_variable('norm_scale').astype(jnp.float32)
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
    logits = layers.GateAddNorm(variables, self.dropout_rate, name='selection_gate_add_norm')(
        hidden, residual, deterministic=deterministic)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
