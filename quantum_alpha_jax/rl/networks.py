"""Small Flax MLPs for the agents: PPO's actor-critic, DDPG's deterministic actor and Q critic.

- :class:`MLP`: ``h_{k+1} = act(W_k h_k + b_k)`` for each hidden size, then a linear output. Weights
  start as ``N(0, gain² / fan_in)``, with gain ``sqrt(2)`` on the hidden layers and
  ``output_scale`` on the output layer, biases at 0: the scale of the orthogonal initialisation of
  the PPO implementation details (Huang et al., 2022) without its QR decomposition, which costs
  seconds of XLA compile time on a CPU.
- :class:`ActorCritic`: separate policy and value MLPs on the observation; logits over the
  discrete actions (output gain 0.01: a near-uniform initial policy) and a scalar value (gain 1).
- :class:`DeterministicActor`: ``a = low + (high - low) (tanh(MLP(s)) + 1) / 2``, a target weight
  in ``[low, high]``.
- :class:`QCritic`: ``Q(s, a) = MLP([s, a])``, a scalar.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

def _scaled(gain: float) -> nn.initializers.Initializer:
  """``N(0, gain² / fan_in)``."""
  return nn.initializers.variance_scaling(gain * gain, 'fan_in', 'normal')


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {'tanh': jnp.tanh, 'relu': nn.relu}


class MLP(nn.Module):
  """Hidden layers of ``hidden_sizes`` with ``activation``, then a linear ``output_size`` layer."""

  hidden_sizes: Sequence[int]
  output_size: int
  activation: str = 'tanh'
  output_scale: float = 1.0

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    activation = ACTIVATIONS[self.activation]
    hidden = inputs
    for index, size in enumerate(self.hidden_sizes):
      hidden = nn.Dense(size, kernel_init=_scaled(math.sqrt(2.0)),
                        bias_init=nn.initializers.zeros, name=f'hidden_{index}')(hidden)
      hidden = activation(hidden)
    return nn.Dense(self.output_size, kernel_init=_scaled(self.output_scale),
                    bias_init=nn.initializers.zeros, name='output')(hidden)


class ActorCritic(nn.Module):
  """``obs [..., D] -> (logits [..., num_actions], value [...])``; :meth:`value` runs the critic
  alone."""

  num_actions: int
  hidden_sizes: Sequence[int] = (64, 64)
  activation: str = 'tanh'

  def setup(self):
    self.actor = MLP(self.hidden_sizes, self.num_actions, self.activation, 0.01)
    self.critic = MLP(self.hidden_sizes, 1, self.activation, 1.0)

  def __call__(self, observations: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.actor(observations), self.value(observations)

  def value(self, observations: jax.Array) -> jax.Array:
    return self.critic(observations)[..., 0]


class DeterministicActor(nn.Module):
  """``obs [..., D] -> action [...]`` in ``[low, high]``."""

  low: float
  high: float = 1.0
  hidden_sizes: Sequence[int] = (64, 64)
  activation: str = 'relu'

  @nn.compact
  def __call__(self, observations: jax.Array) -> jax.Array:
    raw = MLP(self.hidden_sizes, 1, self.activation, 0.01, name='mlp')(observations)[..., 0]
    return self.low + (self.high - self.low) * 0.5 * (jnp.tanh(raw) + 1.0)


class QCritic(nn.Module):
  """``(obs [..., D], action [...]) -> Q [...]``."""

  hidden_sizes: Sequence[int] = (64, 64)
  activation: str = 'relu'

  @nn.compact
  def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
    inputs = jnp.concatenate([observations, actions[..., None]], axis=-1)
    return MLP(self.hidden_sizes, 1, self.activation, 1.0, name='mlp')(inputs)[..., 0]


def categorical_log_prob(logits: jax.Array, actions: jax.Array) -> jax.Array:
  """``log softmax(logits)[action]``; logits ``[..., A]``, actions ``[...]`` int."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]


def categorical_entropy(logits: jax.Array) -> jax.Array:
  """``-sum_a p_a log p_a`` over the last axis."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
