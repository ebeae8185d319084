"""The model store: immutable numbered versions of each model, their provenance, a promoted one.

Layout under ``root`` (one folder per model name)::

  <name>/versions/000007/params/          Orbax checkpoint of the params pytree
  <name>/versions/000007/metadata.json    provenance, below
  <name>/promoted.json                    the promoted version and every promotion before it
  <name>/decisions/<cycle>.json           the update cycles' decision records (``ship/update``)
  <name>/.pending/000008-<pid>-<id>-<host>/   saves in progress: never listed, never read
  <name>/.lock                            ``fcntl.flock`` lock for numbering and promotion

A version's ``metadata.json`` holds the full config, the data it was trained on (the split dates,
the first and last bar, and every feature-store file read, with its SHA-256), the feature list and
the store schema version, the normaliser statistics, the code revision (``git rev-parse HEAD`` and
a dirty flag, or ``'unknown'``), the validation and test metrics, the creation time (UTC) and a
SHA-256 digest of the params (leaf paths, dtypes, shapes and bytes, in tree order); the helpers
that gather them live in :mod:`.provenance`.

Atomicity. A save takes the lock only to pick its number: one more than every published or
pending number, so concurrent savers never collide. It then writes the params and the metadata
into ``.pending/`` (same file system), fsyncs every file and folder, and publishes the version
with one ``rename`` into ``versions/``. A reader lists only ``versions/``, so it sees a version
whole or not at all; a save killed at any point leaves an unlisted pending folder, removed by the
next save once its process is gone. ``promoted.json`` is replaced atomically (temporary file,
fsync, ``os.replace``), under the lock, with the history inside it: the pointer and its history can
never disagree.

Compatibility. ``load`` refuses a version whose feature list, feature order or store schema
version differs from the current code's ``FEATURES`` and ``SCHEMA_VERSION`` (and, given
``store_dir``, from that feature store), naming the difference and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import re
import shutil
import socket
import uuid
from typing import Any, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.errors import QuantumAlphaError, SchemaError, describe
from quantum_alpha_jax.ship import provenance

METADATA_FORMAT = 1
VERSIONS, PENDING, LOCK = 'versions', '.pending', '.lock'
PROMOTED, DECISIONS = 'promoted.json', 'decisions'
SELECTORS = ('latest', 'best', 'promoted')
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$')
_VERSION_DIGITS = 6
DAMAGED = 'the version folder was altered by hand: remove it'
RETRAIN = ('retrain it on the current features (python -m experiments.update '
           '--config.mode=scratch), or load it with the code revision that saved it')


class ModelStoreError(QuantumAlphaError):
  """A model, version or promotion asked for does not exist, or the store is damaged."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
  """One loaded version: ``params`` (a pytree of arrays; None when not asked for) and metadata."""

  name: str
  version: int
  path: pathlib.Path
  metadata: dict[str, Any]
  params: Any = None

  @property
  def config(self) -> ml_collections.ConfigDict:
    """The full config the version was trained with."""
    return ml_collections.ConfigDict(self.metadata.get('config') or {})

  @property
  def normalizer(self):
    """The ``windows.Normalizer`` fitted for it, or None."""
    stats = self.metadata.get('normalizer')
    return None if not stats else windows.Normalizer.from_dict(stats)

  @property
  def metrics(self) -> dict[str, Any]:
    return dict(self.metadata.get('metrics') or {})


# ----------------------------------------------------------------------------------------------
# Compatibility with the current feature list and store schema.


def feature_difference(saved: Sequence[str], current: Sequence[str]) -> str | None:
  """A sentence naming how two feature lists differ (names gone, new, or order); None if equal."""
  saved, current = list(saved), list(current)
  if saved == current:
    return None
  parts = []
  removed = [name for name in saved if name not in current]
  added = [name for name in current if name not in saved]
  if removed:
    parts.append(f'{len(removed)} of its features are gone from the current list '
                 f'({", ".join(removed[:8])}{", ..." if len(removed) > 8 else ""})')
  if added:
    parts.append(f'the current list has {len(added)} it never saw '
                 f'({", ".join(added[:8])}{", ..." if len(added) > 8 else ""})')
  if not removed and not added:
    position = next(i for i, (a, b) in enumerate(zip(saved, current)) if a != b)
    parts.append(f'the same {len(saved)} names in another order (position {position}: '
                 f'{saved[position]!r} then, {current[position]!r} now)')
  return f'{len(saved)} features then, {len(current)} now: ' + '; '.join(parts)


