"""The main job, end to end: ``get_config('')`` (default) or ``'quick'``.

Stages, in order (``experiments/main.py``):
1. the feature store of the embedded synthetic market (6 years by default, four weeks in quick);
2. the quick Oracle (``configs/oracle.py:quick``): train, evaluate beside the baselines, plots.
Later stages (the other models, the backtest, export) add their sub-configs here.
"""

import ml_collections

from configs import data
from configs import oracle


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = data.get_config(arg)
  config.oracle = oracle.get_config('quick')
  config.workdir = ml_collections.config_dict.placeholder(str)  # default checkpoints/<name>
  return config
