"""The main job end to end: python -m experiments.main [--config=configs/main.py[:quick]].

Store → Oracle → Guardian → Strategist → yardstick (each model beside its best naive baseline and
the market's ceiling) → ensemble backtest → export (``quantum_alpha_jax/main_job.py``). Every stage
resumes or reuses a finished run when started again with the same workdir.
"""

import pathlib

from absl import app
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax import main_job

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/main.py', 'Main-job config (file[:variant]).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  main_job.run(config, config.workdir or pathlib.Path(cli.default_workdir('main')).parent)


if __name__ == '__main__':
  cli.run(main)
