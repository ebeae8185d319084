"""Evaluates a saved Oracle, LSTM, Guardian or Strategist run on any store and date range.

python -m experiments.evaluate --config=configs/evaluate.py --config.model=oracle \
    --config.checkpoint=checkpoints/oracle-quick [--config.data=STORE_DIR] \
    [--config.start=2023-07-01 --config.end=2024-01-01] [--config.allow_validation=True] \
    [--workdir=DIR]

Writes results.json and the model's plots to --workdir (default <checkpoint>/evaluate-<range>).
A range overlapping the run's validation split is refused unless --config.allow_validation=True,
and then labelled "validation (used for model selection)".
"""

import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax import errors
from quantum_alpha_jax.tasks import saved

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/evaluate.py', 'Evaluation config.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if not config.checkpoint:
    raise errors.ConfigError(errors.describe(
        'config.checkpoint', 'not set', 'pass --config.checkpoint=checkpoints/oracle-quick'))
  suffix = f'{config.start}_{config.end}' if config.start else 'test'
  workdir = _WORKDIR.value or pathlib.Path(config.checkpoint) / f'evaluate-{suffix}'
  print(saved.format_results(saved.run(config, workdir)))


if __name__ == '__main__':
  cli.run(main)
