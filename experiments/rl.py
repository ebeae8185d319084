"""Trains and evaluates a reinforcement-learning trader (PPO or DDPG) on the trading environment.

python -m experiments.rl --config=configs/ppo.py[:quick|:real] [--workdir=DIR]
python -m experiments.rl --config=configs/ddpg.py[:quick|:real] [--workdir=DIR]
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.rl import experiment

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/ppo.py', 'RL config (configs/ppo.py or configs/ddpg.py [:variant]).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Run directory (default checkpoints/<config.name>); resumes if it '
                               'holds a run of the same config.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  results = experiment.run(config, _WORKDIR.value or cli.default_workdir(config.name))
  print(experiment.format_results(results))


if __name__ == '__main__':
  cli.run(main)
