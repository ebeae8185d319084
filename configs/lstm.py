"""The LSTM baseline (an LSTM encoder-decoder on the Oracle's windows). ``get_config('')``,
``'quick'`` or ``'real'``.

- default: the Oracle's windows (encoder 60, decoder 24) and training (lr 1e-3, batch 256, 100
  epochs, patience 15, clip 0.1) on the embedded synthetic market; hidden 128, 2 LSTM layers,
  dropout 0.1.
- quick:   hidden 16, one layer, four synthetic weeks; trains in seconds on a CPU.
- real:    the default model on the real BTC/ETH store (../shared/data); validation 2023-H1,
           test 2023-H2.

The data, training and evaluation blocks are the Oracle's (``configs/oracle.py``), so the two
results.json files compare like with like.
"""

import ml_collections

from configs import oracle
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/lstm.py: unknown variant {arg!r} — use "", "quick" or "real"')
  config = oracle.get_config(arg)
  config.name = 'lstm' + (f'-{arg}' if arg else '')
  windows = {key: config.model[key] for key in ('encoder_length', 'decoder_length', 'quantiles')}
  config.model = ml_collections.ConfigDict({
      'architecture': 'lstm', **windows, 'hidden_size': 128, 'num_layers': 2,
      'dropout_rate': 0.1})
  if arg == 'quick':
    config.model.update(hidden_size=16, num_layers=1)
  return config
