"""PPO on the trading environment. ``get_config('')``, ``'quick'`` or ``'real'``.

- default: the synthetic market (6 years): 256 environments x 128 steps per update, 20 M steps,
  4 epochs of 8 minibatches, γ 0.99, GAE λ 0.95, clip 0.2, entropy 0.01, Adam 3e-4 (cosine),
  gradient clip 0.5; 512-bar episodes, hold/buy/sell long-only, fee 0.1%, slippage 1 bp.
- quick:   four synthetic weeks, a small network and ~250 k steps; seconds on a CPU.
- real:    the default agent on the real BTC/ETH store (../shared/data); validation 2023-H1,
           test 2023-H2.

python -m experiments.rl --config=configs/ppo.py[:quick|:real]
"""

import ml_collections

from configs import common
from configs import data
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/ppo.py: unknown variant {arg!r} — use "", "quick" or "real"')
  config = ml_collections.ConfigDict()
  config.name = 'ppo' + (f'-{arg}' if arg else '')
  config.data = data.get_config(arg)
  config.env = common.rl_env_config(action_mode='discrete')
  config.agent = common.ppo_agent()
  config.train = common.rl_train_config(eval_every_updates=50, log_every_updates=5)
  config.evaluation = ml_collections.ConfigDict({'splits': ('validation', 'test'),
                                                 'random_seeds': 5})
  if arg == 'quick':
    config.env.episode_length = 256
    config.agent.update(num_envs=64, num_steps=64, total_timesteps=64 * 64 * 60,
                        hidden_sizes=(32, 32), num_minibatches=4)
    config.agent.optimizer.learning_rate = 1e-3
    config.train.update(eval_every_updates=20, log_every_updates=2)
  elif arg == 'real':
    config.train.update(eval_every_updates=100, log_every_updates=10)
  return config
