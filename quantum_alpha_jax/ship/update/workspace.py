"""Where an update setup keeps things, and the guards around a cycle: the paths of the model store,
the feature store and the incoming klines, JAX's persistent compilation cache, the lock that keeps
two cycles off one model store, and the clean-up of each cycle's window caches."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pathlib
import shutil
from typing import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache as cache_lib
import ml_collections

from quantum_alpha_jax.errors import describe
from quantum_alpha_jax.ship import store as model_store


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
def cycle_lock(models: pathlib.Path, name: str) -> Iterator[None]:
  """Refuses a second cycle on the same model store while one runs (cron overlapping a watch)."""
  models.mkdir(parents=True, exist_ok=True)
  with open(models / f'.{name}.cycle.lock', 'a+') as handle:
    try:
      fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise model_store.ModelStoreError(describe(
          str(models), f'another update cycle of {name!r} is running',
          'let it finish (a cycle holds this lock only while it runs)')) from None
    try:
      yield
    finally:
      fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def temporary_window_caches(store_dir: str | os.PathLike[str]) -> Iterator[None]:
  """Removes the window caches (``<store>/windows_cache/windows-*``) created inside the block: each
  cycle or period windows new frames, so its cache is never read again and the disk would fill."""
  cache = pathlib.Path(store_dir) / 'windows_cache'
  before = set(cache.glob('windows-*')) if cache.is_dir() else set()
  try:
    yield
  finally:
    for directory in (set(cache.glob('windows-*')) if cache.is_dir() else set()) - before:
      shutil.rmtree(directory, ignore_errors=True)
