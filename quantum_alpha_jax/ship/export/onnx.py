"""ONNX export through jax2onnx, with the serving metadata and an onnxruntime runner.

:func:`export_onnx` traces ``inference.apply`` with the params closed over (they become
initializers) and every input's leading dimension the symbolic ``batch``, names the graph's inputs
and outputs after the :class:`~.inference.TensorSpec` s, and stores the metadata as JSON strings in
the model's ``metadata_props`` (keys: ``model``, ``feature_names``, ``normalizer``, ``config``,
``inputs``, ``outputs``, ... — every key of ``inference.metadata``). The file is self-contained
(no external-data sidecar) and written atomically.

A deployment calls :func:`check_metadata` with the feature order it builds its inputs in; a model
trained on another order is refused with a :class:`~quantum_alpha_jax.errors.SchemaError`.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from quantum_alpha_jax.artifacts import atomic_write
from quantum_alpha_jax.ship.export import ExportError
from quantum_alpha_jax.ship.export import require
from quantum_alpha_jax.ship.export.inference import InferenceFunction
from quantum_alpha_jax.ship.export.inference import check_feature_names
from quantum_alpha_jax.errors import describe

BATCH = 'batch'  # the symbolic batch dimension's name in the graph
DEFAULT_OPSET = 23


def export_onnx(inference: InferenceFunction, path: str | pathlib.Path,
                opset: int = DEFAULT_OPSET) -> pathlib.Path:
  """Writes ``inference`` as an ONNX model at ``path`` (symbolic batch, metadata); returns it."""
  jax2onnx = require('jax2onnx')
  onnx = require('onnx')
  logging.getLogger('onnx_ir.serde').setLevel(logging.ERROR)  # Untyped shape constants.
  path = pathlib.Path(path)
  names = inference.output_names

  def forward(*inputs: jax.Array) -> tuple[jax.Array, ...]:
    outputs = inference.apply(inference.params, *inputs)
    return tuple(outputs[name] for name in names)

  specs = [jax.ShapeDtypeStruct(tuple(BATCH if d is None else d for d in spec.shape), spec.dtype)
           for spec in inference.inputs]
  try:
    model = jax2onnx.to_onnx(forward, specs, model_name=inference.name, opset=opset,
                             input_names=inference.input_names, output_names=names)
  except Exception as error:  # The converter raises many types; name the model and the cause.
    raise ExportError(describe(
        f'ONNX export of {inference.name!r}', f'jax2onnx failed: {type(error).__name__}: {error}',
        'write recurrences as lax.scan with an explicit carry (models/layers.py ScanLSTM), not '
        'nn.RNN; see benchmarks/tft_onnx_check.py')) from error
  model.doc_string = (f'quantum-alpha-jax {inference.name}: inputs '
                      f'{", ".join(inference.input_names)}; outputs {", ".join(names)}. '
                      'See metadata_props (feature_names, normalizer, input_layout).')
  del model.metadata_props[:]
  for key, value in metadata_props(inference).items():
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
  atomic_write(path, lambda temporary: onnx.save_model(model, temporary,
                                                       save_as_external_data=False))
  return path


def metadata_props(inference: InferenceFunction) -> dict[str, str]:
  """The string-to-string metadata written into the model: every ``inference.metadata`` entry as
  JSON (strings as they are), plus the ``inputs`` and ``outputs`` specs."""
  metadata = {**inference.metadata,
              'inputs': [spec.to_dict() for spec in inference.inputs],
              'outputs': [spec.to_dict() for spec in inference.outputs]}
  return {key: value if isinstance(value, str) else json.dumps(value, default=str)
          for key, value in metadata.items()}


def read_metadata(path: str | pathlib.Path) -> dict[str, Any]:
  """The metadata of an exported model, JSON values decoded."""
  onnx = require('onnx')
  path = pathlib.Path(path)
  if not path.is_file():
    raise ExportError(describe(str(path), 'no such ONNX file', 'run experiments.export first'))
  model = onnx.load(str(path), load_external_data=False)
  metadata = {}
  for entry in model.metadata_props:
    try:
      metadata[entry.key] = json.loads(entry.value)
    except json.JSONDecodeError:
      metadata[entry.key] = entry.value
  return metadata


def check_metadata(onnx_path: str | pathlib.Path, feature_names: Sequence[str]) -> dict[str, Any]:
  """Refuses (``SchemaError``) a model whose features are not ``feature_names`` in this order;
  returns its metadata (normaliser, input layout, config) otherwise."""
  metadata = read_metadata(onnx_path)
  check_feature_names(metadata.get('feature_names'), feature_names, str(onnx_path))
  return metadata


def session(path: str | pathlib.Path, threads: int = 0) -> Any:
  """An onnxruntime CPU session; ``threads`` > 0 pins intra- and inter-op threads (1: serial)."""
  onnxruntime = require('onnxruntime')
  options = onnxruntime.SessionOptions()
  # ORT warns when it cannot reuse a buffer across the two LSTM scans of different lengths
  # (encoder, decoder); the result is unaffected, so keep its log to errors.
  options.log_severity_level = 3
  if threads > 0:
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
  return onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def runner(path: str | pathlib.Path, inference: InferenceFunction, threads: int = 0
           ) -> Callable[..., dict[str, np.ndarray]]:
  """``run(*inputs) -> {output: array}`` through onnxruntime, inputs ordered like ``inference``."""
  model = session(path, threads)
  inputs, outputs = inference.input_names, inference.output_names

  def run(*arrays: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(outputs, model.run(outputs, dict(zip(inputs, arrays)))))

  return run
