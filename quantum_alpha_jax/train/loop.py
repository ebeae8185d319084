"""The training loop every model shares: steps or epochs, evaluation on a schedule, early stopping,
Orbax checkpoints with exact resume, TensorBoard + ``metrics.jsonl`` + a progress display.

A task is any object with

- ``init_params(rng, batch) -> params``: fp32 params from one example batch (numpy, unsharded);
- ``loss_fn(params, batch, rng, step=None) -> (loss, metrics)``: see
  :mod:`quantum_alpha_jax.train.step` (``step``, optional in the signature, is the optimizer step in
  training and ``None`` in evaluation, for losses on a schedule).

The whole protocol of a model (windows, signals, evaluation, formatting) is
:class:`quantum_alpha_jax.tasks.protocol.Task`; the loop needs only these two members.

``train_and_evaluate(config, task, data, workdir)`` trains on ``data['train']``, evaluates on
``data['validation']`` and returns the best params by the validation metric.

Several processes (``jax.distributed``, see :mod:`quantum_alpha_jax.distributed`) run this loop in
lockstep: each feeds its shard of every global batch, all save each checkpoint together, and only
process 0 writes logs. The returned params are then a process-local copy.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from quantum_alpha_jax import artifacts
from quantum_alpha_jax import distributed
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.data.windows import describe_anchors
from quantum_alpha_jax.data.windows import evaluation_dataset
from quantum_alpha_jax.data.windows import evaluation_subset
from quantum_alpha_jax.data.windows import make_iterator
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.progress import Progress
from quantum_alpha_jax.train import checkpoint as checkpoint_lib
from quantum_alpha_jax.train import population as population_lib
from quantum_alpha_jax.train import state as state_lib
from quantum_alpha_jax.train import step as step_lib
from quantum_alpha_jax.train import writers

# Config keys that may change between a killed run and its resume without changing the result.
RESUMABLE_CHANGES = ('log_every_steps', 'log_every_updates', 'num_workers',
                     'progress_interval_seconds')
# Keys added after runs were saved without them: absent from a saved config = this default.
ADDED_DEFAULTS = {'population': 1, 'population_learning_rates': [],
                  'population_learning_rate_spread': 0.0}


class Task(Protocol):

  def init_params(self, rng: jax.Array, batch: Mapping[str, np.ndarray]) -> Any:
    ...

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None,
              step: jax.Array | None = None) -> tuple[jax.Array, Mapping[str, jax.Array]]:
    ...


Hook = Callable[[int, state_lib.TrainState], None]
# Called after each evaluation (and its checkpoint) with the step and the validation metrics; it
# may raise to stop the run (a sweep's pruner does), leaving that checkpoint to resume from.
EvaluationCallback = Callable[[int, Mapping[str, float]], None]


def train_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``train`` sub-config every model config embeds; model configs override the defaults."""
  config = ml_collections.ConfigDict({
      'seed': 0,
      'batch_size': 256,  # global, over all processes and devices
      'num_epochs': 100,
      'num_steps': 0,  # > 0 overrides num_epochs
      'eval_every_steps': 0,  # 0: once per epoch
      'max_eval_batches': 0,  # 0: the whole validation split; else a fixed subset over every
                              # symbol and the whole split (loop.evaluation_anchors)
      'log_every_steps': 50,
      'patience': 15,  # evaluations without improvement before stopping; 0: never stop early
      'min_delta': 0.0,
      'validation_metric': 'loss',
      'validation_mode': 'min',
      'keep_checkpoints': 3,
      'compute_dtype': 'auto',  # bfloat16 on GPU/TPU, float32 on CPU
      'accumulation_steps': 1,
      'num_devices': 0,  # 0: every device
      'num_workers': 0,  # Grain worker processes for the training batches
      'progress_interval_seconds': 10.0,
      'population': 1,  # K > 1: K members (seeds seed..seed+K-1) in one vmapped step (population.py)
      'population_learning_rates': (),  # one peak rate per member; () = optimizer.learning_rate
      'population_learning_rate_spread': 0.0,  # > 0: K rates log-spaced over this many decades
      'optimizer': state_lib.optimizer_config(),
  })
  config.update(overrides)
  return config


