"""The cycle, steps 1 to 5 in order for the model ``config.model`` (the Oracle by default), and the
two ways to run it: once (:func:`run`, optionally fed by the synthetic market) or on a schedule
(:func:`watch`).

1. **Ingest** new kline files into the feature store (:mod:`.intake`).
2. **Periods**: train, validation and holdout ranges ending at the last bar every symbol has
   (:mod:`.periods`).
3. **Train** the candidate, fine-tuned from the promoted version or from scratch (:mod:`.retrain`).
4. **Evaluate** candidate and promoted version on the holdout, beside naive baselines
   (:mod:`.judge`).
5. **Decide** and record (:mod:`.decision`): the decision record goes to the model store before the
   promotion.

Every step keeps its state in the stores, so the cycle is safe to kill at any moment and a re-run
picks up where it stopped. Two cycles never run at once on one model store (a lock file).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping

from absl import logging
import ml_collections
import pandas as pd

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.errors import ConfigError, DataError, QuantumAlphaError, describe
from quantum_alpha_jax.ship import provenance
from quantum_alpha_jax.ship import store as model_store
from quantum_alpha_jax.ship.update import adapters
from quantum_alpha_jax.ship.update import decision
from quantum_alpha_jax.ship.update import intake
from quantum_alpha_jax.ship.update import judge
from quantum_alpha_jax.ship.update import periods
from quantum_alpha_jax.ship.update import report
from quantum_alpha_jax.ship.update import retrain
from quantum_alpha_jax.ship.update import workspace
from quantum_alpha_jax.ship.update.periods import HOLDOUT, MODES


def check_update_config(config: ml_collections.ConfigDict) -> None:
  """ConfigError unless ``config`` describes a cycle that can run: ``config.task`` is the config of
  ``config.model``, a known mode, positive day counts and a usable decision rule."""
  described = str(config.task.get('name', config.model)).split('-')[0]
  if described != config.model:
    raise ConfigError(describe(
        'config.model', f'{config.model!r}, but config.task is the config of {described!r}',
        f'use --config=configs/update.py:<variant>,{config.model} (it loads configs/'
        f'{config.model}.py)'))
  if config.mode not in MODES:
    raise ConfigError(describe('config.mode', f'{config.mode!r}', f'use one of {MODES}'))
  for key in ('train_days', 'validation_days', 'holdout_days'):
    if not float(config[key]) > 0:
      raise ConfigError(describe(f'config.{key}', f'{config[key]} is not positive',
                                 'give a number of days'))
  decision.decide({config.metric: 0.0}, None, config.metric, config.metric_mode,
                  float(config.margin))


def cycle_pending(config: ml_collections.ConfigDict, paths: workspace.Paths) -> bool:
  """True when the store holds data whose cycle has no decision yet (e.g. after a kill)."""
  if not (paths.store / store_lib.MANIFEST).exists():
    return False
  try:
    end = intake.data_end(paths.store, list(config.task.data.symbols))
  except QuantumAlphaError:
    return False
  return model_store.ModelStore(paths.models).decision(config.model, cycle_name(end)) is None


def cycle_name(end: pd.Timestamp) -> str:
  """A cycle is named by the end of its data: ``20240122T0000``."""
  return end.strftime('%Y%m%dT%H%M')


def run_cycle(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """One update cycle (module doc): ingest, train, evaluate, decide; returns the decision record."""
  check_update_config(config)
  paths = workspace.resolve_paths(config, workdir)
  name = config.model
  adapter = adapters.model_adapter(name)
  store = model_store.ModelStore(paths.models)
  with (workspace.cycle_lock(paths.models, name),
        workspace.compilation_cache(paths.compilation_cache),
        workspace.temporary_window_caches(paths.store)):
    ingested = intake.ingest(paths, config.task.data)
    if not (paths.store / store_lib.MANIFEST).exists():
      raise DataError(describe(str(paths.klines), 'no kline files to start from',
                               'put Binance dumps or freqtrade files of '
                               f'{", ".join(config.task.data.symbols)} there'))
    symbols = list(config.task.data.symbols)
    end = intake.data_end(paths.store, symbols)
    cycle = cycle_name(end)
    done = store.decision(name, cycle)
    if done is not None:
      decision.finish_promotion(store, name, done)
      logging.info('Cycle %s was decided already: %s', cycle, done['reason'])
      return {**done, 'status': 'decided before', 'ingested_now': ingested}

    incumbent = (store.load(name, 'promoted', store_dir=paths.store)
                 if store.promoted(name) else None)
    mode = config.mode if incumbent is not None else 'scratch'
    splits = periods.trailing_splits(end - pd.Timedelta(days=float(config.holdout_days)),
                                     config.train_days, config.validation_days, end)
    if incumbent is not None:
      seen = (incumbent.metadata.get('data') or {}).get('splits', {}).get('validation')
      if seen and schema.to_utc(seen[1]) > schema.to_utc(splits[HOLDOUT][0]):
        raise DataError(describe(
            f'holdout {splits[HOLDOUT]}', f'starts before the end of the data that version '
            f'{incumbent.version} was validated on ({seen[1]}): it would judge it on data it saw',
            'wait for more klines or lower config.holdout_days'))
    frames = store_lib.read_store(paths.store, symbols, start=splits['train'][0], end=end)
    candidate, candidate_metrics, task, data = _candidate(
        config, adapter, store, paths, cycle, splits, frames, incumbent, mode)
    mode, parent = candidate.metadata['extra']['mode'], candidate.metadata['extra']['parent']
    incumbent_metrics = None
    if incumbent is not None:
      incumbent_task, incumbent_config, incumbent_data = judge.version_data(
          adapter, incumbent, splits, frames, paths.store)
      incumbent_metrics = judge.evaluate_params(incumbent_task, incumbent.params,
                                                incumbent_data[HOLDOUT], incumbent_config)
    promote, reason = decision.decide(candidate_metrics, incumbent_metrics, config.metric,
                                      config.metric_mode, float(config.margin))
    record = {
        'cycle': cycle, 'model': name, 'time': provenance.utc_now(), 'mode': mode,
        'data_end': end.isoformat(), 'splits': splits, 'windows': {
            k: v.num_windows for k, v in data.items()},
        'metric': config.metric, 'metric_mode': config.metric_mode, 'margin': float(config.margin),
        'candidate': {'version': candidate.version, 'parent': parent,
                      'metrics': candidate_metrics},
        'incumbent': None if incumbent is None else {'version': incumbent.version,
                                                     'metrics': incumbent_metrics},
        'baselines': judge.forecast_baselines(task, data[HOLDOUT], data['train']),
        'promote': promote, 'reason': reason, 'ingested': ingested,
        'workdir': candidate.metadata['extra']['workdir'], 'code': provenance.code_revision(),
    }
    store.add_decision(name, record)  # before the promotion: a re-run completes it
    decision.finish_promotion(store, name, record)
    logging.info('Cycle %s: %s', cycle, reason)
    return record


def _candidate(config: ml_collections.ConfigDict, adapter: adapters.ModelAdapter,
               store: model_store.ModelStore, paths: workspace.Paths, cycle: str,
               splits: Mapping[str, tuple[str, str]], frames: Mapping[str, pd.DataFrame],
               incumbent: model_store.ModelVersion | None, mode: str
               ) -> tuple[model_store.ModelVersion, dict[str, float], Any, dict[str, Any]]:
  """The cycle's candidate: trained, judged on the holdout and saved, or (after a kill) the one
  already saved for this cycle. Returns it (without params), its holdout metrics, its task and
  its windows."""
  name, symbols = config.model, list(config.task.data.symbols)
  found = [row['version'] for row in store.list(name) if row['extra'].get('cycle') == cycle]
  if found:
    candidate = store.load(name, found[-1], params=False, store_dir=paths.store)
    task, _, data = judge.version_data(adapter, candidate, splits, frames, paths.store)
    return candidate, candidate.metrics['test'], task, data
  logging.info('Cycle %s: %s on %s, holdout %s', cycle, mode, splits['train'], splits[HOLDOUT])
  run_dir = paths.models / name / 'runs' / cycle
  parent = incumbent.version if incumbent is not None else None
  task_config = periods.task_config_for(config, splits, paths.store, finetune=mode == 'finetune')
  trained = retrain.train_model(adapter, task_config, frames, run_dir,
                                parent=incumbent if mode == 'finetune' else None,
                                run_info={'cycle': cycle, 'mode': mode, 'parent': parent})
  metrics = judge.evaluate_params(trained.task, trained.params, trained.data[HOLDOUT], task_config)
  fingerprint = provenance.store_fingerprint(paths.store, symbols, splits['train'][0],
                                             splits[HOLDOUT][1])
  fingerprint.update(splits=splits, last_bar=(schema.to_utc(splits[HOLDOUT][1]) - schema.BAR
                                              ).isoformat())
  version = store.save(
      name, trained.params, config=task_config, normalizer=trained.normalizer,
      metrics={'validation': trained.result.best_metrics, 'test': metrics, 'test_split': HOLDOUT},
      data=fingerprint,
      extra={'cycle': cycle, 'mode': mode, 'parent': parent, 'workdir': str(run_dir),
             'statistics': trained.statistics,
             'train': {key: trained.result.summary[key]
                       for key in ('steps', 'best_step', 'train_seconds', 'windows')}})
  return store.load(name, version, params=False), metrics, trained.task, trained.data


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """``experiments.update`` without watch or simulate: one cycle, or with the synthetic feed
  (``config.feed.source='synthetic'``) ``config.feed.deliveries`` times: the next days, a cycle.
  Then :func:`.report.write_history`."""
  if config.feed.source not in ('', 'synthetic'):
    raise ConfigError(describe('config.feed.source', f'{config.feed.source!r}',
                               'use "synthetic" or "" (klines arrive from elsewhere)'))
  records = []
  for _ in range(int(config.feed.deliveries) if config.feed.source == 'synthetic' else 1):
    if config.feed.source == 'synthetic':
      intake.feed_synthetic(config.feed, config.task.data.symbols,
                                workspace.resolve_paths(config, workdir).klines)
    records.append(run_cycle(config, workdir))
  report.write_history(config, workdir)
  return records


def watch(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], *,
          max_polls: int | None = None, sleep: Callable[[float], None] = time.sleep
          ) -> list[dict[str, Any]]:
  """Polls ``config.kline_dir`` every ``config.poll_seconds``; runs a cycle when files arrive or a
  cycle is unfinished. A failing cycle (bad file) is logged and retried only when the directory
  changes. Stops after ``config.max_cycles`` cycles (0: never) or ``max_polls`` polls; Ctrl-C and
  kills are safe at any moment."""
  paths = workspace.resolve_paths(config, workdir)
  records, failed, polls = [], None, 0
  logging.info('Watching %s every %s s (model store %s)', paths.klines, config.poll_seconds,
               paths.models)
  try:
    while True:
      polls += 1
      signature = tuple((f.name, f.size, f.mtime_ns)
                        for f in intake.scan_klines(paths.klines))
      if signature != failed and (intake.new_files(paths) or cycle_pending(config, paths)):
        try:
          record = run_cycle(config, workdir)
          records.append(record)
          failed = None
          report.write_history(config, workdir)
          print(report.format_decision(record), flush=True)
        except QuantumAlphaError as error:
          logging.error('Update cycle failed: %s (retried when %s changes)', error, paths.klines)
          failed = signature
      if (config.max_cycles and len(records) >= config.max_cycles) or (
          max_polls is not None and polls >= max_polls):
        break
      sleep(float(config.poll_seconds))
  except KeyboardInterrupt:
    logging.info('Stopped watching; the stores are consistent')
  return records
