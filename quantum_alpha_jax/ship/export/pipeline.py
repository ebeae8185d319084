"""The export run: trained workdirs → ONNX files, SavedModels and a manifest, checked for parity.

For each model with a workdir in ``config.models`` (empty = skip):

1. :func:`~.inference.load_inference` restores the best checkpoint through the task's ``load``
   and builds the inference function.
2. Each format in ``config.formats`` is written: ``<workdir>/onnx/<model>.onnx`` and
   ``<workdir>/saved_model/<model>/``.
3. Parity: the exported model and ``jax.jit(apply)`` run on the same inputs — random (normal
   floats, uniform ids) and real (the run's own test windows from its store) — at every batch in
   ``config.parity.batch_sizes``; the largest absolute difference per output is recorded, and an
   export above ``config.parity.tolerance`` fails the run (nothing above tolerance reaches the
   manifest).
4. ``<workdir>/manifest.json`` lists per model: the files with their SHA-256, the input and output
   specs, the parity figures, the feature order, the normaliser, the source run and ``serving``:
   the model's own metadata beyond those (the input layout; the Oracle's quantiles; the Guardian's
   regimes and risk thresholds; the Strategist's actions, conditioning token and, for
   ``strategist_step``, the context length, cache layout and shape).
"""

from __future__ import annotations

import importlib.metadata
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data.store import sha256_file
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.ship.export import ExportError
from quantum_alpha_jax.ship.export import inference as inference_lib
from quantum_alpha_jax.tasks import registry

FORMATS = ('onnx', 'saved_model')
MANIFEST_FORMAT = 1
# Metadata keys the manifest entry already holds elsewhere (or that stay in the exported files).
_MANIFEST_ELSEWHERE = ('format', 'model', 'feature_names', 'known_future_features', 'normalizer',
                       'config')
_VERSIONED_PACKAGES = {'onnx': ('jax2onnx', 'onnx', 'onnxruntime'),
                       'saved_model': ('tensorflow', 'tensorflow-cpu')}


