"""Continual retraining: ingest new klines, fine-tune on a sliding window, promote only what beats
the promoted model on data neither has seen; and a walk-forward replay of that policy over history.

The cycle (:func:`run_cycle`) for the model ``config.model`` (the Oracle by default):

1. **Ingest.** Kline files in ``config.kline_dir`` that the ledger (``<models>/ingest.json``: name,
   size, mtime and SHA-256 of every file taken) has not seen are read by ``data/klines.py``
   (Binance daily or monthly CSV/zip dumps, freqtrade feather/JSON, generic CSV/parquet), merged
   with the bars already in the feature store (overlaps must agree candle for candle, or need
   ``config.task.data.dedupe``), regularised, and the 44 features are recomputed over each touched
   symbol's whole history (they are causal but cumulative: OBV and the EMAs run from the segment
   start). ``data/store.py`` rewrites the store atomically; the ledger is written after it, so a
   kill in between only re-reads files whose candles merge identically.
2. **Periods.** With ``E`` the end of the last bar that every symbol has, the holdout is
   ``[E - holdout_days, E)``, validation the ``validation_days`` before it and training the
   ``train_days`` before that. Windows of a later split start at least encoder + decoder bars
   after the earlier split ends (``data/windows.py``), so no training or validation target reaches
   into the holdout, and the holdout starts after the promoted version's own validation data.
3. **Train.** ``mode='finetune'``: the promoted version's params and normaliser are the starting
   point, with ``config.finetune``'s steps and learning rate; ``'scratch'`` (and the very first
   cycle): a fresh init and a normaliser fitted on the training window. The run lives in
   ``<models>/<name>/runs/<cycle>`` (``train.loop``): a cycle killed mid-training resumes exactly.
4. **Evaluate.** Candidate and promoted version, each with its own config and normaliser, on every
   holdout window: exact means of the task's ``loss_fn`` metrics (``train.loop.evaluate``), beside
   naive baselines where the model has them (forecasters: zero return, last-return persistence,
   trailing mean and climatology, in the loss's pinball units).
5. **Decide.** For ``metric_mode='min'`` the candidate is promoted when
   ``c < i - margin · |i|`` (``'max'``: ``c > i + margin · |i|``), ``c`` and ``i`` its and the
   incumbent's ``config.metric`` on the holdout. The decision record (both metric sets, the
   baselines, the periods, the files) is written to the model store before the promotion; a re-run
   of the same cycle completes a promotion that a kill interrupted, and never trains twice.

Every step keeps its state in the stores, so the cycle is safe to kill at any moment and a re-run
picks up where it stopped. Two cycles never run at once on one model store (a lock file).
:func:`write_history` puts every decision so far in ``results.json`` and ``cycles.png``.

**Models plug in by name.** ``config.model = 'x'`` uses ``quantum_alpha_jax/tasks/x.py`` and
``configs/x.py``. The task module provides ``window_spec(config) -> WindowSpec`` and a task class
with ``from_config(config)``, ``init_params`` and ``loss_fn`` (or ``make_task(config)``), and
optionally ``prepare_update(task, data) -> (task, record)`` for statistics a task takes from the
training split (saved in the run's checkpoint record).

**Walk-forward simulation** (:func:`simulate`): at each boundary of ``config.simulation``
(monthly by default), the continually-updated model is fine-tuned (or retrained) on the trailing
window and evaluated on the period up to the next boundary, beside the model trained at the first
boundary and then frozen, and the naive baselines; ``results.json`` holds every period and the
mean and spread of each series, ``simulation.png`` draws them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import importlib
import json
import math
import os
import pathlib
import re
import shutil
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache as cache_lib
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax import registry
from quantum_alpha_jax.data import klines as klines_lib
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import compute_features
from quantum_alpha_jax.errors import ConfigError, DataError, QuantumAlphaError, describe
from quantum_alpha_jax.evaluate import forecast
from quantum_alpha_jax.train import checkpoint as checkpoint_lib
from quantum_alpha_jax.train import data as data_lib
from quantum_alpha_jax.train import loop
from quantum_alpha_jax.train import step as step_lib
from quantum_alpha_jax.train import writers

LEDGER = 'ingest.json'
KLINE_SUFFIXES = ('.zip', '.csv', '.json', '.json.gz', '.feather', '.parquet')
MODES = ('finetune', 'scratch')
HOLDOUT = 'holdout'
KLINE_COLUMNS = (schema.TIMESTAMP, *schema.OHLCV, *schema.EXTRA_KLINE_COLUMNS, schema.REGIME)
_DAILY_DUMP = re.compile(r'^([A-Z0-9]+)-5m-(\d{4}-\d{2}-\d{2})\.')


# ----------------------------------------------------------------------------------------------
# Paths, the compilation cache and the cycle lock.


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where an update setup keeps things: the model store, the feature store, the incoming klines."""

  models: pathlib.Path
  store: pathlib.Path
  klines: pathlib.Path
  compilation_cache: pathlib.Path | None


