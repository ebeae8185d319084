"""What PPO and DDPG share: the agent protocol the training run relies on, config checks, the
batch of reset environments, the jitted chunk of updates (``lax.scan`` under one ``jit``) and the
placement of the state over the devices.

Data parallelism: :func:`place_state` splits every per-environment field of the state (the
environment states, the observations and the exploration noise, all with the environment axis
first) over the mesh's ``data`` axis and replicates the rest (params, optimiser state, replay
buffer, keys). ``jit`` follows those input shardings, so each device steps its own environments
and XLA inserts the collectives the updates need (the gradient means over minibatches drawn from
every device's rollout). JAX's threefry keys are sharding-invariant
(``jax_threefry_partitionable``), so 1 and N devices draw the same numbers and compute the same
updates up to the order of floating-point sums.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import ml_collections

from quantum_alpha_jax import errors
from quantum_alpha_jax.rl import env as env_lib
from quantum_alpha_jax.rl import networks
from quantum_alpha_jax.train import step as step_lib

# State fields whose leading axis is the environment: split over the devices.
PER_ENVIRONMENT_FIELDS = ('env_state', 'observation', 'noise')


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


def check_envs_split(num_envs: int, mesh: jax.sharding.Mesh) -> None:
  """Every device must step the same number of environments."""
  if num_envs % mesh.size:
    raise errors.ConfigError(errors.describe(
        'config.agent.num_envs', f'{num_envs} environments do not split over {mesh.size} devices',
        f'use a multiple of {mesh.size}, or set --config.train.num_devices'))


def place_state(state: Any, mesh: jax.sharding.Mesh) -> Any:
  """``state`` on ``mesh``: per-environment fields split on their first axis, the rest replicated
  (a no-op for arrays already placed so)."""
  split = NamedSharding(mesh, PartitionSpec(step_lib.DATA_AXIS))
  whole = NamedSharding(mesh, PartitionSpec())

  def place(name, value):
    if name not in PER_ENVIRONMENT_FIELDS:
      return jax.device_put(value, whole)
    return jax.tree.map(lambda x: jax.device_put(x, split if x.ndim else whole), value)

  return state.replace(**{field.name: place(field.name, getattr(state, field.name))
                          for field in dataclasses.fields(state)})
