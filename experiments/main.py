"""The main job end to end: python -m experiments.main [--config=configs/main.py[:quick]].

Store → Oracle → Guardian → Strategist → ensemble backtest → export (configs/main.py).
Every stage resumes or reuses a finished run when started again with the same workdir.
"""

import importlib.util
import pathlib

from absl import app
from absl import logging
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.backtest import experiment as backtest
from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.tasks import guardian
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.tasks import strategist

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/main.py', 'Main-job config (file[:variant]).', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  root = pathlib.Path(config.workdir or pathlib.Path(cli.default_workdir('main')).parent)
  stages = 6
  logging.info('Stage 1/%d: feature store in %s', stages, config.data.store_dir)
  print(pipeline.format_summary(pipeline.build_store(config.data)))

  workdirs = {}
  for stage, (name, module) in enumerate((('oracle', oracle), ('guardian', guardian),
                                          ('strategist', strategist)), start=2):
    model_config = config[name]
    workdirs[name] = root / model_config.name
    logging.info('Stage %d/%d: %s in %s', stage, stages, model_config.name, workdirs[name])
    results = module.run(model_config, workdirs[name])
    print('\n' + module.format_results(results))

  backtest_config = config.backtest
  with backtest_config.unlocked():
    for name, workdir in workdirs.items():
      backtest_config.checkpoints[name] = str(workdir)
  logging.info('Stage 5/%d: ensemble backtest in %s', stages, root / backtest_config.name)
  results = backtest.run(backtest_config, root / backtest_config.name)
  print('\n' + backtest.format_results(results))

  if importlib.util.find_spec('jax2onnx') is None:
    print(f'\nStage 6/{stages} skipped: the export extra is not installed '
          "(pip install -e '.[export]')")
  else:
    from quantum_alpha_jax.export import pipeline as export  # pylint: disable=g-import-not-at-top
    export_config = config.export
    with export_config.unlocked():
      for name in export_config.models:
        export_config.models[name] = str(workdirs[name]) if name in workdirs else ''
    logging.info('Stage 6/%d: export in %s', stages, root / export_config.name)
    print('\n' + export.format_summary(export.run(export_config, root / export_config.name)))
  print(f'\nReport: {results["report"]}\nTensorBoard: tensorboard --logdir {root}')


if __name__ == '__main__':
  cli.run(main)
