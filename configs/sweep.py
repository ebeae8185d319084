"""An Optuna sweep over a model's config (quantum_alpha_jax/sweep). ``get_config('')`` or ``'quick'``.

- default: the Oracle (configs/oracle.py defaults), 50 trials over learning rate, hidden size,
           dropout and clipping; validation pinball loss; median pruning.
- quick:   6 trials of the quick Oracle at a few dozen steps over learning rate and hidden size,
           median pruning after 2 trials; minutes on a CPU.

Another model: --config.model=guardian --config.direction=maximize and a space over
configs/guardian.py's keys, with --config.objective=validation.guardian.recall_macro (the balanced
accuracy over the regimes); the Strategist: validation.imitation.strategist.balanced_accuracy, or
validation.strategist.BTCUSDT.sharpe (after fees), which also reports the Deflated Sharpe Ratio.
"""

import ml_collections

from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick'):
    raise ConfigError(f'configs/sweep.py: unknown variant {arg!r} — use "" or "quick"')
  config = ml_collections.ConfigDict()
  config.model = 'oracle'  # oracle | lstm | guardian | strategist (tasks.<model>.run per trial)
  config.model_config = ''  # the variant of configs/<model>.py
  config.config_module = ''  # empty: configs.<model>
  config.study_name = 'oracle'
  config.storage = ''  # empty: sqlite:///<workdir>/study.db; many hosts: postgresql://...
  config.num_trials = 50  # complete or pruned trials over all workers
  # A validation entry of the run's results.json (never test): e.g. validation.pinball_loss,
  # validation.guardian.recall_macro, validation.strategist.BTCUSDT.sharpe.
  config.objective = 'validation.pinball_loss'
  config.direction = 'minimize'
  # Reported to the pruner at every evaluation: a validation metric of train.loop ('' = the model's
  # train.validation_metric, with its train.validation_mode); negated if its sense is the other way.
  config.intermediate_metric = ''
  config.intermediate_mode = 'min'
  config.pruner = 'median'  # median | hyperband | none
  config.pruner_startup_trials = 5
  config.pruner_warmup_steps = 0
  config.sampler_startup_trials = 10
  config.seed = 0
  config.space = ml_collections.ConfigDict({
      'train.optimizer.learning_rate': ('log', 1e-4, 1e-2),
      'model.hidden_size': ('choice', (64, 128, 256)),
      'model.dropout_rate': ('float', 0.0, 0.3),
      'train.optimizer.clip_norm': ('log', 0.01, 1.0),
  }, allow_dotted_keys=True)
  # Fixed for every trial (dotted keys of the model config).
  config.overrides = ml_collections.ConfigDict({}, allow_dotted_keys=True)
  # A dead worker's trial: failed after grace_seconds without a heartbeat, then rerun (resumed).
  config.heartbeat_seconds = 10
  config.grace_seconds = 60
  config.max_retry = 3
  config.poll_seconds = 5.0
  config.finalise = True  # sweep.json, plots, best config, test score, registry (False: trials only)
  config.test_max_windows = 0
  config.registry_dir = ''  # empty: <workdir>/models
  config.registry_name = ''  # empty: <model>-sweep
  # Sharpe objectives: used when the report has no bars_per_year / bar count beside the Sharpe.
  config.periods_per_year = 365 * 288  # 5-minute bars
  config.observations = 0
  if arg == 'quick':
    config.model_config = 'quick'
    config.study_name = 'oracle-quick'
    config.num_trials = 6
    config.pruner_startup_trials = 2
    config.sampler_startup_trials = 3
    config.space = ml_collections.ConfigDict({
        'train.optimizer.learning_rate': ('log', 3e-4, 3e-2),
        'model.hidden_size': ('choice', (8, 16)),
    }, allow_dotted_keys=True)
    config.overrides = ml_collections.ConfigDict({
        'train.num_steps': 30, 'train.eval_every_steps': 10, 'train.log_every_steps': 10,
        'train.max_eval_batches': 4, 'evaluation.max_windows': 256, 'evaluation.fan_windows': 1,
    }, allow_dotted_keys=True)
    config.heartbeat_seconds = 5
    config.grace_seconds = 20
    config.poll_seconds = 2.0
    config.test_max_windows = 256
  return config
