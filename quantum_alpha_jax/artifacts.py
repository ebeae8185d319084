"""What a run leaves on disk for programs and people: JSON (NaN → null), result files and figures.

The bottom floor of the package: data, evaluate, train, backtest and every later stage write their
files through it, and it imports nothing of the package but :mod:`distributed` (itself only ``jax``
and :mod:`errors`), so writing a file never pulls a layer above the writer in. ``jax`` (through
:mod:`distributed`) and ``matplotlib`` load on first use, not at import: the store builder
(data/pipeline.py) writes through this module and stays free of both (tests/test_imports.py keeps
both promises).

Writes are atomic (a temporary file in the same folder, then a rename), so a killed run never leaves
a half-written ``results.json`` that a later stage would read back. In a multi-process run only
process 0 writes (:func:`distributed.is_primary`): :func:`write_json`, :func:`write_results` and
:func:`save_figure` return the path in every other process without touching the file.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd


def json_ready(value: Any) -> Any:
  """Converts numpy/jax scalars and arrays to Python; NaN and inf become ``None`` (valid JSON)."""
  if isinstance(value, Mapping):
    return {str(k): json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(v) for v in value]
  if hasattr(value, 'tolist') and not isinstance(value, (str, bytes)):
    return json_ready(np.asarray(value).tolist())
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, (np.floating,)):
    return json_ready(float(value))
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (pd.Timestamp, pd.Timedelta)):
    return None if pd.isna(value) else str(value)
  return value


def atomic_write(path: str | pathlib.Path, write: Callable[[str], Any]) -> None:
  """Calls ``write(temporary_path)`` then renames it over ``path``; a failure leaves ``path`` as it was."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  os.close(handle)
  try:
    write(temporary)
    with open(temporary, 'rb') as flushed:
      os.fsync(flushed.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def atomic_write_json(path: str | pathlib.Path, payload: Any) -> None:
  """Writes JSON atomically (temporary file + rename), in every process (see :func:`write_json`)."""
  def write(temporary: str) -> None:
    with open(temporary, 'w') as handle:
      json.dump(payload, handle, indent=1, default=str)
  atomic_write(path, write)


def _is_primary() -> bool:
  """:func:`distributed.is_primary`, with jax loaded here rather than when the module is imported."""
  from quantum_alpha_jax import distributed  # pylint: disable=g-import-not-at-top (jax, see above)
  return distributed.is_primary()


def write_json(path: str | pathlib.Path, payload: Mapping[str, Any]) -> pathlib.Path:
  """Writes a JSON file atomically (NaN → null); process 0 only."""
  path = pathlib.Path(path)
  if _is_primary():
    atomic_write_json(path, json_ready(payload))
  return path


def write_results(workdir: str | pathlib.Path, results: Mapping[str, Any]) -> pathlib.Path:
  """Writes ``results.json`` atomically (NaN → null) and returns its path (process 0 only)."""
  return write_json(pathlib.Path(workdir) / 'results.json', results)


def save_figure(figure: Any, path: str | pathlib.Path, dpi: int = 110) -> pathlib.Path:
  """Saves a matplotlib ``figure`` as ``path`` (process 0 only) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top (matplotlib, see above)
  path = pathlib.Path(path)
  if _is_primary():
    figure.savefig(path, dpi=dpi)
  plt.close(figure)
  return path
