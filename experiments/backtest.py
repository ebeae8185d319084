"""Backtests the ensemble of the saved Oracle, Guardian and Strategist, with its ablation.

python -m experiments.backtest --config=configs/backtest.py[:quick|:real] [--workdir=DIR]
    [--config.checkpoints.oracle=PATH] [--config.ensemble.use_guardian=False] ...
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.backtest import experiment

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/backtest.py', 'Backtest config (file[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory (default checkpoints/<config.name>).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  results = experiment.run(config, _WORKDIR.value or cli.default_workdir(config.name))
  print(experiment.format_results(results))


if __name__ == '__main__':
  cli.run(main)
