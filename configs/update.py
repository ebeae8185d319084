"""Continual retraining with the model store. ``get_config('')``, ``'quick'`` or ``'real'``; another
model than the Oracle as ``'<variant>,<model>'`` (``'quick,lstm'``: ``configs/lstm.py:quick``).

- quick:   the quick Oracle. A synthetic feed delivers 21 days of Binance daily zips and a cycle
           trains the first version (promoted: nothing to beat yet); then 7 more days and a
           fine-tune cycle, promoted only if it beats the promoted version on the newest 3 days.
           Running it again continues the feed. ``--config.simulate=True``: walk-forward over
           February to April 2024 of the synthetic market, month by month.
- default: the seed Oracle on klines arriving in ``--config.kline_dir`` (default
           ``<workdir>/klines``): 180 days of training, 14 of validation, the newest 7 held out.
           ``--config.simulate=True`` replays 2024 month by month on the 6-year synthetic store.
- real:    the same on the real-data Oracle config; ``--config.simulate=True`` replays 2023 month
           by month on the real BTC/ETH store.

Every path left unset lives in the workdir: ``models/`` (the model store, the ingest ledger and
each cycle's run), ``features/`` (the feature store the klines build), ``klines/`` and
``jax_cache/`` (JAX's compilation cache; ``--config.compilation_cache_dir=''`` turns it off).
"""

import importlib

import ml_collections

from configs import data
from quantum_alpha_jax.errors import ConfigError, describe


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  variant, _, model = arg.partition(',')
  model = model or 'oracle'
  if variant not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/update.py: unknown variant {variant!r} — use "", "quick" or "real" '
                      '(optionally ",<model>")')
  try:
    model_configs = importlib.import_module(f'configs.{model}')
  except ModuleNotFoundError:
    raise ConfigError(describe('configs/update.py', f'no configs/{model}.py for model {model!r}',
                               'use e.g. "quick,oracle"')) from None
  config = ml_collections.ConfigDict()
  config.name = 'update' + ('' if model == 'oracle' else f'-{model}') + (
      f'-{variant}' if variant else '')
  config.model = model  # quantum_alpha_jax/tasks/<model>.py; also the name in the model store
  config.task = model_configs.get_config(variant)  # the model's own config (model, train, data)
  # Paths (None: a folder of the workdir, see the module doc).
  config.models_dir = ml_collections.config_dict.placeholder(str)
  config.store_dir = ml_collections.config_dict.placeholder(str)
  config.kline_dir = ml_collections.config_dict.placeholder(str)
  config.compilation_cache_dir = ml_collections.config_dict.placeholder(str)
  # The cycle: train on a sliding window, judge on the newest days.
  config.mode = 'finetune'  # or 'scratch'; the first cycle always trains from scratch
  config.train_days = 180.0
  config.validation_days = 14.0
  config.holdout_days = 7.0
  config.metric = 'loss'  # a metric of the task's loss_fn (the Oracle: mean pinball loss)
  config.metric_mode = 'min'
  config.margin = 0.0  # promote only if better by this fraction of the promoted version's value
  config.finetune = ml_collections.ConfigDict({
      'num_steps': 2000, 'learning_rate': 1e-4, 'warmup_steps': 100})
  # Scheduling: poll the kline directory and run a cycle when new files appear.
  config.watch = False
  config.poll_seconds = 300.0
  config.max_cycles = 0  # watch: stop after this many cycles (0: never)
  # A synthetic feed for demos: deliver the next days of the synthetic market, then run a cycle.
  config.feed = ml_collections.ConfigDict({
      'source': '', 'start': '2024-01-01', 'end': '2025-01-01', 'seed': 0, 'initial_days': 21,
      'days': 7, 'deliveries': 2})
  # Walk-forward simulation over the store of config.task.data.
  config.simulate = False
  config.simulation = ml_collections.ConfigDict({
      'start': '2024-01-01', 'end': '2025-01-01', 'frequency': 'MS', 'train_days': 365.0,
      'validation_days': 30.0, 'mode': 'finetune'})

  if variant == 'quick':
    config.train_days, config.validation_days, config.holdout_days = 14.0, 3.0, 3.0
    config.finetune.update(num_steps=50, learning_rate=1e-3, warmup_steps=10)
    config.feed.source = 'synthetic'
    # Four synthetic months for the simulation (the quick data config has four weeks).
    config.task.data.update(start='2024-01-01', end='2024-05-01',
                            store_dir=str(data.REPOSITORY / 'data_store' / 'update-quick'))
    config.simulation.update(start='2024-02-01', end='2024-05-01', train_days=21.0,
                             validation_days=4.0)
  elif variant == 'real':
    config.simulation.update(start='2023-01-01', end='2024-01-01')
  return config
