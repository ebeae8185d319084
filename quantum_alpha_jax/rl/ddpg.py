"""Deep Deterministic Policy Gradient (Lillicrap et al., 2016) for a continuous target position.

Everything the loop carries, the replay buffer included, is one pytree, and :meth:`DDPG.train` runs
``n`` updates inside ``lax.scan`` under one ``jit``. An update is ``rollout_steps`` iterations;
each iteration steps ``num_envs`` environments once (``vmap``), writes their transitions into the
buffer and takes ``gradient_steps`` gradient steps on minibatches drawn from it.

Acting. ``a = clip(μ(s) + ε, low, 1)``, with the actor ``μ`` a tanh-squashed MLP onto the position
range and ``ε`` either Gaussian ``N(0, σ²)`` or Ornstein-Uhlenbeck per environment,
``x ← x - θ x + σ N(0, 1)`` (reset to 0 with the episode). Before ``learning_starts`` environment
steps the actions are uniform on ``[low, 1]`` and no gradient step is taken.

Replay buffer. Arrays of ``capacity`` rows (observation, action, scaled reward, next observation)
used as a ring: transition ``i`` of the run lives at row ``i mod capacity``; ``size`` counts the
filled rows and minibatches are drawn uniformly from them. The next observation of an episode's last
step is its terminal observation (not the reset one), and since episodes end only by their time
limit the target always bootstraps.

Learning, per minibatch, with target networks ``μ'``, ``Q'``:

  critic: ``y = r + γ Q'(s', μ'(s'))``, minimise ``mean((Q(s, a) - y)²)``;
  actor: maximise ``mean(Q(s, μ(s)))``;
  targets: ``θ' ← (1 - τ) θ' + τ θ`` (Polyak averaging) after every step.

Both optimisers are the house chain (:func:`quantum_alpha_jax.train.state.make_optimizer`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from quantum_alpha_jax import errors
from quantum_alpha_jax.rl import agent as agent_lib
from quantum_alpha_jax.rl import env as env_lib
from quantum_alpha_jax.rl import networks
from quantum_alpha_jax.train import state as state_lib

NOISES = ('gaussian', 'ou')


@struct.dataclass
class ReplayBuffer:
  """A ring of transitions; ``position`` is the next row to write, ``size`` the filled rows."""

  observation: jax.Array  # [capacity, D]
  action: jax.Array  # [capacity]
  reward: jax.Array  # [capacity]
  next_observation: jax.Array  # [capacity, D]
  position: jax.Array  # int32
  size: jax.Array  # int32

  @classmethod
  def create(cls, capacity: int, observation_size: int) -> ReplayBuffer:
    return cls(observation=jnp.zeros((capacity, observation_size), jnp.float32),
               action=jnp.zeros(capacity, jnp.float32), reward=jnp.zeros(capacity, jnp.float32),
               next_observation=jnp.zeros((capacity, observation_size), jnp.float32),
               position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))

  @property
  def capacity(self) -> int:
    return self.action.shape[0]

  def add(self, observation, action, reward, next_observation) -> ReplayBuffer:
    """Writes a batch of ``[n]`` transitions at the ring position (oldest rows overwritten)."""
    count = action.shape[0]
    rows = (self.position + jnp.arange(count)) % self.capacity
    return self.replace(
        observation=self.observation.at[rows].set(observation),
        action=self.action.at[rows].set(action), reward=self.reward.at[rows].set(reward),
        next_observation=self.next_observation.at[rows].set(next_observation),
        position=(self.position + count) % self.capacity,
        size=jnp.minimum(self.size + count, self.capacity))

  def sample(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """``batch_size`` transitions drawn uniformly (with replacement) from the filled rows."""
    rows = jax.random.randint(key, (batch_size,), 0, jnp.maximum(self.size, 1))
    return {'observation': self.observation[rows], 'action': self.action[rows],
            'reward': self.reward[rows], 'next_observation': self.next_observation[rows]}


@struct.dataclass
class DDPGState:
  """Everything the training loop carries (and a checkpoint holds)."""

  actor_params: Any
  critic_params: Any
  target_actor_params: Any
  target_critic_params: Any
  actor_opt_state: Any
  critic_opt_state: Any
  buffer: ReplayBuffer
  env_state: env_lib.EnvState  # batched [num_envs]
  observation: jax.Array  # [num_envs, D]
  noise: jax.Array  # [num_envs] Ornstein-Uhlenbeck state
  key: jax.Array
  env_steps: jax.Array  # int32, environment steps taken (all environments)
  update: jax.Array  # int32


def config(**overrides: Any) -> ml_collections.ConfigDict:
  """DDPG's hyperparameters (the ``agent`` block of configs/ddpg.py)."""
  agent = ml_collections.ConfigDict({
      'name': 'ddpg',
      'num_envs': 16,
      'rollout_steps': 64,  # iterations (vectorised env steps) per logged update
      'total_timesteps': 2_000_000,
      'buffer_size': 200_000,
      'batch_size': 256,
      'learning_starts': 10_000,  # environment steps of uniform actions before learning
      'gradient_steps': 2,  # per iteration
      'gamma': 0.99,
      'tau': 0.005,
      'noise': 'gaussian',  # or 'ou'
      'noise_sigma': 0.2,
      'ou_theta': 0.15,
      'reward_scale': 100.0,
      'hidden_sizes': (64, 64),
      'activation': 'relu',
      'actor_optimizer': state_lib.optimizer_config(learning_rate=1e-4, warmup_steps=0,
                                                    clip_norm=1.0, schedule='constant'),
      'critic_optimizer': state_lib.optimizer_config(learning_rate=1e-3, warmup_steps=0,
                                                     clip_norm=1.0, schedule='constant'),
  })
  agent.update(overrides)
  return agent