def resolve_paths(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> Paths:
  """``config.models_dir``, ``store_dir``, ``kline_dir`` and ``compilation_cache_dir``, each
  defaulting to a folder of ``workdir`` (``models``, ``features``, ``klines``, ``jax_cache``)."""
  workdir = pathlib.Path(workdir)
  pick = lambda value, default: pathlib.Path(value) if value else workdir / default
  cache = config.compilation_cache_dir
  return Paths(models=pick(config.models_dir, 'models'), store=pick(config.store_dir, 'features'),
               klines=pick(config.kline_dir, 'klines'),
               compilation_cache=None if cache == '' else pick(cache, 'jax_cache'))


@contextlib.contextmanager
def compilation_cache(directory: str | os.PathLike[str] | None) -> Iterator[None]:
  """JAX's persistent compilation cache in ``directory`` for the duration (None: unchanged).

  Every cycle builds its train and eval steps afresh; with the cache, the second cycle on the same
  shapes loads the compiled executables instead of compiling again (27 s -> 6 s for a tiny TFT).
  """
  if directory is None:
    yield
    return
  previous = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
  pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  cache_lib.reset_cache()
  try:
    yield
  finally:
    jax.config.update('jax_compilation_cache_dir', previous[0])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', previous[1])
    cache_lib.reset_cache()


@contextlib.contextmanager
def _cycle_lock(models: pathlib.Path, name: str) -> Iterator[None]:
  """Refuses a second cycle on the same model store while one runs (cron overlapping a watch)."""
  models.mkdir(parents=True, exist_ok=True)
  with open(models / f'.{name}.cycle.lock', 'a+') as handle:
    try:
      fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise registry.ModelStoreError(describe(
          str(models), f'another update cycle of {name!r} is running',
          'let it finish (a cycle holds this lock only while it runs)')) from None
    try:
      yield
    finally:
      fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# Models by name.


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
  """What the cycle needs of a model: its task, its windows and optional training statistics."""

  name: str
  make_task: Callable[[ml_collections.ConfigDict], Any]
  window_spec: Callable[[ml_collections.ConfigDict], windows.WindowSpec]
  prepare: Callable[[Any, Mapping[str, windows.SplitData]], tuple[Any, dict[str, Any]]] | None


def model_adapter(name: str) -> ModelAdapter:
  """The adapter of ``quantum_alpha_jax/tasks/<name>.py`` (see the module doc for the protocol)."""
  module_name = f'quantum_alpha_jax.tasks.{name}'
  tasks_dir = pathlib.Path(__file__).resolve().parent / 'tasks'
  available = sorted(p.stem for p in tasks_dir.glob('*.py') if not p.stem.startswith('_'))
  if not isinstance(name, str) or not re.fullmatch(r'[a-z][a-z0-9_]*', name):
    raise ConfigError(describe('config.model', f'{name!r} is not a model name',
                               f'use one of {", ".join(available)}'))
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as error:
    if error.name != module_name:
      raise
    raise ConfigError(describe('config.model', f'no task module quantum_alpha_jax/tasks/{name}.py',
                               f'use one of {", ".join(available)}')) from None
  make_task = getattr(module, 'make_task', None)
  if make_task is None:
    classes = [value for value in vars(module).values()
               if isinstance(value, type) and value.__module__ == module_name
               and hasattr(value, 'from_config') and hasattr(value, 'loss_fn')]
    if len(classes) != 1:
      raise ConfigError(describe(
          'config.model', f'{module_name} has {len(classes)} task classes with from_config and '
          'loss_fn', 'give the module a make_task(config) function'))
    make_task = classes[0].from_config
  window_spec = getattr(module, 'window_spec', None)
  if window_spec is None:
    raise ConfigError(describe('config.model', f'{module_name} has no window_spec(config)',
                               'add one (see quantum_alpha_jax/tasks/oracle.py)'))
  return ModelAdapter(name=name, make_task=make_task, window_spec=window_spec,
                      prepare=getattr(module, 'prepare_update', None))


class WarmStart:
  """A task whose ``init_params`` returns a copy of ``params`` (a fine-tune's start), after checking
  that they fit the model; ``loss_fn`` and everything else are the wrapped task's."""

  def __init__(self, task: Any, params: Any, where: str):
    self.task, self.params, self.where = task, params, where

  def init_params(self, rng: jax.Array, batch: Mapping[str, np.ndarray]) -> Any:
    checkpoint_lib.check_structure(self.params, jax.eval_shape(self.task.init_params, rng, batch),
                                   self.where)
    return jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), self.params)

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None):
    return self.task.loss_fn(params, batch, rng)


# ----------------------------------------------------------------------------------------------
# Ingest.


@dataclasses.dataclass(frozen=True)
class KlineFile:
  """A kline file as found in the incoming directory."""

  path: pathlib.Path
  size: int
  mtime_ns: int

  @property
  def name(self) -> str:
    return self.path.name


def scan_klines(directory: str | os.PathLike[str]) -> list[KlineFile]:
  """The kline files (by suffix; hidden and partial downloads skipped) in ``directory``, by name."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  found = []
  for path in sorted(directory.iterdir()):
    if path.name.startswith('.') or not path.is_file():
      continue
    if any(path.name.lower().endswith(suffix) for suffix in KLINE_SUFFIXES):
      stat = path.stat()
      found.append(KlineFile(path, stat.st_size, stat.st_mtime_ns))
  return found


def read_ledger(models: str | os.PathLike[str]) -> dict[str, Any]:
  """``<models>/ingest.json``: ``{'files': {name: {size, mtime_ns, sha256, symbol, ...}}}``."""
  path = pathlib.Path(models) / LEDGER
  if not path.exists():
    return {'files': {}}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise DataError(describe(str(path), f'corrupt ingest ledger ({error.msg})',
                             'delete it: every file is then ingested again (identical candles '
                             'merge silently)')) from error


def new_files(paths: Paths) -> list[KlineFile]:
  """Files of the kline directory the ledger has not taken (or that changed size or mtime since);
  every file when the feature store does not exist (yet, or any more)."""
  files = scan_klines(paths.klines)
  if not (paths.store / store_lib.MANIFEST).exists():
    return files
  taken = read_ledger(paths.models)['files']
  return [f for f in files if (taken.get(f.name, {}).get('size'), taken.get(f.name, {}).get(
      'mtime_ns')) != (f.size, f.mtime_ns)]


def ingest(paths: Paths, data_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Adds the new kline files to the feature store (see the module doc); returns what it did."""
  files = new_files(paths)
  if not files:
    return {'files': [], 'symbols': {}}
  symbols = list(data_config.symbols)
  by_symbol: dict[str, list[KlineFile]] = {}
  ignored = []
  for file in files:
    symbol = klines_lib.infer_symbol(file.path)
    if symbol is None:
      raise DataError(describe(
          str(file.path), 'cannot tell the symbol from the file name',
          'name it like a Binance dump (BTCUSDT-5m-2024-01-05.zip) or a freqtrade file '
          '(BTC_USDT-5m.feather)'))
    if symbol in symbols:
      by_symbol.setdefault(symbol, []).append(file)
    else:
      ignored.append(file)
      logging.info('%s: %s is not in config.task.data.symbols; ignored', file.name, symbol)
  have = (store_lib.store_symbols(paths.store)
          if (paths.store / store_lib.MANIFEST).exists() else [])
  frames, gaps, summary = {}, {}, {}
  for symbol, taken in sorted(by_symbol.items()):
    new, _ = klines_lib.load_symbol(
        [f.path for f in taken], symbol, sort=data_config.sort, dedupe=data_config.dedupe,
        fill_limit_bars=data_config.fill_limit_bars, drop_last_bar=data_config.drop_last_bar)
    new = new.loc[new[schema.OBSERVED].to_numpy()]
    rows_before = 0
    if symbol in have:
      old = store_lib.read_store(paths.store, [symbol])[symbol]
      rows_before = len(old)
      old = old.loc[old[schema.OBSERVED].to_numpy()]
      columns = [c for c in KLINE_COLUMNS if c in old and c in new]
      merged = pd.concat([old[columns], new[columns]], ignore_index=True)
      merged = merged.sort_values(schema.TIMESTAMP, kind='stable').reset_index(drop=True)
      merged = klines_lib.merge_overlaps(merged, symbol, data_config.dedupe)
    else:
      merged = new[[c for c in KLINE_COLUMNS if c in new]].reset_index(drop=True)
    regular, gaps[symbol] = klines_lib.regularize(merged,
                                                  fill_limit_bars=data_config.fill_limit_bars)
    frames[symbol] = compute_features(regular)
    summary[symbol] = {'files': [f.name for f in taken], 'rows_before': rows_before,
                       'rows_after': len(regular),
                       'last_bar': regular[schema.TIMESTAMP].iloc[-1].isoformat()}
  written = []
  if frames:
    written = store_lib.write_store(paths.store, frames,
                                    sources={s: [f.path for f in by_symbol[s]] for s in frames},
                                    gaps=gaps)
  builds = {m['symbol']: m['build'] for m in written}
  ledger = read_ledger(paths.models)
  now = registry.utc_now()
  for file in files:
    symbol = klines_lib.infer_symbol(file.path)
    ledger['files'][file.name] = {
        'size': file.size, 'mtime_ns': file.mtime_ns, 'sha256': store_lib.sha256_file(file.path),
        'symbol': symbol, 'ingested': now, 'build': builds.get(symbol),
        'ignored': symbol not in frames}
  paths.models.mkdir(parents=True, exist_ok=True)
  writers.write_json(paths.models / LEDGER, ledger)
  logging.info('Ingested %d files into %s: %s', len(files), paths.store, summary)
  return {'files': [f.name for f in files], 'ignored': [f.name for f in ignored],
          'symbols': summary}