def check_compatible(metadata: Mapping[str, Any], store_dir: str | os.PathLike[str] | None = None,
                     where: str = 'model version') -> None:
  """SchemaError unless the version's features and store schema match the code (and the store)."""
  saved = metadata.get('features')
  if saved is None:
    raise SchemaError(describe(where, 'its metadata has no feature list', RETRAIN))
  difference = feature_difference(saved, FEATURES)
  if difference:
    raise SchemaError(describe(where, f'trained on another feature list: {difference}', RETRAIN))
  version = metadata.get('store_schema_version')
  if version != schema.SCHEMA_VERSION:
    raise SchemaError(describe(
        where, f'trained on feature-store schema version {version}, the code reads version '
        f'{schema.SCHEMA_VERSION}', RETRAIN))
  stats = metadata.get('normalizer') or {}
  if stats and feature_difference(stats.get('features', ()), FEATURES):
    raise SchemaError(describe(where, 'its normaliser statistics belong to another feature list: '
                               + feature_difference(stats.get('features', ()), FEATURES), RETRAIN))
  if store_dir is None:
    return
  manifest = store_lib.read_manifest(store_dir)  # SchemaError on a store of another schema
  for stem in manifest['files']:
    symbol, year = stem.rsplit('_', 2)[0], int(stem.rsplit('_', 2)[1])
    difference = feature_difference(saved, store_lib.read_metadata(store_dir, symbol, year)
                                    .get('features', []))
    if difference:
      raise SchemaError(describe(
          where, f'does not fit the feature store {store_dir} ({stem}: {difference})',
          f'{store_lib.REBUILD}, or {RETRAIN}'))


# ----------------------------------------------------------------------------------------------
# The store.


def _fsync_tree(directory: pathlib.Path) -> None:
  """fsyncs every file and folder below ``directory`` (and it)."""
  for folder, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(folder, name), 'rb') as handle:
        os.fsync(handle.fileno())
    _fsync_directory(pathlib.Path(folder))


def _fsync_directory(directory: pathlib.Path) -> None:
  descriptor = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


def _publish(staging: pathlib.Path, target: pathlib.Path) -> None:
  """The one step that makes a version visible: a rename within one file system."""
  target.parent.mkdir(parents=True, exist_ok=True)
  os.rename(staging, target)
  _fsync_directory(target.parent)


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def _config_dict(config: Any) -> dict[str, Any] | None:
  if config is None:
    return None
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  return json.loads(json.dumps(artifacts.json_ready(dict(config)), default=str))


def _normalizer_dict(normalizer: Any) -> dict[str, Any] | None:
  if normalizer is None or isinstance(normalizer, Mapping):
    return None if normalizer is None else dict(normalizer)
  return normalizer.to_dict()