@dataclasses.dataclass(frozen=True, eq=False)
class DDPG:
  """A DDPG agent for ``env_params``' continuous-target environment (see the module docstring)."""

  actor: networks.DeterministicActor
  critic: networks.QCritic
  actor_optimizer: optax.GradientTransformation
  critic_optimizer: optax.GradientTransformation
  observation_size: int
  num_envs: int
  rollout_steps: int
  num_updates: int
  buffer_size: int
  batch_size: int
  learning_starts: int
  gradient_steps: int
  gamma: float
  tau: float
  noise: str
  noise_sigma: float
  ou_theta: float
  reward_scale: float

  name = 'ddpg'

  @classmethod
  def from_config(cls, agent_config: ml_collections.ConfigDict,
                  env_params: env_lib.EnvParams) -> DDPG:
    if env_params.action_mode != 'continuous':
      raise errors.ConfigError(errors.describe(
          'config.env.action_mode', f'DDPG acts on a continuous target position, the environment '
          f'is {env_params.action_mode!r}', 'set --config.env.action_mode=continuous (or use PPO)'))
    if agent_config.noise not in NOISES:
      raise errors.ConfigError(errors.describe('config.agent.noise',
                                               f'unknown noise {agent_config.noise!r}',
                                               f'use one of {NOISES}'))
    agent_lib.check_activation(agent_config)
    sizes = {name: agent_lib.positive_int(agent_config, name) for name in (
        'num_envs', 'rollout_steps', 'buffer_size', 'batch_size', 'gradient_steps')}
    if sizes['buffer_size'] < sizes['num_envs']:
      raise errors.ConfigError(errors.describe(
          'config.agent.buffer_size', f'{sizes["buffer_size"]} cannot hold one step of '
          f'{sizes["num_envs"]} environments', 'use a larger buffer'))
    per_update = sizes['num_envs'] * sizes['rollout_steps']
    num_updates = int(agent_config.total_timesteps) // per_update
    if num_updates < 1:
      raise errors.ConfigError(errors.describe(
          'config.agent.total_timesteps', f'{agent_config.total_timesteps} is less than one '
          f'update of num_envs * rollout_steps = {per_update} steps', f'use at least {per_update}'))
    gradient_steps_total = num_updates * sizes['rollout_steps'] * sizes['gradient_steps']
    actor_optimizer, _ = state_lib.make_optimizer(agent_config.actor_optimizer,
                                                  gradient_steps_total)
    critic_optimizer, _ = state_lib.make_optimizer(agent_config.critic_optimizer,
                                                   gradient_steps_total)
    hidden = tuple(agent_config.hidden_sizes)
    return cls(
        actor=networks.DeterministicActor(env_params.low, 1.0, hidden, agent_config.activation),
        critic=networks.QCritic(hidden, agent_config.activation),
        actor_optimizer=actor_optimizer, critic_optimizer=critic_optimizer,
        observation_size=env_params.observation_size, num_updates=num_updates,
        learning_starts=max(int(agent_config.learning_starts), 0), gamma=float(agent_config.gamma),
        tau=float(agent_config.tau), noise=agent_config.noise,
        noise_sigma=float(agent_config.noise_sigma), ou_theta=float(agent_config.ou_theta),
        reward_scale=float(agent_config.reward_scale), **sizes)

  @property
  def steps_per_update(self) -> int:
    """Environment steps per update."""
    return self.num_envs * self.rollout_steps

  def init(self, key: jax.Array, env_params: env_lib.EnvParams) -> DDPGState:
    """Fresh networks (targets equal to them), optimiser states, an empty buffer and reset envs."""
    return _init(self, key, env_params)

  def train(self, state: DDPGState, env_params: env_lib.EnvParams, num_updates: int
            ) -> tuple[DDPGState, dict[str, jax.Array]]:
    """``num_updates`` updates under one jit; metrics are ``[num_updates]`` arrays."""
    return agent_lib.run_updates(self, state, env_params, num_updates)

  def policy_params(self, state: DDPGState) -> Any:
    return state.actor_params

  def act(self, params: Any, observation: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """The deterministic target ``μ(s)`` (``key`` unused)."""
    del key
    return self.actor.apply(params, observation)

  # --------------------------------------------------------------------------------------------

  def _gradient_step(self, carry, batch):
    """One critic and actor step on a minibatch, then the Polyak update of the targets."""
    (actor_params, critic_params, target_actor, target_critic, actor_opt_state,
     critic_opt_state) = carry
    next_action = self.actor.apply(target_actor, batch['next_observation'])
    target = batch['reward'] + self.gamma * self.critic.apply(
        target_critic, batch['next_observation'], next_action)
    target = jax.lax.stop_gradient(target)

    def critic_loss(params):
      q = self.critic.apply(params, batch['observation'], batch['action'])
      return jnp.mean(jnp.square(q - target)), q

    (critic_value, q), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(critic_params)

    def actor_loss(params):
      return -jnp.mean(self.critic.apply(critic_params, batch['observation'],
                                         self.actor.apply(params, batch['observation'])))

    actor_value, actor_grads = jax.value_and_grad(actor_loss)(actor_params)
    grad_norm = jnp.maximum(optax.global_norm(critic_grads), optax.global_norm(actor_grads))
    finite = jnp.isfinite(critic_value) & jnp.isfinite(actor_value) & jnp.isfinite(grad_norm)
    updates, new_critic_opt = self.critic_optimizer.update(critic_grads, critic_opt_state,
                                                           critic_params)
    new_critic = optax.apply_updates(critic_params, updates)
    updates, new_actor_opt = self.actor_optimizer.update(actor_grads, actor_opt_state,
                                                         actor_params)
    new_actor = optax.apply_updates(actor_params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_actor, new_critic = keep(new_actor, actor_params), keep(new_critic, critic_params)
    polyak = lambda online, old: optax.incremental_update(online, old, self.tau)
    carry = (new_actor, new_critic, polyak(new_actor, target_actor),
             polyak(new_critic, target_critic), keep(new_actor_opt, actor_opt_state),
             keep(new_critic_opt, critic_opt_state))
    return carry, {'critic_loss': critic_value, 'actor_loss': actor_value, 'q': jnp.mean(q),
                   'grad_norm': grad_norm, 'finite': finite.astype(jnp.float32)}

  def _iteration(self, state: DDPGState, env_params: env_lib.EnvParams):
    key, noise_key, random_key, step_key, sample_key = jax.random.split(state.key, 5)
    low = env_params.low
    policy_action = self.actor.apply(state.actor_params, state.observation)
    gaussian = self.noise_sigma * jax.random.normal(noise_key, (self.num_envs,))
    if self.noise == 'ou':
      noise = state.noise - self.ou_theta * state.noise + gaussian
    else:
      noise = gaussian
    warming_up = state.env_steps < self.learning_starts
    uniform = jax.random.uniform(random_key, (self.num_envs,), minval=low, maxval=1.0)
    action = jnp.where(warming_up, uniform, jnp.clip(policy_action + noise, low, 1.0))
    next_observation, env_state, reward, done, info = jax.vmap(
        env_lib.step, in_axes=(0, 0, 0, None))(
            jax.random.split(step_key, self.num_envs), state.env_state, action, env_params)
    buffer = state.buffer.add(state.observation, action, reward * self.reward_scale,
                              info['terminal_observation'])
    ready = (buffer.size >= self.batch_size) & (state.env_steps + self.num_envs
                                                > self.learning_starts)
    carry = (state.actor_params, state.critic_params, state.target_actor_params,
             state.target_critic_params, state.actor_opt_state, state.critic_opt_state)

    def learn(carry):
      batches = jax.vmap(lambda k: buffer.sample(k, self.batch_size))(
          jax.random.split(sample_key, self.gradient_steps))
      carry, losses = jax.lax.scan(self._gradient_step, carry, batches)
      return carry, jax.tree.map(jnp.mean, losses) | {'finite': jnp.min(losses['finite']),
                                                      'grad_norm': jnp.max(losses['grad_norm'])}

    def wait(carry):
      zero = jnp.zeros((), jnp.float32)
      return carry, {'critic_loss': zero, 'actor_loss': zero, 'q': zero, 'grad_norm': zero,
                     'finite': jnp.ones((), jnp.float32)}

    carry, losses = jax.lax.cond(ready, learn, wait, carry)
    (actor_params, critic_params, target_actor, target_critic, actor_opt_state,
     critic_opt_state) = carry
    state = state.replace(
        actor_params=actor_params, critic_params=critic_params, target_actor_params=target_actor,
        target_critic_params=target_critic, actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state, buffer=buffer, env_state=env_state,
        observation=next_observation, noise=jnp.where(done, 0.0, noise), key=key,
        env_steps=state.env_steps + self.num_envs)
    metrics = dict(losses, learning=ready.astype(jnp.float32), log_return=jnp.mean(reward),
                   episodes=jnp.sum(done.astype(jnp.float32)),
                   episode_return_sum=jnp.sum(info['episode_return']),
                   final_equity_sum=jnp.sum(info['final_equity']),
                   traded=jnp.mean((info['trade'] != 0).astype(jnp.float32)),
                   mean_action=jnp.mean(action), mean_policy_action=jnp.mean(policy_action))
    return state, metrics

  def update(self, state: DDPGState, env_params: env_lib.EnvParams):
    """One update (``rollout_steps`` iterations), traceable; :meth:`train` scans it."""
    state, steps = jax.lax.scan(lambda s, _: self._iteration(s, env_params), state, None,
                                length=self.rollout_steps)
    episodes = jnp.sum(steps['episodes'])
    learning = steps['learning']
    learned = jnp.maximum(jnp.sum(learning), 1.0)
    metrics = {name: jnp.sum(steps[name] * learning) / learned
               for name in ('critic_loss', 'actor_loss', 'q')}
    metrics.update(
        finite=jnp.min(steps['finite']), grad_norm=jnp.max(steps['grad_norm']),
        loss=metrics['critic_loss'], learning_fraction=jnp.mean(learning),
        mean_log_return=jnp.mean(steps['log_return']), episodes=episodes,
        episode_log_return=jnp.sum(steps['episode_return_sum']) / jnp.maximum(episodes, 1.0),
        episode_final_equity=jnp.sum(steps['final_equity_sum']) / jnp.maximum(episodes, 1.0),
        trade_rate=jnp.mean(steps['traded']), mean_action=jnp.mean(steps['mean_action']),
        mean_policy_action=jnp.mean(steps['mean_policy_action']),
        buffer_size=state.buffer.size.astype(jnp.float32))
    return state.replace(update=state.update + 1), metrics


@functools.partial(jax.jit, static_argnums=(0,))
def _init(agent: DDPG, key: jax.Array, env_params: env_lib.EnvParams) -> DDPGState:
  actor_key, critic_key, env_key, key = jax.random.split(key, 4)
  observation, env_state = agent_lib.reset_environments(env_key, env_params, agent.num_envs)
  actor_params = agent.actor.init(actor_key, observation[:1])
  critic_params = agent.critic.init(critic_key, observation[:1], jnp.zeros(1))
  return DDPGState(
      actor_params=actor_params, critic_params=critic_params, target_actor_params=actor_params,
      target_critic_params=critic_params,
      actor_opt_state=agent.actor_optimizer.init(actor_params),
      critic_opt_state=agent.critic_optimizer.init(critic_params),
      buffer=ReplayBuffer.create(agent.buffer_size, agent.observation_size),
      env_state=env_state, observation=observation, noise=jnp.zeros(agent.num_envs, jnp.float32),
      key=key, env_steps=jnp.zeros((), jnp.int32), update=jnp.zeros((), jnp.int32))
