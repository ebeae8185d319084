"""The defaults several configs share, as plain values (big_vision's ``configs/common.py``).

A config describes a run and imports nothing of the library (tests/test_imports.py): reading or
editing ``configs/oracle.py`` then never pulls in jax, Grain or the trainer, and what a run will
use is written here, in one place, rather than hidden in a library call. The library keeps its own
copies (``train/loop.train_config`` and friends) for code that builds configs in Python;
tests/test_config_defaults.py compares every block here with the library's, so the two cannot
drift apart.
"""

from pathlib import Path
from typing import Any

import ml_collections

# The repository root: run workdirs default to <root>/checkpoints/<name> (quantum_alpha_jax/cli.py).
_ROOT = Path(__file__).resolve().parents[1]

# The ensemble's components, in the order it reads them (quantum_alpha_jax/backtest/ensemble.py).
ENSEMBLE_COMPONENTS = ('strategist', 'oracle', 'guardian')

# Costs (quantum_alpha_jax/fills.py): Binance spot taker fee per side, slippage, starting capital.
FEE_RATE = 0.001
SLIPPAGE_BPS = 1.0
INITIAL_CAPITAL = 10_000.0


def default_workdir(name: str) -> str:
  """``checkpoints/<name>`` under the repository (where a run goes without ``--workdir``)."""
  return str(_ROOT / 'checkpoints' / name)


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The optimizer block (train/state.py): Adam, warmup then cosine to 1%, clip 1.0."""
  config = ml_collections.ConfigDict({
      'name': 'adam', 'learning_rate': 1e-3, 'schedule': 'cosine', 'warmup_steps': 100,
      'final_lr_fraction': 0.01, 'clip_norm': 1.0, 'weight_decay': 1e-4,
      'b1': 0.9, 'b2': 0.999, 'eps': 1e-8})
  config.update(overrides)
  return config


def train_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``train`` block of the supervised models (train/loop.py); each model overrides some."""
  config = ml_collections.ConfigDict({
      'seed': 0,
      'batch_size': 256,  # global, over all processes and devices
      'num_epochs': 100,
      'num_steps': 0,  # > 0 overrides num_epochs
      'eval_every_steps': 0,  # 0: once per epoch
      'max_eval_batches': 0,  # 0: the whole validation split; else a fixed subset over every
                              # symbol and the whole split (loop.evaluation_anchors)
      'log_every_steps': 50,
      'patience': 15,  # evaluations without improvement before stopping; 0: never stop early
      'min_delta': 0.0,
      'validation_metric': 'loss',
      'validation_mode': 'min',
      'keep_checkpoints': 3,
      'compute_dtype': 'auto',  # bfloat16 on GPU/TPU, float32 on CPU
      'accumulation_steps': 1,
      'num_devices': 0,  # 0: every device
      'num_workers': 0,  # Grain worker processes for the training batches
      'progress_interval_seconds': 10.0,
      'population': 1,  # K > 1: K members (seeds seed..seed+K-1) in one vmapped step (population.py)
      'population_learning_rates': (),  # one peak rate per member; () = optimizer.learning_rate
      'population_learning_rate_spread': 0.0,  # > 0: K rates log-spaced over this many decades
      'optimizer': optimizer_config(),
  })
  config.update(overrides)
  return config


def ensemble_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ensemble rule's parameters (backtest/ensemble.py); ``use_*`` switch components on and off."""
  config = ml_collections.ConfigDict({
      'use_strategist': True,
      'use_oracle': True,
      'use_guardian': True,
      'allow_short': False,
      'oracle': {'enter': 0.55, 'gate': 0.5, 'uncertainty_ratio': 1.5,
                 'uncertainty_halflife_bars': 288},
      'guardian': {'risk_scale': (1.0, 0.75, 0.25), 'regime_scale': (1.0, 0.5, 1.0),
                   'flat_in_high_risk_bear': True},
  })
  config.update(overrides)
  return config


def rl_env_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``env`` block of the RL configs (rl/market.py): the environment's rules and market."""
  config = ml_collections.ConfigDict({
      'episode_length': 512,  # steps (5-minute bars) per training episode
      'lookback': 1,  # bars of features in an observation
      'action_mode': 'discrete',  # or 'continuous'
      'allow_short': False,
      'fee_rate': FEE_RATE,  # per side on traded notional (Binance spot taker)
      'slippage_bps': SLIPPAGE_BPS,
      # None: trade only when the target changes; a weight h: whenever |target - weight| > h.
      'rebalance_threshold': ml_collections.config_dict.placeholder(float),
      'max_hole_bars': 1,  # longest run of filled bars an episode may touch
      'feature_clip': 10.0,  # normalised features are clipped to [-clip, clip]
      'normalizer_sample_size': 100_000,  # training bars the feature statistics are fitted on
  })
  config.update(overrides)
  return config


def rl_train_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``train`` block of the RL configs (rl/experiment.py): seed, cadence, checkpoints."""
  config = ml_collections.ConfigDict({
      'seed': 0,
      'eval_every_updates': 50,  # one jitted chunk, then validation and a checkpoint
      'log_every_updates': 5,
      'keep_checkpoints': 3,
      'num_devices': 0,  # 0: every local device; the environments are split over them
      'progress_interval_seconds': 10.0,
  })
  config.update(overrides)
  return config


def ppo_agent(**overrides: Any) -> ml_collections.ConfigDict:
  """PPO's hyperparameters, the ``agent`` block of configs/ppo.py (rl/ppo.py)."""
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
      'optimizer': optimizer_config(learning_rate=3e-4, warmup_steps=10, clip_norm=0.5,
                                    eps=1e-5, schedule='cosine', final_lr_fraction=0.0),
  })
  agent.update(overrides)
  return agent


def ddpg_agent(**overrides: Any) -> ml_collections.ConfigDict:
  """DDPG's hyperparameters, the ``agent`` block of configs/ddpg.py (rl/ddpg.py)."""
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
      'actor_optimizer': optimizer_config(learning_rate=1e-4, warmup_steps=0, clip_norm=1.0,
                                          schedule='constant'),
      'critic_optimizer': optimizer_config(learning_rate=1e-3, warmup_steps=0, clip_norm=1.0,
                                           schedule='constant'),
  })
  agent.update(overrides)
  return agent
