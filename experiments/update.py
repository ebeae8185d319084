"""Continual retraining: ingest new klines, fine-tune, promote only what beats the promoted model.

python -m experiments.update --config=configs/update.py[:quick|:real] [--workdir=DIR]
    [--config.kline_dir=DIR] [--config.watch=True] [--config.simulate=True]
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.ship import update

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/update.py', 'Update config (file[:variant[,model]]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where the model store, feature store, klines and runs live '
                               '(default checkpoints/<config.name>).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  workdir = _WORKDIR.value or cli.default_workdir(config.name)
  if config.simulate:
    print(update.format_simulation(update.simulate(config, workdir)))
  elif config.watch:
    update.watch(config, workdir)
  else:
    for record in update.run(config, workdir):
      print(update.format_decision(record))
    print(f'history of every cycle: {workdir}/results.json and {workdir}/cycles.png')


if __name__ == '__main__':
  cli.run(main)
