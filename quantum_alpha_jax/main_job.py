"""The main job end to end (``experiments/main.py``): one store, three models, the yardstick, the
ensemble backtest and the export.

1. the feature store of ``config.data``: every later stage reads this one store;
2-4. the Oracle, the Guardian and the Strategist, each trained and evaluated beside its baselines;
5. the yardstick (``evaluate/yardstick.py``): each model beside its best naive baseline, with a
   paired interval over days, and beside the Bayes filter's ceiling of the synthetic market
   (``evaluate/ceiling.py``; skipped for a store of real data), in ``<root>/summary.json``;
6. the ensemble backtest of the three on the test split, with the ablation table;
7. export of the three to ONNX (and a TF SavedModel) with parity checks, when the ``export`` extra
   is installed.
Every stage resumes or reuses a finished run when started again with the same workdir.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any, Callable

from absl import logging
import ml_collections

from quantum_alpha_jax import artifacts
from quantum_alpha_jax import errors
from quantum_alpha_jax import side_by_side
from quantum_alpha_jax.backtest import experiment as backtest
from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.evaluate import ceiling as ceiling_lib
from quantum_alpha_jax.evaluate import yardstick
from quantum_alpha_jax.tasks import guardian
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.tasks import strategist

STAGES = 7
MODELS = (('oracle', oracle), ('guardian', guardian), ('strategist', strategist))


def market_ceiling(data: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The Bayes ceiling of a synthetic store on its test split (None for real data)."""
  if data.source != 'synthetic':
    return None
  return ceiling_lib.store_ceiling(data.store_dir, data.splits, tuple(data.symbols))


def run(config: ml_collections.ConfigDict, root: str | pathlib.Path,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs every stage under ``root`` (module docstring); returns the summary (JSON-ready)."""
  root = pathlib.Path(root)
  logging.info('Stage 1/%d: feature store in %s', STAGES, config.data.store_dir)
  echo(pipeline.format_summary(pipeline.build_store(config.data)))

  workdirs, results = {}, {}
  parallel = bool(config.get('parallel', False))
  for stage, (name, module) in enumerate(MODELS, start=2):
    model_config = config[name]
    with model_config.unlocked():
      model_config.data = config.data  # one store for every stage
    workdirs[name] = root / model_config.name
    if parallel:
      continue
    logging.info('Stage %d/%d: %s in %s', stage, STAGES, model_config.name, workdirs[name])
    results[name] = module.run(model_config, workdirs[name])
    echo('\n' + module.format_results(results[name]))
  if parallel:  # stages 2-4 at once, a process per model on its own devices (side_by_side.py)
    logging.info('Stages 2-4/%d: %s side by side in %s', STAGES,
                 ', '.join(config[name].name for name, _ in MODELS), root)
    results = side_by_side.train_models([(name, config[name]) for name, _ in MODELS], root)
    for name, module in MODELS:
      echo('\n' + module.format_results(results[name]))

  logging.info('Stage 5/%d: each model beside its best naive baseline and the ceiling', STAGES)
  try:
    ceiling = market_ceiling(config.data)
  except errors.DataError as error:  # e.g. a store built before stores recorded their generator
    logging.warning('No ceiling: %s', error)
    ceiling = None
  rows = [yardstick.oracle_row(results['oracle']['test'], ceiling),
          yardstick.guardian_row(results['guardian']['test'], ceiling),
          yardstick.strategist_row(results['strategist']['test'], ceiling,
                                   bool(config.strategist.trajectories.allow_short))]
  table = yardstick.format_yardstick(rows, ceiling)
  summary = {'yardstick': rows, 'ceiling': ceiling, 'workdirs': {k: str(v) for k, v in
                                                                 workdirs.items()}}
  if ceiling:
    echo('\n' + ceiling_lib.format_ceiling(ceiling))
  echo('\n' + table)

  backtest_config = config.backtest
  with backtest_config.unlocked():
    backtest_config.data = config.data
    for name, workdir in workdirs.items():
      backtest_config.checkpoints[name] = str(workdir)
  logging.info('Stage 6/%d: ensemble backtest in %s', STAGES, root / backtest_config.name)
  backtest_results = backtest.run(backtest_config, root / backtest_config.name)
  echo('\n' + backtest.format_results(backtest_results))
  summary['backtest_report'] = str(backtest_results['report'])

  if importlib.util.find_spec('jax2onnx') is None:
    echo(f'\nStage 7/{STAGES} skipped: the export extra is not installed '
         "(pip install -e '.[export]')")
  else:
    from quantum_alpha_jax.ship.export import pipeline as export  # pylint: disable=g-import-not-at-top
    export_config = config.export
    with export_config.unlocked():
      for name in export_config.models:
        export_config.models[name] = str(workdirs[name]) if name in workdirs else ''
    logging.info('Stage 7/%d: export in %s', STAGES, root / export_config.name)
    echo('\n' + export.format_summary(export.run(export_config, root / export_config.name)))
  summary['yardstick_png'] = str(artifacts.save_figure(yardstick.plot_yardstick(rows),
                                                    root / 'yardstick.png'))
  summary['summary_json'] = str(artifacts.write_json(root / 'summary.json', summary))
  (root / 'summary.md').write_text(f'# Main job\n\n```\n{table}\n```\n')
  echo(f'\n{table}\n\nSummary: {summary["summary_json"]}\nReport: {summary["backtest_report"]}'
       f'\nTensorBoard: tensorboard --logdir {root}')
  return summary
