"""The main job end to end: python -m experiments.main [--config=configs/main.py[:quick]]."""

from absl import app
from absl import logging
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/main.py', 'Main-job config (file[:variant]).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  logging.info('Stage 1/1: feature store in %s', config.data.store_dir)
  summary = pipeline.build_store(config.data)
  print(pipeline.format_summary(summary))
  print(f'\nFeature store: {config.data.store_dir} (summary.json beside the parquet files)')


if __name__ == '__main__':
  cli.run(main)