@dataclasses.dataclass
class TrainResult:
  """What a run leaves: the best params, its validation metrics and a JSON-ready summary."""

  params: Any
  best_step: int
  best_metrics: dict[str, float]
  summary: dict[str, Any]
  state: state_lib.TrainState
  # A population (config.population = K > 1): ``params`` is member 0's (the config's own seed),
  # ``population_params`` all K stacked on a leading axis; the validation block per member.
  population_params: Any = None
  population: dict[str, Any] | None = None


def evaluation_anchors(split: SplitData, max_batches: int, batch_size: int,
                       seed: int = 0) -> np.ndarray:
  """The windows :func:`evaluate` reads: all of ``split``, or with ``max_batches > 0`` a fixed
  subset of ``max_batches * batch_size`` spread over every symbol and the whole split
  (``windows.evaluation_subset`` with ``seed``): the same at every evaluation and in every
  process."""
  count = max_batches * batch_size if max_batches > 0 else 0
  return evaluation_subset(split.source, count, seed)


def evaluate(eval_step: Callable[..., Any], params: Any, split: SplitData,
             mesh: jax.sharding.Mesh, max_batches: int = 0, *,
             batch_size: int | None = None, seed: int = 0) -> dict[str, float]:
  """Exact means of the task metrics over ``split`` (padding rows masked), or over the fixed
  subset of ``max_batches`` global batches of :func:`evaluation_anchors`. For a population's
  ``eval_step``: the members' mean and 95% interval, and the per-member block as ``'members'``
  (:func:`population.mean_metrics`).

  With several processes, each feeds every ``process_count``-th of those windows in global batches
  of ``batch_size`` (default: the split's batch); the means are the same.
  """
  batch_size = batch_size or int(np.shape(split.dataset[0]['mask'])[0])
  anchors = evaluation_anchors(split, max_batches, batch_size, seed)
  dataset = split.dataset
  if jax.process_count() > 1 or len(anchors) < len(split.source):
    dataset = evaluation_dataset(split.source, batch_size, anchors=anchors,
                                 shard_index=jax.process_index(), shard_count=jax.process_count())
  sums = []
  for batch in make_iterator(dataset):
    sums.append(eval_step(params, step_lib.shard_batch(batch, mesh)))
  return population_lib.mean_metrics(jax.device_get(sums))


def _total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  if config.num_steps > 0:
    return int(config.num_steps)
  if config.num_epochs <= 0:
    raise ConfigError(describe('config.train', 'num_epochs and num_steps are both 0',
                               'set --config.train.num_epochs or --config.train.num_steps'))
  return int(config.num_epochs) * int(steps_per_epoch)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       prefix: str = '') -> list[str]:
  """``'key: saved → current'`` for every setting that differs, ignoring ``RESUMABLE_CHANGES``."""
  keys = sorted(set(saved) | set(current))
  differences = []
  for key in keys:
    name = f'{prefix}{key}'
    a, b = saved.get(key), current.get(key)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      differences += config_differences(a, b, name + '.')
    elif key not in saved and key in ADDED_DEFAULTS and b in (ADDED_DEFAULTS[key], ()):
      continue
    elif a != b and key not in RESUMABLE_CHANGES:
      differences.append(f'{name}: {a!r} → {b!r}')
  return differences


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
  if best is None:
    return bool(np.isfinite(value))
  return value < best - min_delta if mode == 'min' else value > best + min_delta


