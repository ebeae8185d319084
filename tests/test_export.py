"""ONNX and SavedModel export of the forecasters: parity with JAX (random and real windows, batch 1
and 7), the feature-order metadata check, and the export run with its manifest. The Strategist's
exported one-step decode (``strategist_step``), stepped through whole episodes, equals the full
forward pass and the rollout (``tasks/strategist.py`` ``_rollout_core``, an independent path).

The export backends are an optional extra (pip install -e '.[export]'); the tests that need one
skip without it.
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import export as export_config
from configs import lstm as lstm_config
from configs import oracle as oracle_config
from quantum_alpha_jax.data import store
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.errors import ConfigError, SchemaError
from quantum_alpha_jax.ship.export import ExportError
from quantum_alpha_jax.ship.export import pipeline
from quantum_alpha_jax.ship.export import require
from quantum_alpha_jax.tasks import lstm
from quantum_alpha_jax.tasks import oracle
from quantum_alpha_jax.tasks import registry

TOLERANCE = 1e-4
SPLITS = {'train': ('2024-01-01', '2024-01-20'), 'validation': ('2024-01-20', '2024-01-24'),
          'test': ('2024-01-24', '2024-01-29')}


def _onnx_backends():
  pytest.importorskip('jax2onnx')
  pytest.importorskip('onnxruntime')
  from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
  return onnx_lib


def _saved_model_backend():
  pytest.importorskip('tensorflow')
  from quantum_alpha_jax.ship.export import saved_model  # pylint: disable=g-import-not-at-top
  return saved_model


def _tiny(config):
  config.data.splits.update(SPLITS)
  config.model.update(encoder_length=24, decoder_length=6, dropout_rate=0.0)
  return config


def _random_params(task, example=None, scale=0.3):
  """Params of the task's shapes, drawn at random (parity needs no training, and skipping the
  jitted init keeps the test fast)."""
  example = oracle.example_batch(task.model) if example is None else example
  shapes = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), example)
  leaves, tree = jax.tree.flatten(shapes)
  rng = np.random.default_rng(0)
  return jax.tree.unflatten(tree, [(scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
                                   for leaf in leaves])


@pytest.fixture(scope='module')
def forecasters(drifting_market, tmp_path_factory):
  """The TFT and the LSTM as inference functions, with test windows of the drifting market."""
  tft_config = _tiny(oracle_config.get_config('quick'))
  tft_config.model.update(hidden_size=8, num_heads=2, hidden_continuous_size=2)
  lstm_cfg = _tiny(lstm_config.get_config('quick'))
  lstm_cfg.model.hidden_size = 8
  data, normalizer = windows.make_datasets(
      drifting_market, oracle.window_spec(tft_config), windows.splits_from_config(SPLITS), 8,
      tmp_path_factory.mktemp('cache'), num_devices=1, shard_index=0, shard_count=1)
  source = data['test'].source
  real = source.gather(source.anchors[np.linspace(0, len(source.anchors) - 1, 7).astype(int)])
  record = {'normalizer': normalizer.to_dict(), 'best_step': 0}
  result = {}
  for name, task_type, config in (('oracle', oracle.OracleTask, tft_config),
                                  ('lstm', lstm.LSTMTask, lstm_cfg)):
    task = task_type.from_config(config)
    inference = registry.find_export(name)[1](task, _random_params(task), config, record)
    result[name] = (inference, tuple(real[k] for k in inference.input_names))
  return result


def test_require_names_the_extra():
  with pytest.raises(ExportError, match=r"pip install -e '\.\[export\]'"):
    require('quantum_alpha_jax_no_such_backend')


def test_inference_function_is_the_task_forecast(forecasters):
  inference, real = forecasters['lstm']
  outputs = inference(*real)
  assert inference.input_names == ['encoder', 'decoder_known', 'symbol']
  assert {name: outputs[name].shape for name in inference.output_names} == {
      'quantiles': (7, 6, 3), 'p_up': (7, 6), 'uncertainty': (7, 6)}
  assert np.all(np.diff(np.asarray(outputs['quantiles']), axis=-1) >= 0)  # sorted per horizon
  random = inference.random_inputs(5)
  assert [a.shape for a in random] == [(5, 24, 44), (5, 6, 3), (5,)]
  assert random[2].dtype == np.int32 and set(np.unique(random[2])) <= {0, 1}


@pytest.mark.parametrize('name', ['oracle', 'lstm'])
def test_onnx_matches_jax_on_random_and_real_windows(forecasters, name, tmp_path):
  onnx_lib = _onnx_backends()
  inference, real = forecasters[name]
  path = onnx_lib.export_onnx(inference, tmp_path / f'{name}.onnx')
  session = onnx_lib.session(path)
  assert [(i.name, i.shape) for i in session.get_inputs()] == [
      ('encoder', ['batch', 24, 44]), ('decoder_known', ['batch', 6, 3]), ('symbol', ['batch'])]
  assert [o.name for o in session.get_outputs()] == ['quantiles', 'p_up', 'uncertainty']
  report = pipeline.parity(inference, onnx_lib.runner(path, inference), batch_sizes=(1, 7),
                           real=real)
  assert set(report['random']) == set(report['real']) == {'1', '7'}
  assert report['max_abs_diff'] <= TOLERANCE, report
  # Real windows are not all alike: the check is not comparing constants.
  assert np.ptp(np.asarray(inference(*real)['p_up'])) > 1e-3


@pytest.mark.parametrize('name', ['guardian', 'strategist', 'strategist_step'])
def test_onnx_matches_jax_for_the_guardian_and_strategist(forecasters, name, tmp_path):
  onnx_lib = _onnx_backends()
  from configs import guardian as guardian_config  # pylint: disable=g-import-not-at-top
  from configs import strategist as strategist_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import guardian  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import strategist  # pylint: disable=g-import-not-at-top
  real = None
  if name == 'guardian':
    config = guardian_config.get_config('quick')
    config.model.window = config.labels.lookback = 24  # the fixture's windows
    task = guardian.GuardianTask.from_config(config, risk_thresholds=(0.3, 0.6))
    example = {'encoder': np.zeros((1, 24, len(FEATURES)), np.float32)}
    real = forecasters['oracle'][1][:1]  # store windows: the encoder
  else:
    config = strategist_config.get_config('quick')
    task = strategist.StrategistTask.from_config(config)
    example = strategist.example_batch(task)
  inference = registry.find_export(name)[1](task, _random_params(task, example), config, {})
  path = onnx_lib.export_onnx(inference, tmp_path / f'{name}.onnx')
  report = pipeline.parity(inference, onnx_lib.runner(path, inference), batch_sizes=(1, 7),
                           real=real)
  assert report['max_abs_diff'] <= TOLERANCE, report
  assert onnx_lib.check_metadata(path, FEATURES)['model'] == name


def _strategist_step(tmp_path):
  """The quick Strategist (random params, realised return tokens) and its exported step."""
  from configs import strategist as strategist_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import strategist  # pylint: disable=g-import-not-at-top
  config = strategist_config.get_config('quick')
  config.trajectories.condition_on = 'realised'  # the return token moves with the rewards
  task = strategist.StrategistTask.from_config(config, target_return=0.002)
  params = _random_params(task, strategist.example_batch(task), scale=0.5)
  inference = registry.find_export('strategist_step')[1](task, params, config, {})
  return task, params, inference


def test_exported_step_through_episodes_equals_the_full_pass_and_the_rollout(tmp_path):
  """Two rows of two K-bar episodes each, rolled out by ``_rollout_core``; then the exported ONNX
  step and its JAX jit replay the rollout's tokens bar by bar, row 1 five calls behind row 0 (so
  the rows sit at different timesteps, and each row's cache holds stale slots at its first
  step). Decisions, sizes and logits must agree with the rollout and the full forward pass."""
  onnx_lib = _onnx_backends()
  from quantum_alpha_jax.data import trajectories  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import strategist  # pylint: disable=g-import-not-at-top
  task, params, inference = _strategist_step(tmp_path)
  path = onnx_lib.export_onnx(inference, tmp_path / 'strategist_step.onnx')
  metadata = onnx_lib.check_metadata(path, FEATURES)
  steps = task.model.context_length
  assert metadata['context_length'] == steps and metadata['cache_slots'] == 3 * steps + 1
  assert metadata['cache_shape'] == ['batch', 2, 2, 2, 3 * steps + 1, 16]  # layers, k/v, heads
  assert metadata['conditioning_token'] == pytest.approx(2.0)  # 0.002 * rtg_scale 1000
  onnx_step = onnx_lib.runner(path, inference)

  rows, episodes, bars = 2, 2, 2 * steps
  rng = np.random.default_rng(3)
  features = rng.standard_normal((rows, episodes, steps, len(FEATURES))).astype(np.float32)
  close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal((rows, bars)), -1))
  open_price = np.concatenate([np.full((rows, 1), 100.0), close[:, :-1]], -1)
  shape = (rows, episodes, steps)
  rollout = jax.device_get(task.rollout_function(
      params, features, open_price.reshape(shape).astype(np.float32),
      close.reshape(shape).astype(np.float32), np.ones(shape, bool), np.ones(shape, bool),
      np.array([[True, False], [True, True]]), np.array([2.0, -1.0], np.float32)))
  rollout = {key: value.reshape(rows, bars) for key, value in rollout.items()}
  action, position = rollout['action'], rollout['position']
  assert len(np.unique(action)) == 3 and np.ptp(position) > 0  # it trades: not a constant check
  before = np.concatenate([np.zeros((rows, 1)), position[:, :-1]], -1)  # position into each bar
  before[1, steps] = 0.0  # row 1's second episode starts flat
  sized = (action == trajectories.BUY) | ((action == trajectories.SELL) & task.spec.allow_short)
  token_size = np.where(sized, np.abs(position), 0.0).astype(np.float32)
  states = np.concatenate([features.reshape(rows, bars, -1), rollout['held'][..., None]], -1)

  # The full forward pass over each episode's tokens (the rollout's actions and sizes).
  timestep = np.tile(np.arange(steps), episodes)
  context = lambda x: x.reshape(rows * episodes, steps, *x.shape[2:])
  full = jax.device_get(task.apply(params, {
      'rtg': context(rollout['return_token']), 'states': context(states.astype(np.float32)),
      'actions': context(action), 'sizes': context(token_size),
      'timesteps': context(np.broadcast_to(timestep, (rows, bars)).astype(np.int32))}))
  full_logits = full['action_logits'].reshape(rows, bars, 3)

  delay = (0, 5)
  cache = {'onnx': np.zeros((rows,) + tuple(metadata['cache_shape'][1:]), np.float32)}
  cache['jax'] = cache['onnx'].copy()
  logits = {kind: np.zeros((rows, bars, 3), np.float32) for kind in cache}
  sizes = {kind: np.zeros((rows, bars), np.float32) for kind in cache}
  for call in range(bars + max(delay)):
    bar = np.array([call - d for d in delay])
    active = (bar >= 0) & (bar < bars)
    now = np.clip(bar, 0, bars - 1)
    index = np.arange(rows)
    first = timestep[now] == 0
    inputs = (timestep[now].astype(np.int32),
              rollout['return_token'][index, now].astype(np.float32),
              states[index, now].astype(np.float32),
              np.where(first, 0, action[index, now - 1]).astype(np.int32),
              np.where(first, 0.0, token_size[index, now - 1]).astype(np.float32))
    for kind, run in (('onnx', onnx_step), ('jax', inference)):
      outputs = jax.device_get(run(*inputs, cache[kind]))
      logits[kind][index[active], now[active]] = outputs['action_logits'][active]
      sizes[kind][index[active], now[active]] = outputs['size'][active]
      cache[kind] = np.asarray(outputs['next_cache'])

  for kind in cache:
    np.testing.assert_allclose(logits[kind], full_logits, atol=TOLERANCE, err_msg=kind)
    np.testing.assert_allclose(sizes[kind], rollout['size'], atol=TOLERANCE, err_msg=kind)
    chosen = np.argmax(logits[kind], -1)
    after = trajectories.next_position(before, chosen, sizes[kind], task.spec.allow_short)
    canonical = np.where(np.isclose(after, before, rtol=0, atol=1e-6), trajectories.HOLD, chosen)
    np.testing.assert_array_equal(canonical, action, err_msg=kind)
    np.testing.assert_allclose(after, position, atol=TOLERANCE, err_msg=kind)


def test_step_real_inputs_continue_real_episodes(drifting_market, tmp_path):
  """The parity check's real inputs of ``strategist_step``: test episodes stopped at steps spread
  over 0..K-1, each with the cache its earlier steps leave; one step from there gives the full
  pass's outputs at that step of the same episode."""
  from configs import strategist as strategist_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import strategist  # pylint: disable=g-import-not-at-top
  store.write_store(tmp_path / 'store', drifting_market)
  config = strategist_config.get_config('quick')
  config.data.store_dir = str(tmp_path / 'store')
  config.data.splits.update(SPLITS)
  _, normalizer = strategist.make_data(config)
  task = strategist.StrategistTask.from_config(config, normalizer=normalizer)
  params = _random_params(task, strategist.example_batch(task), scale=0.5)
  record = {'normalizer': normalizer.to_dict()}
  step = registry.find_export('strategist_step')[1](task, params, config, record)
  full = registry.find_export('strategist')[1](task, params, config, record)
  real = step.real_inputs(4)
  context = full.real_inputs(4)  # the same episodes, whole
  stopped = real[0]
  assert list(stopped) == [0, 7, 15, 23]  # K = 24
  assert np.any(real[-1][1:] != 0) and not np.any(real[-1][0])  # caches, empty at t = 0
  outputs = step(*real)
  expected = full(*context)
  rows = np.arange(4)
  np.testing.assert_allclose(outputs['action_logits'],
                             np.asarray(expected['action_logits'])[rows, stopped], atol=TOLERANCE)
  np.testing.assert_allclose(outputs['size'], np.asarray(expected['size'])[rows, stopped],
                             atol=TOLERANCE)


