"""configs/sweep.py pointed at tests/sweep_task.py: a study of seconds for the sweep tests."""

import ml_collections

from configs import sweep


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  config = sweep.get_config('quick')
  config.model = 'tests.sweep_task'
  config.config_module = 'tests.sweep_task'
  config.study_name = 'sweep-task'
  config.objective = 'validation.loss'
  config.num_trials = 3
  config.pruner = 'none'
  config.space = ml_collections.ConfigDict(
      {'train.optimizer.learning_rate': ('log', 1e-5, 1e-1)}, allow_dotted_keys=True)
  config.overrides = ml_collections.ConfigDict({}, allow_dotted_keys=True)
  config.heartbeat_seconds = 1
  config.grace_seconds = 3
  config.poll_seconds = 0.5
  return config
