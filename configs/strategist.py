"""The Strategist (Decision Transformer). ``get_config('')``, ``'quick'`` or ``'real'``.

- default: the seed's best config on the embedded synthetic market (6 years): context 90 (= the
  episode length, 7.5 hours of 5-minute bars), hidden 256, 6 layers, 8 heads, dropout 0.1, lr 1e-4,
  batch 128, 200 epochs, reward scale 1.0, rtg scale 1000, discount 0.99. Behaviours and tokens
  (issue 14): causal rules only (trend, four momentum rules, mean reversion, random), at full size,
  deviating at random and recovering; each episode's return token is its behaviour's mean training
  return, and the rollout asks for the best (the 0.99 quantile).
- quick:   a tiny Decision Transformer on four synthetic weeks; trains in seconds on a CPU.
- real:    the default model on the real BTC/ETH store (../shared/data); validation 2023-H1,
           test 2023-H2.
"""

import ml_collections

from configs import common
from configs import data
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/strategist.py: unknown variant {arg!r} — use "", "quick" or "real"')
  config = ml_collections.ConfigDict()
  config.name = 'strategist' + (f'-{arg}' if arg else '')
  config.data = data.get_config(arg)
  # Episodes are one context long: the rollout then decodes each episode exactly with a cache.
  config.model = ml_collections.ConfigDict({
      'context_length': 90, 'hidden_size': 256, 'num_layers': 6, 'num_heads': 8,
      'dropout_rate': 0.1,
      # Dropout on the attention weights costs ~30% of a CPU step (random bits per score): off.
      'attention_dropout_rate': 0.0})
  config.size_loss_weight = 1.0
  # Cross-entropy weight of each action (hold, buy, sell): trades are rare, holds dominate.
  config.action_weights = (1.0, 1.0, 1.0)
  # data/trajectories.py: how episodes are cut, acted and scored.
  config.trajectories = ml_collections.ConfigDict({
      'stride': 8,  # bars between training episode starts (each start gets one behaviour)
      'evaluation_stride': 0,  # validation/test episodes: 0 = one context apart (no overlap)
      'discount': 0.99,
      'reward_scale': 1.0,
      'rtg_scale': 1000.0,  # return tokens in units of 0.1%
      'allow_short': False,
      # Causal behaviours only, spanning ruinous (3-bar momentum, mean reversion, random) to the
      # best rules: the hindsight oracle's actions depend on the next bars, so a causal model
      # cannot imitate them and, where its episodes fill the high returns, learns to hold.
      'policies': ('trend', 'mean_reversion', 'random', 'momentum'),
      'policy_weights': (1.0, 1.0, 1.0, 4.0),
      'oracle_noise': (0.0, 0.5, 1.0, 2.0),
      'momentum_rules': ((3, 0.0), (12, 0.5), (60, 0.5), (60, 1.0)),
      'rule_noise': 0.05,  # the rules deviate at random and recover (data/trajectories.py)
      # Tokens: each behaviour's mean training return, not the episode's luck (data/trajectories.py:
      # conditioned on realised returns-to-go the model ignores the state and holds).
      'condition_on': 'behaviour',
      # Full size, as the baselines trade: random sizes, unrelated to anything, only teach the size
      # head their mean (the Strategist then held ~0.65 of equity).
      'sizes': (1.0,),
      'initial_flat_probability': 0.5,
      'fee_rate': 0.001,
      'slippage_bps': 1.0,
      'seed': 0,
  })
  # 8 micro-batches of 16 per step: the same update as one batch of 128, ~2-3x faster on a CPU
  # (the [batch, heads, 270, 270] attention tensors stay small; benchmarks/strategist.py).
  config.train = common.train_config(batch_size=128, num_epochs=200, patience=15,
                                     accumulation_steps=8)
  config.train.optimizer.update(name='adamw', learning_rate=1e-4, weight_decay=1e-4,
                                warmup_steps=1000, clip_norm=0.25)
  config.evaluation = ml_collections.ConfigDict({
      'splits': ('test',),
      # The rollout is conditioned on this quantile of the training episodes' return tokens (0.99:
      # the best behaviour's mean return, with condition_on='behaviour').
      'target_quantile': 0.99,
      'conditioning_quantiles': (0.25, 0.5, 0.75, 0.9, 0.99),  # the realised-vs-target curve
      'curve_max_bars': 0,  # 0: the whole split for the curve too; else each symbol's first bars
      'batch_size': 64,  # rollout items per jitted batch
      # The teacher-forced imitation score (diagnostic only: it is fed hindsight) on at most this
      # many non-overlapping oracle episodes; 0: all of them.
      'imitation_max_episodes': 0,
  })
  if arg == 'quick':
    config.model.update(context_length=24, hidden_size=32, num_layers=2, num_heads=2,
                        dropout_rate=0.0)
    config.trajectories.stride = 2
    config.train.update(batch_size=64, num_steps=300, eval_every_steps=100, log_every_steps=25,
                        max_eval_batches=10, patience=0, accumulation_steps=1)
    config.train.optimizer.update(learning_rate=3e-3, warmup_steps=30, clip_norm=1.0)
  elif arg == 'real':
    # ~0.6 M training bars (2019-2022); at stride 8 about 75 k episodes, ~590 steps per epoch at
    # batch 128. A 2-core CPU trains ~5 sequences/s at this size, so bound the run with
    # --config.train.num_steps and evaluate every 500 steps on a slice of 2023-H1.
    config.train.update(eval_every_steps=500, max_eval_batches=20, log_every_steps=25)
    config.evaluation.curve_max_bars = 20_000
  return config