def parity(inference: inference_lib.InferenceFunction, run: Callable[..., Mapping[str, Any]], *,
           batch_sizes: Sequence[int] = (1, 7), seed: int = 0,
           real: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
  """Max abs difference per output between ``run`` (an exported model) and ``jax.jit`` of the
  inference function: ``{'random': {batch: {output: diff}}, 'real': ..., 'max_abs_diff': d}``.
  ``real`` holds real inputs with at least ``max(batch_sizes)`` rows."""
  report: dict[str, Any] = {}
  worst = 0.0
  for kind in ('random', 'real'):
    if kind == 'real' and real is None:
      continue
    report[kind] = {}
    for batch in batch_sizes:
      if kind == 'random':
        inputs = inference.random_inputs(batch, seed + batch)
      else:
        inputs = tuple(np.asarray(array)[:batch] for array in real)
        if len(inputs[0]) < batch:
          raise ExportError(describe(f'parity of {inference.name!r}', f'only {len(inputs[0])} '
                                     f'real inputs for batch {batch}'))
      expected = jax.device_get(inference(*inputs))
      actual = run(*inputs)
      differences = {}
      for name in inference.output_names:
        if np.shape(actual[name]) != np.shape(expected[name]):
          raise ExportError(describe(
              f'parity of {inference.name!r}', f'output {name!r} has shape '
              f'{np.shape(actual[name])}, JAX gives {np.shape(expected[name])} (batch {batch})'))
        differences[name] = float(np.max(np.abs(np.asarray(actual[name], np.float64)
                                                - np.asarray(expected[name], np.float64))))
      report[kind][str(batch)] = differences
      worst = max(worst, *differences.values())
  report['max_abs_diff'] = worst
  return report


def _versions(formats: Sequence[str]) -> dict[str, str]:
  names = ['jax', 'jaxlib', 'flax'] + [name for f in formats for name in _VERSIONED_PACKAGES[f]]
  versions = {}
  for name in names:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue
  return versions


def _file_entry(path: pathlib.Path, root: pathlib.Path) -> dict[str, Any]:
  return {'path': str(path.relative_to(root)), 'sha256': sha256_file(path),
          'bytes': path.stat().st_size}


def _check_config(config: ml_collections.ConfigDict
                  ) -> tuple[dict[str, pathlib.Path], dict[str, str]]:
  """``({model: workdir} to export, {model: why skipped})``; a ConfigError for a bad config."""
  models = {name: pathlib.Path(path) for name, path in config.models.items() if path}
  skipped = {name: 'no workdir given' for name, path in config.models.items() if not path}
  for name, path in list(models.items()):
    try:
      registry.find_export(name)
    except ConfigError as error:
      raise ConfigError(describe(f'config.models.{name}', 'no exporter for this model',
                                 f'{error}; leave it empty to skip')) from None
    if not (path / 'checkpoints').is_dir():
      if config.get('skip_missing', False):
        skipped[name] = f'no training run in {path}'
        del models[name]
        continue
      raise ConfigError(describe(
          f'config.models.{name}', f'{path} holds no training run (no checkpoints/)',
          f'train it first (python -m experiments.{name} --workdir={path}), point to its '
          'workdir, or leave it empty to skip'))
  if not models:
    raise ConfigError(describe(
        'config.models', f'no model to export ({"; ".join(f"{k}: {v}" for k, v in skipped.items())})',
        'train one first, or point to its workdir: --config.models.oracle=checkpoints/oracle-quick'))
  unknown = [f for f in config.formats if f not in FORMATS]
  if unknown or not config.formats:
    raise ConfigError(describe('config.formats', f'{tuple(config.formats)}',
                               f'use some of {FORMATS}'))
  batches = tuple(config.parity.batch_sizes)
  if not batches or min(batches) < 1:
    raise ConfigError(describe('config.parity.batch_sizes', f'{batches}', 'use e.g. (1, 7)'))
  return models, skipped


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Exports every model of ``config.models`` into ``workdir``; returns the manifest (also
  written to ``workdir/manifest.json``)."""
  from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.ship.export import saved_model  # pylint: disable=g-import-not-at-top

  models, skipped = _check_config(config)
  workdir = pathlib.Path(workdir)
  formats = tuple(config.formats)
  batch_sizes = tuple(int(b) for b in config.parity.batch_sizes)
  tolerance = float(config.parity.tolerance)
  manifest = {'format': MANIFEST_FORMAT, 'created': pd.Timestamp.now(tz='UTC').isoformat(),
              'versions': _versions(formats),
              'parity': {'batch_sizes': list(batch_sizes), 'tolerance': tolerance,
                         'inputs': 'random (seeded normal floats, uniform ids) and real (the '
                                   "run's test-split windows)"},
              'models': {}, 'skipped': skipped}
  for name, source in models.items():
    inference = inference_lib.load_inference(name, source)
    real = inference.real_inputs(max(batch_sizes)) if inference.real_inputs else None
    metadata = dict(inference.metadata)
    entry = {'source': {'workdir': metadata.pop('source_workdir'),
                        'best_step': metadata.pop('best_step'),
                        'run_name': metadata['config'].get('name')},
             'inputs': [spec.to_dict() for spec in inference.inputs],
             'outputs': [spec.to_dict() for spec in inference.outputs],
             'feature_names': metadata['feature_names'],
             'normalizer': metadata['normalizer'],
             'serving': {key: value for key, value in metadata.items()
                         if key not in _MANIFEST_ELSEWHERE},
             'files': {}, 'parity': {}}
    exporters = {
        'onnx': lambda: onnx_lib.export_onnx(inference, workdir / 'onnx' / f'{name}.onnx',
                                             opset=int(config.onnx_opset)),
        'saved_model': lambda: saved_model.export_saved_model(
            inference, workdir / 'saved_model' / name, platforms=tuple(config.saved_model_platforms)),
    }
    libraries = {'onnx': onnx_lib, 'saved_model': saved_model}
    for kind in formats:
      path = exporters[kind]()
      library = libraries[kind]
      library.check_metadata(path, metadata['feature_names'])  # The metadata reads back.
      if path.is_dir():
        entry['files'][kind] = {'path': str(path.relative_to(workdir)), 'files': {
            str(file.relative_to(path)): sha256_file(file)
            for file in sorted(path.rglob('*')) if file.is_file()}}
      else:
        entry['files'][kind] = _file_entry(path, workdir)
      entry['parity'][kind] = parity(inference, library.runner(path, inference),
                                     batch_sizes=batch_sizes, seed=int(config.parity.seed),
                                     real=real)
      if entry['parity'][kind]['max_abs_diff'] > tolerance:
        raise ExportError(describe(
            f'{kind} export of {name!r} ({path})', f'max abs difference to JAX '
            f'{entry["parity"][kind]["max_abs_diff"]:.3g} is above the tolerance {tolerance:g} '
            f'({entry["parity"][kind]})', 'report it with the model config; the manifest was '
            'not updated'))
    manifest['models'][name] = entry
  artifacts.write_json(workdir / 'manifest.json', manifest)
  manifest['manifest_json'] = str(workdir / 'manifest.json')
  return manifest


def format_summary(manifest: Mapping[str, Any]) -> str:
  """One line per exported file: size, SHA-256 prefix and the worst parity difference."""
  lines = []
  for name, entry in manifest['models'].items():
    lines.append(f'{name} (from {entry["source"]["workdir"]}, step {entry["source"]["best_step"]})')
    for kind, files in entry['files'].items():
      if 'sha256' in files:
        described = f'{files["path"]}  {files["bytes"] / 1e6:.2f} MB  sha256 {files["sha256"][:12]}'
      else:
        described = f'{files["path"]}/  {len(files["files"])} files'
      lines.append(f'  {kind:<12} {described}  max |diff| vs JAX '
                   f'{entry["parity"][kind]["max_abs_diff"]:.2e}')
  for name, reason in manifest.get('skipped', {}).items():
    lines.append(f'{name}: skipped ({reason})')
  lines.append(f'manifest: {manifest.get("manifest_json", "manifest.json")}')
  return '\n'.join(lines)
