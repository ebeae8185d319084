"""Proximal Policy Optimisation (Schulman et al., 2017) on the trading environment, purejaxrl style.

One update is a rollout of ``num_steps`` steps in ``num_envs`` environments (``vmap``), generalised
advantage estimation, then ``update_epochs`` passes of ``num_minibatches`` shuffled minibatches of
clipped-objective gradient steps. :meth:`PPO.train` runs ``n`` updates inside ``lax.scan`` under one
``jit``: rollout, GAE and every gradient step are one compiled program.

Rollout. ``a_t ~ softmax(logits(s_t))`` over (hold, buy, sell); rewards are the environment's
log-returns times ``reward_scale`` (100: percent, so values and advantages are O(1)).

GAE with time limits. Episodes end only by their fixed length, a truncation and not a terminal
state (the observation does not show the time left), so the bootstrap at an episode's last step is
the value of the terminal observation, and the advantage trace stops there:

  ``δ_t = r_t + γ V'_{t+1} - V(s_t)``, ``V'_{t+1} = V(terminal obs)`` if the episode ended at t,
  else ``V(s_{t+1})``; ``A_t = δ_t + γ λ (1 - done_t) A_{t+1}``; return target
  ``R_t = A_t + V(s_t)``.

Loss, per minibatch (advantages normalised to mean 0, std 1 inside it), with
``ρ = exp(log π(a|s) - log π_old(a|s))``:

  ``L = -mean(min(ρ A, clip(ρ, 1 - ε, 1 + ε) A))
       + c_v · ½ mean(max((V - R)², (V_old + clip(V - V_old, -ε, ε) - R)²))
       - c_e · mean(H[π(·|s)])``.

The optimiser is the house chain (:func:`quantum_alpha_jax.train.state.make_optimizer`): global-norm
clipping, then Adam on a cosine (or constant) schedule over all gradient steps. A minibatch whose
loss or gradient is not finite is skipped, and the host raises
:class:`~quantum_alpha_jax.train.step.NonFiniteLossError` at the end of the chunk.
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


@struct.dataclass
class PPOState:
  """Everything the training loop carries (and a checkpoint holds)."""

  params: Any
  opt_state: Any
  env_state: env_lib.EnvState  # batched [num_envs]
  observation: jax.Array  # [num_envs, D]
  key: jax.Array
  update: jax.Array  # int32, updates done


@struct.dataclass
class Transition:
  observation: jax.Array
  action: jax.Array
  log_prob: jax.Array
  value: jax.Array
  reward: jax.Array  # scaled
  done: jax.Array
  terminal_value: jax.Array
  log_return: jax.Array  # unscaled env reward
  episode_return: jax.Array
  final_equity: jax.Array
  traded: jax.Array


def config(**overrides: Any) -> ml_collections.ConfigDict:
  """PPO's hyperparameters (the ``agent`` block of configs/ppo.py)."""
  agent = ml_collections.ConfigDict({
      'name': 'ppo',
      'num_envs': 256,
      'num_steps': 128,  # rollout length per update
      'total_timesteps': 20_000_000,
      'update_epochs': 4,
      'num_minibatches': 8,
      'gamma': 0.99,
      'gae_lambda': 0.95,
      'clip_eps': 0.2,
      'ent_coef': 0.01,
      'vf_coef': 0.5,
      'reward_scale': 100.0,
      'hidden_sizes': (64, 64),
      'activation': 'tanh',
      'optimizer': state_lib.optimizer_config(learning_rate=3e-4, warmup_steps=10, clip_norm=0.5,
                                              eps=1e-5, schedule='cosine', final_lr_fraction=0.0),
  })
  agent.update(overrides)
  return agent


