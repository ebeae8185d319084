"""Builds the feature store: python -m experiments.data --config=configs/data.py[:quick|:real]."""

from absl import app
from absl import logging
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/data.py', 'Data config (file[:variant]).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  logging.info('Building the feature store in %s', config.store_dir)
  summary = pipeline.build_store(config)
  print(pipeline.format_summary(summary))


if __name__ == '__main__':
  cli.run(main)
