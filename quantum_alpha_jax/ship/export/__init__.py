"""Export of trained models for serving: ONNX (jax2onnx) and TF SavedModel (jax2tf), with parity.

The unit of export is an *inference function* (:class:`~.inference.InferenceFunction`): a pure
``apply(params, *inputs) -> {output: array}`` of fixed, named inputs with a symbolic batch
dimension, the trained params, and the metadata a deployment needs to build the inputs (feature
order, normalisation statistics, config). :data:`~.inference.MODELS` says, per model name, which
task module loads a run (its ``load(workdir)``) and how to turn ``(task, params, config)`` into
that function. Both formats are produced from the same function:

- :mod:`.onnx`: ``jax2onnx.to_onnx`` with the params closed over as initializers; the metadata goes
  into the model's ``metadata_props``, and :func:`.onnx.check_metadata` refuses a model whose
  feature order is not the caller's.
- :mod:`.saved_model`: ``jax2tf.convert`` (native serialization: one ``XlaCallModule`` holding the
  StableHLO) under a ``tf.function`` serving signature with batch ``None``; params are
  ``tf.Variable`` s; the metadata goes to ``assets.extra/metadata.json``.

Every export is checked against JAX (max abs difference, fp32) on random and real inputs at
several batch sizes before it is written to the manifest (:mod:`.pipeline`).

The export backends are optional (``pip install -e '.[export]'``: jax2onnx, onnxruntime,
tensorflow-cpu); :func:`require` names the missing one instead of failing deep in an import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from quantum_alpha_jax.errors import QuantumAlphaError, describe


class ExportError(QuantumAlphaError):
  """An export cannot be made or does not reproduce the JAX model (a backend is missing, a
  converter fails, or parity is above tolerance)."""


def require(module: str) -> ModuleType:
  """Imports an optional export backend, or raises :class:`ExportError` saying how to install it."""
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ExportError(describe(
        'export', f'the optional package {module.split(".")[0]!r} is not installed ({error})',
        "install the export extra: pip install -e '.[export]'")) from error
