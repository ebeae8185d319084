"""The Oracle (Temporal Fusion Transformer). ``get_config('')``, ``'quick'`` or ``'real'``.

- default: the seed's best config on the embedded synthetic market (6 years): encoder 60,
  decoder 24, hidden 128, 4 heads, hidden continuous 64, 2 LSTM layers, dropout 0.1, lr 1e-3,
  batch 256, 100 epochs, patience 15, clip 0.1.
- quick:   a small TFT on four synthetic weeks; trains in seconds on a CPU.
- real:    the default model on the real BTC/ETH store (../shared/data); validation 2023-H1,
           test 2023-H2.
"""

import ml_collections

from configs import common
from configs import data
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/oracle.py: unknown variant {arg!r} — use "", "quick" or "real"')
  config = ml_collections.ConfigDict()
  config.name = 'oracle' + (f'-{arg}' if arg else '')
  config.data = data.get_config(arg)
  config.model = ml_collections.ConfigDict({
      'encoder_length': 60, 'decoder_length': 24, 'hidden_size': 128, 'num_heads': 4,
      'hidden_continuous_size': 64, 'lstm_layers': 2, 'dropout_rate': 0.1,
      'quantiles': (0.1, 0.5, 0.9)})
  config.target_scale = 100.0  # train on percent log-returns
  config.train = common.train_config(batch_size=256, num_epochs=100, patience=15)
  config.train.optimizer.learning_rate = 1e-3
  config.train.optimizer.clip_norm = 0.1
  config.evaluation = ml_collections.ConfigDict({
      'splits': ('validation', 'test'),
      'max_windows': 0,  # 0: every window of the split
      'fan_windows': 4,
  })
  if arg == 'quick':
    config.model.update(hidden_size=16, num_heads=2, hidden_continuous_size=8, lstm_layers=1)
    config.train.update(batch_size=64, num_steps=150, eval_every_steps=50, log_every_steps=25,
                        max_eval_batches=10, patience=0)
    config.train.optimizer.update(learning_rate=3e-3, warmup_steps=20)
  elif arg == 'real':
    # 2019-2022 gives ~0.8 M training windows (3.3 k steps per epoch at batch 256). A CPU does a
    # few hundred samples a second, so evaluate every 1000 steps on a slice of 2023-H1 and let early
    # stopping end the run; use --config.train.num_steps=... to bound it.
    config.train.update(eval_every_steps=1000, max_eval_batches=100, log_every_steps=50)
  return config
