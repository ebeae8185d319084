"""The exported models a decision service runs: loaded from an export directory, checked, batch 1.

:func:`load_models` reads ``<export>/manifest.json`` (written by ``ship/export/pipeline.py``) and builds,
per model of the ensemble, a runner of one window (batch 1):

- the Oracle and the Guardian through onnxruntime (``backend='onnx'``, the default; one intra-op
  thread, sequential) or ``jax.jit`` of the run's inference function (``backend='jax'``);
- the Strategist's task and params, and its cached one-step decode: the export's
  ``strategist_step`` through onnxruntime (``backend='onnx'``, when the export has it), else
  ``DecisionTransformer.decode`` jitted (``serve/strategist_state.py`` keeps the account either
  way).

Before anything runs, :func:`check_entry` refuses an export whose feature order or normaliser is not
what the feature stream produces (``data.features.FEATURES``, ``FEATURE_KINDS``, the normaliser
format), and one whose ONNX file carries another feature order or normaliser than its manifest.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Mapping

import numpy as np

from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURE_KINDS
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.errors import ConfigError, SchemaError, describe

BACKENDS = ('onnx', 'jax')
WINDOW_MODELS = ('oracle', 'guardian')


@dataclasses.dataclass
class WindowModel:
  """One window model at batch 1: ``run(*inputs) -> {output: array}`` with the manifest's
  ``normalizer`` and the window geometry (``spec``) its eligibility is decided with."""

  name: str
  run: Callable[..., Mapping[str, np.ndarray]]
  normalizer: windows.Normalizer
  spec: windows.WindowSpec
  metadata: Mapping[str, Any]
  backend: str
  input_shapes: Mapping[str, tuple] = dataclasses.field(default_factory=dict)  # batch dim 'batch'


@dataclasses.dataclass
class LoadedModels:
  """What :func:`load_models` returns: the window models by name, the Strategist's ``(task,
  params)`` (None when the export has none) and the manifest."""

  window_models: dict[str, WindowModel]
  strategist: tuple[Any, Any] | None
  manifest: Mapping[str, Any]
  directory: pathlib.Path
  # 'jax', or the exported strategist_step's runner (serve/strategist_state.py StrategistState)
  strategist_decode: Any = 'jax'


def read_manifest(directory: str | pathlib.Path) -> dict[str, Any]:
  """``<directory>/manifest.json``, or a ConfigError naming how to make one."""
  path = pathlib.Path(directory) / 'manifest.json'
  if not path.is_file():
    raise ConfigError(describe(
        f'export {directory}', 'holds no manifest.json',
        'export the trained runs first: python -m experiments.export --config=configs/export.py '
        '--workdir=DIR'))
  return json.loads(path.read_text())


def check_normalizer(data: Mapping[str, Any] | None, where: str) -> windows.Normalizer:
  """The normaliser of an export, refused (SchemaError) unless it was fitted on the features the
  stream produces, in their order and kinds, with finite positive statistics."""
  if not data:
    raise SchemaError(describe(where, 'carries no normaliser',
                               're-export the run with experiments.export, which stores it'))
  features = list(data.get('features', ()))
  if features != list(FEATURES):
    raise SchemaError(describe(
        where, f'normaliser fitted on another feature order ({len(features)} features, first '
        f'difference at {_first_difference(features, list(FEATURES))})',
        'serve a model trained on data.features.FEATURES, or re-export it'))
  kinds = list(data.get('kinds', ()))
  expected = [FEATURE_KINDS[name] for name in FEATURES]
  if kinds and kinds != expected:
    raise SchemaError(describe(
        where, f'normaliser kinds differ from the stream\'s at feature '
        f'{FEATURES[_first_difference(kinds, expected)]!r}', 're-export a model trained on the '
        'current features'))
  for key in ('mean', 'std'):
    values = np.asarray(data.get(key, ()), np.float64)
    if values.shape != (len(FEATURES),) or not np.all(np.isfinite(values)):
      raise SchemaError(describe(where, f'normaliser {key} has shape {values.shape} or '
                                 'non-finite values', 're-export the run'))
  if np.any(np.asarray(data['std'], np.float64) <= 0):
    raise SchemaError(describe(where, 'normaliser std has a non-positive entry', 're-export it'))
  try:
    return windows.Normalizer.from_dict(data)
  except ConfigError as error:
    raise SchemaError(describe(where, f'normaliser unreadable: {error}', 're-export it')) from error


def _first_difference(first: list, second: list) -> int:
  return next((i for i, (a, b) in enumerate(zip(first, second)) if a != b),
              min(len(first), len(second)))


def check_entry(name: str, entry: Mapping[str, Any], directory: pathlib.Path
                ) -> windows.Normalizer:
  """Refuses (SchemaError) a manifest entry whose feature order or normaliser does not match the
  stream, or whose ONNX file's metadata disagrees with the manifest; returns its normaliser."""
  from quantum_alpha_jax.ship.export import inference  # pylint: disable=g-import-not-at-top
  where = f'export {directory} model {name!r}'
  inference.check_feature_names(entry.get('feature_names'), FEATURES, where)
  normalizer = check_normalizer(entry.get('normalizer'), where)
  onnx_file = entry.get('files', {}).get('onnx', {}).get('path')
  if onnx_file:
    from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
    metadata = onnx_lib.check_metadata(directory / onnx_file, FEATURES)
    if metadata.get('normalizer') != entry.get('normalizer'):
      raise SchemaError(describe(
          f'{where} ({onnx_file})', 'the ONNX file carries another normaliser than the manifest',
          're-export: the manifest and the file must come from one export run'))
  return normalizer


