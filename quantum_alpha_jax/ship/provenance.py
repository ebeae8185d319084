"""Where a stored version came from: the creation time, the code revision, a digest of the params,
the feature-store files it was trained on, and what a ``train.loop`` run directory holds (its best
params, config, normaliser and metrics). :class:`.store.ModelStore` records them in every
version's ``metadata.json``."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import subprocess
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.train import checkpoint as checkpoint_lib

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]  # the checkout holding the package


def utc_now() -> str:
  """The current time, ISO 8601 in UTC."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat()


def code_revision(directory: str | os.PathLike[str] = REPOSITORY) -> dict[str, Any]:
  """``{'revision': <git HEAD>, 'dirty': bool}``; ``'unknown'`` / None outside a git checkout."""
  def git(*arguments: str) -> str | None:
    try:
      done = subprocess.run(['git', '-C', str(directory), *arguments], capture_output=True,
                            text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
      return None
    return done.stdout if done.returncode == 0 else None

  revision = git('rev-parse', 'HEAD')
  if revision is None:
    return {'revision': 'unknown', 'dirty': None}
  status = git('status', '--porcelain', '--untracked-files=no')
  return {'revision': revision.strip(), 'dirty': None if status is None else bool(status.strip())}


def params_digest(params: Any) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes, in tree order."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    value = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f'{jax.tree_util.keystr(path)}|{value.dtype.str}|{value.shape}|'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def store_fingerprint(store_dir: str | os.PathLike[str], symbols: Sequence[str] | None = None,
                      start: Any = None, end: Any = None) -> dict[str, Any]:
  """The feature-store files a model read (bars in ``[start, end)`` of ``symbols``), each with its
  build, rows, first and last bar and the SHA-256 of its bytes as they are now."""
  root = pathlib.Path(store_dir)
  manifest = store_lib.read_manifest(root)
  start = None if start is None else schema.to_utc(start, 'store_fingerprint start')
  end = None if end is None else schema.to_utc(end, 'store_fingerprint end')
  files = []
  for stem, build in sorted(manifest['files'].items()):
    symbol, year = stem.rsplit('_', 2)[0], int(stem.rsplit('_', 2)[1])
    if symbols is not None and symbol not in symbols:
      continue
    if (start is not None and year < start.year) or (end is not None and year > end.year):
      continue
    sidecar = store_lib.read_metadata(root, symbol, year)
    files.append({'file': f'{stem}.parquet', 'symbol': symbol, 'year': year, 'build': build,
                  'rows': sidecar.get('rows'), 'first': sidecar.get('first'),
                  'last': sidecar.get('last'),
                  'sha256': store_lib.sha256_file(root / f'{stem}.parquet')})
  return {'store_dir': str(root), 'schema_version': manifest['schema_version'],
          'features': list(FEATURES), 'start': None if start is None else start.isoformat(),
          'end': None if end is None else end.isoformat(), 'files': files}


def data_from_config(data: Mapping[str, Any]) -> dict[str, Any] | None:
  """The fingerprint of the store a ``config.data`` block trained on (None if it is not there)."""
  store_dir = data.get('store_dir')
  if not store_dir or not (pathlib.Path(store_dir) / store_lib.MANIFEST).exists():
    return None
  splits = {name: list(bounds) for name, bounds in (data.get('splits') or {}).items()}
  bounds = [schema.to_utc(b, 'config.data.splits') for pair in splits.values() for b in pair]
  fingerprint = store_fingerprint(store_dir, data.get('symbols'),
                                  min(bounds) if bounds else None, max(bounds) if bounds else None)
  fingerprint['splits'] = splits
  return fingerprint


def read_run(workdir: pathlib.Path) -> tuple[Any, dict[str, Any]]:
  """Best params, config, normaliser and metrics of a ``train.loop`` run directory."""
  params, record = checkpoint_lib.load_best(workdir)
  metrics = {'validation': record.get('best_metrics') or {}, 'best_step': record.get('best_step')}
  results = workdir / 'results.json'
  if results.exists():
    test = json.loads(results.read_text()).get('test')
    if isinstance(test, Mapping):  # the scalar figures of the run's test report
      metrics['test'] = {k: v for k, v in test.items() if isinstance(v, (int, float))}
  return params, {'config': record.get('config'), 'normalizer': record.get('normalizer'),
                  'metrics': metrics}