def train_and_evaluate(config: ml_collections.ConfigDict, task: Task,
                       data: Mapping[str, SplitData], workdir: str | pathlib.Path, *,
                       run_config: Mapping[str, Any] | None = None,
                       extra_record: Mapping[str, Any] | None = None,
                       hooks: Sequence[Hook] = (),
                       on_evaluate: EvaluationCallback | None = None) -> TrainResult:
  """Trains ``task`` on ``data['train']``, validating on ``data['validation']``; resumes from
  ``workdir/checkpoints`` when it holds a run of the same ``run_config`` (the whole experiment
  config, checked so that a resume never mixes two setups). ``on_evaluate(step, metrics)`` runs
  after every evaluation's checkpoint."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  for name in ('train', 'validation'):
    if name not in data:
      raise ConfigError(describe('train_and_evaluate', f'no {name!r} split in the data',
                                 'add it to config.data.splits'))
  train, validation = data['train'], data['validation']
  mesh = step_lib.make_mesh(config.num_devices or None)
  dtype = step_lib.compute_dtype(config.compute_dtype)
  total_steps = _total_steps(config, train.steps_per_epoch)
  eval_every = int(config.eval_every_steps) or train.steps_per_epoch
  optimizer, schedule = state_lib.make_optimizer(config.optimizer, total_steps)
  population = population_lib.size(config)
  if population > 1 and population_lib.learning_rates(config) is not None:
    optimizer = population_lib.with_learning_rate_multiplier(optimizer)
  run_config = json.loads(json.dumps(dict(run_config or config.to_dict()), default=str))

  # Params from one example batch read straight from the source: the iterator stays untouched.
  example = train.source.gather(train.source.anchors[:max(1, jax.local_device_count())])
  if population > 1:
    state = population_lib.create_state(config, lambda rng: task.init_params(rng, example),
                                        optimizer)
  else:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    params = task.init_params(init_rng, example)
    state = state_lib.TrainState.create(params, optimizer, train_rng)
  state = step_lib.replicate(state, mesh)
  num_params = int(sum(np.size(x) for x in jax.tree.leaves(state.params))) // population

  checkpoints = checkpoint_lib.Checkpoints(
      workdir / 'checkpoints', keep=config.keep_checkpoints, keep_best=1,
      metric=config.validation_metric, mode=config.validation_mode)
  iterator = train.iterator(num_workers=config.num_workers)
  record = {'step': 0, 'best_step': None, 'best_metrics': None, 'evaluations_without_improvement': 0,
            'stopped_early': False, 'train_seconds': 0.0, 'config': run_config,
            **dict(extra_record or {})}
  # The windows that choose the best checkpoint, recorded with the run (the same at every step).
  subset = describe_anchors(validation.source, evaluation_anchors(
      validation, config.max_eval_batches, config.batch_size, config.seed))
  subset.update(max_eval_batches=int(config.max_eval_batches), seed=int(config.seed))
  logging.info('Validation on %d of %d windows: %s', subset['windows'], subset['of'],
               '; '.join(f'{name} {entry["windows"]} from {entry["first"]} to {entry["last"]}'
                         for name, entry in subset['symbols'].items()))
  record['validation_subset'] = subset
  resume_step = checkpoints.latest_step()
  if resume_step is not None:
    saved = checkpoints.read_record(resume_step)
    differences = config_differences(saved.get('config', {}), run_config)
    if differences:
      raise ConfigError(describe(
          str(workdir), f'holds a run with another config ({"; ".join(differences[:6])})',
          'pass a new --workdir, or delete the old one to start again'))
    state, record = checkpoints.restore(resume_step, state, iterator)
    record['config'] = run_config
    record['validation_subset'] = subset
    logging.info('Resumed from %s at step %d', workdir / 'checkpoints', resume_step)
  writer = writers.MetricWriter(workdir, resume_step=resume_step)
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh, dtype=dtype,
                                        accumulation_steps=config.accumulation_steps,
                                        population=population)
  eval_step = step_lib.make_eval_step(task.loss_fn, mesh, dtype=dtype, population=population)

  step = int(record['step'])
  progress = Progress(total=total_steps - step, description=f'train (from step {step})',
                      unit='steps', interval_seconds=config.progress_interval_seconds)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  interval_start, interval_steps = time.perf_counter(), 0
  run_start = time.perf_counter() - float(record['train_seconds'])
  last_train: dict[str, float] = {}

  def flush_train_metrics() -> None:
    nonlocal pending, interval_start, interval_steps, last_train
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (at, _), metrics in zip(pending, fetched):
      step_lib.check_finite(metrics, at)
    elapsed = max(time.perf_counter() - interval_start, 1e-9)
    means = {name: float(np.mean([m[name] for m in fetched])) for name in fetched[0]}
    means.pop('finite', None)
    means['learning_rate'] = float(np.mean(fetched[-1]['learning_rate']))  # population: mean
    means['steps_per_second'] = interval_steps / elapsed
    means['samples_per_second'] = interval_steps * config.batch_size / elapsed
    means['epoch'] = pending[-1][0] / train.steps_per_epoch
    writer.write(pending[-1][0], 'train', means)
    last_train = means
    progress.update(0, loss=f'{means["loss"]:.5g}', samples_per_s=f'{means["samples_per_second"]:.0f}')
    pending, interval_start, interval_steps = [], time.perf_counter(), 0

  try:
    while step < total_steps and not record['stopped_early']:
      batch = next(iterator)
      state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
      step += 1
      interval_steps += 1
      pending.append((step, metrics))
      progress.update(1)
      if step % config.log_every_steps == 0:
        flush_train_metrics()
      if step % eval_every == 0 or step == total_steps:
        flush_train_metrics()
        evaluated = evaluate(eval_step, state.params, validation, mesh, config.max_eval_batches,
                             batch_size=config.batch_size, seed=config.seed)
        members = evaluated.pop('members', None)  # a population's per-member block
        writer.write(step, 'validation', evaluated)
        value = evaluated[config.validation_metric]
        if _improved(value, (record['best_metrics'] or {}).get(config.validation_metric),
                     config.validation_mode, config.min_delta):
          record['best_step'], record['best_metrics'] = step, evaluated
          if members is not None:
            record['best_population'] = members
          record['evaluations_without_improvement'] = 0
        else:
          record['evaluations_without_improvement'] += 1
        if config.patience and record['evaluations_without_improvement'] >= config.patience:
          record['stopped_early'] = True
          logging.info('Early stop at step %d: %s did not improve for %d evaluations', step,
                       config.validation_metric, config.patience)
        record['step'] = step
        record['train_seconds'] = time.perf_counter() - run_start
        checkpoints.save(step, state, iterator, artifacts.json_ready(record), metrics=evaluated)
        logging.info('step %d: validation %s', step, population_lib.format_metrics(evaluated))
        interval_start, interval_steps = time.perf_counter(), 0
        if on_evaluate is not None:
          on_evaluate(step, evaluated)
      for hook in hooks:
        hook(step, state)
    flush_train_metrics()
  except BaseException:
    checkpoints.close()  # waits for a checkpoint in flight before the error leaves
    raise
  finally:
    progress.close()
    writer.close()

  best_step = record['best_step'] if record['best_step'] is not None else step
  if best_step != step:
    best_state, _ = checkpoints.restore(best_step, state)
  else:
    best_state = state
  checkpoints.close()
  train_seconds = float(record['train_seconds'])
  summary = {
      'steps': step, 'total_steps': total_steps, 'epochs': step / train.steps_per_epoch,
      'steps_per_epoch': train.steps_per_epoch, 'batch_size': config.batch_size,
      'num_devices': mesh.size, 'num_processes': jax.process_count(),
      'compute_dtype': step_lib.resolve_compute_dtype(config.compute_dtype), 'num_params': num_params,
      'stopped_early': bool(record['stopped_early']), 'best_step': best_step,
      'best_validation': record['best_metrics'], 'last_train': last_train,
      'train_seconds': train_seconds,
      'samples_per_second': step * config.batch_size / train_seconds if train_seconds else None,
      'windows': {name: split.num_windows for name, split in data.items()},
      'validation_subset': subset,
  }
  population_params, population_block = None, None
  if population > 1:
    population_params = distributed.process_local(best_state.params)
    population_block = {'seeds': population_lib.seeds(config),
                        'learning_rates': population_lib.learning_rates(config),
                        'validation': record.get('best_population')}
    summary['population'] = {'size': population, **population_block}
  # With several processes the params leave as a copy local to each process: work after training
  # (evaluation, plots, export) must not start collectives that other processes never join.
  params = distributed.process_local(best_state.params)
  if population > 1:
    params = population_lib.member(population_params, 0)
  return TrainResult(params=params, best_step=best_step,
                     best_metrics=dict(record['best_metrics'] or {}), summary=summary,
                     state=state, population_params=population_params,
                     population=population_block)

