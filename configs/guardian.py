"""The Guardian (contrastive β-VAE regime detector). ``get_config('')``, ``'quick'`` or ``'real'``.

- default: the seed's best config on the embedded synthetic market (6 years): window 120, latent 64,
  encoder/decoder hidden dims (256, 128, 64), batch 512, lr 1e-3, beta 4.0, temperature 0.5,
  100 epochs; labels are the market's true regimes.
- quick:   a small model on four synthetic weeks (configs/data.py:quick); trains in seconds on a CPU.
- real:    the default model on the real BTC/ETH store (../shared/data); validation 2023-H1,
           test 2023-H2; labels from the trend rule over the past and next bars (tasks/guardian.py).
"""

import ml_collections

from configs import common
from configs import data
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/guardian.py: unknown variant {arg!r} — use "", "quick" or "real"')
  config = ml_collections.ConfigDict()
  config.name = 'guardian' + (f'-{arg}' if arg else '')
  config.data = data.get_config(arg)
  config.model = ml_collections.ConfigDict({
      'window': 120, 'latent_dim': 64, 'hidden_dims': (256, 128, 64), 'projection_dim': 64,
      'head_hidden': 64,
      'bar_embedding': 0,  # > 0: a shared per-bar Dense before flattening the window
      'dropout_rate': 0.0,
      'detach_heads': False,  # True: the heads read stop_gradient(latent mean), a pure probe
  })
  config.loss = ml_collections.ConfigDict({
      'beta': 4.0, 'temperature': 0.5,
      'free_bits': 0.0,  # nats per latent (batch mean); 0 = plain β-VAE
      'contrastive_weight': 1.0, 'regime_weight': 1.0, 'risk_weight': 1.0,
  })
  config.augment = ml_collections.ConfigDict({
      'jitter': 0.05, 'scale': 0.1, 'max_shift': 4, 'mask_probability': 0.1})
  config.labels = ml_collections.ConfigDict({
      'source': 'auto',  # 'auto': true regimes where the store has them, else the rule
      'horizon': 60,  # bars ahead: the forward volatility (risk) and the rule's future half
      'lookback': 60,  # bars back (up to the anchor) in the rule and the trailing baselines
      'trend_threshold': 0.5,  # |trend statistic| above it: bull / bear, else sideways
  })
  config.train = common.train_config(batch_size=512, num_epochs=100, patience=15,
                                     validation_metric='regime_cross_entropy')
  config.train.optimizer.learning_rate = 1e-3
  config.evaluation = ml_collections.ConfigDict({
      'splits': ('validation', 'test'),
      'max_windows': 0,  # 0: every window of the split; else every k-th, at most this many
      'batch_size': 1024,
  })
  if arg == 'quick':
    config.model.update(latent_dim=16, hidden_dims=(64, 32), projection_dim=16, head_hidden=32)
    config.train.update(batch_size=128, num_steps=300, eval_every_steps=100, log_every_steps=25,
                        max_eval_batches=20, patience=0)
    config.train.optimizer.update(learning_rate=3e-3, warmup_steps=20)
  elif arg == 'real':
    # ~0.75 M training windows (1.5 k steps per epoch at batch 512): evaluate every 1000 steps on
    # a slice of 2023-H1 and let early stopping end the run; bound it with --config.train.num_steps.
    config.train.update(eval_every_steps=1000, max_eval_batches=100, log_every_steps=50)
  return config
