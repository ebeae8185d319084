"""The decision service (``experiments.serve``). ``get_config('')``.

The ensemble rule's parameters (``backtest/ensemble.py`` ``ensemble_config``: the same defaults as
``configs/backtest.py``, so the service decides as the backtest does), the model backend, the
store's fill limit and the polling of a followed file.
"""

import ml_collections

from configs import common
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg:
    raise ConfigError(f'configs/serve.py: unknown variant {arg!r} — use ""')
  config = ml_collections.ConfigDict()
  config.name = 'serve'
  config.backend = 'onnx'  # 'onnx' (onnxruntime, 1 thread) or 'jax' (jit of the run's model)
  config.ensemble = common.ensemble_config()
  config.fill_limit_bars = 72  # as configs/data.py: longer holes start a new segment
  # Decisions start at this bar (None: the first); earlier bars only warm the features up.
  config.start = ml_collections.config_dict.placeholder(str)
  config.poll_seconds = 1.0  # --follow: how often the input is read for new lines
  config.idle_seconds = ml_collections.config_dict.placeholder(float)  # --follow: stop after
  return config
