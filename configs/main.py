"""The main job, end to end on the embedded synthetic market: ``get_config('')`` or ``'quick'``.

Stages so far: build the feature store. Later stages (train, backtest, export) add their sub-configs
here and run in order in ``experiments/main.py``.
"""

import ml_collections

from configs import data


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = data.get_config(arg)
  return config
