"""Run logs: TensorBoard event files (tensorboardX, no TensorFlow), ``metrics.jsonl`` and
``results.json`` in the workdir.

In a multi-process run only process 0 writes (:func:`distributed.is_primary`): the other
processes get a :class:`MetricWriter` that writes nothing, and :func:`write_json`,
:func:`write_results` and :func:`save_figure` return the path without touching the file.

On resume from step s the writers drop whatever the killed run logged after s (TensorBoard's
``purge_step``, and a rewrite of ``metrics.jsonl``), so curves never show the same step twice.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Mapping

import numpy as np
import pandas as pd

from quantum_alpha_jax import distributed
from quantum_alpha_jax.data.store import atomic_write
from quantum_alpha_jax.data.store import atomic_write_json


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


class MetricWriter:
  """``write(step, split, metrics)`` to TensorBoard (tag ``split/name``) and ``metrics.jsonl``;
  in every process but process 0 it writes nothing."""

  def __init__(self, workdir: str | pathlib.Path, resume_step: int | None = None,
               tensorboard: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.jsonl = self.workdir / 'metrics.jsonl'
    self.tensorboard = None
    self._file = None
    if not distributed.is_primary():
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    if resume_step is not None and self.jsonl.exists():
      kept = []
      for line in self.jsonl.read_text().splitlines():
        try:
          if json.loads(line).get('step', 0) <= resume_step:
            kept.append(line)
        except json.JSONDecodeError:
          continue  # a line cut short by the kill
      text = ''.join(line + '\n' for line in kept)
      atomic_write(self.jsonl, lambda path: pathlib.Path(path).write_text(text, encoding='utf-8'))
    elif resume_step is None and self.jsonl.exists():
      self.jsonl.unlink()
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self.tensorboard = tensorboardX.SummaryWriter(
          str(self.workdir / 'tensorboard'),
          purge_step=None if resume_step is None else resume_step + 1, flush_secs=30)
    self._file = open(self.jsonl, 'a', encoding='utf-8')

  def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    if self._file is None:
      return
    scalars = {name: float(value) for name, value in metrics.items()
               if np.ndim(value) == 0 and isinstance(float(value), float)}
    record = {'step': int(step), 'split': split, 'time': round(time.time(), 3)}
    record.update(json_ready(scalars))
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self.tensorboard is not None:
      for name, value in scalars.items():
        if math.isfinite(value):
          self.tensorboard.add_scalar(f'{split}/{name}', value, int(step))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self.tensorboard is not None:
      self.tensorboard.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self.tensorboard is not None:
      self.tensorboard.close()


def write_results(workdir: str | pathlib.Path, results: Mapping[str, Any]) -> pathlib.Path:
  """Writes ``results.json`` atomically (NaN → null) and returns its path (process 0 only)."""
  return write_json(pathlib.Path(workdir) / 'results.json', results)


def write_json(path: str | pathlib.Path, payload: Mapping[str, Any]) -> pathlib.Path:
  """Writes a JSON file atomically (NaN → null); process 0 only."""
  path = pathlib.Path(path)
  if distributed.is_primary():
    atomic_write_json(path, json_ready(payload))
  return path


def save_figure(figure: Any, path: str | pathlib.Path, dpi: int = 110) -> pathlib.Path:
  """Saves a matplotlib ``figure`` as ``path`` (process 0 only) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if distributed.is_primary():
    figure.savefig(path, dpi=dpi)
  plt.close(figure)
  return path