def _onnx_runner(path: pathlib.Path, entry: Mapping[str, Any]
                 ) -> Callable[..., dict[str, np.ndarray]]:
  from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
  session = onnx_lib.session(path, threads=1)
  inputs = [spec['name'] for spec in entry['inputs']]
  outputs = [spec['name'] for spec in entry['outputs']]

  def run(*arrays: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(outputs, session.run(outputs, dict(zip(inputs, arrays)))))

  return run


def _jax_runner(name: str, workdir: str) -> Callable[..., dict[str, np.ndarray]]:
  import jax  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.ship.export import inference  # pylint: disable=g-import-not-at-top
  function = inference.load_inference(name, workdir)

  def run(*arrays: np.ndarray) -> dict[str, np.ndarray]:
    return {key: np.asarray(value) for key, value in jax.device_get(function(*arrays)).items()}

  return run


def _spec(name: str, entry: Mapping[str, Any]) -> windows.WindowSpec:
  """The window geometry the batch path decides a bar's eligibility with: the model's encoder
  length (its input shape) and the normaliser's hole limit."""
  encoder = next(spec for spec in entry['inputs'] if spec['name'] == 'encoder')
  max_hole = int(entry['normalizer']['spec'].get('max_hole_bars', 1))
  return windows.WindowSpec(int(encoder['shape'][1]), 0, max_hole)


def load_models(directory: str | pathlib.Path, *, backend: str = 'onnx',
                models: tuple[str, ...] = ('strategist', 'oracle', 'guardian')) -> LoadedModels:
  """The ensemble's models of the export in ``directory`` (module docstring)."""
  if backend not in BACKENDS:
    raise ConfigError(describe('serve backend', f'{backend!r}', f'use one of {BACKENDS}'))
  directory = pathlib.Path(directory)
  manifest = read_manifest(directory)
  entries = manifest.get('models', {})
  loaded: dict[str, WindowModel] = {}
  for name in WINDOW_MODELS:
    if name not in models or name not in entries:
      continue
    entry = entries[name]
    normalizer = check_entry(name, entry, directory)
    metadata = {}
    if backend == 'onnx':
      if 'onnx' not in entry.get('files', {}):
        raise ConfigError(describe(f'export {directory} model {name!r}', 'has no ONNX file',
                                   "export with formats including 'onnx', or serve with "
                                   '--backend=jax'))
      from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
      path = directory / entry['files']['onnx']['path']
      metadata = onnx_lib.read_metadata(path)
      run = _onnx_runner(path, entry)
    else:
      run = _jax_runner(name, entry['source']['workdir'])
      from quantum_alpha_jax.ship.export import inference  # pylint: disable=g-import-not-at-top
      metadata = dict(inference.read_record(entry['source']['workdir']))
      if name == 'guardian':
        from quantum_alpha_jax.tasks import guardian  # pylint: disable=g-import-not-at-top
        metadata['risk_thresholds'] = list(guardian.load(entry['source']['workdir'])[0]
                                           .risk_thresholds)
    loaded[name] = WindowModel(name, run, normalizer, _spec(name, entry), metadata, backend,
                               {spec['name']: tuple(spec['shape']) for spec in entry['inputs']})
  strategist, decode = None, 'jax'
  if 'strategist' in models and 'strategist' in entries:
    entry = entries['strategist']
    check_entry('strategist', entry, directory)
    from quantum_alpha_jax.tasks import strategist as strategist_task  # pylint: disable=g-import-not-at-top
    task, params, _ = strategist_task.load(entry['source']['workdir'])
    if task.normalizer is None or task.normalizer.to_dict() != entry['normalizer']:
      raise SchemaError(describe(
          f'export {directory} model \'strategist\'', 'the run in '
          f'{entry["source"]["workdir"]} has another normaliser than the export',
          're-export the run'))
    strategist = (task, params)
    step = entries.get('strategist_step')
    if backend == 'onnx' and step and 'onnx' in step.get('files', {}):
      check_entry('strategist_step', step, directory)
      if step['source']['workdir'] != entry['source']['workdir']:
        raise SchemaError(describe(
            f'export {directory}', 'strategist_step comes from another run than strategist',
            're-export the Strategist run'))
      decode = _onnx_runner(directory / step['files']['onnx']['path'], step)
  if not loaded and strategist is None:
    raise ConfigError(describe(f'export {directory}', f'holds none of {models}',
                               'export the Oracle, the Guardian or the Strategist'))
  return LoadedModels(loaded, strategist, manifest, directory, decode)
