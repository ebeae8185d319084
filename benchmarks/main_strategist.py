"""The main job's Strategist stage alone: its store, its Strategist config, any override. For
measuring what a setting buys the Strategist against trend without rerunning the other stages.

  python -m benchmarks.main_strategist --workdir=/tmp/s                            # as the main job
  python -m benchmarks.main_strategist --workdir=/tmp/s \\
      --config.strategist.trajectories.contrast_fraction=0 --config.strategist.train.seed=1

Prints the stage's table (``strategist.format_results``) and one line: the Strategist's daily log
return after fees minus its best naive baseline's on the test split, with the paired 95% interval
over calendar days (the yardstick's Strategist gain), and the conditioning curve's Spearman.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.tasks import strategist

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/main.py', 'the main job config')
_WORKDIR = flags.DEFINE_string('workdir', None, 'the Strategist run directory', required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  pipeline.build_store(config.data)
  model = config.strategist
  with model.unlocked():
    model.data = config.data  # one store, as in the main job
  results = strategist.run(model, _WORKDIR.value)
  print(strategist.format_results(results))
  gain = results['test']['versus_best_baseline']
  spearman = results['test']['conditioning_curve'].get('spearman_target_vs_realised')
  print(f'Strategist - {gain["baseline"]}, daily log return after fees: {gain["difference"]:+.4f} '
        f'[{gain["low"]:+.4f}, {gain["high"]:+.4f}] over {gain["blocks"]} days '
        f'(the interval {"excludes" if gain["excludes_zero"] else "includes"} 0); conditioning Spearman '
        f'{"—" if spearman is None else f"{spearman:+.2f}"}; best step '
        f'{results["train"]["best_step"]} of {results["train"]["steps"]}')


if __name__ == '__main__':
  app.run(main)
