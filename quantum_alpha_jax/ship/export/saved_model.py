"""TF SavedModel export through jax2tf, with a serving signature and the serving metadata.

:func:`export_saved_model` converts ``inference.apply`` with ``jax2tf.convert`` (native
serialization: the function is lowered once to StableHLO and embedded as one ``XlaCallModule``
op, shape-polymorphic in the batch ``b``) and saves a ``tf.Module`` whose params are non-trainable
``tf.Variable`` s, with the signature ``serving_default``: named inputs ``TensorSpec([None, ...])``
→ a dict of the named outputs. The StableHLO is lowered for ``platforms`` (CPU by default; add
``'cuda'`` to serve on a GPU). The metadata (feature order, normaliser, config, specs) is written
to ``assets.extra/metadata.json``. The directory is written beside the target and renamed into
place, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

from quantum_alpha_jax.ship.export import ExportError
from quantum_alpha_jax.ship.export import require
from quantum_alpha_jax.ship.export.inference import InferenceFunction
from quantum_alpha_jax.ship.export.inference import check_feature_names
from quantum_alpha_jax.errors import describe

SIGNATURE = 'serving_default'
METADATA_FILE = pathlib.Path('assets.extra') / 'metadata.json'


def _polymorphic_shape(shape: Sequence[int | None]) -> str:
  dims = ['b' if d is None else str(d) for d in shape]
  return f'({", ".join(dims)},)' if len(dims) == 1 else f'({", ".join(dims)})'


def export_saved_model(inference: InferenceFunction, directory: str | pathlib.Path,
                       platforms: Sequence[str] = ('cpu',)) -> pathlib.Path:
  """Writes ``inference`` as a SavedModel at ``directory`` (replacing one there); returns it."""
  tf = require('tensorflow')
  jax2tf = require('jax.experimental.jax2tf')
  directory = pathlib.Path(directory)
  converted = jax2tf.convert(
      inference.apply, with_gradient=False, native_serialization_platforms=tuple(platforms),
      polymorphic_shapes=[None] + [_polymorphic_shape(spec.shape) for spec in inference.inputs])
  module = tf.Module()
  module.params = tf.nest.map_structure(
      lambda value: tf.Variable(np.asarray(value), trainable=False), inference.params)
  signature = [tf.TensorSpec([None] + list(spec.shape[1:]), tf.as_dtype(spec.dtype),
                             name=spec.name) for spec in inference.inputs]

  @tf.function(input_signature=signature, autograph=False)
  def serve(*inputs):
    outputs = converted(module.params, *inputs)
    return {name: tf.identity(outputs[name], name=name) for name in inference.output_names}

  module.serve = serve
  directory.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
  staging.chmod(0o755)  # mkdtemp makes it private; the model is meant to be read by servers.
  try:
    try:
      tf.saved_model.save(module, str(staging), signatures={SIGNATURE: serve})
    except Exception as error:  # TF raises many types; name the model and the cause.
      raise ExportError(describe(f'SavedModel export of {inference.name!r}',
                                 f'{type(error).__name__}: {error}')) from error
    (staging / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
    metadata = {**inference.metadata,
                'inputs': [spec.to_dict() for spec in inference.inputs],
                'outputs': [spec.to_dict() for spec in inference.outputs],
                'signature': SIGNATURE, 'platforms': list(platforms)}
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=str))
    if directory.exists():
      retired = directory.with_name(f'.{directory.name}.old')
      shutil.rmtree(retired, ignore_errors=True)
      os.replace(directory, retired)
      os.replace(staging, directory)
      shutil.rmtree(retired, ignore_errors=True)
    else:
      os.replace(staging, directory)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return directory


def read_metadata(directory: str | pathlib.Path) -> dict[str, Any]:
  """The metadata written beside an exported SavedModel."""
  path = pathlib.Path(directory) / METADATA_FILE
  if not path.is_file():
    raise ExportError(describe(str(directory), f'no {METADATA_FILE} (not exported by '
                               'quantum_alpha_jax.ship.export?)', 'run experiments.export first'))
  return json.loads(path.read_text())


def check_metadata(directory: str | pathlib.Path, feature_names: Sequence[str]) -> dict[str, Any]:
  """Refuses (``SchemaError``) a SavedModel whose features are not ``feature_names`` in this
  order; returns its metadata otherwise."""
  metadata = read_metadata(directory)
  check_feature_names(metadata.get('feature_names'), feature_names, str(directory))
  return metadata


def runner(directory: str | pathlib.Path, inference: InferenceFunction
           ) -> Callable[..., dict[str, np.ndarray]]:
  """``run(*inputs) -> {output: array}`` through the SavedModel's serving signature."""
  tf = require('tensorflow')
  serve = tf.saved_model.load(str(directory)).signatures[SIGNATURE]
  names = inference.input_names

  def run(*arrays: np.ndarray) -> dict[str, np.ndarray]:
    outputs = serve(**{name: tf.constant(array) for name, array in zip(names, arrays)})
    return {name: value.numpy() for name, value in outputs.items()}

  return run