def data_end(store_dir: str | os.PathLike[str], symbols: Sequence[str]) -> pd.Timestamp:
  """One bar after the last bar that every symbol in the store has (from the sidecars)."""
  manifest = store_lib.read_manifest(store_dir)
  lasts = {}
  for stem in manifest['files']:
    symbol, year = stem.rsplit('_', 2)[0], int(stem.rsplit('_', 2)[1])
    if symbol in symbols:
      last = pd.Timestamp(store_lib.read_metadata(store_dir, symbol, year)['last'])
      lasts[symbol] = max(last, lasts.get(symbol, last))
  missing = [s for s in symbols if s not in lasts]
  if missing:
    raise DataError(describe(str(store_dir), f'no bars of {", ".join(missing)} yet',
                             'deliver kline files of every symbol in config.task.data.symbols'))
  return min(lasts.values()).tz_convert('UTC') + schema.BAR


# ----------------------------------------------------------------------------------------------
# Periods, training and evaluation (shared by the cycle and the simulation).


def trailing_splits(boundary: Any, train_days: float, validation_days: float,
                    evaluation_end: Any, evaluation_name: str = HOLDOUT
                    ) -> dict[str, tuple[str, str]]:
  """``{'train', 'validation', evaluation_name}`` date ranges: evaluation ``[boundary,
  evaluation_end)``, validation the ``validation_days`` before the boundary, train before that."""
  boundary = schema.to_utc(boundary, 'boundary')
  end = schema.to_utc(evaluation_end, 'evaluation end')
  for key, value in (('train_days', train_days), ('validation_days', validation_days)):
    if not value > 0:
      raise ConfigError(describe(f'config.{key}', f'{value} is not positive',
                                 'give a number of days'))
  validation = boundary - pd.Timedelta(days=float(validation_days))
  train = validation - pd.Timedelta(days=float(train_days))
  iso = lambda t: t.isoformat()
  return {'train': (iso(train), iso(validation)), 'validation': (iso(validation), iso(boundary)),
          evaluation_name: (iso(boundary), iso(end))}


def task_config_for(config: ml_collections.ConfigDict, splits: Mapping[str, tuple[str, str]],
                    store_dir: str | os.PathLike[str], finetune: bool) -> ml_collections.ConfigDict:
  """The model's config for one cycle or period: its data read from ``store_dir`` over ``splits``;
  with ``finetune``, ``config.finetune``'s steps and learning rate."""
  task = ml_collections.ConfigDict(copy.deepcopy(config.task.to_dict()))
  task.data.store_dir = str(store_dir)
  task.data.splits = ml_collections.ConfigDict({k: tuple(v) for k, v in splits.items()})
  if finetune:
    task.train.num_steps = int(config.finetune.num_steps)
    task.train.optimizer.learning_rate = float(config.finetune.learning_rate)
    task.train.optimizer.warmup_steps = int(config.finetune.warmup_steps)
  return task


@dataclasses.dataclass
class Trained:
  """A model trained for one cycle or period, with the data it saw and the one it is judged on."""

  task: Any
  params: Any
  normalizer: windows.Normalizer
  data: dict[str, windows.SplitData]
  result: loop.TrainResult
  statistics: dict[str, Any] | None  # what the task's prepare_update took from the training split


