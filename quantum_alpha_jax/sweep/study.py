"""An Optuna study over a model's config on a real database, run by one or many workers.

Storage: ``config.storage`` is an SQLAlchemy URL; empty means SQLite in the sweep's workdir
(``sqlite:///<workdir>/study.db``). Workers on several hosts share one study through one
PostgreSQL URL (Optuna's own distributed mode); each runs :func:`run_worker`.

Each trial is one ordinary run of the model's task (``quantum_alpha_jax.tasks.<model>.run``, or
any module with that ``run(config, workdir, *, on_evaluate)``) with the trial's values set in the
model's config, in ``<workdir>/trial_<n>``. Its validation evaluations are reported to the pruner;
its objective is a validation entry of the run's results (never test).

A killed worker: its trials keep a heartbeat; one silent for ``grace_seconds`` is failed by
whichever worker looks next and re-queued (``RetryHeartbeatStaleTrialCallback``) with the same values
and the same workdir, so the run resumes from its last checkpoint: no trial is lost, none runs
twice.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import time
from typing import Any, Callable, Mapping

import warnings

from absl import logging
import ml_collections

from quantum_alpha_jax.errors import ConfigError, QuantumAlphaError, describe
from quantum_alpha_jax.sweep import space as space_lib

FINISHED = ('COMPLETE', 'PRUNED')
# Heartbeats and the stale-trial retry are Optuna's 'experimental' distributed-mode features.
warnings.filterwarnings('ignore', message='.*(experimental|heartbeat).*')
DIRECTIONS = ('minimize', 'maximize')
PRUNERS = ('median', 'hyperband', 'none')


def task_module(model: str):
  """What a trial runs: the registered model ``model`` (its entry's ``run``; ``tasks/registry``),
  or, for a dotted module path, that module (its ``run`` and optional ``evaluate_test``)."""
  if '.' not in model:
    from quantum_alpha_jax.tasks import registry  # pylint: disable=g-import-not-at-top (jax)
    return registry.get(model)
  try:
    return importlib.import_module(model)
  except ModuleNotFoundError:
    raise ConfigError(describe('config.model', f'no task module {model!r}',
                               'use a registered model (oracle, lstm, guardian, strategist, '
                               'linear) or a dotted module path with run()')) from None


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The model's own config, ``configs/<model>.py:get_config(config.model_config)``, with the
  sweep's fixed ``config.overrides`` applied."""
  name = config.get('config_module') or f'configs.{config.model}'
  base = importlib.import_module(name).get_config(config.model_config)
  return space_lib.apply(base, dict(config.get('overrides', {}) or {}))


def check_objective(config: ml_collections.ConfigDict) -> None:
  """A :class:`ConfigError` unless the objective is a validation entry and the direction known."""
  objective = str(config.objective)
  if not objective.startswith('validation.'):
    split = objective.split('.')[0]
    problem = (f'{objective!r} scores the {split} split, which must stay unseen until the best '
               'trial is chosen' if split == 'test' else f'{objective!r} is not a validation metric')
    raise ConfigError(describe('config.objective', problem,
                               "use a validation entry of results.json, e.g. "
                               "'validation.pinball_loss' (the best trial is scored on test once, "
                               'at the end)'))
  if config.direction not in DIRECTIONS:
    raise ConfigError(describe('config.direction', f'{config.direction!r}',
                               f'use one of {DIRECTIONS}'))
  if config.pruner not in PRUNERS:
    raise ConfigError(describe('config.pruner', f'{config.pruner!r}', f'use one of {PRUNERS}'))


def storage_url(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
  return config.storage or f'sqlite:///{pathlib.Path(workdir).resolve() / "study.db"}'


def masked(url: str) -> str:
  """``url`` without its password."""
  return re.sub(r'(://[^:/@]+):[^@]*@', r'\1:***@', url)


def make_storage(config: ml_collections.ConfigDict, url: str):
  """An ``RDBStorage`` with heartbeats and the retry of a dead worker's trials; a
  :class:`ConfigError` naming the URL when the database cannot be reached."""
  import optuna  # pylint: disable=g-import-not-at-top
  import sqlalchemy  # pylint: disable=g-import-not-at-top

  engine_kwargs = {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else {
      'pool_pre_ping': True}
  for attempt in range(5):
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=int(config.heartbeat_seconds),
            grace_period=int(config.grace_seconds),
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=int(config.max_retry), inherit_intermediate_values=False))
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
      # Two workers creating the schema at once: the loser finds the tables on its next try.
      if attempt == 4:
        raise
      time.sleep(1.0 + attempt)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
      first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
      raise ConfigError(describe(
          f'config.storage {masked(url)}', f'cannot be reached ({first[:160]})',
          'start the database (or fix the URL: postgresql://USER:PASSWORD@HOST:PORT/DB); for one '
          'machine leave config.storage empty to use SQLite in the workdir')) from None


def _definition(config: ml_collections.ConfigDict, parsed: Mapping[str, tuple]) -> dict[str, str]:
  return {'space': space_lib.canonical(parsed), 'model': str(config.model),
          'model_config': str(config.model_config), 'objective': str(config.objective),
          'direction': str(config.direction)}


def open_study(config: ml_collections.ConfigDict, storage: Any, parsed: Mapping[str, tuple],
               seed: int):
  """Creates the study, or loads it if it exists with the same space, model and objective (else a
  :class:`ConfigError` that says how to start a new one)."""
  import optuna  # pylint: disable=g-import-not-at-top

  if config.pruner == 'median':
    pruner = optuna.pruners.MedianPruner(n_startup_trials=int(config.pruner_startup_trials),
                                         n_warmup_steps=int(config.pruner_warmup_steps))
  elif config.pruner == 'hyperband':
    pruner = optuna.pruners.HyperbandPruner(min_resource=max(1, int(config.pruner_warmup_steps)))
  else:
    pruner = optuna.pruners.NopPruner()
  sampler = optuna.samplers.TPESampler(seed=seed,
                                       n_startup_trials=int(config.sampler_startup_trials))
  study = optuna.create_study(study_name=config.study_name, storage=storage,
                              direction=config.direction, sampler=sampler, pruner=pruner,
                              load_if_exists=True)
  definition = _definition(config, parsed)
  saved = {key: study.user_attrs.get(key) for key in definition}
  if all(value is None for value in saved.values()):
    for key, value in definition.items():
      study.set_user_attr(key, value)
  elif saved != definition:
    changed = '; '.join(f'{key}: {saved[key]} → {definition[key]}' for key in definition
                        if saved[key] != definition[key])
    raise ConfigError(describe(
        f'study {config.study_name!r} in {masked(storage.url)}',
        f'was created with another definition ({changed[:300]})',
        'start a new study: pass --config.study_name=NEW (or a new --workdir), or put the old '
        'definition back to resume it'))
  return study


def trial_number(trial: Any) -> int:
  """The number of the trial a retried trial stands for (its own number otherwise)."""
  # The stale-trial retry's record (a running Trial has no frozen system_attrs of its own).
  attributes = trial.storage.get_trial_system_attrs(trial._trial_id)  # pylint: disable=protected-access
  history = attributes.get('retry_history') or []
  return int(history[0]) if history else int(trial.number)


def make_objective(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                   parsed: Mapping[str, tuple], base: ml_collections.ConfigDict
                   ) -> Callable[[Any], float]:
  """The Optuna objective: one run of the model's task per trial (module docstring)."""
  import optuna  # pylint: disable=g-import-not-at-top

  module = task_module(config.model)
  intermediate = config.intermediate_metric or base.train.validation_metric
  # The pruner compares values in the study's direction: a metric of the other sense is negated.
  mode = base.train.validation_mode if not config.intermediate_metric else (
      config.intermediate_mode)
  sign = 1.0 if (mode == 'min') == (config.direction == 'minimize') else -1.0

  def objective(trial: optuna.Trial) -> float:
    values = space_lib.suggest(trial, parsed)
    number = trial_number(trial)
    directory = workdir / f'trial_{number}'
    trial.set_user_attr('workdir', str(directory))
    trial.set_user_attr('runs_trial', number)
    run_config = space_lib.apply(base, values, where='config.space')
    if 'evaluation' in run_config and 'splits' in run_config.evaluation:
      run_config.evaluation.splits = ('validation',)  # test stays unseen until the end
    directory.mkdir(parents=True, exist_ok=True)
    (directory / 'overrides.json').write_text(json.dumps(values, indent=1) + '\n')

    def on_evaluate(step: int, metrics: Mapping[str, float]) -> None:
      trial.report(sign * float(metrics[intermediate]), step)
      if trial.should_prune():
        raise optuna.TrialPruned(f'trial {number} pruned at step {step}: {intermediate} '
                                 f'{metrics[intermediate]:.6g}')

    logging.info('trial %d (%s): %s', number, directory, values)
    results = module.run(run_config, directory, on_evaluate=on_evaluate)
    try:
      value = float(space_lib.lookup(results, config.objective))
    except (KeyError, TypeError):
      raise ConfigError(describe('config.objective', f'{config.objective!r} is not in the '
                                 f'results of trial {number} ({directory}/results.json)',
                                 'name an entry of its validation report')) from None
    return value

  return objective


def counts(study: Any) -> dict[str, int]:
  """Trials by state name."""
  out: dict[str, int] = {}
  for trial in study.get_trials(deepcopy=False):
    out[trial.state.name] = out.get(trial.state.name, 0) + 1
  return out


def run_worker(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
               on_trial: Callable[[Any, Any], None] | None = None) -> Any:
  """Runs trials of the study until ``config.num_trials`` have finished (complete or pruned),
  resuming its own or a dead worker's trials first; returns the study."""
  import optuna  # pylint: disable=g-import-not-at-top

  check_objective(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  base = model_config(config)
  parsed = space_lib.parse(config.space, base)
  url = storage_url(config, workdir)
  storage = make_storage(config, url)
  # One seed on the embedded study (deterministic); on a shared database each worker's own, so two
  # workers never draw the same start-up points.
  seed = int(config.seed) + (os.getpid() if config.storage else 0)
  study = open_study(config, storage, parsed, seed)
  objective = make_objective(config, workdir, parsed, base)
  callbacks = [on_trial] if on_trial else []
  target = int(config.num_trials)
  while True:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      optuna.storages.fail_stale_trials(study)
    states = counts(study)
    finished = sum(states.get(name, 0) for name in FINISHED)
    waiting, running = states.get('WAITING', 0), states.get('RUNNING', 0)
    if finished >= target:
      break
    if waiting or finished + running < target:
      study.optimize(objective, n_trials=1, callbacks=callbacks, gc_after_trial=True)
    else:  # the rest run on other workers: wait until they finish or go stale
      time.sleep(float(config.poll_seconds))
  return study
