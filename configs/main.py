"""The main job, end to end: ``get_config('')`` (default) or ``'quick'``.

Stages, in order (``experiments/main.py``), every model at its ``:quick`` size so the whole job
runs in minutes on a CPU:
1. the feature store of the embedded synthetic market (6 years by default, four weeks in quick);
2. the Oracle (TFT), 3. the Guardian (contrastive VAE), 4. the Strategist (Decision Transformer):
   each trained on the quick market, evaluated beside its baselines, with plots;
5. the ensemble backtest of the three on the quick market's test days, with the ablation table;
6. export of the three to ONNX (and a TF SavedModel) with parity checks, when the ``export`` extra
   is installed.
Outputs go to ``<workdir>/<config name>`` (``workdir`` defaults to ``checkpoints``).
"""

import ml_collections

from configs import backtest
from configs import data
from configs import export
from configs import guardian
from configs import oracle
from configs import strategist


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = data.get_config(arg)
  config.oracle = oracle.get_config('quick')
  config.guardian = guardian.get_config('quick')
  config.strategist = strategist.get_config('quick')
  config.backtest = backtest.get_config('quick')
  config.export = export.get_config('quick')
  config.workdir = ml_collections.config_dict.placeholder(str)  # default: checkpoints/
  return config