def _model_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
  return [f'{key}: {saved.get(key)!r} -> {current.get(key)!r}'
          for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def train_model(adapter: ModelAdapter, task_config: ml_collections.ConfigDict,
                frames: Mapping[str, pd.DataFrame], workdir: pathlib.Path, *,
                parent: registry.ModelVersion | None, run_info: Mapping[str, Any]) -> Trained:
  """Trains on ``task_config.data.splits['train']`` (validating on ``'validation'``) in ``workdir``,
  from ``parent``'s params and normaliser when given (a fine-tune), else from scratch."""
  normalizer = None
  if parent is not None:
    differences = _model_differences(parent.config.to_dict().get('model', {}),
                                     task_config.model.to_dict())
    if differences:
      raise ConfigError(describe(
          f'{parent.name} version {parent.version}', 'was trained with another model config ('
          + '; '.join(differences[:6]) + '), so it cannot be fine-tuned into this one',
          'use --config.mode=scratch, or restore the model config it was trained with'))
    normalizer = parent.normalizer
  spec = adapter.window_spec(task_config)
  data, normalizer = data_lib.make_split_data(task_config.data, spec, task_config.train.batch_size,
                                              task_config.train.seed, normalizer=normalizer,
                                              frames=frames)
  task = adapter.make_task(task_config)
  record, statistics = {'normalizer': normalizer.to_dict()}, None
  if adapter.prepare is not None:
    task, statistics = adapter.prepare(task, data)
    record[f'{adapter.name}_statistics'] = statistics
  trainee = task if parent is None else WarmStart(
      task, parent.params, f'{parent.name} version {parent.version}')
  result = loop.train_and_evaluate(
      task_config.train, trainee, {'train': data['train'], 'validation': data['validation']},
      workdir, run_config={**task_config.to_dict(), 'update': dict(run_info)},
      extra_record=record)
  return Trained(task=task, params=result.params, normalizer=normalizer, data=data, result=result,
                 statistics=statistics)


_EVAL_STEPS: dict[str, tuple[jax.sharding.Mesh, Callable[..., Any]]] = {}


def evaluate_params(task: Any, params: Any, split: windows.SplitData,
                    task_config: ml_collections.ConfigDict) -> dict[str, float]:
  """Exact means of the task's ``loss_fn`` metrics over every window of ``split``.

  The jitted eval step is kept per task description (everything but the data and training
  settings), so the candidate and the promoted version of one architecture, and later cycles of a
  watch, share one compiled step.
  """
  key = json.dumps({'task': type(task).__qualname__, 'dtype': task_config.train.compute_dtype,
                    'devices': task_config.train.num_devices,
                    **{k: v for k, v in task_config.to_dict().items()
                       if k not in ('data', 'train', 'evaluation', 'name')}},
                   sort_keys=True, default=str)
  if key not in _EVAL_STEPS:
    mesh = step_lib.make_mesh(task_config.train.num_devices or None)
    _EVAL_STEPS[key] = mesh, step_lib.make_eval_step(
        task.loss_fn, mesh, dtype=step_lib.compute_dtype(task_config.train.compute_dtype))
  mesh, eval_step = _EVAL_STEPS[key]
  return loop.evaluate(eval_step, step_lib.replicate(params, mesh), split, mesh)


def version_data(adapter: ModelAdapter, version: registry.ModelVersion,
                 splits: Mapping[str, tuple[str, str]], frames: Mapping[str, pd.DataFrame],
                 store_dir: str | os.PathLike[str]
                 ) -> tuple[Any, ml_collections.ConfigDict, dict[str, windows.SplitData]]:
  """A stored version's task, its config over ``splits``, and those splits' windows normalised
  with its own normaliser (what its ``loss_fn`` needs to be evaluated there)."""
  if version.normalizer is None or not version.metadata.get('config'):
    raise registry.ModelStoreError(describe(
        f'{version.name} version {version.version}', 'was saved without its config or normaliser',
        'save versions with config= and normalizer= (update cycles do)'))
  task_config = ml_collections.ConfigDict(version.metadata['config'])
  task_config.data.store_dir = str(store_dir)
  task_config.data.splits = ml_collections.ConfigDict({k: tuple(v) for k, v in splits.items()})
  task = adapter.make_task(task_config)
  data, _ = data_lib.make_split_data(task_config.data, adapter.window_spec(task_config),
                                     task_config.train.batch_size, task_config.train.seed,
                                     normalizer=version.normalizer, frames=frames)
  return task, task_config, data


def forecast_baselines(task: Any, split: windows.SplitData, train: windows.SplitData
                       ) -> dict[str, dict[str, float]]:
  """Naive forecasts' ``loss`` (mean pinball, in the task's units) on every window of ``split``:
  zero return, last-return persistence, the training split's mean and its climatology quantiles;
  ``{}`` for a task that is not a quantile forecaster."""
  from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top
  if not isinstance(task, oracle.OracleTask):
    return {}
  source = split.source
  spec, arrays, anchors = source.spec, source.arrays, source.anchors
  offsets = spec.offsets[spec.encoder_length:]
  targets = np.cumsum(np.take(arrays.log_return, anchors[:, None] + offsets).astype(np.float64), -1)
  levels = task.quantiles.astype(np.float64)
  horizons = np.arange(1, len(offsets) + 1)
  statistics = oracle.training_baselines(train, levels)
  points = {'zero_return': np.zeros_like(targets),
            'last_return_persistence': np.take(arrays.log_return, anchors).astype(
                np.float64)[:, None] * horizons,
            'train_mean': np.broadcast_to(statistics['mean'], targets.shape)}
  scale = float(task.target_scale)
  result = {name: {'loss': forecast.pinball_loss(
      targets * scale, np.repeat(np.asarray(point)[..., None] * scale, len(levels), -1), levels)}
            for name, point in points.items()}
  result['climatology'] = {'loss': forecast.pinball_loss(
      targets * scale, np.broadcast_to(statistics['quantiles'] * scale,
                                       targets.shape + levels.shape), levels)}
  return result


def decide(candidate: Mapping[str, float], incumbent: Mapping[str, float] | None, metric: str,
           mode: str, margin: float) -> tuple[bool, str]:
  """Whether to promote the candidate, and why, by ``metric`` (module doc, step 5)."""
  if mode not in ('min', 'max'):
    raise ConfigError(describe('config.metric_mode', f'{mode!r}', 'use "min" or "max"'))
  if not margin >= 0:
    raise ConfigError(describe('config.margin', f'{margin} is negative', 'use a fraction >= 0'))
  if metric not in candidate:
    raise ConfigError(describe('config.metric', f'the task reports no {metric!r}',
                               f'use one of {", ".join(sorted(candidate))}'))
  value = candidate[metric]
  if value is None or not math.isfinite(value):
    return False, f'kept: the candidate\'s {metric} is {value}'
  if incumbent is None:
    return True, 'promoted: no version was promoted yet'
  reference = incumbent[metric]
  if reference is None or not math.isfinite(reference):
    return True, f'promoted: the promoted version\'s {metric} is {reference}'
  if mode == 'min':
    threshold = reference - margin * abs(reference)
    better, sign, relation = value < threshold, '-', '<'
  else:
    threshold = reference + margin * abs(reference)
    better, sign, relation = value > threshold, '+', '>'
  rule = (f'candidate {metric} {value:.6g} {relation} {reference:.6g} {sign} {margin:g}·'
          f'|{reference:.6g}| = {threshold:.6g}')
  return bool(better), ('promoted: ' if better else 'kept the promoted version: not ') + rule


# ----------------------------------------------------------------------------------------------
# The cycle.


def _check_update_config(config: ml_collections.ConfigDict) -> None:
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
  decide({config.metric: 0.0}, None, config.metric, config.metric_mode, float(config.margin))


def _finish_promotion(store: registry.ModelStore, name: str, record: Mapping[str, Any]) -> None:
  """Completes the promotion of a decided cycle that a kill cut short."""
  if not record.get('promote'):
    return
  history = (store.promoted(name) or {}).get('history', [])
  if not any(entry.get('details', {}).get('cycle') == record['cycle'] for entry in history):
    store.promote(name, record['candidate']['version'], record['reason'],
                  details={'cycle': record['cycle']})


def cycle_pending(config: ml_collections.ConfigDict, paths: Paths) -> bool:
  """True when the store holds data whose cycle has no decision yet (e.g. after a kill)."""
  if not (paths.store / store_lib.MANIFEST).exists():
    return False
  try:
    end = data_end(paths.store, list(config.task.data.symbols))
  except QuantumAlphaError:
    return False
  return registry.ModelStore(paths.models).decision(config.model, cycle_name(end)) is None


def cycle_name(end: pd.Timestamp) -> str:
  """A cycle is named by the end of its data: ``20240122T0000``."""
  return end.strftime('%Y%m%dT%H%M')


def run_cycle(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """One update cycle (module doc): ingest, train, evaluate, decide; returns the decision record."""
  _check_update_config(config)
  paths = resolve_paths(config, workdir)
  name = config.model
  adapter = model_adapter(name)
  store = registry.ModelStore(paths.models)
  with (_cycle_lock(paths.models, name), compilation_cache(paths.compilation_cache),
        _temporary_window_caches(paths.store)):
    ingested = ingest(paths, config.task.data)
    if not (paths.store / store_lib.MANIFEST).exists():
      raise DataError(describe(str(paths.klines), 'no kline files to start from',
                               'put Binance dumps or freqtrade files of '
                               f'{", ".join(config.task.data.symbols)} there'))
    symbols = list(config.task.data.symbols)
    end = data_end(paths.store, symbols)
    cycle = cycle_name(end)
    done = store.decision(name, cycle)
    if done is not None:
      _finish_promotion(store, name, done)
      logging.info('Cycle %s was decided already: %s', cycle, done['reason'])
      return {**done, 'status': 'decided before', 'ingested_now': ingested}

    incumbent = (store.load(name, 'promoted', store_dir=paths.store)
                 if store.promoted(name) else None)
    mode = config.mode if incumbent is not None else 'scratch'
    splits = trailing_splits(end - pd.Timedelta(days=float(config.holdout_days)),
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
      incumbent_task, incumbent_config, incumbent_data = version_data(
          adapter, incumbent, splits, frames, paths.store)
      incumbent_metrics = evaluate_params(incumbent_task, incumbent.params,
                                          incumbent_data[HOLDOUT], incumbent_config)
    promote, reason = decide(candidate_metrics, incumbent_metrics, config.metric,
                             config.metric_mode, float(config.margin))
    record = {
        'cycle': cycle, 'model': name, 'time': registry.utc_now(), 'mode': mode,
        'data_end': end.isoformat(), 'splits': splits, 'windows': {
            k: v.num_windows for k, v in data.items()},
        'metric': config.metric, 'metric_mode': config.metric_mode, 'margin': float(config.margin),
        'candidate': {'version': candidate.version, 'parent': parent,
                      'metrics': candidate_metrics},
        'incumbent': None if incumbent is None else {'version': incumbent.version,
                                                     'metrics': incumbent_metrics},
        'baselines': forecast_baselines(task, data[HOLDOUT], data['train']),
        'promote': promote, 'reason': reason, 'ingested': ingested,
        'workdir': candidate.metadata['extra']['workdir'], 'code': registry.code_revision(),
    }
    store.add_decision(name, record)  # before the promotion: a re-run completes it
    _finish_promotion(store, name, record)
    logging.info('Cycle %s: %s', cycle, reason)
    return record


def _candidate(config: ml_collections.ConfigDict, adapter: ModelAdapter,
               store: registry.ModelStore, paths: Paths, cycle: str,
               splits: Mapping[str, tuple[str, str]], frames: Mapping[str, pd.DataFrame],
               incumbent: registry.ModelVersion | None, mode: str
               ) -> tuple[registry.ModelVersion, dict[str, float], Any, dict[str, Any]]:
  """The cycle's candidate: trained, judged on the holdout and saved, or (after a kill) the one
  already saved for this cycle. Returns it (without params), its holdout metrics, its task and
  its windows."""
  name, symbols = config.model, list(config.task.data.symbols)
  found = [row['version'] for row in store.list(name) if row['extra'].get('cycle') == cycle]
  if found:
    candidate = store.load(name, found[-1], params=False, store_dir=paths.store)
    task, _, data = version_data(adapter, candidate, splits, frames, paths.store)
    return candidate, candidate.metrics['test'], task, data
  logging.info('Cycle %s: %s on %s, holdout %s', cycle, mode, splits['train'], splits[HOLDOUT])
  run_dir = paths.models / name / 'runs' / cycle
  parent = incumbent.version if incumbent is not None else None
  task_config = task_config_for(config, splits, paths.store, finetune=mode == 'finetune')
  trained = train_model(adapter, task_config, frames, run_dir,
                        parent=incumbent if mode == 'finetune' else None,
                        run_info={'cycle': cycle, 'mode': mode, 'parent': parent})
  metrics = evaluate_params(trained.task, trained.params, trained.data[HOLDOUT], task_config)
  fingerprint = registry.store_fingerprint(paths.store, symbols, splits['train'][0],
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


@contextlib.contextmanager
def _temporary_window_caches(store_dir: str | os.PathLike[str]) -> Iterator[None]:
  """Removes the window caches (``<store>/windows_cache/windows-*``) created inside the block: each
  cycle or period windows new frames, so its cache is never read again and the disk would fill."""
  cache = pathlib.Path(store_dir) / 'windows_cache'
  before = set(cache.glob('windows-*')) if cache.is_dir() else set()
  try:
    yield
  finally:
    for directory in (set(cache.glob('windows-*')) if cache.is_dir() else set()) - before:
      shutil.rmtree(directory, ignore_errors=True)


def feed_synthetic(feed: ml_collections.ConfigDict, symbols: Sequence[str],
                   directory: str | os.PathLike[str]) -> list[pathlib.Path]:
  """Delivers the next days of the embedded synthetic market as Binance daily zips: the first
  ``feed.initial_days`` from ``feed.start``, then ``feed.days`` after the last delivered day.
  The market is generated over ``[feed.start, feed.end)`` with ``feed.seed``, so deliveries are
  the same whatever their order."""
  directory = pathlib.Path(directory)
  delivered = [pd.Timestamp(match[2], tz='UTC') for match in
               (_DAILY_DUMP.match(f.name) for f in scan_klines(directory))
               if match and match[1] in symbols]
  start = schema.to_utc(feed.start, 'config.feed.start')
  first = max(delivered) + pd.Timedelta(days=1) if delivered else start
  last = first + pd.Timedelta(days=int(feed.days if delivered else feed.initial_days))
  if last > schema.to_utc(feed.end, 'config.feed.end'):
    raise DataError(describe('config.feed', f'the synthetic market ends at {feed.end}; no days '
                             f'left after {first.date()}', 'raise --config.feed.end'))
  market = synthetic.generate_market(tuple(symbols), start=feed.start, end=feed.end,
                                     seed=int(feed.seed))
  written = []
  for symbol, frame in market.items():
    times = frame[schema.TIMESTAMP]
    part = frame.loc[((times >= first) & (times < last)).to_numpy()]
    written += klines_lib.write_binance(part, symbol, directory, period='day')
  logging.info('Delivered %s .. %s of the synthetic market to %s', first.date(),
               (last - pd.Timedelta(days=1)).date(), directory)
  return written


def write_history(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]
                  ) -> dict[str, Any]:
  """``results.json`` and ``cycles.png`` in ``workdir``: every decision on ``config.model`` so far
  (candidate, promoted version and baselines on each cycle's holdout), its versions and pointer."""
  paths = resolve_paths(config, workdir)
  store = registry.ModelStore(paths.models)
  name, metric = config.model, config.metric
  decisions = store.decisions(name)
  results = {'model': name, 'metric': metric, 'metric_mode': config.metric_mode,
             'promoted': store.promoted(name), 'versions': store.list(name), 'cycles': decisions,
             'config': config.to_dict()}
  if decisions:
    series = {'candidate': [d['candidate']['metrics'].get(metric) for d in decisions],
              'promoted': [((d.get('incumbent') or {}).get('metrics') or {}).get(metric)
                           for d in decisions]}
    for baseline in decisions[-1].get('baselines') or {}:
      series[baseline] = [(d.get('baselines') or {}).get(baseline, {}).get(metric)
                          for d in decisions]
    results['plot'] = str(plot_comparison(
        [d['cycle'] for d in decisions], series, metric, pathlib.Path(workdir) / 'cycles.png',
        first='candidate', second='promoted', xlabel='cycle (end of its data)',
        title=f'{name}: each cycle\'s candidate vs the promoted version on the newest '
              f'{config.holdout_days:g} days'))
  results['results_json'] = str(writers.write_results(workdir, results))
  return results


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """``experiments.update`` without watch or simulate: one cycle, or with the synthetic feed
  (``config.feed.source='synthetic'``) ``config.feed.deliveries`` times: the next days, a cycle.
  Then :func:`write_history`."""
  if config.feed.source not in ('', 'synthetic'):
    raise ConfigError(describe('config.feed.source', f'{config.feed.source!r}',
                               'use "synthetic" or "" (klines arrive from elsewhere)'))
  records = []
  for _ in range(int(config.feed.deliveries) if config.feed.source == 'synthetic' else 1):
    if config.feed.source == 'synthetic':
      feed_synthetic(config.feed, config.task.data.symbols, resolve_paths(config, workdir).klines)
    records.append(run_cycle(config, workdir))
  write_history(config, workdir)
  return records


def watch(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str], *,
          max_polls: int | None = None, sleep: Callable[[float], None] = time.sleep
          ) -> list[dict[str, Any]]:
  """Polls ``config.kline_dir`` every ``config.poll_seconds``; runs a cycle when files arrive or a
  cycle is unfinished. A failing cycle (bad file) is logged and retried only when the directory
  changes. Stops after ``config.max_cycles`` cycles (0: never) or ``max_polls`` polls; Ctrl-C and
  kills are safe at any moment."""
  paths = resolve_paths(config, workdir)
  records, failed, polls = [], None, 0
  logging.info('Watching %s every %s s (model store %s)', paths.klines, config.poll_seconds,
               paths.models)
  try:
    while True:
      polls += 1
      signature = tuple((f.name, f.size, f.mtime_ns) for f in scan_klines(paths.klines))
      if signature != failed and (new_files(paths) or cycle_pending(config, paths)):
        try:
          record = run_cycle(config, workdir)
          records.append(record)
          failed = None
          write_history(config, workdir)
          print(format_decision(record), flush=True)
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


def format_decision(record: Mapping[str, Any]) -> str:
  """A few lines for people: the cycle, the metric of candidate, incumbent and baselines, why."""
  metric = record['metric']
  value = lambda metrics: ('—' if not metrics or metrics.get(metric) is None
                           else f'{metrics[metric]:.6g}')
  lines = [f'cycle {record["cycle"]} ({record["mode"]}, data to {record["data_end"]}'
           f'{", " + record["status"] if record.get("status") else ""}): holdout '
           f'{record["splits"][HOLDOUT][0]} .. {record["splits"][HOLDOUT][1]}, '
           f'{record["windows"].get(HOLDOUT, 0)} windows',
           f'  candidate v{record["candidate"]["version"]:<4} {metric} '
           f'{value(record["candidate"]["metrics"])}']
  if record.get('incumbent'):
    lines.append(f'  promoted  v{record["incumbent"]["version"]:<4} {metric} '
                 f'{value(record["incumbent"]["metrics"])}')
  for name, metrics in (record.get('baselines') or {}).items():
    lines.append(f'  {name:<24} {metric} {value(metrics)}')
  lines.append(f'  -> {record["reason"]}')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# Walk-forward simulation.


def simulation_boundaries(simulation: ml_collections.ConfigDict) -> list[pd.Timestamp]:
  """``[start, ..., end]`` at ``simulation.frequency`` (a pandas offset alias, 'MS' = months)."""
  start = schema.to_utc(simulation.start, 'config.simulation.start')
  end = schema.to_utc(simulation.end, 'config.simulation.end')
  try:
    inner = pd.date_range(start, end, freq=simulation.frequency, inclusive='both')
  except ValueError as error:
    raise ConfigError(describe('config.simulation.frequency', f'{simulation.frequency!r} ({error})',
                               "use a pandas offset alias: 'MS' (months), '7D', 'W-MON'")) from None
  boundaries = sorted({start, *inner, end})
  if len(boundaries) < 2:
    raise ConfigError(describe('config.simulation', f'{start} .. {end} holds no period',
                               'set start before end'))
  return list(boundaries)


def _series_summary(values: Sequence[float]) -> dict[str, Any]:
  values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if len(values) == 0:
    return {'periods': 0, 'mean': None, 'std': None, 'min': None, 'max': None}
  return {'periods': int(len(values)), 'mean': float(values.mean()),
          'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          'min': float(values.min()), 'max': float(values.max())}


def continual_vs_frozen(continual: Sequence[float | None], frozen: Sequence[float | None],
                        metric_mode: str) -> dict[str, Any]:
  """The gain of the continual model over the frozen one per period [periods], summarised.

  gain = frozen - continual for a metric to minimise (the other way round to maximise), so a
  positive gain means continual is better. Period 0's frozen model is the continual one, so the
  mean, std and the shares better / worse all count the later periods only.
  """
  sign = 1.0 if metric_mode == 'min' else -1.0
  gains = [None if c is None or f is None else sign * (f - c)
           for c, f in list(zip(continual, frozen))[1:]]
  compared = [g for g in gains if g is not None and math.isfinite(g)]
  share = lambda keep: float(np.mean([keep(g) for g in compared])) if compared else None
  return {**_series_summary(gains), 'share_better': share(lambda g: g > 0),
          'share_worse': share(lambda g: g < 0),
          'note': 'gain = frozen - continual for a metric to minimise (the other way round to '
                  'maximise): positive means continual is better; period 0 (the same model) is '
                  'left out of the mean, std and shares alike'}


def simulate(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """Replays ``config.simulation`` period by period on the store of ``config.task.data`` (module
  doc), resumably, in ``workdir/simulation``: periods, models, ``results.json``, a PNG."""
  _check_update_config(config)
  simulation = config.simulation
  if simulation.mode not in MODES:
    raise ConfigError(describe('config.simulation.mode', f'{simulation.mode!r}',
                               f'use one of {MODES}'))
  paths = resolve_paths(config, workdir)
  workdir = pathlib.Path(workdir) / 'simulation'
  adapter = model_adapter(config.model)
  boundaries = simulation_boundaries(simulation)
  store = registry.ModelStore(workdir / 'models')
  metric = config.metric
  periods = []
  with compilation_cache(paths.compilation_cache):
    all_frames = data_lib.load_frames(config.task.data)  # builds the store if it is missing
    store_dir = pathlib.Path(config.task.data.store_dir)
    continual = frozen = None
    for index, (begin, end) in enumerate(zip(boundaries[:-1], boundaries[1:])):
      directory = workdir / 'periods' / begin.strftime('%Y-%m-%dT%H%M')
      splits = trailing_splits(begin, simulation.train_days, simulation.validation_days, end,
                               'evaluation')
      mode = 'scratch' if index == 0 else simulation.mode
      if (directory / 'period.json').exists():
        period = json.loads((directory / 'period.json').read_text())
        continual = store.load('continual', period['continual_version'], store_dir=store_dir)
        if index == 0:
          frozen = continual
        periods.append(period)
        continue
      start = schema.to_utc(splits['train'][0])
      frames = {s: f.loc[((f[schema.TIMESTAMP] >= start) & (f[schema.TIMESTAMP] < end)).to_numpy()
                         ].reset_index(drop=True) for s, f in all_frames.items()}
      with _temporary_window_caches(store_dir):
        period = _simulate_period(adapter, config, store, splits, frames, store_dir, directory,
                                  mode, continual if mode == 'finetune' else None)
        continual = store.load('continual', period['continual_version'], store_dir=store_dir)
        if index == 0:
          frozen = continual
          period['frozen'] = period['continual']
        else:
          frozen_task, frozen_config, frozen_data = version_data(adapter, frozen, splits, frames,
                                                                 store_dir)
          period['frozen'] = evaluate_params(frozen_task, frozen.params,
                                             frozen_data['evaluation'], frozen_config)
      period.update(start=begin.isoformat(), end=end.isoformat(), frozen_version=frozen.version)
      writers.write_json(directory / 'period.json', period)
      periods.append(period)
      logging.info('Period %s: continual %s %.6g, frozen %.6g', begin.date(), metric,
                   period['continual'][metric], period['frozen'][metric])
  series = {'continual': [p['continual'].get(metric) for p in periods],
            'frozen': [p['frozen'].get(metric) for p in periods]}
  for name in periods[0]['baselines'] if periods else ():
    series[name] = [p['baselines'][name].get(metric) for p in periods]
  results = {
      'model': config.model, 'metric': metric, 'metric_mode': config.metric_mode,
      'simulation': simulation.to_dict(), 'periods': periods,
      'summary': {name: _series_summary(values) for name, values in series.items()},
      'continual_vs_frozen': continual_vs_frozen(series['continual'], series['frozen'],
                                                 config.metric_mode),
      'config': config.to_dict(),
  }
  results['plot'] = str(plot_comparison(
      [p['start'][:10] for p in periods], series, metric, workdir / 'simulation.png',
      first='continual', second='frozen', xlabel='period start',
      title=f'Walk-forward: continually updated vs frozen at {periods[0]["start"][:10]}'))
  results['results_json'] = str(writers.write_results(workdir, results))
  return results


def _simulate_period(adapter: ModelAdapter, config: ml_collections.ConfigDict,
                     store: registry.ModelStore, splits: Mapping[str, tuple[str, str]],
                     frames: Mapping[str, pd.DataFrame], store_dir: pathlib.Path,
                     directory: pathlib.Path, mode: str,
                     parent: registry.ModelVersion | None) -> dict[str, Any]:
  """Trains (or, after a kill, finds) the continual model of one period and evaluates it."""
  task_config = task_config_for(config, splits, store_dir, finetune=mode == 'finetune')
  period_range = list(splits['evaluation'])
  found = [row['version'] for row in store.list('continual')
           if row['extra'].get('period') == period_range]
  if found:
    version = found[-1]
    saved = store.load('continual', version, store_dir=store_dir)
    task, _, data = version_data(adapter, saved, splits, frames, store_dir)
    metrics = saved.metrics['test']
  else:
    trained = train_model(adapter, task_config, frames, directory / 'run', parent=parent,
                          run_info={'period': period_range, 'mode': mode})
    task, data = trained.task, trained.data
    metrics = evaluate_params(task, trained.params, data['evaluation'], task_config)
    version = store.save('continual', trained.params, config=task_config,
                         normalizer=trained.normalizer,
                         metrics={'validation': trained.result.best_metrics, 'test': metrics,
                                  'test_split': 'evaluation'},
                         data={'splits': splits, 'store_dir': str(store_dir)},
                         extra={'period': period_range, 'mode': mode,
                                'parent': None if parent is None else parent.version})
  return {'mode': mode, 'splits': splits, 'windows': data['evaluation'].num_windows,
          'continual_version': version, 'continual': metrics,
          'baselines': forecast_baselines(task, data['evaluation'], data['train'])}


def plot_comparison(labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
                    metric: str, path: pathlib.Path, *, first: str, second: str, title: str,
                    xlabel: str) -> pathlib.Path:
  """``metric`` per period (or cycle) for every series (top, log scale when positive; the series
  other than ``first`` and ``second`` dotted), and ``first - second`` per period (bottom)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  x = np.arange(len(labels))
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                    gridspec_kw={'height_ratios': (2, 1)})
  styles = {first: dict(color='tab:blue', linewidth=2.2, marker='o'),
            second: dict(color='tab:red', linewidth=2.2, marker='s')}
  baseline_colors = iter(('tab:gray', 'tab:olive', 'tab:brown', 'tab:purple', 'tab:cyan'))
  as_array = lambda values: np.asarray([np.nan if v is None else v for v in values], np.float64)
  for name, values in series.items():
    style = styles.get(name) or dict(color=next(baseline_colors, 'black'), linestyle=':',
                                     marker='.')
    top.plot(x, as_array(values), label=name, **style)
  if all(v is None or v > 0 for values in series.values() for v in values):
    top.set_yscale('log')  # baselines can be far worse than the models
  top.set_ylabel(metric)
  top.set_title(title)
  top.legend(fontsize=8)
  difference = as_array(series[first]) - as_array(series[second])
  bottom.bar(x, np.nan_to_num(difference),
             color=np.where(np.nan_to_num(difference) <= 0, 'tab:green', 'tab:orange'))
  bottom.axhline(0, color='grey', linewidth=0.8)
  bottom.set_ylabel(f'{first} − {second}')
  bottom.set_title(f'below 0: {first} has the lower {metric}', fontsize=9)
  bottom.set_xticks(x, list(labels), rotation=30, fontsize=8)
  bottom.set_xlabel(xlabel)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def continual_vs_frozen_sentence(gain: Mapping[str, Any]) -> str:
  """One line: continual better / worse / tied with frozen by ``|mean gain|``, over the periods
  after the first (``gain``: ``results['continual_vs_frozen']`` of :func:`simulate`)."""
  mean = gain['mean']
  spread = (f'mean gain {mean:+.4g} ± {gain["std"]:.2g} (std) over the {gain["periods"]} periods '
            f'after the first; continual better in {gain["share_better"]:.0%}, worse in '
            f'{gain["share_worse"]:.0%} of them')
  if mean == 0:
    return f'continual tied with frozen: {spread}'
  word = 'better' if mean > 0 else 'worse'
  return f'continual {word} than frozen by {abs(mean):.4g}: {spread}'


def format_simulation(results: Mapping[str, Any]) -> str:
  """The per-period table and the mean ± spread of each series."""
  metric = results['metric']
  names = list(results['summary'])
  cell = lambda value: f'{value:>14.6g}' if value is not None else f'{"—":>14}'
  lines = [f'Walk-forward {results["model"]}, {metric} per period ({results["metric_mode"]} is '
           'better):',
           f'{"period":<10}  {"windows":>7}  ' + '  '.join(f'{n[:14]:>14}' for n in names)]
  for period in results['periods']:
    values = [period['continual'].get(metric), period['frozen'].get(metric)] + [
        period['baselines'][n].get(metric) for n in names[2:]]
    lines.append(f'{period["start"][:10]:<10}  {period["windows"]:>7}  '
                 + '  '.join(cell(v) for v in values))
  for statistic in ('mean', 'std'):
    lines.append(f'{statistic:<10}  {"":>7}  ' + '  '.join(
        cell(summary[statistic]) for summary in results['summary'].values()))
  gain = results['continual_vs_frozen']
  if gain['mean'] is not None:
    lines.append(continual_vs_frozen_sentence(gain))
  lines.append(f'results: {results.get("results_json")}; plot: {results.get("plot")}')
  return '\n'.join(lines)
