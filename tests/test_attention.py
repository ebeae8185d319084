"""models/attention.py: blocked causal attention against a numpy softmax(QKᵀ/√d)V."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from quantum_alpha_jax.models import attention


def _reference(query, key, value, positions):
  """Per head, query i attends keys j <= positions[i] (float64 numpy)."""
  query, key, value = (np.asarray(part, np.float64) for part in (query, key, value))
  scores = np.einsum('bqhd,bkhd->bhqk', query, key) / np.sqrt(query.shape[-1])
  visible = np.arange(key.shape[1])[None, :] <= np.asarray(positions)[:, None]
  scores = np.where(visible, scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', weights, value)


@pytest.mark.parametrize('num_blocks', [1, 2, 3, 5, 30])
@pytest.mark.parametrize('queries', ['all', 'state tokens'])
def test_blocked_attention_equals_the_masked_softmax(num_blocks, queries):
  rng = np.random.default_rng(num_blocks)
  batch, length, heads, size = 2, 21, 3, 4
  key, value = (rng.normal(size=(batch, length, heads, size)).astype(np.float32)
                for _ in range(2))
  positions = np.arange(length) if queries == 'all' else np.arange(length)[1::3]
  query = rng.normal(size=(batch, len(positions), heads, size)).astype(np.float32)
  result = attention.causal_attention(
      jnp.asarray(query), jnp.asarray(key), jnp.asarray(value),
      query_positions=None if queries == 'all' else positions, num_blocks=num_blocks)
  np.testing.assert_allclose(np.asarray(result), _reference(query, key, value, positions),
                             rtol=1e-5, atol=1e-5)


def test_blocks_cover_the_queries_once_and_need_only_their_key_prefix():
  assert attention.query_blocks(np.arange(9), 3) == [(0, 3, 3), (3, 6, 6), (6, 9, 9)]
  assert attention.query_blocks(np.arange(9)[1::3], 2) == [(0, 2, 5), (2, 3, 8)]
  assert attention.query_blocks(np.arange(2), 5) == [(0, 1, 1), (1, 2, 2)]


def test_queries_that_do_not_match_their_positions_are_refused():
  query = jnp.zeros((1, 4, 1, 2))
  keys = jnp.zeros((1, 3, 1, 2))
  with pytest.raises(ValueError, match='one position per query'):
    attention.causal_attention(query, keys, keys)
  with pytest.raises(ValueError, match='increasing'):
    attention.query_blocks(np.array([2, 1]), 2)
