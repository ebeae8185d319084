"""The one prediction loop of every window model: padded batches of one shape through a jitted
forward pass, one batch dispatched ahead of the one being read back.

Evaluation, per-bar signals and saved-run scoring all read a model's outputs over a list of
window anchors (or of episodes: any source with ``anchors`` and ``gather``, -1 for padding). Padding the last batch to the full size (anchor -1, ``mask`` 0) keeps a single
compiled shape; dispatch is asynchronous, so the next batch is gathered on the host while the
device computes the current one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from quantum_alpha_jax.data import windows
from quantum_alpha_jax.progress import Progress

# ``predict(params, inputs) -> outputs``: a jitted function of the batch entries ``inputs`` names.
PredictFn = Callable[[Any, Mapping[str, np.ndarray]], Mapping[str, Any]]


def padded_batches(source: windows.WindowSource, batch_size: int,
                   anchors: np.ndarray | None = None
                   ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """``(source.gather(chunk), real rows)`` over ``anchors`` (default: all of the source's) in
  order, in batches of exactly ``batch_size`` (the last padded with anchor -1, ``mask`` 0)."""
  anchors = source.anchors if anchors is None else np.asarray(anchors, np.int64)
  for start in range(0, len(anchors), batch_size):
    part = anchors[start:start + batch_size]
    chunk = np.full(batch_size, -1, np.int64)
    chunk[:len(part)] = part
    yield source.gather(chunk), len(part)


def predict_batches(predict: PredictFn, params: Any, source: windows.WindowSource,
                    batch_size: int, *, inputs: Sequence[str], anchors: np.ndarray | None = None,
                    description: str | None = None
                    ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
  """``(batch, outputs)`` per batch of :func:`padded_batches`, both numpy and cut to the real rows:
  ``outputs = predict(params, {name: batch[name] for name in inputs})``. A progress bar named
  ``description`` when given."""
  anchors = source.anchors if anchors is None else np.asarray(anchors, np.int64)
  size = max(1, min(int(batch_size), len(anchors)))
  bar = Progress(-(-len(anchors) // size), description, unit='batches') if description else None

  def finish(item):
    batch, outputs, count = item
    outputs = jax.device_get(outputs)
    if bar:
      bar.update(1)
    return ({name: value[:count] for name, value in batch.items()},
            {name: np.asarray(value)[:count] for name, value in outputs.items()})

  pending = None
  try:
    for batch, count in padded_batches(source, size, anchors):
      outputs = predict(params, {name: batch[name] for name in inputs})
      if pending is not None:
        yield finish(pending)
      pending = (batch, outputs, count)
    if pending is not None:
      yield finish(pending)
  finally:
    if bar:
      bar.close()


def predict_all(predict: PredictFn, params: Any, source: windows.WindowSource, batch_size: int,
                *, inputs: Sequence[str], anchors: np.ndarray | None = None,
                description: str | None = None) -> dict[str, np.ndarray]:
  """Every output of :func:`predict_batches` concatenated over the anchors ``[anchors, ...]``."""
  collected: dict[str, list[np.ndarray]] = {}
  for _, outputs in predict_batches(predict, params, source, batch_size, inputs=inputs,
                                    anchors=anchors, description=description):
    for name, value in outputs.items():
      collected.setdefault(name, []).append(value)
  return {name: np.concatenate(values) for name, values in collected.items()}
