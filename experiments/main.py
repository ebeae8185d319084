"""The main job end to end: python -m experiments.main [--config=configs/main.py[:quick]]."""

from absl import app
from absl import logging
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.tasks import oracle

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/main.py', 'Main-job config (file[:variant]).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  logging.info('Stage 1/2: feature store in %s', config.data.store_dir)
  print(pipeline.format_summary(pipeline.build_store(config.data)))
  workdir = config.workdir or cli.default_workdir(config.oracle.name)
  logging.info('Stage 2/2: the quick Oracle in %s', workdir)
  results = oracle.run(config.oracle, workdir)
  print('\n' + oracle.format_results(results))
  print(f'\nTensorBoard: tensorboard --logdir {workdir}/tensorboard')


if __name__ == '__main__':
  cli.run(main)
