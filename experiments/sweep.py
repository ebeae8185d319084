"""An Optuna sweep over any model's config (see quantum_alpha_jax/sweep and configs/sweep.py).

One machine (SQLite in the workdir; rerun the same command to resume after a kill):
  python -m experiments.sweep --config=configs/sweep.py:quick --workdir=checkpoints/sweep-quick
Many machines, one study (run the same line on each host; --config.finalise=False on all but one):
  python -m experiments.sweep --config=configs/sweep.py \
      --config.storage=postgresql://USER:PASSWORD@HOST:5432/DB --workdir=/shared/sweep
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.sweep import report
from quantum_alpha_jax.sweep import study

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/sweep.py', 'Sweep config (file[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory (trial_<n>/, study.db, sweep.json; '
                               'default checkpoints/sweep-<study_name>).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  workdir = _WORKDIR.value or cli.default_workdir(f'sweep-{config.study_name}')
  result = study.run_worker(config, workdir, on_trial=report.print_trial)
  if config.finalise:
    print(report.format_summary(report.finalise(config, result, workdir)))


if __name__ == '__main__':
  cli.run(main)
