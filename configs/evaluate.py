"""Evaluate a saved run on any store and date range (see quantum_alpha_jax/evaluate/saved.py).

python -m experiments.evaluate --config=configs/evaluate.py --config.model=oracle \
    --config.checkpoint=checkpoints/oracle-quick [--config.data=data_store/real] \
    [--config.start=2023-07-01 --config.end=2024-01-01] [--config.allow_validation=True] \
    [--workdir=DIR]
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = 'oracle'  # oracle | lstm | guardian | strategist
  config.checkpoint = ''  # the run's workdir (holds checkpoints/)
  config.data = ''  # a feature store directory; empty: the store the run was trained on
  config.start = ''  # evaluated range [start, end); empty: the run's own test split
  config.end = ''
  # A range overlapping the run's validation split (which chose the checkpoint) is refused unless
  # this is True; its results are then labelled "validation (used for model selection)".
  config.allow_validation = False
  config.max_windows = 0  # 0: every window of the range
  config.batch_size = 256
  return config