def test_saved_model_step_matches_jax(tmp_path):
  saved_model = _saved_model_backend()
  _, _, inference = _strategist_step(tmp_path)
  directory = saved_model.export_saved_model(inference, tmp_path / 'strategist_step')
  report = pipeline.parity(inference, saved_model.runner(directory, inference),
                           batch_sizes=(1, 3))
  assert report['max_abs_diff'] <= TOLERANCE, report
  assert saved_model.check_metadata(directory, FEATURES)['cache_slots'] == 73


def test_onnx_metadata_carries_the_feature_order_and_refuses_another(forecasters, tmp_path):
  onnx_lib = _onnx_backends()
  inference, _ = forecasters['lstm']
  path = onnx_lib.export_onnx(inference, tmp_path / 'lstm.onnx')
  metadata = onnx_lib.check_metadata(path, FEATURES)
  assert metadata['model'] == 'lstm' and metadata['feature_names'] == list(FEATURES)
  assert len(metadata['normalizer']['mean']) == len(FEATURES)
  assert metadata['config']['model']['architecture'] == 'lstm'
  assert metadata['inputs'][0] == {'name': 'encoder', 'shape': ['batch', 24, 44],
                                   'dtype': 'float32'}
  swapped = list(FEATURES)
  swapped[3], swapped[7] = swapped[7], swapped[3]
  with pytest.raises(SchemaError, match=f'position 3 is {FEATURES[3]!r} in the model'):
    onnx_lib.check_metadata(path, swapped)
  with pytest.raises(SchemaError, match='trained on other features'):
    onnx_lib.check_metadata(path, list(FEATURES[:-1]))
  with pytest.raises(ExportError, match='no such ONNX file'):
    onnx_lib.check_metadata(tmp_path / 'missing.onnx', FEATURES)


