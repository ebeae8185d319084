"""The smallest real task a sweep can run in tests: the linear forecaster (tests/linear_task.py)
trained by the shared loop on three synthetic weeks, with the protocol a sweep needs:
``get_config``, ``run(config, workdir, *, on_evaluate)`` writing results.json, and
``evaluate_test(workdir, out)``.

``SWEEP_TASK_KILL=<trial dir name>:<step>`` makes the process SIGKILL itself at that step, once per
trial directory; ``SWEEP_TASK_STEP_SECONDS`` slows each
step so that another process can watch a trial run.
"""

from __future__ import annotations

import functools
import os
import pathlib
import signal
import time

import ml_collections

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.train import checkpoint as checkpoint_lib
from quantum_alpha_jax.train import loop
from quantum_alpha_jax.train import step as step_lib
from tests.linear_task import LinearTask


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.name = 'sweep-task'
  config.train = loop.train_config(batch_size=32, num_steps=30, eval_every_steps=10,
                                   log_every_steps=10, patience=0, seed=11, max_eval_batches=4,
                                   progress_interval_seconds=60.0)
  config.train.optimizer.learning_rate = 1e-3
  config.train.optimizer.warmup_steps = 0
  config.evaluation = ml_collections.ConfigDict({'splits': ('validation', 'test')})
  return config


@functools.lru_cache(maxsize=None)
def _data(cache: str):
  from quantum_alpha_jax.data import features  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import windows  # pylint: disable=g-import-not-at-top
  frames = {s: features.compute_features(f) for s, f in synthetic.generate_market(
      ('BTCUSDT',), start='2024-01-01', end='2024-01-22', seed=3).items()}
  splits = [windows.Split('train', '2024-01-01', '2024-01-12'),
            windows.Split('validation', '2024-01-12', '2024-01-17'),
            windows.Split('test', '2024-01-17', '2024-01-22')]
  return windows.make_datasets(frames, windows.WindowSpec(16, 4), splits, 32, cache, seed=5,
                               num_devices=1, shard_index=0, shard_count=1)


def _evaluate(params, split) -> dict[str, float]:
  mesh = step_lib.make_mesh(1)
  return loop.evaluate(step_lib.make_eval_step(LinearTask().loss_fn, mesh), params, split, mesh)


def run(config: ml_collections.ConfigDict, workdir, *, on_evaluate=None) -> dict:
  workdir = pathlib.Path(workdir)
  data, normalizer = _data(str(workdir.parent / 'windows_cache'))
  kill = os.environ.get('SWEEP_TASK_KILL', '')
  pause = float(os.environ.get('SWEEP_TASK_STEP_SECONDS', '0'))

  def hook(step, state):
    del state
    if pause:
      time.sleep(pause)
    marker = workdir / 'killed_once'
    if kill == f'{workdir.name}:{step}' and not marker.exists():
      marker.touch()  # the resumed run goes past this step
      os.kill(os.getpid(), signal.SIGKILL)

  result = loop.train_and_evaluate(config.train, LinearTask(), data, workdir,
                                   run_config=config.to_dict(), hooks=[hook],
                                   extra_record={'normalizer': normalizer.to_dict()},
                                   on_evaluate=on_evaluate)
  results = {'model': 'sweep_task', 'workdir': str(workdir), 'train': result.summary}
  for name in config.evaluation.splits:
    results[name] = _evaluate(result.params, data[name])
  results['results_json'] = str(artifacts.write_results(workdir, results))
  return results


def evaluate_test(workdir, out) -> dict[str, float]:
  """The best checkpoint of the run in ``workdir`` on the test split."""
  workdir = pathlib.Path(workdir)
  params, _ = checkpoint_lib.load_best(workdir)
  report = _evaluate(params, _data(str(workdir.parent / 'windows_cache'))[0]['test'])
  artifacts.write_json(pathlib.Path(out) / 'results.json', report)
  return report
