"""Trains and evaluates the Strategist (Decision Transformer).

python -m experiments.strategist --config=configs/strategist.py[:quick|:real] [--workdir=DIR]
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.tasks import strategist

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/strategist.py', 'Strategist config (file[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Run directory (default checkpoints/<config.name>); resumes if it '
                               'holds a run of the same config.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  results = strategist.run(config, _WORKDIR.value or cli.default_workdir(config.name))
  print(strategist.format_results(results))


if __name__ == '__main__':
  cli.run(main)