class ModelStore:
  """``save``, ``load``, ``list`` and ``promote`` versions of models under ``root`` (module doc)."""

  def __init__(self, root: str | os.PathLike[str]):
    self.root = pathlib.Path(root).resolve()

  # -- paths and names --

  def _model_dir(self, name: str) -> pathlib.Path:
    if not isinstance(name, str) or not _NAME.match(name):
      raise ModelStoreError(describe('model name', f'{name!r} is not a name',
                                     'use letters, digits, ".", "_" and "-" (e.g. "oracle")'))
    return self.root / name

  def version_path(self, name: str, version: int) -> pathlib.Path:
    return self._model_dir(name) / VERSIONS / f'{int(version):0{_VERSION_DIGITS}d}'

  @contextlib.contextmanager
  def _locked(self, name: str) -> Iterator[pathlib.Path]:
    directory = self._model_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, 'a+') as handle:
      fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
      try:
        yield directory
      finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

  def names(self) -> list[str]:
    """Every model with at least one published version."""
    if not self.root.exists():
      return []
    return sorted(p.name for p in self.root.iterdir()
                  if _NAME.match(p.name) and (p / VERSIONS).is_dir() and self.versions(p.name))

  def versions(self, name: str) -> list[int]:
    """The published version numbers of ``name``, ascending (complete versions only)."""
    directory = self._model_dir(name) / VERSIONS
    if not directory.is_dir():
      return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and len(p.name) == _VERSION_DIGITS)

  # -- saving --

  def _allocate(self, name: str) -> tuple[int, pathlib.Path]:
    """Picks the next number under the lock and creates its pending folder (which reserves it)."""
    with self._locked(name) as directory:
      pending = directory / PENDING
      pending.mkdir(exist_ok=True)
      reserved = []
      host = socket.gethostname()
      for entry in pending.iterdir():
        parts = entry.name.split('-', 3)
        if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
          continue
        if parts[3] == host and not _process_alive(int(parts[1])):
          shutil.rmtree(entry, ignore_errors=True)  # a save killed mid-way: never published
          continue
        reserved.append(int(parts[0]))
      number = max(self.versions(name) + reserved + [0]) + 1
      unique = f'{os.getpid()}-{uuid.uuid4().hex[:8]}-{host}'
      staging = pending / f'{number:0{_VERSION_DIGITS}d}-{unique}'
      staging.mkdir()
      return number, staging

  def save(self, name: str, source: Any, *, config: Any = None, normalizer: Any = None,
           metrics: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
           extra: Mapping[str, Any] | None = None) -> int:
    """Publishes a new version of ``name``; returns its number.

    ``source`` is a params pytree, or the workdir of a ``train.loop`` run (its best checkpoint's
    params, config, normaliser and validation metrics, plus test metrics from ``results.json``).
    ``data`` defaults to :func:`.provenance.store_fingerprint` of ``config.data`` over its split
    dates.
    """
    if isinstance(source, (str, os.PathLike)):
      params, from_run = provenance.read_run(pathlib.Path(source))
      config = config if config is not None else from_run['config']
      normalizer = normalizer if normalizer is not None else from_run['normalizer']
      metrics = metrics if metrics is not None else from_run['metrics']
      extra = {'run': str(source), **dict(extra or {})}
    else:
      params = source
    params = jax.device_get(params)
    config_dict = _config_dict(config)
    if data is None and config_dict and isinstance(config_dict.get('data'), Mapping):
      data = provenance.data_from_config(config_dict['data'])
    number, staging = self._allocate(name)
    try:
      _checkpointer().save(staging / 'params', args=ocp.args.StandardSave(params))
      leaves = jax.tree.leaves(params)
      metadata = {
          'format': METADATA_FORMAT, 'name': name, 'version': number,
          'created': provenance.utc_now(),
          'features': list(FEATURES), 'store_schema_version': schema.SCHEMA_VERSION,
          'config': config_dict, 'normalizer': _normalizer_dict(normalizer),
          'data': dict(data) if data is not None else None,
          'metrics': dict(metrics or {}), 'code': provenance.code_revision(),
          'params': {'count': int(sum(np.size(x) for x in leaves)),
                     'bytes': int(sum(np.asarray(x).nbytes for x in leaves)),
                     'sha256': provenance.params_digest(params)},
          'extra': dict(extra or {}),
      }
      (staging / 'metadata.json').write_text(
          json.dumps(artifacts.json_ready(metadata), indent=1, default=str))
      _fsync_tree(staging)
      _publish(staging, self.version_path(name, number))
    except BaseException:
      shutil.rmtree(staging, ignore_errors=True)
      raise
    return number

  # -- reading --

  def resolve(self, name: str, which: int | str = 'latest', *, metric: str = 'validation.loss',
              mode: str = 'min') -> int:
    """A version number from a number, ``'latest'``, ``'promoted'`` or ``'best'`` (by ``metric``,
    a dotted path into the versions' metrics, ``mode`` 'min' or 'max')."""
    versions = self.versions(name)
    if not versions:
      raise ModelStoreError(describe(f'{self.root}/{name}', 'no saved versions',
                                     f'save one first (known models: {self.names() or "none"})'))
    if isinstance(which, (int, np.integer)) or (isinstance(which, str) and which.isdigit()):
      if int(which) not in versions:
        raise ModelStoreError(describe(f'{name} version {which}', 'does not exist',
                                       f'choose one of {versions}'))
      return int(which)
    if which == 'latest':
      return versions[-1]
    if which == 'promoted':
      pointer = self.promoted(name)
      if pointer is None:
        raise ModelStoreError(describe(
            name, 'no version has been promoted',
            f'promote one: ModelStore.promote({name!r}, version, reason)'))
      return int(pointer['version'])
    if which == 'best':
      if mode not in ('min', 'max'):
        raise ModelStoreError(describe('best', f'mode {mode!r}', 'use "min" or "max"'))
      scored = []
      for version in versions:
        value = self.metadata(name, version).get('metrics') or {}
        for key in metric.split('.'):
          value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, (int, float)) and np.isfinite(value):
          scored.append((value if mode == 'min' else -value, version))
      if not scored:
        raise ModelStoreError(describe(f'{name} best', f'no version has the metric {metric!r}',
                                       'pass metric="validation.<name>" of a recorded metric'))
      return min(scored)[1]
    raise ModelStoreError(describe(f'{name} version', f'{which!r} is not a version',
                                   f'use a number or one of {SELECTORS}'))

  def metadata(self, name: str, version: int) -> dict[str, Any]:
    """The ``metadata.json`` of one published version."""
    path = self.version_path(name, version) / 'metadata.json'
    try:
      return json.loads(path.read_text())
    except FileNotFoundError as error:
      raise ModelStoreError(describe(str(path), 'missing', DAMAGED)) from error
    except json.JSONDecodeError as error:
      raise ModelStoreError(describe(str(path), f'corrupt ({error.msg})', DAMAGED)) from error

  def load(self, name: str, which: int | str = 'latest', *, params: bool = True,
           store_dir: str | os.PathLike[str] | None = None, check: bool = True,
           metric: str = 'validation.loss', mode: str = 'min') -> ModelVersion:
    """Loads a version (see :meth:`resolve`); refuses one trained on another feature list or store
    schema (given ``store_dir``, also one that does not fit that store) unless ``check=False``."""
    version = self.resolve(name, which, metric=metric, mode=mode)
    metadata = self.metadata(name, version)
    if check:
      check_compatible(metadata, store_dir, where=f'{name} version {version}')
    path = self.version_path(name, version)
    loaded = None
    if params:
      loaded = _checkpointer().restore(path / 'params')
      digest = provenance.params_digest(loaded)
      if digest != metadata.get('params', {}).get('sha256'):
        raise ModelStoreError(describe(f'{path}/params', 'the params do not match the digest in '
                                       'metadata.json', DAMAGED))
    return ModelVersion(name=name, version=version, path=path, metadata=metadata, params=loaded)

  def list(self, name: str | None = None) -> list[dict[str, Any]]:
    """One summary per published version (of ``name``, or of every model), oldest first."""
    rows = []
    for model in ([name] if name is not None else self.names()):
      pointer = self.promoted(model)
      for version in self.versions(model):
        metadata = self.metadata(model, version)
        rows.append({'name': model, 'version': version, 'created': metadata.get('created'),
                     'promoted': bool(pointer and pointer['version'] == version),
                     'metrics': metadata.get('metrics', {}), 'extra': metadata.get('extra', {}),
                     'path': str(self.version_path(model, version))})
    return rows

  # -- promotion and decisions --

  def promoted(self, name: str) -> dict[str, Any] | None:
    """``promoted.json``: the promoted ``version``, its ``reason`` and ``time``, and ``history``."""
    path = self._model_dir(name) / PROMOTED
    try:
      return json.loads(path.read_text())
    except FileNotFoundError:
      return None
    except json.JSONDecodeError as error:
      raise ModelStoreError(describe(str(path), f'corrupt ({error.msg})',
                                     'promote a version again to rewrite it')) from error

  def promote(self, name: str, version: int | str, reason: str,
              details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Points ``promoted`` at ``version`` (atomically, history kept); returns the new pointer."""
    if not reason:
      raise ModelStoreError(describe('promote', 'no reason given', 'say why it is promoted'))
    number = self.resolve(name, version)
    with self._locked(name) as directory:
      previous = self.promoted(name)
      entry = {'version': number, 'previous': None if previous is None else previous['version'],
               'reason': str(reason), 'time': provenance.utc_now(), 'details': dict(details or {})}
      history = list((previous or {}).get('history', [])) + [entry]
      pointer = {'name': name, **entry, 'history': history}
      artifacts.write_json(directory / PROMOTED, pointer)
      _fsync_directory(directory)
    return pointer

  def add_decision(self, name: str, record: Mapping[str, Any]) -> pathlib.Path:
    """Writes an update cycle's decision record (``record['cycle']`` names it) atomically."""
    cycle = str(record.get('cycle', ''))
    if not _NAME.match(cycle):
      raise ModelStoreError(describe('decision record', f'cycle {cycle!r} is not a name'))
    return artifacts.write_json(self._model_dir(name) / DECISIONS / f'{cycle}.json', dict(record))

  def decision(self, name: str, cycle: str) -> dict[str, Any] | None:
    path = self._model_dir(name) / DECISIONS / f'{cycle}.json'
    return json.loads(path.read_text()) if path.exists() else None

  def decisions(self, name: str) -> list[dict[str, Any]]:
    """Every decision record of ``name``, in cycle order."""
    directory = self._model_dir(name) / DECISIONS
    if not directory.is_dir():
      return []
    return [json.loads(p.read_text()) for p in sorted(directory.glob('*.json'))]
