"""The Decision Transformer (Chen et al., 2021) with a discrete trading action and a size head.

Tokens. For steps ``t = 0..K-1`` of a context the model reads the return-to-go ``R_t``, the state
``s_t`` and the action ``a_t`` (with its size ``σ_t``), interleaved as
``(R_0, s_0, a_0, R_1, s_1, a_1, ...)``, 3K tokens of width ``H``:

- ``e(R_t) = W_R R_t + b_R``, ``e(s_t) = W_s s_t + b_s``, ``e(a_t) = E_a[a_t] + σ_t w_σ``;
- each token of step t adds the learned timestep embedding ``E_T[timestep_t]`` (the only position
  information: there is no separate positional embedding, as in the paper);
- a LayerNorm and dropout, then ``num_layers`` pre-LN GPT blocks
  ``x ← x + Attn(LN(x))``, ``x ← x + W_2 GELU(W_1 LN(x))`` (MLP width ``4H``), a final LayerNorm.

Attention is causal: token i attends to tokens j <= i (a constant lower-triangular mask, so the
graph has fixed shapes and exports). Queries, keys and values come from one fused ``[H, 3H]``
projection; scores ``Q Kᵀ / √d`` and the softmax run in float32. The full pass computes it in
query blocks over key prefixes (models/attention.py: the keys every query of a block would mask
are never scored), and its last block computes queries, output projection and MLP only at the
state tokens, the only ones read.

Outputs are read from the STATE tokens (position 3t+1), which have seen ``R_0..R_t``, ``s_0..s_t``
and ``a_0..a_{t-1}`` but not ``a_t``: action logits ``[batch, K, 3]`` (hold, buy, sell) and the
size ``sigmoid(w · h)`` in [0, 1].

Dropout is :class:`quantum_alpha_jax.models.layers.Dropout`, whose masks come from a hash of
the element index (about one elementwise pass, where threefry bits per element dominated the
elementwise cost of a CPU train step).

Decoding. Step t of an episode feeds the three tokens ``(a_{t-1}, R_t, s_t)`` through the same
blocks; each block's queries attend the keys and values of the episode's earlier tokens, read from
a key/value cache of ``3K + 1`` slots, and the new tokens causally (``a_{-1}``, absent at t = 0, is
masked for every query). The blocks return the new tokens' keys and values; two cache layouts keep
them, both heads before slots (``[heads, slots, head_size]`` per block and batch row, so that the
scores and the weighted values are plain batched matmuls over the cache, with no transpose of it):

- :meth:`DecisionTransformer.decode` (the rollout's): a list of per-block ``(keys, values) [batch,
  heads, 3K + 1, head_size]``, token ``3t + j`` at slot ``3t + j`` (slot 0 holds ``a_{-1}``), one
  timestep for the whole batch, the write an in-place ``dynamic_update_slice``.
- :meth:`DecisionTransformer.decode_rolling` (the exported step's): one array ``[batch, layers, 2,
  heads, 3K + 1, head_size]`` (keys at index 0 of axis 2, values at 1) holding the most recent
  tokens last; each step drops the three oldest slots and appends the new ones, so the write is at
  a fixed place and every row may be at its own timestep (attention has no positional term: only
  the mask says which slots are of this episode).

Both equal the full forward pass (tests/test_strategist.py, tests/test_export.py), at ~1/K of the
cost per step.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from quantum_alpha_jax.models import attention as attention_lib
from quantum_alpha_jax.models.layers import Dropout
from quantum_alpha_jax.models.layers import LayerNorm

_MASK_VALUE = -1e9
STATE_TOKENS = slice(1, None, 3)  # positions 3t + 1 of the interleaved (R, s, a) sequence
Cache = Sequence[tuple[jax.Array, jax.Array]]


def causal_mask(length: int) -> np.ndarray:
  """``[length, length]`` bool, True where query i may attend key j (j <= i)."""
  return np.tril(np.ones((length, length), np.bool_))


def interleave(returns: jax.Array, states: jax.Array, actions: jax.Array) -> jax.Array:
  """Three ``[batch, K, H]`` token streams → ``[batch, 3K, H]`` ordered R_0, s_0, a_0, R_1, ..."""
  batch, steps, width = returns.shape
  return jnp.stack([returns, states, actions], axis=2).reshape(batch, 3 * steps, width)


def initial_cache(model: 'DecisionTransformer', batch_size: int, dtype: Any = jnp.float32) -> list:
  """Zero key/value caches for :meth:`DecisionTransformer.decode`: per block two
  ``[batch, heads, 3K + 1, head_size]`` arrays."""
  shape = (batch_size, model.num_heads, 3 * model.context_length + 1,
           model.hidden_size // model.num_heads)
  return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(model.num_layers)]


def rolling_cache_shape(model: 'DecisionTransformer', batch_size: int) -> tuple[int, ...]:
  """``(batch, layers, 2, heads, 3K + 1, head_size)``: the cache of
  :meth:`DecisionTransformer.decode_rolling` (module docstring)."""
  return (batch_size, model.num_layers, 2, model.num_heads, 3 * model.context_length + 1,
          model.hidden_size // model.num_heads)


def initial_rolling_cache(model: 'DecisionTransformer', batch_size: int,
                          dtype: Any = jnp.float32) -> jax.Array:
  """A zero cache for :meth:`DecisionTransformer.decode_rolling` (any values do at timestep 0:
  the mask hides every slot of an earlier episode)."""
  return jnp.zeros(rolling_cache_shape(model, batch_size), dtype)


def decoding_mask(past_visible: jax.Array, timestep: jax.Array, length: int = 3) -> jax.Array:
  """``[batch, length, slots + length]`` bool, True where new token i may attend: the cache slots
  with ``past_visible [batch, slots]`` True, and new token j <= i unless j is the absent
  ``a_{-1}`` (j = 0 at ``timestep [batch]`` 0)."""
  new = np.arange(length)
  causal = jnp.asarray(new[None, :] <= new[:, None])[None]  # [1, length, length]
  present = (new[None, :] > 0) | (timestep[:, None] > 0)  # [batch, length]
  new_visible = causal & present[:, None, :]
  past = jnp.broadcast_to(past_visible[:, None, :], (past_visible.shape[0], length,
                                                     past_visible.shape[1]))
  return jnp.concatenate([past, new_visible], axis=-1)


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention with a fused QKV projection (module docstring).

  Full pass: ``x [batch, T, H]``, causal, by :func:`quantum_alpha_jax.models.attention.
  causal_attention` (blocks of queries over key prefixes); with ``outputs`` (a slice of the T
  positions) only those tokens are queried and returned. Cached pass (deterministic):
  ``cache = (keys, values) [batch, heads, slots, d]`` of earlier tokens, read only, and ``mask
  [batch, T, slots + T]`` (:func:`decoding_mask`: the cache slots, then ``x``'s own tokens);
  returns the output and ``x``'s new ``(keys, values) [batch, heads, T, d]`` for the caller to
  write into its cache layout. Scores against the cache and against the new tokens share one
  softmax, so nothing the size of the cache is copied.
  """

  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool, cache: tuple[jax.Array, jax.Array]
               | None = None, mask: jax.Array | None = None, outputs: slice | None = None):
    batch, length, width = x.shape
    head_size = width // self.num_heads
    qkv = nn.Dense(3 * width, name='qkv')(x).reshape(batch, length, 3, self.num_heads, head_size)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cache is not None:  # Incremental decoding: the cache's slots, then the new tokens.
      past_keys, past_values = (part.astype(query.dtype) for part in cache)
      query, key, value = (jnp.swapaxes(part, 1, 2) for part in (query, key, value))  # [b, h, T, d]
      scale = 1.0 / math.sqrt(head_size)
      scores = jnp.concatenate([jnp.matmul(query, jnp.swapaxes(past_keys, 2, 3)),
                                jnp.matmul(query, jnp.swapaxes(key, 2, 3))], axis=-1)
      scores = jnp.where(mask[:, None], scores.astype(jnp.float32) * scale, _MASK_VALUE)
      weights = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
      slots = past_keys.shape[2]
      heads = (jnp.matmul(weights[..., :slots], past_values)
               + jnp.matmul(weights[..., slots:], value))  # [b, h, T, d]
      output = nn.Dense(width, name='output')(
          jnp.swapaxes(heads, 1, 2).reshape(batch, length, width).astype(x.dtype))
      return output, (key, value)
    # Full pass: blocked causal attention (models/attention.py), queries at ``outputs`` only.
    positions = np.arange(length)[outputs if outputs is not None else slice(None)]
    weights_dropout = Dropout(self.attention_dropout_rate)
    heads = attention_lib.causal_attention(
        query[:, outputs] if outputs is not None else query, key, value,
        query_positions=positions,
        weights_dropout=lambda weights: weights_dropout(weights, deterministic=deterministic))
    output = nn.Dense(width, name='output')(
        heads.reshape(batch, len(positions), width).astype(x.dtype))
    output = Dropout(self.dropout_rate)(output, deterministic=deterministic)
    return output, None