@dataclasses.dataclass(frozen=True, eq=False)
class PPO:
  """A discrete-action PPO agent for ``env_params``' environment (see the module docstring)."""

  network: networks.ActorCritic
  optimizer: optax.GradientTransformation
  num_envs: int
  num_steps: int
  num_updates: int
  update_epochs: int
  num_minibatches: int
  gamma: float
  gae_lambda: float
  clip_eps: float
  ent_coef: float
  vf_coef: float
  reward_scale: float

  name = 'ppo'

  @classmethod
  def from_config(cls, agent_config: ml_collections.ConfigDict,
                  env_params: env_lib.EnvParams) -> PPO:
    if env_params.action_mode != 'discrete':
      raise errors.ConfigError(errors.describe(
          'config.env.action_mode', f'PPO here acts on discrete actions, the environment is '
          f'{env_params.action_mode!r}', 'set --config.env.action_mode=discrete (or use DDPG)'))
    num_envs, num_steps = (agent_lib.positive_int(agent_config, n)
                           for n in ('num_envs', 'num_steps'))
    epochs, minibatches = (agent_lib.positive_int(agent_config, n)
                           for n in ('update_epochs', 'num_minibatches'))
    batch = num_envs * num_steps
    if batch % minibatches:
      raise errors.ConfigError(errors.describe(
          'config.agent', f'num_envs * num_steps = {batch} does not split into '
          f'{minibatches} minibatches', 'make num_minibatches divide num_envs * num_steps'))
    num_updates = int(agent_config.total_timesteps) // batch
    if num_updates < 1:
      raise errors.ConfigError(errors.describe(
          'config.agent.total_timesteps', f'{agent_config.total_timesteps} is less than one '
          f'rollout of num_envs * num_steps = {batch} steps', f'use at least {batch}'))
    agent_lib.check_activation(agent_config)
    optimizer, _ = state_lib.make_optimizer(agent_config.optimizer,
                                            num_updates * epochs * minibatches)
    return cls(
        network=networks.ActorCritic(env_params.num_actions, tuple(agent_config.hidden_sizes),
                                     agent_config.activation),
        optimizer=optimizer, num_envs=num_envs, num_steps=num_steps, num_updates=num_updates,
        update_epochs=epochs, num_minibatches=minibatches, gamma=float(agent_config.gamma),
        gae_lambda=float(agent_config.gae_lambda), clip_eps=float(agent_config.clip_eps),
        ent_coef=float(agent_config.ent_coef), vf_coef=float(agent_config.vf_coef),
        reward_scale=float(agent_config.reward_scale))

  @property
  def steps_per_update(self) -> int:
    """Environment steps per update."""
    return self.num_envs * self.num_steps

  def init(self, key: jax.Array, env_params: env_lib.EnvParams) -> PPOState:
    """Fresh parameters, optimiser state and ``num_envs`` reset environments."""
    return _init(self, key, env_params)

  def train(self, state: PPOState, env_params: env_lib.EnvParams, num_updates: int
            ) -> tuple[PPOState, dict[str, jax.Array]]:
    """``num_updates`` updates under one jit; metrics are ``[num_updates]`` arrays."""
    return agent_lib.run_updates(self, state, env_params, num_updates)

  def policy_params(self, state: PPOState) -> Any:
    return state.params

  def act(self, params: Any, observation: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """The greedy action ``argmax logits`` (deterministic; ``key`` unused)."""
    del key
    logits, _ = self.network.apply(params, observation)
    return jnp.argmax(logits, axis=-1)

  def sample(self, params: Any, observation: jax.Array, key: jax.Array) -> jax.Array:
    """An action drawn from the policy."""
    logits, _ = self.network.apply(params, observation)
    return jax.random.categorical(key, logits)

  # --------------------------------------------------------------------------------------------

  def _rollout(self, params, env_state, observation, key, env_params):
    step = jax.vmap(env_lib.step, in_axes=(0, 0, 0, None))

    def one_step(carry, _):
      env_state, observation, key = carry
      key, action_key, step_key = jax.random.split(key, 3)
      logits, value = self.network.apply(params, observation)
      action = jax.random.categorical(action_key, logits)
      next_observation, env_state, reward, done, info = step(
          jax.random.split(step_key, self.num_envs), env_state, action, env_params)
      terminal_value = self.network.apply(params, info['terminal_observation'],
                                          method=networks.ActorCritic.value)
      transition = Transition(
          observation=observation, action=action,
          log_prob=networks.categorical_log_prob(logits, action), value=value,
          reward=reward * self.reward_scale, done=done, terminal_value=terminal_value,
          log_return=reward, episode_return=info['episode_return'],
          final_equity=info['final_equity'], traded=info['trade'] != 0)
      return (env_state, next_observation, key), transition

    return jax.lax.scan(one_step, (env_state, observation, key), None, length=self.num_steps)

  def advantages(self, trajectory: Transition, last_value: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """GAE with time-limit bootstrapping (module docstring); ``[T, N]`` advantages and returns."""
    next_values = jnp.concatenate([trajectory.value[1:], last_value[None]], axis=0)
    bootstrap = jnp.where(trajectory.done, trajectory.terminal_value, next_values)
    deltas = trajectory.reward + self.gamma * bootstrap - trajectory.value
    decay = self.gamma * self.gae_lambda * (1.0 - trajectory.done.astype(jnp.float32))

    def backward(advantage, inputs):
      delta, factor = inputs
      advantage = delta + factor * advantage
      return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(last_value), (deltas, decay),
                                 reverse=True)
    return advantages, advantages + trajectory.value

  def loss(self, params, batch):
    """The clipped PPO loss of a minibatch (module docstring) and its parts."""
    logits, value = self.network.apply(params, batch['observation'])
    log_prob = networks.categorical_log_prob(logits, batch['action'])
    log_ratio = log_prob - batch['log_prob']
    ratio = jnp.exp(log_ratio)
    advantage = batch['advantage']
    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    policy_loss = -jnp.mean(jnp.minimum(
        ratio * advantage, jnp.clip(ratio, 1.0 - self.clip_eps, 1.0 + self.clip_eps) * advantage))
    clipped = batch['value'] + jnp.clip(value - batch['value'], -self.clip_eps, self.clip_eps)
    value_loss = 0.5 * jnp.mean(jnp.maximum(jnp.square(value - batch['target']),
                                            jnp.square(clipped - batch['target'])))
    entropy = jnp.mean(networks.categorical_entropy(logits))
    total = policy_loss + self.vf_coef * value_loss - self.ent_coef * entropy
    return total, {'policy_loss': policy_loss, 'value_loss': value_loss, 'entropy': entropy,
                   'approx_kl': jnp.mean((ratio - 1.0) - log_ratio),
                   'clip_fraction': jnp.mean((jnp.abs(ratio - 1.0) > self.clip_eps)
                                             .astype(jnp.float32))}

  def update(self, state: PPOState, env_params: env_lib.EnvParams
             ) -> tuple[PPOState, dict[str, jax.Array]]:
    """One update (rollout, GAE, minibatch epochs), traceable; :meth:`train` scans it."""
    key, rollout_key, shuffle_key = jax.random.split(state.key, 3)
    (env_state, observation, _), trajectory = self._rollout(
        state.params, state.env_state, state.observation, rollout_key, env_params)
    last_value = self.network.apply(state.params, observation, method=networks.ActorCritic.value)
    advantage, target = self.advantages(trajectory, last_value)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    batch = {'observation': flat(trajectory.observation), 'action': flat(trajectory.action),
             'log_prob': flat(trajectory.log_prob), 'value': flat(trajectory.value),
             'advantage': flat(advantage), 'target': flat(target)}
    size = self.steps_per_update

    def minibatch_step(carry, minibatch):
      params, opt_state = carry
      (loss, parts), grads = jax.value_and_grad(self.loss, has_aux=True)(params, minibatch)
      grad_norm = optax.global_norm(grads)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      updates, new_opt_state = self.optimizer.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
      carry = (keep(new_params, params), keep(new_opt_state, opt_state))
      return carry, dict(parts, loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))

    def epoch(carry, epoch_key):
      permutation = jax.random.permutation(epoch_key, size)
      shuffled = jax.tree.map(
          lambda x: jnp.take(x, permutation, axis=0).reshape(
              (self.num_minibatches, -1) + x.shape[1:]), batch)
      return jax.lax.scan(minibatch_step, carry, shuffled)

    (params, opt_state), losses = jax.lax.scan(
        epoch, (state.params, state.opt_state), jax.random.split(shuffle_key, self.update_epochs))
    finished = trajectory.done.astype(jnp.float32)
    episodes = jnp.sum(finished)
    metrics = {name: jnp.mean(value) for name, value in losses.items()}
    metrics.update(
        finite=jnp.min(losses['finite']), grad_norm=jnp.max(losses['grad_norm']),
        mean_log_return=jnp.mean(trajectory.log_return),
        episodes=episodes,
        episode_log_return=jnp.sum(trajectory.episode_return) / jnp.maximum(episodes, 1.0),
        episode_final_equity=jnp.sum(trajectory.final_equity) / jnp.maximum(episodes, 1.0),
        trade_rate=jnp.mean(trajectory.traded.astype(jnp.float32)),
        buy_fraction=jnp.mean((trajectory.action == env_lib.BUY).astype(jnp.float32)),
        sell_fraction=jnp.mean((trajectory.action == env_lib.SELL).astype(jnp.float32)),
        explained_variance=1.0 - jnp.var(target - trajectory.value) / (jnp.var(target) + 1e-8))
    state = PPOState(params=params, opt_state=opt_state, env_state=env_state,
                     observation=observation, key=key, update=state.update + 1)
    return state, metrics


@functools.partial(jax.jit, static_argnums=(0,))
def _init(agent: PPO, key: jax.Array, env_params: env_lib.EnvParams) -> PPOState:
  init_key, env_key, key = jax.random.split(key, 3)
  observation, env_state = agent_lib.reset_environments(env_key, env_params, agent.num_envs)
  params = agent.network.init(init_key, observation[:1])
  return PPOState(params=params, opt_state=agent.optimizer.init(params), env_state=env_state,
                  observation=observation, key=key, update=jnp.zeros((), jnp.int32))
