"""What PPO and DDPG share: the agent protocol the training run relies on, config checks, the
batch of reset environments and the jitted chunk of updates (``lax.scan`` under one ``jit``)."""

from __future__ import annotations

import functools
from typing import Any, Protocol

import jax
import ml_collections

from quantum_alpha_jax import errors
from quantum_alpha_jax.rl import env as env_lib
from quantum_alpha_jax.rl import networks


class Agent(Protocol):
  """An agent as :mod:`quantum_alpha_jax.rl.experiment` drives it."""

  name: str
  num_updates: int  # updates in the configured run

  @property
  def steps_per_update(self) -> int:
    ...

  def init(self, key: jax.Array, env_params: env_lib.EnvParams) -> Any:
    ...

  def update(self, state: Any, env_params: env_lib.EnvParams) -> tuple[Any, dict[str, jax.Array]]:
    ...

  def policy_params(self, state: Any) -> Any:
    ...

  def act(self, params: Any, observation: jax.Array, key: jax.Array | None = None) -> jax.Array:
    ...


def positive_int(agent_config: ml_collections.ConfigDict, name: str) -> int:
  """``agent_config[name]``, which must be an integer >= 1 (else a ConfigError)."""
  value = agent_config[name]
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise errors.ConfigError(errors.describe(f'config.agent.{name}',
                                             f'{value!r} must be an integer >= 1'))
  return value


def check_activation(agent_config: ml_collections.ConfigDict) -> str:
  """The network activation named in the config (else a ConfigError)."""
  if agent_config.activation not in networks.ACTIVATIONS:
    raise errors.ConfigError(errors.describe(
        'config.agent.activation', f'{agent_config.activation!r}',
        f'use one of {sorted(networks.ACTIVATIONS)}'))
  return agent_config.activation


def reset_environments(key: jax.Array, env_params: env_lib.EnvParams, count: int
                       ) -> tuple[jax.Array, env_lib.EnvState]:
  """``count`` fresh episodes: observations ``[count, D]`` and a batched state."""
  return jax.vmap(env_lib.reset, in_axes=(0, None))(jax.random.split(key, count), env_params)


@functools.partial(jax.jit, static_argnums=(0, 3), donate_argnums=(1,))
def run_updates(agent: Agent, state: Any, env_params: env_lib.EnvParams, num_updates: int
                ) -> tuple[Any, dict[str, jax.Array]]:
  """``num_updates`` of ``agent.update`` in ``lax.scan`` under one jit (``state`` is donated);
  metrics come back as ``[num_updates]`` arrays."""
  return jax.lax.scan(lambda carry, _: agent.update(carry, env_params), state, None,
                      length=num_updates)