class Block(nn.Module):
  """A pre-LN GPT block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU, width 4H)."""

  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool, cache=None, mask=None,
               outputs: slice | None = None):
    """``x [batch, T, H]`` → ``[batch, T, H]`` (full pass: only the tokens ``x[:, outputs]``
    when ``outputs`` is given, the rest serving as keys and values) and the cache's new part."""
    dtype = x.dtype
    attended, cache = CausalSelfAttention(self.num_heads, self.dropout_rate,
                                          self.attention_dropout_rate, name='attention')(
        LayerNorm(name='attention_norm')(x).astype(dtype), deterministic=deterministic,
        cache=cache, mask=mask, outputs=outputs)
    x = (x if outputs is None else x[:, outputs]) + attended
    width = x.shape[-1]
    hidden = nn.Dense(4 * width, name='mlp_in')(LayerNorm(name='mlp_norm')(x).astype(dtype))
    hidden = nn.Dense(width, name='mlp_out')(jax.nn.gelu(hidden))
    x = x + Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    return x, cache


class DecisionTransformer(nn.Module):
  """Return-conditioned policy over ``(R, s, a)`` token triples (module docstring).

  Attributes:
    state_size: width of a state vector.
    max_timestep: size of the timestep embedding table (timesteps lie in [0, max_timestep)).
    context_length: K, steps per context (3K tokens).
    hidden_size, num_layers, num_heads, dropout_rate: the GPT stack (dropout on the embeddings,
      the attention output and the MLP output).
    attention_dropout_rate: dropout on the attention weights (GPT-2's attn_pdrop). It draws
      random bits for every [heads, 3K, 3K] score, ~30% of a CPU train step at the seed size, so
      the configs leave it at 0.
    num_actions: discrete actions (hold, buy, sell).
  """

  state_size: int
  max_timestep: int
  context_length: int = 90
  hidden_size: int = 256
  num_layers: int = 6
  num_heads: int = 8
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  num_actions: int = 3

  def setup(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not a multiple of num_heads '
                       f'{self.num_heads}')
    width = self.hidden_size
    self.timestep_embedding = nn.Embed(self.max_timestep, width,
                                       embedding_init=nn.initializers.normal(0.02))
    self.return_embedding = nn.Dense(width)
    self.state_embedding = nn.Dense(width)
    self.action_embedding = nn.Embed(self.num_actions, width,
                                     embedding_init=nn.initializers.normal(0.02))
    self.size_embedding = nn.Dense(width, use_bias=False)
    self.embedding_norm = LayerNorm()
    self.embedding_dropout = Dropout(self.dropout_rate)
    self.blocks = [Block(self.num_heads, self.dropout_rate, self.attention_dropout_rate,
                         name=f'block_{i}')
                   for i in range(self.num_layers)]
    self.final_norm = LayerNorm()
    self.action_head = nn.Dense(self.num_actions)
    self.size_head = nn.Dense(1)

  def token_embeddings(self, returns_to_go, states, actions, sizes, timesteps,
                       action_timesteps=None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(e(R), e(s), e(a))`` each ``[..., H]`` with the timestep embedding added (the action's
    own ``action_timesteps`` when given, else ``timesteps``)."""
    dtype = states.dtype
    time = self.timestep_embedding(timesteps).astype(dtype)
    action_time = (time if action_timesteps is None
                   else self.timestep_embedding(action_timesteps).astype(dtype))
    returns = self.return_embedding(returns_to_go[..., None].astype(dtype)) + time
    state = self.state_embedding(states) + time
    action = (self.action_embedding(actions).astype(dtype)
              + self.size_embedding(sizes[..., None].astype(dtype)) + action_time)
    return returns.astype(dtype), state.astype(dtype), action.astype(dtype)

  def embed(self, returns_to_go, states, actions, sizes, timesteps) -> jax.Array:
    """The interleaved, normalised token sequence ``[batch, 3K, H]`` (before the blocks)."""
    tokens = interleave(*self.token_embeddings(returns_to_go, states, actions, sizes, timesteps))
    return self.embedding_norm(tokens).astype(states.dtype)

  def heads(self, hidden: jax.Array) -> dict[str, jax.Array]:
    """Action logits and sizes from the final state-token features ``[..., H]`` (float32)."""
    hidden = self.final_norm(hidden).astype(hidden.dtype)
    logits = self.action_head(hidden).astype(jnp.float32)
    size = jax.nn.sigmoid(self.size_head(hidden)[..., 0].astype(jnp.float32))
    return {'action_logits': logits, 'size': size}

  def __call__(self, returns_to_go: jax.Array, states: jax.Array, actions: jax.Array,
               sizes: jax.Array, timesteps: jax.Array, *, deterministic: bool = True
               ) -> dict[str, jax.Array]:
    """``returns_to_go, sizes [batch, K]``, ``states [batch, K, S]``, ``actions, timesteps
    [batch, K]`` int → ``action_logits [batch, K, 3]``, ``size [batch, K]`` (float32)."""
    x = self.embedding_dropout(self.embed(returns_to_go, states, actions, sizes, timesteps),
                               deterministic=deterministic)
    for block in self.blocks[:-1]:
      x, _ = block(x, deterministic=deterministic)
    # Only the state tokens (3t + 1) are read: the last block computes its queries, output
    # projection and MLP at those K tokens alone (all 3K still serve as keys and values).
    x, _ = self.blocks[-1](x, deterministic=deterministic, outputs=STATE_TOKENS)
    return self.heads(x)

  def decode_tokens(self, caches: Sequence[tuple[jax.Array, jax.Array]], past_visible: jax.Array,
                    timestep: jax.Array, return_to_go: jax.Array, state: jax.Array,
                    previous_action: jax.Array, previous_size: jax.Array
                    ) -> tuple[dict[str, jax.Array], list]:
    """The blocks over step t's tokens ``(a_{t-1}, R_t, s_t)`` (deterministic): ``caches`` per
    block ``(keys, values) [batch, heads, slots, d]`` of which the slots with ``past_visible
    [batch, slots]`` are this episode's earlier tokens; ``timestep [batch]`` int (< K). Returns the
    heads of ``s_t`` and per block the new ``(keys, values) [batch, heads, 3, d]``."""
    returns, state_token, action_token = self.token_embeddings(
        return_to_go, state, previous_action, previous_size, timestep,
        jnp.maximum(timestep - 1, 0))
    x = jnp.stack([action_token, returns, state_token], axis=1)  # [batch, 3, H]
    x = self.embedding_norm(x).astype(state.dtype)
    mask = decoding_mask(past_visible, timestep)
    written = []
    for block, layer_cache in zip(self.blocks, caches):
      x, new = block(x, deterministic=True, cache=layer_cache, mask=mask)
      written.append(new)
    return self.heads(x[:, 2]), written

  def decode(self, cache: Cache, step: jax.Array, return_to_go: jax.Array, state: jax.Array,
             previous_action: jax.Array, previous_size: jax.Array
             ) -> tuple[dict[str, jax.Array], list]:
    """One step of incremental decoding (deterministic): feeds ``(a_{t-1}, R_t, s_t)`` for
    ``step = t`` (the timestep, < K, one for the batch) with ``return_to_go, previous_size
    [batch]``, ``state [batch, S]``, ``previous_action [batch]`` int; returns the heads of ``s_t``
    and the cache (:func:`initial_cache`'s layout: token 3t + j at slot 3t + j)."""
    now = jnp.full(previous_action.shape, step, jnp.int32)
    slots = jnp.arange(cache[0][0].shape[2])
    past_visible = jnp.broadcast_to((slots >= 1) & (slots < 3 * step),
                                    (previous_action.shape[0], slots.shape[0]))
    heads, written = self.decode_tokens(cache, past_visible, now, return_to_go, state,
                                        previous_action, previous_size)
    new_cache = [tuple(jax.lax.dynamic_update_slice(old, new.astype(old.dtype),
                                                    (0, 0, 3 * step, 0))
                       for old, new in zip(layer_cache, layer_new))
                 for layer_cache, layer_new in zip(cache, written)]
    return heads, new_cache

  def decode_rolling(self, cache: jax.Array, timestep: jax.Array, return_to_go: jax.Array,
                     state: jax.Array, previous_action: jax.Array, previous_size: jax.Array
                     ) -> tuple[dict[str, jax.Array], jax.Array]:
    """:meth:`decode` with the rolling cache ``[batch, layers, 2, heads, 3K + 1, d]`` (module
    docstring; :func:`initial_rolling_cache`) and a ``timestep [batch]`` int per row (< K): the
    last ``3t`` slots hold the episode's tokens ``a_{-1} .. s_{t-1}``. Returns the heads of
    ``s_t`` and the cache with the three oldest slots dropped and ``(a_{t-1}, R_t, s_t)``
    appended."""
    timestep = timestep.astype(jnp.int32)
    slots = cache.shape[4]
    # Visible: the last 3t slots but the first of them (a_{-1}); none at t = 0.
    past_visible = jnp.arange(slots)[None, :] > slots - 3 * timestep[:, None]
    # Static slices, not integer indexing: ONNX then reads each block's part with a Slice instead
    # of transposing the whole cache for a GatherND.
    part = lambda layer, kind: jnp.squeeze(cache[:, layer:layer + 1, kind:kind + 1], (1, 2))
    caches = [(part(layer, 0), part(layer, 1)) for layer in range(cache.shape[1])]
    heads, written = self.decode_tokens(caches, past_visible, timestep, return_to_go, state,
                                        previous_action, previous_size)
    new = jnp.stack([jnp.stack(pair, axis=1) for pair in written], axis=1)  # [b, L, 2, h, 3, d]
    return heads, jnp.concatenate([cache[:, :, :, :, 3:], new.astype(cache.dtype)], axis=4)
