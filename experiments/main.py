"""The main job end to end: python -m experiments.main [--config=configs/main.py[:quick]]."""

import json

from absl import app
from absl import logging
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.data import windows

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/main.py', 'Main-job config (file[:variant]).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  logging.info('Stage 1/2: feature store in %s', config.data.store_dir)
  print(pipeline.format_summary(pipeline.build_store(config.data)))
  logging.info('Stage 2/2: windows for the Oracle (encoder 60, decoder 24)')
  summary = pipeline.window_summary(config.data, windows.WindowSpec(60, 24))
  print('\nWindows per split (Oracle spec):', json.dumps(summary['windows']))
  print('One training batch:', ', '.join(f'{k} {v}' for k, v in summary['batch_shapes'].items()))
  print(f'\nFeature store: {config.data.store_dir} (summary.json beside the parquet files)')


if __name__ == '__main__':
  cli.run(main)
