"""The linear forecaster (the fifth head: a linear or one-block N-BEATS-style map on the Oracle's
windows). ``get_config('')``, ``'quick'`` or ``'real'``.

- default: the Oracle's windows (encoder 60, decoder 24), data, training and evaluation; one ReLU
  block of 64 units, dropout 0.1.
- quick:   purely linear (hidden 0) on four synthetic weeks; trains in seconds on a CPU.
- real:    the default model on the real BTC/ETH store (../shared/data).

The data, training and evaluation blocks are the Oracle's (``configs/oracle.py``), so the
results.json files compare like with like.
"""

import ml_collections

from configs import oracle
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/linear.py: unknown variant {arg!r} — use "", "quick" or "real"')
  config = oracle.get_config(arg)
  config.name = 'linear' + (f'-{arg}' if arg else '')
  windows = {key: config.model[key] for key in ('encoder_length', 'decoder_length', 'quantiles')}
  config.model = ml_collections.ConfigDict({
      'architecture': 'linear', **windows, 'hidden_size': 64, 'dropout_rate': 0.1})
  if arg == 'quick':
    config.model.update(hidden_size=0, dropout_rate=0.0)
  return config