@pytest.mark.parametrize('name', ['oracle', 'lstm'])
def test_saved_model_serving_signature_matches_jax(forecasters, name, tmp_path):
  saved_model = _saved_model_backend()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  inference, real = forecasters[name]
  directory = saved_model.export_saved_model(inference, tmp_path / name)
  signature = tf.saved_model.load(str(directory)).signatures['serving_default']
  _, inputs = signature.structured_input_signature
  assert {k: v.shape.as_list() for k, v in inputs.items()} == {
      'encoder': [None, 24, 44], 'decoder_known': [None, 6, 3], 'symbol': [None]}
  assert sorted(signature.structured_outputs) == ['p_up', 'quantiles', 'uncertainty']
  report = pipeline.parity(inference, saved_model.runner(directory, inference),
                           batch_sizes=(1, 7), real=real)
  assert report['max_abs_diff'] <= TOLERANCE, report
  assert saved_model.check_metadata(directory, FEATURES)['model'] == name
  with pytest.raises(SchemaError, match='another order'):
    saved_model.check_metadata(directory, FEATURES[::-1])


def test_export_run_writes_files_and_manifest(drifting_market, tmp_path):
  _onnx_backends()
  formats = ('onnx', 'saved_model')
  try:
    _saved_model_backend()
  except pytest.skip.Exception:
    formats = ('onnx',)
  # A real (two-step) LSTM run on a store, as experiments.lstm leaves it.
  store.write_store(tmp_path / 'store', drifting_market)
  config = _tiny(lstm_config.get_config('quick'))
  config.data.store_dir = str(tmp_path / 'store')
  config.model.hidden_size = 8
  config.train.update(batch_size=32, num_steps=2, eval_every_steps=2, max_eval_batches=1)
  config.evaluation.splits = ()
  lstm.run(config, tmp_path / 'lstm')

  export = export_config.get_config('quick')
  export.models.update(oracle='', lstm=str(tmp_path / 'lstm'), linear='', guardian='',
                       strategist=str(tmp_path / 'not-trained'), strategist_step='')
  export.formats = formats
  manifest = pipeline.run(export, tmp_path / 'export')
  written = json.loads((tmp_path / 'export' / 'manifest.json').read_text())
  assert written['models'].keys() == {'lstm'}
  assert written['skipped'] == {'oracle': 'no workdir given', 'linear': 'no workdir given',
                                'guardian': 'no workdir given',
                                'strategist': f'no training run in {tmp_path / "not-trained"}',
                                'strategist_step': 'no workdir given'}
  entry = manifest['models']['lstm']
  onnx_file = tmp_path / 'export' / entry['files']['onnx']['path']
  assert onnx_file == tmp_path / 'export' / 'onnx' / 'lstm.onnx'
  assert entry['files']['onnx']['sha256'] == store.sha256_file(onnx_file)
  for kind in formats:
    assert set(entry['parity'][kind]) == {'random', 'real', 'max_abs_diff'}
    assert entry['parity'][kind]['max_abs_diff'] <= TOLERANCE
  if 'saved_model' in formats:
    files = entry['files']['saved_model']['files']
    assert 'saved_model.pb' in files and 'assets.extra/metadata.json' in files
  saved = lstm.load(tmp_path / 'lstm')[2]
  assert entry['feature_names'] == list(FEATURES)
  assert entry['normalizer'] == json.loads((tmp_path / 'lstm' / 'normalizer.json').read_text())
  assert entry['source']['best_step'] == 2 and entry['source']['run_name'] == saved.name
  assert 'lstm' in pipeline.format_summary(manifest)

  export.models.lstm = ''
  with pytest.raises(ConfigError, match='no model to export'):
    pipeline.run(export, tmp_path / 'export')
  export.skip_missing = False
  with pytest.raises(ConfigError, match='not-trained holds no training run'):
    pipeline.run(export, tmp_path / 'export')
  export.models.update(lstm=str(tmp_path / 'lstm'), strategist='')
  export.formats = ('pickle',)
  with pytest.raises(ConfigError, match='config.formats'):
    pipeline.run(export, tmp_path / 'export')


def test_unknown_model_is_a_config_error():
  config = ml_collections.ConfigDict({'models': {'prophet': '/tmp'}, 'formats': ('onnx',),
                                      'parity': {'batch_sizes': (1,)}})
  with pytest.raises(ConfigError, match='no exporter'):
    pipeline.run(config, '/tmp/unused')
