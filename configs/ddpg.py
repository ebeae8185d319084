"""DDPG on the trading environment (continuous target position). ``get_config('')``, ``'quick'`` or
``'real'``.

- default: the synthetic market (6 years): 16 environments, 2 M steps, a 200 k-transition replay
  ring, minibatches of 256, 2 gradient steps per vectorised step after 10 k random steps, γ 0.9
  (a position's effect is mostly immediate: the next bar's return and the fee; a long horizon
  buries that action-dependent part of Q under the variance of far-off returns), τ 0.005, Gaussian
  noise σ 0.2, actor Adam 1e-4, critic 1e-3; 512-bar episodes, target weight in [0, 1], rebalanced
  when it moves more than 0.05 from the held weight, fee 0.1%, slippage 1 bp.
- quick:   four synthetic weeks, a small network and ~60 k steps; seconds on a CPU.
- real:    the default agent on the real BTC/ETH store (../shared/data); validation 2023-H1,
           test 2023-H2.

python -m experiments.rl --config=configs/ddpg.py[:quick|:real]
"""

import ml_collections

from configs import common
from configs import data
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/ddpg.py: unknown variant {arg!r} — use "", "quick" or "real"')
  config = ml_collections.ConfigDict()
  config.name = 'ddpg' + (f'-{arg}' if arg else '')
  config.data = data.get_config(arg)
  config.env = common.rl_env_config(action_mode='continuous')
  config.env.rebalance_threshold = 0.05
  config.agent = common.ddpg_agent(gamma=0.9)
  config.train = common.rl_train_config(eval_every_updates=200, log_every_updates=20)
  config.evaluation = ml_collections.ConfigDict({'splits': ('validation', 'test'),
                                                 'random_seeds': 5})
  if arg == 'quick':
    config.env.episode_length = 256
    config.agent.update(num_envs=8, rollout_steps=32, total_timesteps=8 * 32 * 240,
                        hidden_sizes=(32, 32), buffer_size=20_000, batch_size=128,
                        learning_starts=4_000, gradient_steps=2)
    config.agent.actor_optimizer.learning_rate = 3e-4
    config.train.update(eval_every_updates=60, log_every_updates=10)
  elif arg == 'real':
    config.train.update(eval_every_updates=400, log_every_updates=40)
  return config
