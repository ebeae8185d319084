"""Training curves: TensorBoard event files (tensorboardX, no TensorFlow) and ``metrics.jsonl`` in
the workdir. Result files, JSON encoding and figures live in :mod:`quantum_alpha_jax.artifacts`.

In a multi-process run only process 0 writes (:func:`distributed.is_primary`): the other
processes get a :class:`MetricWriter` that writes nothing.

On resume from step s the writer drops whatever the killed run logged after s (TensorBoard's
``purge_step``, and a rewrite of ``metrics.jsonl``), so curves never show the same step twice.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Mapping

import numpy as np
import tensorboardX

from quantum_alpha_jax import distributed
from quantum_alpha_jax.artifacts import atomic_write
from quantum_alpha_jax.artifacts import json_ready


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
