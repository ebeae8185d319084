"""The shared trainer: learning, accumulation, NaN guard, exact eval means, devices, resume."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.train import state as state_lib
from quantum_alpha_jax.train import step as step_lib
from tests.devices import run_with_devices
from tests.linear_task import RegressionTask

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _regression_data(rows, seed=0, features=8, noise=0.1):
  rng = np.random.default_rng(seed)
  w = np.linspace(-1, 1, features).astype(np.float32)
  x = rng.normal(size=(rows, features)).astype(np.float32)
  y = (x @ w + 0.5 + noise * rng.normal(size=rows)).astype(np.float32)
  return {'x': x, 'y': y, 'mask': np.ones(rows, np.float32)}


def _state_and_steps(config_overrides=None, accumulation_steps=1, dtype=jnp.float32, mesh=None,
                     total_steps=200):
  config = state_lib.optimizer_config(learning_rate=0.05, warmup_steps=0, schedule='constant',
                                      **(config_overrides or {}))
  optimizer, schedule = state_lib.make_optimizer(config, total_steps)
  mesh = mesh or step_lib.make_mesh(1)
  task = RegressionTask()
  params = task.init_params(None, _regression_data(4))
  state = step_lib.replicate(
      state_lib.TrainState.create(params, optimizer, jax.random.PRNGKey(0)), mesh)
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh, dtype=dtype,
                                        accumulation_steps=accumulation_steps)
  eval_step = step_lib.make_eval_step(task.loss_fn, mesh, dtype=dtype)
  return state, train_step, eval_step, mesh


def test_train_step_learns_and_beats_the_mean_baseline_on_held_out_data():
  train, held_out = _regression_data(4096, seed=1), _regression_data(1024, seed=2)
  state, train_step, eval_step, mesh = _state_and_steps()
  first_loss = None
  for index in range(200):
    rows = slice((index * 64) % 4096, (index * 64) % 4096 + 64)
    batch = {k: v[rows] for k, v in train.items()}
    state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
    first_loss = float(metrics['loss']) if first_loss is None else first_loss
  held = step_lib.mean_metrics([eval_step(state.params, step_lib.shard_batch(held_out, mesh))])
  baseline = float(np.mean(np.square(held_out['y'] - train['y'].mean())))
  assert held['loss'] < 0.05 * baseline
  assert held['loss'] < 0.05 * first_loss
  assert int(state.step) == 200
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))


def test_gradient_accumulation_matches_one_big_batch():
  batch = _regression_data(64, seed=3)
  results = []
  for accumulation in (1, 4):
    state, train_step, _, mesh = _state_and_steps(accumulation_steps=accumulation)
    for _ in range(3):
      state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
    results.append((jax.device_get(state.params), float(metrics['loss'])))
  np.testing.assert_allclose(results[0][0]['w'], results[1][0]['w'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_bfloat16_compute_keeps_fp32_master_params_and_still_learns():
  train = _regression_data(2048, seed=4)
  state, train_step, eval_step, mesh = _state_and_steps(dtype=jnp.bfloat16)
  for index in range(100):
    rows = slice((index * 64) % 2048, (index * 64) % 2048 + 64)
    state, _ = train_step(state, step_lib.shard_batch({k: v[rows] for k, v in train.items()}, mesh))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
  held = step_lib.mean_metrics([eval_step(state.params, step_lib.shard_batch(train, mesh))])
  assert held['loss'] < 0.1 * float(np.var(train['y']))


def test_non_finite_loss_is_an_error_naming_the_step_and_leaves_params_untouched():
  batch = _regression_data(32, seed=5)
  state, train_step, _, mesh = _state_and_steps()
  state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
  step_lib.check_finite(jax.device_get(metrics), 1)
  before = jax.device_get(state.params)
  poisoned = dict(batch, y=batch['y'].copy())
  poisoned['y'][3] = np.nan
  state, metrics = train_step(state, step_lib.shard_batch(poisoned, mesh))
  with pytest.raises(step_lib.NonFiniteLossError, match='train step 2'):
    step_lib.check_finite(jax.device_get(metrics), 2)
  np.testing.assert_array_equal(jax.device_get(state.params)['w'], before['w'])


def test_eval_means_are_exact_over_padded_batches():
  data = _regression_data(100, seed=6)
  state, _, eval_step, mesh = _state_and_steps()
  params = {'w': jnp.linspace(0, 1, 8), 'b': jnp.asarray(0.3)}
  sums = []
  for begin in range(0, 128, 32):  # 4 batches of 32; the last has 28 padding rows
    batch = {k: np.zeros((32,) + v.shape[1:], v.dtype) for k, v in data.items()}
    real = data['x'][begin:begin + 32].shape[0]
    for k, v in data.items():
      batch[k][:real] = v[begin:begin + 32]
    batch['y'][real:] = 1e6  # padding must not count
    sums.append(eval_step(params, step_lib.shard_batch(batch, mesh)))
  means = step_lib.mean_metrics(jax.device_get(sums))
  prediction = data['x'] @ np.linspace(0, 1, 8) + 0.3
  assert means['count'] == 100
  np.testing.assert_allclose(means['loss'], np.mean(np.square(prediction - data['y'])), rtol=1e-5)
  np.testing.assert_allclose(means['mae'], np.mean(np.abs(prediction - data['y'])), rtol=1e-5)


def test_optimizer_schedule_and_bad_names():
  config = state_lib.optimizer_config(learning_rate=1e-3, warmup_steps=10, final_lr_fraction=0.1)
  _, schedule = state_lib.make_optimizer(config, 110)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(110)), 1e-4, rtol=1e-4)
  with pytest.raises(ConfigError, match='optimizer.name'):
    state_lib.make_optimizer(state_lib.optimizer_config(name='sgdx'), 10)
  with pytest.raises(ConfigError, match='compute_dtype'):
    step_lib.compute_dtype('fp8')


_DEVICES_SCRIPT = textwrap.dedent('''
    import json, jax, numpy as np
    from tests import test_train as t
    from quantum_alpha_jax.train import step as step_lib
    assert jax.device_count() == 4, jax.devices()
    batch = t._regression_data(64, seed=7)
    out = {}
    for count in (1, 4):
      mesh = step_lib.make_mesh(count)
      state, train_step, eval_step, mesh = t._state_and_steps(mesh=mesh, accumulation_steps=2)
      for _ in range(3):
        state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
      sums = step_lib.mean_metrics([eval_step(state.params, step_lib.shard_batch(batch, mesh))])
      out[count] = {'w': np.asarray(state.params['w']).tolist(), 'loss': float(metrics['loss']),
                    'eval': sums['loss'], 'shards': len(state.params['w'].sharding.device_set)}
    print(json.dumps(out))
''')


def test_one_device_and_four_devices_give_the_same_params():
  out = run_with_devices(_DEVICES_SCRIPT, devices=4)
  assert out['4']['shards'] == 4 and out['1']['shards'] == 1
  np.testing.assert_allclose(out['1']['w'], out['4']['w'], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out['1']['loss'], out['4']['loss'], rtol=1e-5)
  np.testing.assert_allclose(out['1']['eval'], out['4']['eval'], rtol=1e-5)
  assert np.abs(np.asarray(out['1']['w'])).max() > 0.01  # the steps did move the params


_LOOP_SCRIPT = textwrap.dedent('''
    import os, signal, sys, json
    import numpy as np
    from quantum_alpha_jax.data import features, synthetic, windows
    from quantum_alpha_jax.train import loop
    from tests.linear_task import LinearTask
    workdir, kill_at, learning_rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    frames = {s: features.compute_features(f) for s, f in synthetic.generate_market(
        ('BTCUSDT', 'ETHUSDT'), start='2024-01-01', end='2024-01-22', seed=3).items()}
    splits = [windows.Split('train', '2024-01-01', '2024-01-15'),
              windows.Split('validation', '2024-01-15', '2024-01-22')]
    data, _ = windows.make_datasets(frames, windows.WindowSpec(16, 4), splits, 32,
                                    os.path.join(workdir, 'cache'), seed=5, num_devices=1,
                                    shard_index=0, shard_count=1)
    config = loop.train_config(batch_size=32, num_steps=30, eval_every_steps=10,
                               log_every_steps=5, patience=0, seed=11, max_eval_batches=20)
    config.optimizer.learning_rate = learning_rate
    config.optimizer.warmup_steps = 5
    def hook(step, state):
      if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    result = loop.train_and_evaluate(config, LinearTask(), data, os.path.join(workdir, 'run'),
                                     hooks=[hook])
    print(json.dumps({'w': np.asarray(result.state.params['w']).tolist(),
                      'step': int(result.state.step), 'best_step': result.best_step}))
''')


def _run_loop(workdir, kill_at=0, learning_rate=1e-3):
  return subprocess.run([sys.executable, '-c', _LOOP_SCRIPT, str(workdir), str(kill_at),
                         str(learning_rate)], cwd=REPOSITORY, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_a_run_killed_with_sigkill_resumes_to_identical_params(tmp_path):
  uninterrupted = _run_loop(tmp_path / 'a')
  assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
  killed = _run_loop(tmp_path / 'b', kill_at=25)
  assert killed.returncode == -9  # SIGKILL, between the checkpoints at 20 and 30
  assert sorted(p.name for p in (tmp_path / 'b/run/checkpoints').iterdir()
                if p.name.isdigit()) == ['10', '20']
  resumed = _run_loop(tmp_path / 'b')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'train (from step 20)' in resumed.stderr
  a = json.loads(uninterrupted.stdout.splitlines()[-1])
  b = json.loads(resumed.stdout.splitlines()[-1])
  assert a['step'] == b['step'] == 30
  np.testing.assert_array_equal(np.asarray(a['w']), np.asarray(b['w']))
  # The killed run's logs after step 20 were dropped, so no step is logged twice.
  lines = [json.loads(line) for line in (tmp_path / 'b/run/metrics.jsonl').read_text().splitlines()]
  keys = [(line['step'], line['split']) for line in lines]
  assert len(keys) == len(set(keys)) and (30, 'validation') in keys
  # A different config in the same workdir is refused, naming the key.
  changed = _run_loop(tmp_path / 'b', learning_rate=3e-3)
  assert changed.returncode != 0
  assert 'optimizer.learning_rate' in changed.stderr and 'new --workdir' in changed.stderr


def test_validation_reads_a_fixed_subset_over_every_symbol_and_the_whole_split(tmp_path):
  """``max_eval_batches`` picks windows of every symbol from the split's start to its end (the
  split is ordered by symbol, then time: its first batches would be BTC's first hours), the same
  at every evaluation, and the run's record names them."""
  from quantum_alpha_jax.data import features, synthetic, windows  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import loop  # pylint: disable=g-import-not-at-top
  from tests.linear_task import LinearTask  # pylint: disable=g-import-not-at-top

  frames = {symbol: features.compute_features(frame) for symbol, frame in synthetic.generate_market(
      ('BTCUSDT', 'ETHUSDT'), start='2024-01-01', end='2024-01-12', seed=3).items()}
  splits = [windows.Split('train', '2024-01-01', '2024-01-08'),
            windows.Split('validation', '2024-01-08', '2024-01-12')]
  data, _ = windows.make_datasets(frames, windows.WindowSpec(16, 4), splits, 16, tmp_path / 'cache',
                                  seed=5, num_devices=1, shard_index=0, shard_count=1)
  validation = data['validation']
  seen = []

  def eval_step(params, batch):
    del params
    mask = np.asarray(batch['mask'])
    seen[-1].append(np.asarray(batch['anchor'])[mask == 1])
    return {'count': float(mask.sum()), 'loss': float(mask.sum())}

  mesh = step_lib.make_mesh(1)
  for _ in range(2):
    seen.append([])
    loop.evaluate(eval_step, None, validation, mesh, max_batches=3, batch_size=16, seed=0)
  first, second = (np.concatenate(batches) for batches in seen)
  np.testing.assert_array_equal(first, second)
  assert len(first) == len(np.unique(first)) == 48
  arrays = validation.source.arrays
  anchors = validation.source.anchors
  timestamp = np.asarray(arrays.timestamp)
  for index in range(len(arrays.symbols)):
    every = timestamp[anchors[arrays.symbol[anchors] == index]]
    picked = timestamp[first[arrays.symbol[first] == index]]
    assert len(picked) >= 20  # about half of the 48 each
    slice_width = (every.max() - every.min()) / len(picked)
    assert picked.min() - every.min() <= 2 * slice_width
    assert every.max() - picked.max() <= 2 * slice_width

  config = loop.train_config(batch_size=16, num_steps=2, eval_every_steps=2, log_every_steps=1,
                             patience=0, max_eval_batches=3, seed=0)
  result = loop.train_and_evaluate(config, LinearTask(), data, tmp_path / 'run')
  expected = windows.describe_anchors(validation.source, first)
  recorded = checkpoint_lib.read_run_record(tmp_path / 'run')['validation_subset']
  assert recorded['symbols'] == expected['symbols'] == result.summary['validation_subset']['symbols']
  assert (recorded['windows'], recorded['of']) == (48, len(anchors))
  assert result.best_metrics['count'] == 48
